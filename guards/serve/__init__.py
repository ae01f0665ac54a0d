"""An OpenAI-compatible HTTP server for a model guarded by a LatentGuard (`python -m harmlens.guards serve GUARD`).

Needs the `serve` extra (fastapi, uvicorn): `pip install 'harmlens[serve]'`.
"""

from harmlens.guards.serve.app import create_app
from harmlens.guards.serve.batching import Batcher, Reply
from harmlens.guards.serve.schemas import Limits

__all__ = ["Batcher", "Limits", "Reply", "create_app"]
