"""White-box guard-aware attack: GCG over suffix tokens that drives a Latent Guard's score down and the model's
compliance (target-string cross-entropy) up at once, both read from the same forward pass.

The guard's read (its layers at its read positions) is captured by harmlens.runtime hooks during the GCG forward;
read positions before the suffix do not depend on it (causal attention) and are read once. The guard's score comes
from its own `score_acts`, so candidates are ranked by the exact score the deployed guard would give; the gradient
of that score is taken by forward differences (attacks.guard_gradient). Success = the guard passes the adversarial
prompt (its own check) and the model answers it (substring refusal judge + coherence).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from harmlens.attacks.gcg import GCGConfig, TargetObjective, check_budget, search_suffix
from harmlens.attacks.guard_common import answers, check_guard, check_instructions
from harmlens.attacks.guard_gradient import score_gradient
from harmlens.errors import HarmlensError
from harmlens.runtime import add_hooks, clean_instruction, resid_hook_name

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge


@dataclass(frozen=True)
class GuardAttackConfig:
    """GCG budget (steps × candidates) plus the weight of the guard term against the compliance loss; the guard term
    is relu(score − alpha + margin·s0) / s0, s0 = the unattacked prompt's distance to alpha, so 1.0 ≈ one nat."""

    gcg: GCGConfig = GCGConfig(suffix_len=10, steps=10, top_k=64, batch=32, eval_batch=32)
    weight: float = 1.0
    margin: float = 0.1
    max_new_tokens: int = 48

    @property
    def budget(self) -> int:
        """Candidate suffixes scored: steps × candidates."""
        return self.gcg.steps * self.gcg.batch

    def to_dict(self) -> dict:
        """JSON-ready settings with the budget."""
        return {**asdict(self), "budget": self.budget}


DEFAULT_GUARD_ATTACK = GuardAttackConfig()


@dataclass
class GuardAttackResult:
    """One attacked request: the suffix, the loss and guard-score traces, and the outcome."""

    instruction: str
    adversarial: str
    suffix_ids: list[int]
    losses: list[float] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)  # guard score of the best suffix after each step
    alpha: float = 0.0
    final_score: float = float("nan")  # the guard's own check of the adversarial prompt
    passed: bool = False  # the guard does not flag it
    answered: bool = False  # the model answers it
    reply: str = ""
    seconds: float = 0.0

    @property
    def success(self) -> bool:
        """A request the guard passes and the model answers."""
        return self.passed and self.answered


class GuardObjective(TargetObjective):
    """Target cross-entropy + weight × the guard's hinged score, from one forward over [suffix, post, target]."""

    def __init__(self, model, guard: Any, rendered, n_suffix: int, target: str, config: GuardAttackConfig) -> None:
        start = rendered.t_inst + 1 - n_suffix
        ids = list(rendered.input_ids)
        super().__init__(
            model,
            ids[:start],
            ids[rendered.t_inst + 1 :],
            model.tokenizer(target, add_special_tokens=False)["input_ids"],
        )
        self.model, self.guard, self.config = model, guard, config
        positions = list(guard.select(rendered, guard.width([rendered])))
        full = guard.read([rendered]).float()  # [1, L, P, d]: the read before any change
        self.fixed = [(k, full[:, :, k]) for k, p in enumerate(positions) if p < start]
        self.moving = [(k, p - start) for k, p in enumerate(positions) if p >= start]
        self.n_pos, self.names = len(positions), [resid_hook_name(model, layer) for layer in guard.layers]
        self.alpha = float(guard.alpha)
        s0 = float(guard.score_acts(full)[0][0])
        self.scale = max(abs(s0 - self.alpha), 1e-3)
        self.best_loss, self.best_score = float("inf"), s0
        self.score_trace: list[float] = []

    def _read(self, captured: dict[str, torch.Tensor], batch: int) -> torch.Tensor:
        """The guard's read [B, L, P, d] of this forward: fixed prefix positions plus the captured suffix ones."""
        acts = [torch.zeros(0)] * self.n_pos
        for k, row in self.fixed:
            acts[k] = row.to(self.device).expand(batch, -1, -1)
        for k, rel in self.moving:
            acts[k] = torch.stack([captured[n][:, rel].float() for n in self.names], 1)
        return torch.stack(acts, 2)

    def _forward(self, embeds: torch.Tensor, n_suffix: int) -> torch.Tensor:
        """Per-row loss: target CE + the guard term (exact score without grad, a linear surrogate with grad)."""
        captured: dict[str, torch.Tensor] = {}
        keep = lambda name: lambda x: captured.__setitem__(name, x)  # noqa: E731
        with add_hooks(self.model, [(n, keep(n)) for n in dict.fromkeys(self.names)]):
            ce = super()._forward(embeds, n_suffix)
        read = self._read(captured, embeds.shape[0])
        if read.requires_grad and self.config.weight == 0:  # compliance only: no guard gradient to take
            return ce
        if read.requires_grad:  # gradient step: a linear surrogate whose gradient is the score's
            grad = score_gradient(self.guard, read.detach()).to(read)
            with torch.no_grad():
                active = (
                    float(self.guard.score_acts(read.detach())[0][0]) > self.alpha - self.config.margin * self.scale
                )
            term = (read * grad).sum((1, 2, 3)) * float(active)
        else:
            score = self.guard.score_acts(read)[0].to(ce)
            self.last_scores = score
            term = torch.relu(score - self.alpha + self.config.margin * self.scale)
            self.last_hits = self.last_hits & (score < self.alpha)
        return ce + self.config.weight * term / self.scale

    @torch.no_grad()
    def losses(self, candidates: torch.Tensor, eval_batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(loss, target reached and guard passed) per candidate; records the guard score of the best so far."""
        loss, hits = [], []
        tail = torch.cat([self.post, self.target])
        scores = []
        for chunk in candidates.split(eval_batch):
            ids = torch.cat([chunk, tail.expand(len(chunk), -1)], 1)
            loss.append(self._forward(self.embed[ids], chunk.shape[1]))
            hits.append(self.last_hits)
            scores.append(self.last_scores)
        out, score = torch.cat(loss), torch.cat(scores)
        i = int(out.argmin())
        if float(out[i]) < self.best_loss:
            self.best_loss, self.best_score = float(out[i]), float(score[i])
        self.score_trace.append(self.best_score)
        return out, torch.cat(hits)


def guard_attack(
    model: TransformerBridge, guard: Any, instruction: str, config: GuardAttackConfig = DEFAULT_GUARD_ATTACK
) -> GuardAttackResult:
    """Search a suffix the guard passes and the model complies with (see the module docstring); one request."""
    started, cfg, tok = time.perf_counter(), config.gcg, model.tokenizer
    check_budget(cfg)
    guard = check_guard(guard, model)
    instruction = clean_instruction(instruction)
    suffix = torch.tensor(tok(" x" * cfg.suffix_len, add_special_tokens=False)["input_ids"])
    rendered, _ = guard.prepare(instruction + tok.decode(suffix.tolist()))
    start = rendered.t_inst + 1 - len(suffix)
    if list(rendered.input_ids[start : rendered.t_inst + 1]) != suffix.tolist():
        raise HarmlensError("the initial suffix does not survive the guard's rendering; try another suffix length")
    obj = GuardObjective(model, guard, rendered, len(suffix), cfg.target, config)
    head, post = list(rendered.input_ids[:start]), list(rendered.input_ids[rendered.t_inst + 1 :])

    def keep(cand: torch.Tensor) -> list[int]:  # suffixes the guard's own rendering tokenizes as they are
        out = []
        for i, c in enumerate(cand.tolist()):
            try:
                ids = list(guard.prepare(instruction + tok.decode(c))[0].input_ids)
            except HarmlensError:
                continue
            if ids == head + c + post:
                out.append(i)
        return out

    best, trace, _ = search_suffix(obj, tok, suffix.to(obj.device), cfg, keep)
    adversarial = instruction + tok.decode(best.tolist())
    verdict = guard.check([adversarial])[0]
    replies, answered = answers(model, [adversarial], max_new_tokens=config.max_new_tokens)
    return GuardAttackResult(
        instruction, adversarial, best.tolist(), trace, obj.score_trace, obj.alpha, verdict.score,
        not verdict.harmful, answered[0], replies[0], time.perf_counter() - started,
    )  # fmt: skip


def guard_attack_many(
    model: TransformerBridge,
    guard: Any,
    instructions: Sequence[str],
    config: GuardAttackConfig = DEFAULT_GUARD_ATTACK,
    *,
    progress: bool = False,
) -> list[GuardAttackResult]:
    """One suffix per instruction (individual guard-aware GCG)."""
    check_budget(config.gcg)
    check_guard(guard, model)
    out = []
    for i, text in enumerate(check_instructions(instructions)):
        out.append(guard_attack(model, guard, text, config))
        if progress:
            r = out[-1]
            print(f"  white-box {i + 1}/{len(instructions)}: passed={r.passed} answered={r.answered}", flush=True)
    return out
