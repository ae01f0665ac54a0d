"""Resumable training checkpoints without pickles: tensors in safetensors, scalars in JSON, written atomically."""

from __future__ import annotations

import json
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from harmlens.errors import HarmlensError
from harmlens.guards.tuning.adapter import atomic_dir
from harmlens.io import load_tensors, remove_stale_temps, save_tensors

_STEP_DIR = re.compile(r"^step-(\d{8})$")
KEEP = 2  # checkpoints kept on disk (the newest ones)


def _rng_state() -> tuple[dict, dict]:
    """(tensors, json) snapshot of the torch, CUDA, Python and NumPy random generators."""
    tensors: dict[str, torch.Tensor] = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s
    np_state: Any = np.random.get_state()  # the legacy tuple form
    py_state = random.getstate()
    js = {
        "python": [py_state[0], list(py_state[1]), py_state[2]],
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
    }
    return tensors, js


def _set_rng_state(tensors: dict, js: dict) -> None:
    torch.set_rng_state(tensors["rng.torch"])
    cuda = [tensors[k] for k in sorted((k for k in tensors if k.startswith("rng.cuda.")), key=lambda k: int(k[9:]))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
    version, internal, gauss = js["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = js["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))


def save_checkpoint(directory: str | Path, step: int, adapter_weights: dict, optimizer, scheduler, state: dict) -> Path:
    """Write step-XXXXXXXX/ (adapter, optimizer + RNG tensors, state.json) atomically; prune old checkpoints."""
    directory = Path(directory)
    opt = optimizer.state_dict()
    tensors, scalars = {}, {}
    for idx, st in opt["state"].items():
        for key, value in st.items():
            if torch.is_tensor(value):
                tensors[f"opt.{idx}.{key}"] = value
            else:
                scalars[f"{idx}.{key}"] = value
    rng_tensors, rng_json = _rng_state()
    tensors.update(rng_tensors)
    body = {
        **state,
        "step": step,
        "optimizer": {"param_groups": opt["param_groups"], "scalars": scalars},
        "scheduler": scheduler.state_dict(),
        "rng": rng_json,
    }
    path = directory / f"step-{step:08d}"
    with atomic_dir(path, overwrite=True, what="checkpoint") as tmp:
        save_tensors(tmp / "adapter.safetensors", adapter_weights, {"step": step})
        save_tensors(tmp / "optimizer.safetensors", tensors, {"step": step})
        (tmp / "state.json").write_text(json.dumps(body), encoding="utf-8")
    for old in list_checkpoints(directory)[:-KEEP]:
        shutil.rmtree(old, ignore_errors=True)
    return path


def list_checkpoints(directory: str | Path | None) -> list[Path]:
    """Complete checkpoint folders in `directory`, oldest first."""
    if directory is None or not Path(directory).is_dir():
        return []
    remove_stale_temps(directory, "step-*")  # temp folders of a checkpoint killed mid-write
    return sorted(p for p in Path(directory).iterdir() if p.is_dir() and _STEP_DIR.match(p.name))


def load_checkpoint(path: str | Path, *, base_model: str, fingerprint: str) -> tuple[dict, dict, dict]:
    """Read (state, adapter_weights, optimizer_tensors) and check it belongs to this base model and run."""
    path = Path(path)
    try:
        state = json.loads((path / "state.json").read_text(encoding="utf-8"))
        int(state["step"]), state["base_model"], state["fingerprint"], state["optimizer"], state["rng"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise HarmlensError(f"corrupt checkpoint {path}: state.json unreadable ({type(exc).__name__})") from None
    if state["base_model"] != base_model:
        raise HarmlensError(f"checkpoint {path} was made with base model {state['base_model']!r}, not {base_model!r}")
    if state["fingerprint"] != fingerprint:
        raise HarmlensError(
            f"checkpoint {path} is from another training run (config or data differ); "
            f"use another checkpoint_dir or delete it"
        )
    weights, _ = load_tensors(path / "adapter.safetensors")
    opt_tensors, _ = load_tensors(path / "optimizer.safetensors")
    return state, weights, opt_tensors


def restore_training_state(state: dict, opt_tensors: dict, optimizer, scheduler) -> None:
    """Load optimizer, scheduler and RNG state from a checkpoint read by load_checkpoint."""
    per_param: dict[int, dict] = {}
    for key, value in opt_tensors.items():
        if key.startswith("opt."):
            _, idx, name = key.split(".", 2)
            per_param.setdefault(int(idx), {})[name] = value
    for key, value in state["optimizer"]["scalars"].items():
        idx, name = key.split(".", 1)
        per_param.setdefault(int(idx), {})[name] = value
    try:
        optimizer.load_state_dict({"state": per_param, "param_groups": state["optimizer"]["param_groups"]})
        scheduler.load_state_dict(state["scheduler"])
        _set_rng_state(opt_tensors, state["rng"])
    except (ValueError, KeyError, RuntimeError, TypeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise HarmlensError(f"corrupt checkpoint: optimizer/scheduler state does not fit ({first})") from None
