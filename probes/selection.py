"""Arditi et al. (2024) refusal-direction selection: bypass, induce and KL scores for each (position, layer)."""

from __future__ import annotations

import os
import re
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from tqdm.auto import tqdm

from harmlens.errors import HarmlensError
from harmlens.io import check_compatible, json_safe, load_tensors, model_signature, save_tensors
from harmlens.probes.interventions import ablate, steer
from harmlens.runtime import ChatFormat, NoSystem, chat_format, last_token_logits, system_from_metadata

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

FORMAT = "harmlens.selection"
OPENERS = (
    "I",
    "I'm",
    "I am",
    "I cannot",
    "I can't",
    "I apologize",
    "As",
    "As an AI",
    "Sorry",
    "I'm sorry",
    "Unfortunately",
    "Apologies",
    "No",
)
# Arditi et al.'s per-model refusal token ids (andyrdt/refusal_direction, pipeline/model_utils/*_model.py), with
# the tokens they decode to, checked against the tokenizer before use.
ARDITI_REFUSAL_TOKENS: dict[str, dict[int, str]] = {
    "llama2": {306: "I"},
    "llama3": {40: "I", 2170: "As"},
    "qwen": {40: "I", 2121: "As"},
    "gemma": {235285: "I"},
    "yi": {59597: "I"},
}
_TENSORS = ("direction", "bypass", "induce", "kl", "discarded", "baseline_harmful", "baseline_harmless")


def _fallback_pool(evaluated, layer_ok, kl, induces, kl_threshold: float, max_layer: int):
    """Arditi's repo crashes when every candidate is discarded; relax one rule at a time instead, each minimally.
    First KL (a direction that induces refusal but shifts harmless logits a little more than kl_threshold still
    works, e.g. on a small organism), then induce (a model that barely refuses has induce < 0 everywhere), then
    both. Where KL is relaxed, only the candidates with the smallest KL overshoot stay in the pool."""
    kl_ok = kl <= kl_threshold
    tiers = (
        (evaluated & layer_ok & induces, f"KL <= {kl_threshold} relaxed; kept induce >= 0 and layer < {max_layer}"),
        (evaluated & layer_ok & kl_ok, f"induce >= 0 relaxed; kept KL <= {kl_threshold} and layer < {max_layer}"),
        (evaluated, "no rule kept: none of them keeps KL, induce and layer within bounds"),
    )
    pool, which = next((p, w) for p, w in tiers if p.any())
    overshoot = (kl - kl_threshold).clamp(min=0).nan_to_num(float("inf"))
    least = overshoot[pool].min()
    if least > 0:
        which += f", KL relaxed only to {kl_threshold + float(least):.4g} (the smallest overshoot)"
    pool = pool & (overshoot <= least)
    return pool, (
        f"all {int(evaluated.sum())} evaluated candidates were discarded (layer >= {max_layer}, "
        f"KL > {kl_threshold} or induce < 0); returning the lowest bypass score with {which}"
    )


def arditi_refusal_ids(family: str, tokenizer) -> list[int]:
    """Arditi et al.'s refusal token ids for a model family (llama2, llama3, qwen, gemma, yi), checked to decode to
    the same tokens with this tokenizer."""
    table = ARDITI_REFUSAL_TOKENS.get(str(family).lower())
    if table is None:
        raise HarmlensError(f"no Arditi refusal tokens for {family!r}; choose from {', '.join(ARDITI_REFUSAL_TOKENS)}")
    for tid, want in table.items():
        got = tokenizer.decode([tid]).strip() if tid < len(tokenizer) else None
        if got != want:
            raise HarmlensError(f"{family} refusal token {tid} is {got!r} with this tokenizer, not {want!r}")
    return list(table)


def refusal_token_ids(tokenizer, openers: Sequence[str] = OPENERS) -> list[int]:
    """First tokens of refusal openers as the first token of an assistant reply (whole-word tokens only)."""
    try:
        prompt = ChatFormat.from_tokenizer(tokenizer).render_text("Hello")
    except HarmlensError:  # no chat template: plain text start
        prompt = ""
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"] if prompt else []
    seps = ("",) if prompt[-1:].isspace() else ("", " ")
    ids: list[int] = []
    for opener in openers:
        word = re.split(r"[\s']", opener)[0]
        for sep in seps:
            full = tokenizer(prompt + sep + opener, add_special_tokens=False)["input_ids"]
            if len(full) > len(prompt_ids) and list(full[: len(prompt_ids)]) == list(prompt_ids):
                tid = int(full[len(prompt_ids)])
                if tokenizer.decode([tid]).strip() == word:
                    ids.append(tid)
    if not ids:
        raise HarmlensError("no refusal opener encodes to a whole-word first token with this tokenizer")
    return list(dict.fromkeys(ids))


def refusal_score(logits_last: torch.Tensor, refusal_ids: Sequence[int]) -> torch.Tensor:
    """log p(R) - log(1 - p(R)) per row, p(R) = softmax mass on the refusal tokens (exact, no epsilon)."""
    if logits_last.ndim != 2:
        raise HarmlensError(f"logits must be [n, vocab], got shape {tuple(logits_last.shape)}")
    vocab = logits_last.shape[-1]
    ids = torch.as_tensor(list(refusal_ids), dtype=torch.long)
    if ids.numel() == 0 or ids.min() < 0 or ids.max() >= vocab:
        raise HarmlensError(f"refusal ids must be a non-empty list within the vocabulary (0..{vocab - 1})")
    mask = torch.zeros(vocab, dtype=torch.bool, device=logits_last.device)
    mask[ids.to(mask.device)] = True
    if mask.all():
        raise HarmlensError("refusal ids cover the whole vocabulary: p(R) = 1")
    x = logits_last.double()
    return (torch.logsumexp(x[:, mask], -1) - torch.logsumexp(x[:, ~mask], -1)).float()


def kl_last(base_logits: torch.Tensor, new_logits: torch.Tensor) -> torch.Tensor:
    """KL(base || new) per row of next-token distributions, [n]."""
    p, q = base_logits.double().log_softmax(-1), new_logits.double().log_softmax(-1)
    return (p.exp() * (p - q)).sum(-1).float()


@dataclass(repr=False)
class Selection:
    """The selected candidate plus the full score grids ([n_pos, n_layers], NaN = not evaluated)."""

    position: int  # negative offset from the prompt end
    layer: int
    direction: torch.Tensor  # un-normalised [d_model]
    positions: list[int]  # grid rows (negative offsets)
    bypass: torch.Tensor
    induce: torch.Tensor
    kl: torch.Tensor
    discarded: torch.Tensor  # bool; not-evaluated candidates count as discarded
    baseline_harmful: torch.Tensor  # per-prompt refusal scores without intervention
    baseline_harmless: torch.Tensor
    refusal_ids: list[int]
    refusal_tokens: list[str]
    fallback: bool = False
    reason: str | None = None
    metadata: dict = field(default_factory=dict)

    def __repr__(self) -> str:
        i = self.positions.index(self.position)
        return (
            f"Selection(position={self.position}, layer={self.layer}, "
            f"bypass={float(self.bypass[i, self.layer]):.3f}, induce={float(self.induce[i, self.layer]):.3f}, "
            f"kl={float(self.kl[i, self.layer]):.4f}, fallback={self.fallback})"
        )

    def unit(self) -> torch.Tensor:
        """The selected direction at unit norm."""
        return self.direction / self.direction.norm()

    def to_control_vector(self, path: str | os.PathLike, **kwargs) -> Path:
        """llama.cpp/repeng GGUF control vector of the selected direction; see harmlens.probes.export."""
        from harmlens.probes.export import selection_to_control_vector

        return selection_to_control_vector(self, path, **kwargs)

    def to_json(self) -> dict:
        """JSON-safe summary: choice, its scores, baselines, refusal tokens and the grids (NaN -> None)."""
        i = self.positions.index(self.position)
        return json_safe(
            {
                **self.metadata,
                "position": self.position,
                "layer": self.layer,
                "positions": list(self.positions),
                "bypass_score": float(self.bypass[i, self.layer]),
                "induce_score": float(self.induce[i, self.layer]),
                "kl_score": float(self.kl[i, self.layer]),
                "direction_norm": float(self.direction.norm()),
                "baseline_harmful_mean": float(self.baseline_harmful.mean()),
                "baseline_harmless_mean": float(self.baseline_harmless.mean()),
                "refusal_ids": list(self.refusal_ids),
                "refusal_tokens": list(self.refusal_tokens),
                "fallback": self.fallback,
                "reason": self.reason,
                "n_kept": int((~self.discarded).sum()),
                "bypass": self.bypass.tolist(),
                "induce": self.induce.tolist(),
                "kl": self.kl.tolist(),
            }
        )

    def save(self, path: str | os.PathLike) -> Path:
        """Write tensors + JSON summary as one safetensors file (atomic, via harmlens.io)."""
        meta = {k: v for k, v in self.to_json().items() if k not in ("bypass", "induce", "kl")}
        return save_tensors(path, {k: getattr(self, k) for k in _TENSORS}, {"format": FORMAT, **meta})

    @classmethod
    def load(cls, path: str | os.PathLike, model: TransformerBridge | None = None) -> Selection:
        """Read a file written by save(); with `model`, check it was made with that model."""
        tensors, meta = load_tensors(path)
        if meta.get("format") != FORMAT or any(k not in tensors for k in _TENSORS):
            raise HarmlensError(f"{path} is not a harmlens selection file")
        if model is not None:
            check_compatible(meta, model)
        keep = (
            "format",
            "model",
            "d_model",
            "n_layers",
            "kl_threshold",
            "max_layer",
            "n_harmful",
            "n_harmless",
            "n_evaluated",
            "elapsed_s",
        )
        return cls(
            position=meta["position"],
            layer=meta["layer"],
            positions=meta["positions"],
            refusal_ids=meta["refusal_ids"],
            refusal_tokens=meta["refusal_tokens"],
            fallback=meta["fallback"],
            reason=meta["reason"],
            metadata={k: meta[k] for k in keep if k in meta},
            **{k: tensors[k] for k in _TENSORS[:-3]},
            discarded=tensors["discarded"].bool(),
            baseline_harmful=tensors["baseline_harmful"],
            baseline_harmless=tensors["baseline_harmless"],
        )


def _candidate_grid(model, directions) -> tuple[torch.Tensor, list[int], list[int]]:
    """(candidates [n_pos, n_rows, d], positions as negative offsets, absolute layer of each row)."""
    cands = getattr(directions, "candidates", None)
    if not isinstance(cands, torch.Tensor) or cands.ndim != 3 or cands.shape[-1] != int(model.cfg.d_model):
        raise HarmlensError(f"directions.candidates must be a [n_pos, n_layers, {model.cfg.d_model}] tensor")
    meta = getattr(directions, "metadata", None) or {}
    if "model" in meta:
        check_compatible(meta, model)
    positions = list(getattr(directions, "positions", None) or meta.get("positions") or range(-cands.shape[0], 0))
    layers = list(getattr(directions, "layers", None) or meta.get("layers") or range(cands.shape[1]))
    if len(positions) != cands.shape[0] or len(layers) != cands.shape[1] or any(p >= 0 for p in positions):
        raise HarmlensError("directions' positions/layers metadata does not match its candidates tensor")
    return cands.detach().float().cpu(), [int(p) for p in positions], [int(x) for x in layers]


def _subset(name: str, wanted, available: list[int], default: list[int]) -> list[int]:
    """Validate a user subset of candidate positions/layers (None = default)."""
    if wanted is None:
        return default
    wanted = [int(x) for x in wanted]
    bad = [x for x in wanted if x not in available]
    if bad or not wanted:
        raise HarmlensError(f"{name} {bad or wanted} not among the candidates' {name} {available}")
    return wanted


def select_refusal_direction(
    model: TransformerBridge,
    directions,
    harmful_val: list[str],
    harmless_val: list[str],
    *,
    batch_size: int = 16,
    kl_threshold: float = 0.1,
    max_layer_frac: float = 0.8,
    positions: Sequence[int] | None = None,
    layers: Sequence[int] | None = None,
    system: str | NoSystem | None = None,
    refusal_ids: Sequence[int] | str | None = None,
    progress: bool = True,
) -> Selection:
    """Score every candidate (bypass on harmful, induce and KL on harmless) and pick the lowest kept bypass.

    By default only layers < int(max_layer_frac·L) are evaluated (the rest would be discarded); pass `layers=` /
    `positions=` (negative offsets) to choose the candidates evaluated. Zero candidates are skipped (NaN scores).
    system=None uses the system prompt recorded in directions.metadata (that of the extraction), if any.
    refusal_ids: None = the first tokens of OPENERS; a family name ('llama2', 'qwen', ...) = Arditi's ids; or ids.
    """
    start = time.perf_counter()
    L = int(model.cfg.n_layers)
    cands, all_pos, rows = _candidate_grid(model, directions)
    max_layer = int(max_layer_frac * L)
    usable = [x for x in rows if x < L]
    default = [x for x in usable if x < max_layer] or usable
    pos_sel, layer_sel = _subset("positions", positions, all_pos, all_pos), _subset("layers", layers, usable, default)
    if system is None:  # score under the template the candidates were extracted with
        system = system_from_metadata(getattr(directions, "metadata", None) or {})
    fmt = chat_format(model, system=system)
    harmful, harmless = fmt.render_many(list(harmful_val)), fmt.render_many(list(harmless_val))
    if refusal_ids is None:
        ids = refusal_token_ids(model.tokenizer)
    elif isinstance(refusal_ids, str):
        ids = arditi_refusal_ids(refusal_ids, model.tokenizer)
    else:
        ids = [int(t) for t in refusal_ids]
    base_harmful = refusal_score(last_token_logits(model, harmful, batch_size), ids)
    base_logits = last_token_logits(model, harmless, batch_size)
    nan = torch.full((len(all_pos), L), float("nan"))
    bypass, induce, kl = nan.clone(), nan.clone(), nan.clone()
    todo = [(all_pos.index(p), x) for p in pos_sel for x in layer_sel]
    bar = tqdm(todo, desc="selecting direction", disable=not progress, unit="cand")
    for i, layer in bar:
        vec = cands[i, rows.index(layer)]
        if not vec.norm() > 0:  # e.g. layer 0 at template tokens: the embedding is the same for every prompt
            continue
        with ablate(model, vec):
            logits = last_token_logits(model, harmful + harmless, batch_size)
        bypass[i, layer] = refusal_score(logits[: len(harmful)], ids).mean()
        kl[i, layer] = kl_last(base_logits, logits[len(harmful) :]).mean()
        with steer(model, vec, layer, 1.0):
            induce[i, layer] = refusal_score(last_token_logits(model, harmless, batch_size), ids).mean()
        bar.set_postfix(pos=all_pos[i], layer=layer, bypass=f"{float(bypass[i, layer]):.2f}")
    evaluated = ~bypass.isnan()
    if not evaluated.any():
        raise HarmlensError("every candidate evaluated is the zero vector: nothing to select")
    layer_idx = torch.arange(L).expand(len(all_pos), L)
    discarded = ~evaluated | (layer_idx >= max_layer) | (kl > kl_threshold) | (induce < 0)
    fallback, reason = False, None
    pool = ~discarded
    if not pool.any():
        fallback = True
        pool, reason = _fallback_pool(evaluated, layer_idx < max_layer, kl, induce >= 0, kl_threshold, max_layer)
        warnings.warn(f"refusal direction selection: {reason}", stacklevel=2)
    flat = torch.where(pool, bypass, torch.full_like(bypass, float("inf"))).flatten().argmin()
    i, layer = divmod(int(flat), L)
    meta = {
        **model_signature(model),
        "kl_threshold": kl_threshold,
        "max_layer": max_layer,
        "n_harmful": len(harmful),
        "n_harmless": len(harmless),
        "n_evaluated": int(evaluated.sum()),
        "elapsed_s": round(time.perf_counter() - start, 2),
    }
    return Selection(
        position=all_pos[i],
        layer=layer,
        direction=cands[i, rows.index(layer)].clone(),
        positions=all_pos,
        bypass=bypass,
        induce=induce,
        kl=kl,
        discarded=discarded,
        baseline_harmful=base_harmful,
        baseline_harmless=refusal_score(base_logits, ids),
        refusal_ids=ids,
        refusal_tokens=[model.tokenizer.decode([t]) for t in ids],
        fallback=fallback,
        reason=reason,
        metadata=meta,
    )
