"""An OpenAI-compatible HTTP server for a model guarded by a LatentGuard (`python -m harmlens.guards serve GUARD`).

Needs the `serve` extra (fastapi, uvicorn): `pip install 'harmlens[serve]'`.
"""

from harmlens.guards.serve.app import create_app
from harmlens.guards.serve.batching import Batcher
from harmlens.guards.serve.schemas import Limits
from harmlens.guards.serve.streams import ChatStream, Reply, ServiceError

__all__ = ["Batcher", "ChatStream", "Limits", "Reply", "ServiceError", "create_app"]
