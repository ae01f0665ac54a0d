"""Atomic file writes and safetensors artefacts with JSON metadata, checked against the model they came from."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import tempfile
import threading
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
DIR_MODE = 0o777 & ~_umask()  # what a folder made here gets (mkdtemp's are 0o700)


def write_failure(exc: BaseException) -> str:
    """The one-line reason of a failed write: an OSError's strerror, or a SafetensorError's I/O cause."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    if isinstance(exc, UnicodeEncodeError):
        return f"the text cannot be encoded as {exc.encoding} ({exc.reason})"
    text = " ".join(str(exc).split()) or type(exc).__name__
    return re.sub(r"^(Error while serializing: )?(I/O error: )?", "", text)


WRITE_ERRORS = (OSError, SafetensorError, UnicodeEncodeError)  # what a write can raise on a full disk or bad text


def atomic_write(path: str | os.PathLike, write_fn: Callable[[Path], object]) -> Path:
    """Call write_fn(tmp_path) on a temp file beside `path`, then os.replace it over `path`; nothing left on error
    (a full disk or unencodable text is one HarmlensError line; safetensors' SafetensorError is no OSError)."""
    path = Path(path)
    if path.is_dir():
        raise HarmlensError(f"cannot write {path}: it is a directory")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise HarmlensError(f"cannot write {path}: {write_failure(exc)}") from None
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write_fn(tmp)
        os.chmod(tmp, _FILE_MODE)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except WRITE_ERRORS as exc:
        tmp.unlink(missing_ok=True)
        raise HarmlensError(f"cannot write {path}: {write_failure(exc)}") from None
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
def interrupts_deferred() -> Iterator[None]:
    """Hold Ctrl-C and SIGTERM while a few renames run, so they cannot split an output set; one that comes is
    re-raised right after. Done with Python handlers that only record: a signal mask (pthread_sigmask) does not
    hold anything in a process with other threads (torch starts one at import), whichever thread takes the
    signal, Python raises KeyboardInterrupt in the main thread at once. Off the main thread it does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    got: list[int] = []
    previous: dict[signal.Signals, Any] = {}
    try:
        for sig in (signal.SIGINT, signal.SIGTERM):
            if signal.getsignal(sig) is not None:  # None: a handler not set from Python, which cannot be restored
                previous[sig] = signal.signal(sig, lambda signum, frame: got.append(signum))
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for signum in dict.fromkeys(got):
            signal.raise_signal(signum)  # the restored handler runs now: run_cli's turns it into exit 130


def _move_into(tmp: Path, out: Path, files: list[str]) -> None:
    """Move the finished set `tmp` to `out`: rename the folder, or into an existing one file by file, with the
    completion marker removed first and written last (a reader sees the old set, the new one, or no marker)."""
    if not out.exists():
        os.chmod(tmp, DIR_MODE)  # mkdtemp's folder is private; the set should read like any folder made here
        os.replace(tmp, out)
        return
    for name in files:
        if (out / name).is_dir() and not (tmp / name).is_dir():
            raise HarmlensError(f"cannot write {out / name}: it is a folder")
    (out / COMPLETE_MARKER).unlink(missing_ok=True)
    for name in files:
        os.replace(tmp / name, out / name)
    os.replace(tmp / COMPLETE_MARKER, out / COMPLETE_MARKER)


@contextmanager
def output_set(directory: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp folder for a set of output files; on success they replace those in `directory` together
    (a new folder is renamed into place; in an existing one the files are moved with Ctrl-C held) and
    `directory/.harmlens-complete` lists them; on any error nothing changes in `directory`. A Ctrl-C during
    the move is honoured right after it (the new set is complete); a full disk is one HarmlensError line."""
    out = Path(directory)
    if out.exists() and not out.is_dir():
        raise HarmlensError(f"output folder {out} exists and is not a folder")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(out.parent, out.name)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    except OSError as exc:
        raise HarmlensError(f"cannot write to {out}: {write_failure(exc)}") from None
    try:
        yield tmp
        files = sorted(p.name for p in tmp.iterdir())
        (tmp / COMPLETE_MARKER).write_text(json.dumps({"files": files}) + "\n", encoding="utf-8")
        with interrupts_deferred():
            _move_into(tmp, out, files)
    except WRITE_ERRORS as exc:
        raise HarmlensError(f"cannot write to {out}: {write_failure(exc)}") from None
    except HarmlensError as exc:  # e.g. a full disk under atomic_write: name the file in place, not in the temp folder
        exc.args = (str(exc).replace(str(tmp), str(out)),)  # same type: callers may catch a subclass
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
