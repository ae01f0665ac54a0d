"""Atomic file writes and safetensors artefacts with JSON metadata, checked against the model they came from."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from harmlens.errors import HarmlensError

METADATA_KEY = "harmlens"


def model_name(model: Any) -> str:
    """Canonical name of a loaded model, as recorded in saved artefacts."""
    return getattr(model, "harmlens_name", None) or str(getattr(model.cfg, "model_name", "unknown"))


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_umask()


def atomic_write(path: str | os.PathLike, write_fn: Callable[[Path], object]) -> Path:
    """Call write_fn(tmp_path) on a temp file beside `path`, then os.replace it over `path`; nothing left on error."""
    path = Path(path)
    if path.is_dir():
        raise HarmlensError(f"cannot write {path}: it is a directory")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write_fn(tmp)
        os.chmod(tmp, _FILE_MODE)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write bytes to `path` atomically."""
    return atomic_write(path, lambda tmp: tmp.write_bytes(data))


def atomic_write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> Path:
    """Write text to `path` atomically."""
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding=encoding))


def save_tensors(path: str | os.PathLike, tensors: dict[str, torch.Tensor], metadata: dict) -> Path:
    """Save tensors as safetensors (atomically), with `metadata` JSON-encoded under the 'harmlens' key."""
    if not tensors:
        raise HarmlensError("nothing to save: empty tensor dict")
    try:
        header = {METADATA_KEY: json.dumps(metadata, sort_keys=True)}
    except (TypeError, ValueError) as exc:
        raise HarmlensError(f"metadata is not JSON-serialisable: {exc}") from None
    clean = {}
    for key, value in tensors.items():
        if not isinstance(value, torch.Tensor):
            raise HarmlensError(f"tensor {key!r} is a {type(value).__name__}, not a torch.Tensor")
        clean[key] = value.detach().cpu().contiguous()
    return atomic_write(path, lambda tmp: save_file(clean, str(tmp), metadata=header))


def load_tensors(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict]:
    """Load (tensors, metadata) from a file written by save_tensors; one-line HarmlensError if unusable."""
    path = Path(path)
    if not path.exists():
        raise HarmlensError(f"no such file: {path}")
    if not path.is_file():
        raise HarmlensError(f"not a file: {path}")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as fh:
            header = fh.metadata() or {}
            tensors = {key: fh.get_tensor(key).clone() for key in fh.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise HarmlensError(f"{path} is not a readable safetensors file (truncated or wrong format): {first}") from None
    if METADATA_KEY not in header:
        raise HarmlensError(f"{path} is a safetensors file but not a harmlens artefact (no '{METADATA_KEY}' metadata)")
    try:
        metadata = json.loads(header[METADATA_KEY])
    except json.JSONDecodeError:
        raise HarmlensError(f"{path} has corrupt harmlens metadata (not valid JSON)") from None
    except RecursionError:
        raise HarmlensError(f"{path} has corrupt harmlens metadata (nested too deeply)") from None
    if not isinstance(metadata, dict):
        raise HarmlensError(f"{path} has corrupt harmlens metadata (not a JSON object)")
    return tensors, metadata


def model_signature(model) -> dict:
    """The fields check_compatible compares: model name, d_model, n_layers."""
    return {"model": model_name(model), "d_model": int(model.cfg.d_model), "n_layers": int(model.cfg.n_layers)}


def check_compatible(metadata: dict, model) -> None:
    """Raise HarmlensError unless the artefact was made with this model (same name, d_model and n_layers)."""
    have = model_signature(model)
    want = {key: metadata.get(key) for key in have}
    if want == have:
        return
    diffs = ", ".join(f"{k} {want[k]!r} vs {have[k]!r}" for k in have if want[k] != have[k])
    raise HarmlensError(
        f"artefact was made with model {want['model']!r} but the loaded model is {have['model']!r} ({diffs})"
    )


def json_safe(obj):
    """Replace non-finite floats (NaN grid cells, an infinite threshold) by None, recursively, for strict JSON."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


COMPLETE_MARKER = ".harmlens-complete"


def remove_stale_temps(directory: str | os.PathLike, name: str) -> None:
    """Remove temp folders a killed run left beside `directory/name` (.NAME.tmp-*, .NAME.old-*)."""
    directory = Path(directory)
    if directory.is_dir():
        for pattern in (f".{name}.tmp-*", f".{name}.old-*"):
            for stale in directory.glob(pattern):
                if stale.is_dir():
                    shutil.rmtree(stale, ignore_errors=True)


@contextmanager
def _signals_deferred():
    """Hold SIGINT/SIGTERM while a few renames run, so Ctrl-C cannot split an output set (delivered right after)."""
    mask = {signal.SIGINT, signal.SIGTERM}
    can = hasattr(signal, "pthread_sigmask")
    old: set = signal.pthread_sigmask(signal.SIG_BLOCK, mask) if can else set()
    try:
        yield
    finally:
        if can:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)


@contextmanager
def output_set(directory: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp folder for a set of output files; on success they replace those in `directory` together
    (a new folder is renamed into place; in an existing one the files are moved with signals held) and
    `directory/.harmlens-complete` lists them; on any error or Ctrl-C nothing changes in `directory`."""
    out = Path(directory)
    if out.exists() and not out.is_dir():
        raise HarmlensError(f"output folder {out} exists and is not a folder")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(out.parent, out.name)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    except OSError as exc:
        raise HarmlensError(f"cannot write to {out}: {exc.strerror or exc}") from None
    try:
        yield tmp
        files = sorted(p.name for p in tmp.iterdir())
        (tmp / COMPLETE_MARKER).write_text(json.dumps({"files": files}) + "\n", encoding="utf-8")
        with _signals_deferred():
            if not out.exists():
                os.replace(tmp, out)
                return
            (out / COMPLETE_MARKER).unlink(missing_ok=True)
            for name in files:
                target = out / name
                if target.is_dir() and not (tmp / name).is_dir():
                    raise HarmlensError(f"cannot write {target}: it is a folder")
                os.replace(tmp / name, target)
            os.replace(tmp / COMPLETE_MARKER, out / COMPLETE_MARKER)
    except OSError as exc:
        raise HarmlensError(f"cannot write to {out}: {exc.strerror or exc}") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
