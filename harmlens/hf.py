"""Plain HF model folders: atomic folder writes and a bridge's HF model without TransformerLens wrappers."""

from __future__ import annotations

import copy
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

from harmlens.errors import HarmlensError


@contextmanager
def atomic_dir(path: str | os.PathLike, *, overwrite: bool = False, what: str = "artefact"):
    """Yield a temp dir beside `path`, renamed onto `path` on success; removed (nothing left) on any error."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    except OSError as exc:
        raise HarmlensError(f"cannot save {what} to {path}: {exc.strerror or exc}") from None
    try:
        yield tmp
        if path.exists():
            if not overwrite:
                raise HarmlensError(f"cannot save {what}: {path} already exists")
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.old-", dir=path.parent))
            os.replace(path, old / "x")
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise HarmlensError(f"cannot save {what} to {path}: {exc.strerror or exc}") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
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
