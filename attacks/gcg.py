"""GCG adversarial suffixes (Zou et al. 2023): greedy coordinate gradient through the one-hot token embedding."""

from __future__ import annotations

import copy
import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import TYPE_CHECKING, Protocol

import torch
from tqdm.auto import tqdm

from harmlens.attacks.jailbreaks import Jailbreak
from harmlens.errors import HarmlensError
from harmlens.runtime import (
    RoleTemplate,
    cache_kwarg,
    clean_instruction,
    ensure_kv_cache_compat,
    model_device,
    role_template,
)

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge


@dataclass(frozen=True)
class GCGConfig:
    """Search budget: suffix length, steps, top-k tokens per position, candidates per step; target reply prefix."""

    suffix_len: int = 10
    steps: int = 40
    top_k: int = 64
    batch: int = 64
    eval_batch: int = 32
    target: str = "Sure, here is"
    seed: int = 0
    early_stop: bool = True  # stop once the target is the greedy (teacher-forced) continuation


DEFAULT_GCG = GCGConfig()


@dataclass
class GCGResult:
    """The best suffix found for one instruction, the loss trace (best so far per step) and the time spent."""

    instruction: str
    suffix: str
    suffix_ids: list[int]
    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0
    target_reached: bool = False

    @property
    def adversarial(self) -> str:
        """The instruction with its suffix, as sent to the model."""
        return self.instruction + self.suffix


@lru_cache(maxsize=4)
def _allowed(tokenizer) -> torch.Tensor:
    """Mask of tokens a suffix may use: printable ASCII, not special, non-empty."""
    special = set(tokenizer.all_special_ids) | set(getattr(tokenizer, "added_tokens_decoder", {}) or {})
    ok = torch.zeros(len(tokenizer), dtype=torch.bool)
    for i in range(len(tokenizer)):
        text = tokenizer.decode([i])
        ok[i] = i not in special and text.strip() != "" and text.isascii() and text.isprintable()
    return ok


class TargetObjective:
    """Target cross-entropy for candidate suffixes placed between `prefix` and `post` token ids, reusing the prefix
    through the KV cache (gcg_attack's objective; the guard-aware attack extends it)."""

    def __init__(self, model, prefix: Sequence[int], post: Sequence[int], target: Sequence[int]) -> None:
        ensure_kv_cache_compat()
        self.hf, self.device = model.original_model, model_device(model)
        ids = lambda x: torch.tensor(list(x), dtype=torch.long, device=self.device)  # noqa: E731
        self.prefix, self.post, self.target = ids(prefix), ids(post), ids(target)
        if not len(self.target):
            raise HarmlensError("GCG target string is empty")
        self.cache_kw = cache_kwarg(self.hf)
        with torch.no_grad():
            out = self.hf(input_ids=self.prefix[None], use_cache=True, logits_to_keep=1)
        self.cache = getattr(out, "cache", None) or out.past_key_values
        self.embed = self.hf.get_input_embeddings().weight

    @classmethod
    def from_template(cls, model, template: RoleTemplate, instruction: str, target: str) -> TargetObjective:
        """The objective of gcg_attack: template prefix + instruction | suffix | template suffix, then the target."""
        enc = lambda s: model.tokenizer(s, add_special_tokens=False)["input_ids"]  # noqa: E731
        return cls(model, enc(template.prefix + instruction), enc(template.suffix), enc(target))

    def _forward(self, embeds: torch.Tensor, n_suffix: int) -> torch.Tensor:
        """Per-row loss for embeds [B, n_suffix + post + target, d] placed after the cached prefix."""
        B, P, T = embeds.shape[0], len(self.post), len(self.target)
        cache = copy.deepcopy(self.cache)
        cache.batch_repeat_interleave(B)
        pos = torch.arange(len(self.prefix), len(self.prefix) + embeds.shape[1], device=self.device).expand(B, -1)
        hidden = self.hf.model(
            inputs_embeds=embeds, position_ids=pos, use_cache=True, **{self.cache_kw: cache}
        ).last_hidden_state
        start = n_suffix + P - 1
        logits = self.hf.lm_head(hidden[:, start : start + T]).float()
        self.last_hits = (logits.argmax(-1) == self.target).all(-1)
        return torch.nn.functional.cross_entropy(
            logits.transpose(1, 2), self.target.expand(B, -1), reduction="none"
        ).mean(-1)

    def gradient(self, suffix: torch.Tensor) -> torch.Tensor:
        """d loss / d one-hot(suffix): [n_suffix, vocab]."""
        one_hot = torch.zeros(len(suffix), self.embed.shape[0], device=self.device, dtype=self.embed.dtype)
        one_hot[torch.arange(len(suffix)), suffix] = 1
        one_hot.requires_grad_(True)
        rest = self.embed[torch.cat([self.post, self.target])].detach()
        loss = self._forward(torch.cat([one_hot @ self.embed, rest])[None], len(suffix))[0]
        (grad,) = torch.autograd.grad(loss, one_hot)
        return grad

    @torch.no_grad()
    def losses(self, candidates: torch.Tensor, eval_batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(loss, target reached) of each candidate suffix [B, n_suffix]."""
        tail = torch.cat([self.post, self.target])
        out, hits = [], []
        for chunk in candidates.split(eval_batch):
            ids = torch.cat([chunk, tail.expand(len(chunk), -1)], 1)
            out.append(self._forward(self.embed[ids], chunk.shape[1]))
            hits.append(self.last_hits)
        return torch.cat(out), torch.cat(hits)


def sample_candidates(
    suffix: torch.Tensor, grad: torch.Tensor, allowed: torch.Tensor, cfg: GCGConfig, gen: torch.Generator
) -> torch.Tensor:
    """cfg.batch candidates, each with one position swapped for one of its top-k (most negative gradient) tokens."""
    grad = grad.clone()
    grad[:, ~allowed.to(grad.device)] = float("inf")
    top = (-grad).topk(cfg.top_k, dim=1).indices.cpu()  # [n_suffix, k]
    pos = torch.randint(0, len(suffix), (cfg.batch,), generator=gen)
    pick = top[pos, torch.randint(0, cfg.top_k, (cfg.batch,), generator=gen)]
    cand = suffix.cpu().repeat(cfg.batch, 1)
    cand[torch.arange(cfg.batch), pos] = pick
    return cand.to(suffix.device)


class Objective(Protocol):
    """What search_suffix optimises: a gradient over one-hot suffix tokens and exact losses of candidates."""

    def gradient(self, suffix: torch.Tensor) -> torch.Tensor: ...

    def losses(self, candidates: torch.Tensor, eval_batch: int) -> tuple[torch.Tensor, torch.Tensor]: ...


def search_suffix(
    obj: Objective,
    tokenizer,
    suffix: torch.Tensor,
    cfg: GCGConfig,
    keep: Callable[[torch.Tensor], list[int]],
    *,
    progress: bool = False,
) -> tuple[torch.Tensor, list[float], bool]:
    """The GCG loop (gradient → candidates → exact losses → best), shared by gcg_attack and the guard-aware attack:
    (best suffix, best loss so far per step, success flag of the best). `keep` filters candidates (re-tokenization)."""
    allowed, gen = _allowed(tokenizer), torch.Generator().manual_seed(cfg.seed)
    best_loss, hits = obj.losses(suffix[None], cfg.eval_batch)
    best, trace, reached = suffix.clone(), [float(best_loss[0])], bool(hits[0])
    for _ in tqdm(range(cfg.steps), desc="GCG", disable=not progress or reached):
        if reached and cfg.early_stop:
            break
        cand = sample_candidates(suffix, obj.gradient(suffix), allowed, cfg, gen)
        kept = keep(cand)
        if not kept:
            trace.append(trace[-1])
            continue
        loss, hit = obj.losses(cand[kept], cfg.eval_batch)
        i = int(loss.argmin())
        suffix = cand[kept[i]]
        if float(loss[i]) < trace[-1]:
            best, reached = suffix.clone(), bool(hit[i])
        trace.append(min(trace[-1], float(loss[i])))
    return best, trace, reached


def check_budget(cfg: GCGConfig) -> None:
    """Refuse a search with no budget (steps × candidates ≤ 0) in one line."""
    if cfg.suffix_len < 1 or cfg.steps < 1 or cfg.top_k < 1 or cfg.batch < 1:
        raise HarmlensError(
            f"GCG budget (suffix_len, steps, top_k, candidates) must be positive, got {cfg.suffix_len}, "
            f"{cfg.steps}, {cfg.top_k}, {cfg.batch}"
        )


def gcg_attack(
    model: TransformerBridge,
    instruction: str,
    config: GCGConfig = DEFAULT_GCG,
    *,
    template: RoleTemplate | None = None,
    progress: bool = False,
) -> GCGResult:
    """Search a suffix that makes the model start its reply with config.target; returns the best one found."""
    start, cfg, tok = time.perf_counter(), config, model.tokenizer
    check_budget(cfg)
    instruction = clean_instruction(instruction)
    obj = TargetObjective.from_template(model, template or role_template(model), instruction, cfg.target)
    suffix = torch.tensor(tok(" x" * cfg.suffix_len, add_special_tokens=False)["input_ids"], device=obj.device)
    inst_ids = tok(instruction, add_special_tokens=False)["input_ids"]

    def keep(cand: torch.Tensor) -> list[int]:  # suffixes that survive re-tokenization of the instruction
        joint = tok([instruction + tok.decode(c) for c in cand.tolist()], add_special_tokens=False)["input_ids"]
        return [i for i, c in enumerate(cand.tolist()) if joint[i] == inst_ids + c]

    best, trace, reached = search_suffix(obj, tok, suffix, cfg, keep, progress=progress)
    return GCGResult(instruction, tok.decode(best.tolist()), best.tolist(), trace, time.perf_counter() - start, reached)


def gcg_many(
    model: TransformerBridge, instructions: Sequence[str], config: GCGConfig = DEFAULT_GCG, *, progress: bool = True
) -> list[GCGResult]:
    """One suffix per instruction (individual GCG)."""
    if not instructions:
        raise HarmlensError("empty instruction list: nothing to attack")
    template = role_template(model)
    bar = tqdm(instructions, desc="GCG prompts", disable=not progress, unit="prompt")
    return [gcg_attack(model, text, config, template=template) for text in bar]


def gcg_jailbreak(results: Sequence[GCGResult]) -> Jailbreak:
    """A Jailbreak appending result i's suffix to instruction i (evaluate_asr passes the index as seed)."""
    suffixes = {i: r.suffix for i, r in enumerate(results)}
    return Jailbreak("gcg", lambda q, i: q + suffixes[i], "GCG suffix found for this instruction")


def load_gcg_results(path: str | os.PathLike) -> list[GCGResult]:
    """The results of `python -m harmlens.attacks gcg` (its gcg.json), e.g. to reuse the suffixes on other prompts."""
    try:
        rows = json.loads(open(path, encoding="utf-8").read())["results"]
        return [GCGResult(**{k: r[k] for k in GCGResult.__dataclass_fields__ if k in r}) for r in rows]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise HarmlensError(f"{path} is not a gcg.json written by `python -m harmlens.attacks gcg`: {exc}") from None
