"""One real guarded server for the integration tests (LiteLLM, NeMo Guardrails, garak), each tool run in its own venv.

The server runs in this python (`python -m harmlens.guards serve`, the embedded model with the small centroid guard
of tests/guards/serve); every tool runs as a subprocess of the python its venv names (serve_helpers.tool_python),
so none of them has to be installed beside harmlens. The test modules skip before this fixture starts when their
venv is absent.
"""

from __future__ import annotations

import pytest
from integration_helpers import ALLOWED, FLAGGED, GuardedServer
from serve_helpers import API_KEY, start_server, stop_server


@pytest.fixture(scope="session")
def guarded_server(model, harmful_prompts, harmless_prompts, tmp_path_factory):
    """A real guarded server process with an API key (centroid guard, layers 8, 16, 24, 24 + 24 prompts, 10% FPR)."""
    pytest.importorskip("fastapi")
    from harmlens.guards import CentroidConfig, LatentGuard

    guard = LatentGuard.fit(
        model, harmful_prompts, harmless_prompts, CentroidConfig(layers=(8, 16, 24), target_fpr=0.1)
    )
    folder = tmp_path_factory.mktemp("integrations")
    path = guard.save(folder / "guard.safetensors")
    proc, base = start_server(path, "--api-key", API_KEY, "--max-tokens", "64", log=folder / "server.log")
    server = GuardedServer(base, guard)
    assert server.flagged(FLAGGED) and not server.flagged(ALLOWED), "the test guard no longer separates the prompts"
    yield server
    stop_server(proc)
