"""gpu_check's text-model steps: harmlens against plain transformers on the same weights, prompts and batches.

The plain side is `AutoModelForCausalLM.from_pretrained(folder, dtype, attn_implementation="sdpa")` driven with
transformers alone; harmlens is reached through its public calls only (load_model, extract_directions, generate, steer,
LatentGuard, GuardedModel, chat_format), so the check survives changes inside the library.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch

from harmlens.guards import CentroidConfig, GuardedModel, LatentGuard
from harmlens.probes import chat_format, extract_directions, generate, load_model, steer
from harmlens.runtime import stop_token_ids

AGREE_REL = 0.05  # largest relative difference of a class mean allowed between harmlens and plain (bf16 rounding)


def sync(device: torch.device) -> None:
    """Wait for queued GPU work, so wall-clock timings include it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def best_of(fn: Callable[[], Any], repeats: int, device: torch.device) -> tuple[float, Any]:
    """(fastest seconds of `repeats` runs after one warm-up run, the last run's result); repeats 0: one run, no
    warm-up (smoke tests)."""
    if repeats > 0:
        fn()
        sync(device)
    times, result = [], None
    for _ in range(max(1, repeats)):
        start = time.perf_counter()
        result = fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return min(times), result


def load_plain(folder: str, device: torch.device, dtype: torch.dtype):
    """The same weights as a plain transformers model with SDPA attention, on `device`, in eval mode."""
    from transformers import AutoModelForCausalLM

    plain = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, attn_implementation="sdpa")
    return plain.to(device).eval()


def load_both(folder: str, device: torch.device, dtype: torch.dtype) -> tuple[Any, Any, dict]:
    """(harmlens model, plain model, the load step's numbers)."""
    start = time.perf_counter()
    model = load_model(folder, device=device, dtype=dtype)
    sync(device)
    t_harmlens = time.perf_counter() - start
    start = time.perf_counter()
    plain = load_plain(folder, device, dtype)
    sync(device)
    t_plain = time.perf_counter() - start
    p = next(model.original_model.parameters())
    return (
        model,
        plain,
        {
            "harmlens_s": round(t_harmlens, 2),
            "plain_s": round(t_plain, 2),
            "dtype": str(p.dtype),
            "device": str(p.device),
            "n_layers": model.cfg.n_layers,
            "d_model": model.cfg.d_model,
            "params_b": round(sum(q.numel() for q in plain.parameters()) / 1e9, 3),
        },
    )


def _padded(rows: list[list[int]], pad: int, side: str, device: torch.device) -> dict[str, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        span = slice(width - len(r), width) if side == "left" else slice(0, len(r))
        ids[i, span], mask[i, span] = torch.tensor(r), 1
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device)}


def extraction(model, plain, harmful: list[str], harmless: list[str], *, batch_size: int, repeats: int) -> dict:
    """extract_directions against one plain hidden-states forward over the same rendered prompts and batches, and how
    far their class means at t_inst differ (every layer HF's hidden_states expose before its final norm; see
    means_agree)."""
    device = next(plain.parameters()).device
    fmt = chat_format(model)
    rendered = {"harmful": fmt.render_many(harmful), "harmless": fmt.render_many(harmless)}
    pad = model.tokenizer.pad_token_id
    n = model.cfg.n_layers

    def run_plain() -> dict[str, torch.Tensor]:
        means = {}
        with torch.no_grad():
            for name, prompts in rendered.items():
                total = None
                for s in range(0, len(prompts), batch_size):
                    chunk = prompts[s : s + batch_size]
                    out = plain(
                        **_padded([p.input_ids for p in chunk], pad, "right", device), output_hidden_states=True
                    )
                    rows = torch.arange(len(chunk), device=device)
                    at = torch.tensor([p.t_inst for p in chunk], device=device)
                    part = torch.stack([h[rows, at] for h in out.hidden_states[:n]], 1).float().sum(0)
                    total = part if total is None else total + part
                means[name] = total.cpu() / len(prompts)
        return means

    def run_harmlens():
        return extract_directions(model, harmful, harmless, batch_size=batch_size, progress=False)

    t_plain, means = best_of(run_plain, repeats, device)
    t_hl, directions = best_of(run_harmlens, repeats, device)
    rows = [directions.row(layer) for layer in range(n)]
    rel = max(
        float((directions.harmful_inst[rows] - means["harmful"]).norm(dim=-1).div(means["harmful"].norm(dim=-1)).max()),
        float(
            (directions.harmless_inst[rows] - means["harmless"]).norm(dim=-1).div(means["harmless"].norm(dim=-1)).max()
        ),
    )
    return {
        "prompts": f"{len(harmful)}+{len(harmless)}",
        "batch_size": batch_size,
        "plain_forward_s": round(t_plain, 3),
        "extract_directions_s": round(t_hl, 3),
        "ratio": round(t_plain / t_hl, 3),
        "max_rel_diff_inst_means": round(rel, 5),
    }, directions


def means_agree(extraction_step: dict) -> dict:
    """The extraction step's class means equal plain transformers' within bf16 rounding (a separate step, so a
    disagreement never hides the timings)."""
    rel = extraction_step["max_rel_diff_inst_means"]
    if rel > AGREE_REL:
        raise AssertionError(f"harmlens class means differ from plain hidden states by {rel:.3g} (> {AGREE_REL})")
    return {"max_rel_diff_inst_means": rel, "tolerance": AGREE_REL}


def plain_generate(plain, tokenizer, prompts, *, new_tokens: int, batch_size: int, stops: list[int]) -> list[str]:
    """Greedy replies of plain transformers `generate` over length-sorted, left-padded batches (harmlens's batching)."""
    device = next(plain.parameters()).device
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i].input_ids))
    pad = tokenizer.pad_token_id
    out: list[str] = [""] * len(prompts)
    with torch.no_grad():
        for s in range(0, len(order), batch_size):
            idx = order[s : s + batch_size]
            enc = _padded([prompts[i].input_ids for i in idx], pad, "left", device)
            ids = plain.generate(
                **enc, max_new_tokens=new_tokens, do_sample=False, eos_token_id=stops, pad_token_id=pad,
                temperature=None, top_p=None, top_k=None,
            )  # fmt: skip
            for i, row in zip(idx, ids[:, enc["input_ids"].shape[1] :].tolist()):
                cut = next((k for k, t in enumerate(row) if t in stops), len(row))
                out[i] = tokenizer.decode(row[:cut], skip_special_tokens=True)
    return out


def n_tokens(tokenizer, replies: list[str]) -> int:
    """New tokens in the replies, counted the same way for both sides (decoded text re-encoded)."""
    return sum(len(tokenizer(r, add_special_tokens=False)["input_ids"]) for r in replies)


def generation(
    model, plain, instructions: list[str], *, new_tokens: int, batch_size: int, repeats: int, vector: torch.Tensor
) -> dict:
    """tokens/s of plain generate, harmlens generate with no hook and with one steering hook (mid layer)."""
    device = next(plain.parameters()).device
    prompts = chat_format(model).render_many(instructions)
    stops, tok = stop_token_ids(model), model.tokenizer
    kw = dict(max_new_tokens=new_tokens, batch_size=batch_size, progress=False)
    layer = model.cfg.n_layers // 2

    def run_steered():
        with steer(model, vector, layer):
            return generate(model, prompts, **kw)

    sides = {
        "plain": lambda: plain_generate(plain, tok, prompts, new_tokens=new_tokens, batch_size=batch_size, stops=stops),
        "harmlens": lambda: generate(model, prompts, **kw),
        "harmlens_steered": run_steered,
    }
    out: dict[str, Any] = {"prompts": len(prompts), "new_tokens": new_tokens, "batch_size": batch_size}
    replies = {}
    for name, fn in sides.items():
        seconds, replies[name] = best_of(fn, repeats, device)
        out[f"{name}_s"] = round(seconds, 3)
        out[f"{name}_tokens"] = n_tokens(tok, replies[name])
        out[f"{name}_tok_s"] = round(out[f"{name}_tokens"] / seconds, 1)
    out["ratio_no_hooks"] = round(out["harmlens_tok_s"] / out["plain_tok_s"], 3)
    out["ratio_steered"] = round(out["harmlens_steered_tok_s"] / out["plain_tok_s"], 3)
    out["same_replies_no_hooks"] = (
        f"{sum(a == b for a, b in zip(replies['harmlens'], replies['plain']))}/{len(prompts)}"
    )
    out["steering_changed"] = f"{sum(a != b for a, b in zip(replies['harmlens_steered'], replies['harmlens']))}"
    return out


def guarded_generation(
    model, fit: tuple[list[str], list[str]], instructions: list[str], *, new_tokens: int, batch_size: int, repeats: int
) -> dict:
    """GuardedModel against unguarded harmlens generate on prompts the guard allows (its threshold raised above their
    scores), the same new tokens on both sides; the guard's verdicts come from generation's own prefill."""
    device = next(model.original_model.parameters()).device
    start = time.perf_counter()
    guard = LatentGuard.fit(model, fit[0], fit[1], CentroidConfig(), progress=False)
    t_fit = time.perf_counter() - start
    verdicts = guard.check(instructions)
    allowed_at_fit = sum(not v.harmful for v in verdicts)
    # The overhead is measured where the guard allows every prompt (a random replica's guard flags at random): the
    # threshold goes above every score, so both sides generate the same tokens.
    guard.alpha = max(v.score for v in verdicts) + 1.0
    guarded = GuardedModel(model, guard)
    kw = dict(max_new_tokens=new_tokens, batch_size=batch_size)
    t_plain, plain_replies = best_of(lambda: generate(model, instructions, progress=False, **kw), repeats, device)
    t_guard, guarded_replies = best_of(lambda: guarded.generate(instructions, **kw), repeats, device)
    blocked = sum(r.blocked for r in guarded_replies)
    if blocked:
        raise AssertionError(f"{blocked} prompts blocked with the threshold above every score the guard read offline")
    return {
        "fit_s": round(t_fit, 2),
        "prompts": len(instructions),
        "allowed_at_fitted_alpha": allowed_at_fit,
        "unguarded_s": round(t_plain, 3),
        "guarded_s": round(t_guard, 3),
        "ratio": round(t_guard / t_plain, 3),
        "blocked_in_generation": blocked,
        "same_replies": f"{sum(r.text == p for r, p in zip(guarded_replies, plain_replies))}/{len(instructions)}",
    }
