"""gpu_check's placement and serving steps: an explicit device_map split, the GPU+CPU map refusal, and the vLLM
backend against plain transformers."""

from __future__ import annotations

import tempfile
import time
from typing import Any

import torch
from gpu_check_text import AGREE_REL, best_of, n_tokens, plain_generate

from harmlens.probes import HarmlensError, cache_resid, chat_format, generate, load_model
from harmlens.runtime import stop_token_ids


def split_map(model, device: torch.device) -> dict:
    """An explicit {module: device} map over the model's modules: layers spread over every GPU present (one GPU: all
    on it, still a dispatched model), or on the CPU the upper half's first layer offloaded to disk."""
    n = model.cfg.n_layers
    names = [name for name, _ in model.original_model.named_children()]
    inner = "model" if "model" in names else names[0]
    tops = [f"{inner}.{c}" for c, _ in getattr(model.original_model, inner).named_children() if c != "layers"]
    if device.type == "cuda":
        gpus = max(1, torch.cuda.device_count())
        dm: dict[str, Any] = {t: 0 for t in tops} | {"lm_head": 0, f"{inner}.norm": gpus - 1}  # lm_head may be tied
        dm.update({f"{inner}.layers.{i}": i * gpus // n for i in range(n)})
    else:
        dm = {t: "cpu" for t in tops} | {"lm_head": "cpu"}
        dm.update({f"{inner}.layers.{i}": "disk" if i == n // 2 else "cpu" for i in range(n)})
    return dm


def device_map_split(model, folder: str, instructions: list[str], device: torch.device, dtype: torch.dtype) -> dict:
    """load_model with an explicit device_map reads the same activations as the single-device model."""
    dm = split_map(model, device)
    with tempfile.TemporaryDirectory(prefix="gpu-check-offload-") as offload:
        start = time.perf_counter()
        split = load_model(folder, device_map=dm, dtype=dtype, offload_folder=offload)
        t_load = time.perf_counter() - start
        prompts = chat_format(model).render_many(instructions)
        n = model.cfg.n_layers
        layers = [1, n // 2 + 1, n - 1]
        got = cache_resid(split, prompts, lambda p: (p.t_inst,), layers=layers, progress=False).float()
        del split
    want = cache_resid(model, prompts, lambda p: (p.t_inst,), layers=layers, progress=False).float()
    rel = float(((got - want).norm(dim=-1) / want.norm(dim=-1)).max())
    if rel > AGREE_REL:
        raise AssertionError(f"the split model's activations differ by {rel:.3g} (> {AGREE_REL})")
    return {"load_s": round(t_load, 2), "devices": sorted({str(v) for v in dm.values()}), "max_rel_diff": round(rel, 5)}


def device_map_gpu_cpu(model, folder: str) -> dict:
    """A map mixing cuda:0 and the CPU must fail in one line before any weight loads (TransformerLens 4.3 cannot run
    it; see harmlens.runtime.devices)."""
    n = model.cfg.n_layers
    dm: dict[str, Any] = {"model.embed_tokens": 0, "model.rotary_emb": 0, "model.norm": "cpu", "lm_head": "cpu"}
    dm.update({f"model.layers.{i}": 0 if i < n // 2 else "cpu" for i in range(n)})
    start = time.perf_counter()
    try:
        load_model(folder, device_map=dm)
    except HarmlensError as exc:
        seconds = time.perf_counter() - start
        if "\n" in str(exc) or seconds > 5:
            raise AssertionError(f"refused, but not in one line before loading ({seconds:.1f} s): {exc}") from None
        return {"refused": str(exc), "refused_after_s": round(seconds, 3)}
    return {"loaded": "the bridge ran a GPU+CPU split (TransformerLens lifted its check): make harmlens allow it"}


def vllm_cpu_unsupported(model) -> str | None:
    """Why vLLM's CPU build cannot serve this model (its attention kernels take a few head sizes), else None."""
    try:
        from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackend

        sizes = CPUAttentionBackend.get_supported_head_sizes()
    except (ImportError, AttributeError):
        return None
    head = model.cfg.d_head
    return None if head in sizes else f"vLLM's CPU attention has no kernel for head size {head} (it has {sizes})"


def vllm_generation(model, plain, instructions: list[str], *, new_tokens: int, batch_size: int) -> dict:
    """harmlens generate through the vLLM backend against plain transformers generate on the same prompts."""
    from harmlens.runtime import get_backend, release_vllm

    device = next(plain.parameters()).device
    prompts = chat_format(model).render_many(instructions)
    stops, tok = stop_token_ids(model), model.tokenizer
    start = time.perf_counter()
    extra = {"gpu_memory_utilization": 0.4} if device.type == "cuda" else {}
    engine = get_backend(model, "vllm", max_model_len=1024, **extra)
    engine_start = time.perf_counter() - start
    try:
        kw = dict(max_new_tokens=new_tokens, batch_size=batch_size, progress=False, backend=engine)
        t_vllm, replies = best_of(lambda: generate(model, prompts, **kw), 1, device)
        t_plain, want = best_of(
            lambda: plain_generate(plain, tok, prompts, new_tokens=new_tokens, batch_size=batch_size, stops=stops),
            1,
            device,
        )
    finally:
        release_vllm(model)
    return {
        "engine_start_s": round(engine_start, 1),
        "vllm_tok_s": round(n_tokens(tok, replies) / t_vllm, 1),
        "plain_tok_s": round(n_tokens(tok, want) / t_plain, 1),
        "ratio": round((n_tokens(tok, replies) / t_vllm) / (n_tokens(tok, want) / t_plain), 3),
        "same_replies": f"{sum(a == b for a, b in zip(replies, want))}/{len(prompts)}",
    }
