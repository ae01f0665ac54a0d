"""Fixtures for the guarded-server tests: a fitted guard and a real server process (helpers in serve_helpers)."""

from __future__ import annotations

import pytest
from serve_helpers import API_KEY, start_server, stop_server


@pytest.fixture(scope="module")
def fitted_guard(model, harmful_prompts, harmless_prompts):
    """A small centroid guard of the embedded model (3 fixed layers, 24 + 24 prompts, α at 10% FPR)."""
    from harmlens.guards import CentroidConfig, LatentGuard

    return LatentGuard.fit(model, harmful_prompts, harmless_prompts, CentroidConfig(layers=(8, 16, 24), target_fpr=0.1))


@pytest.fixture(scope="module")
def server(fitted_guard, tmp_path_factory):
    """(base URL, guard file) of a real guarded server process with an API key."""
    folder = tmp_path_factory.mktemp("serve")
    path = fitted_guard.save(folder / "guard.safetensors")
    proc, base = start_server(path, "--api-key", API_KEY, "--max-tokens", "64", log=folder / "server.log")
    yield base, path
    stop_server(proc)
