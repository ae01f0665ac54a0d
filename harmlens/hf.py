"""Plain HF model folders: atomic folder writes and a bridge's HF model without TransformerLens wrappers."""

from __future__ import annotations

import copy
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

from harmlens.errors import HarmlensError
from harmlens.io import DIR_MODE, WRITE_ERRORS, interrupts_deferred, write_failure


@contextmanager
def atomic_dir(path: str | os.PathLike, *, overwrite: bool = False, what: str = "artefact"):
    """Yield a temp dir beside `path`, renamed onto `path` on success (Ctrl-C held during the swap); removed
    (nothing left) on any error; a full disk, from Python or safetensors (save_pretrained), is one HarmlensError."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    except OSError as exc:
        raise HarmlensError(f"cannot save {what} to {path}: {write_failure(exc)}") from None
    old = None
    try:
        yield tmp
        os.chmod(tmp, DIR_MODE)  # mkdtemp's folder is private; a saved model should read like any other
        if path.exists():
            if not overwrite:
                raise HarmlensError(f"cannot save {what}: {path} already exists")
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.old-", dir=path.parent))
        with interrupts_deferred():  # the old folder out of the way and the new one in, or neither
            _swap(tmp, path, old)
    except WRITE_ERRORS as exc:
        raise HarmlensError(f"cannot save {what} to {path}: {write_failure(exc)}") from None
    except HarmlensError as exc:  # e.g. atomic_write's full disk: name the file in place, not in the temp folder
        exc.args = (str(exc).replace(str(tmp), str(path)),)  # same type: callers may catch a subclass
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def _swap(tmp: Path, path: Path, old: Path | None) -> None:
    if old is not None:
        os.replace(path, old / "x")
    try:
        os.replace(tmp, path)
    except OSError:
        if old is not None:
            os.replace(old / "x", path)  # the old folder goes back
        raise


def _is_bridge_component(module) -> bool:
    return hasattr(module, "original_component") and hasattr(module, "_original_component")


def unwrap_model(model):
    """A plain HF model: the model itself, or for a TransformerBridge a copy of its HF model that shares the
    weight tensors but has TransformerLens' wrapper modules removed (HF names, SDPA attention, no hooks)."""
    hf = getattr(model, "original_model", model)
    if not any(_is_bridge_component(m) for m in hf.modules()):
        return hf
    memo = {id(t): t for t in [*hf.parameters(), *hf.buffers()]}
    clean = copy.deepcopy(hf, memo)

    def strip(module) -> None:
        for name, child in list(module.named_children()):
            while _is_bridge_component(child):
                child = child.original_component
            module._modules[name] = child
            strip(child)

    strip(clean)
    try:
        clean.set_attn_implementation("sdpa")
    except (AttributeError, ValueError, ImportError):
        pass
    if hasattr(model, "harmlens_name"):
        clean.harmlens_name = model.harmlens_name
    return clean
