"""LatentGuard: flag prompts from the model's own harmfulness belief at t_inst (Zhao et al. 2025's Latent Guard)."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from harmlens.errors import HarmlensError
from harmlens.guards.latent.calibration import calibration_record, threshold_for_fpr
from harmlens.guards.latent.config_base import GuardConfig
from harmlens.guards.latent.guard_file import (
    FORMAT,
    METHODS,
    MLP_VERSION,
    POSITIONS,
    VERSION,
    check_metadata,
    guard_config,
    read_guard_file,
)
from harmlens.guards.latent.guarded import GuardedModel
from harmlens.guards.latent.input_policy import (
    DEFAULT_MAX_TOKENS,
    check_batch_size,
    check_input_policy,
    mark_injections,
    render_conversation_within,
    render_within_limits,
)
from harmlens.guards.latent.registry import variant_of
from harmlens.guards.latent.scorer import Scorer
from harmlens.guards.latent.variants.delta_refuse import refusal_read
from harmlens.guards.latent.verdict import (
    Verdict,
    failed_verdict,
    layers_text,
    one_line,
    render_prompt,
    span_positions,
)
from harmlens.io import check_compatible, save_tensors
from harmlens.runtime import ChatPrompt, chat_format, is_conversation, iter_resid_batches

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

__all__ = ["FORMAT", "METHODS", "MLP_VERSION", "POSITIONS", "VERSION", "LatentGuard", "Verdict"]
__all__ += ["render_prompt", "span_positions"]
_one_line = one_line  # the name callers imported before verdict.py


class LatentGuard:
    """Harmful ⇔ score ≥ alpha, the score read from residual activations over a few layers by the guard's variant
    (its Scorer, looked up in harmlens.guards.latent.registry): t_inst, t_post_inst (Δrefuse) or a span.

    A prompt it cannot score fails closed (harmful). `fail_closed=False` fails open only for prompts the model read
    but that could not be scored (an internal error, non-finite activations); input refused before scoring (an empty
    or whitespace-only prompt, a non-prompt, an over-long one under on_long='reject') is harmful either way."""

    def __init__(
        self,
        tensors: dict[str, torch.Tensor],
        metadata: dict,
        model=None,
        *,
        fail_closed: bool = True,
        batch_size: int = 16,
        max_length: int | None = None,
        on_injection: str = "flag",
        max_tokens: int | None = DEFAULT_MAX_TOKENS,
        on_long: str = "truncate",
    ) -> None:
        self.tensors = {k: v.detach().float().cpu() for k, v in tensors.items()}
        self.metadata = dict(metadata)
        check_metadata(self.metadata)
        self.scorer: Scorer = variant_of(self.metadata).scorer(self.tensors, self.metadata)
        self.fail_closed, self.batch_size, self.max_length = fail_closed, batch_size, max_length
        self.on_injection, self.max_tokens, self.on_long = check_input_policy(on_injection, max_tokens, on_long)
        self.model: TransformerBridge | None = None
        if model is not None:
            self.attach(model)

    method = property(lambda self: self.scorer.method, doc="'centroid' or 'probe' (what the guard file records).")
    position = property(lambda self: self.scorer.position, doc="Token(s) read: t_inst, t_post_inst, or span.")
    variant = property(lambda self: self.scorer.variant, doc="The registered variant this guard is.")
    reads_span = property(lambda self: self.scorer.span, doc="Whether it reads every token up to t_inst.")
    layers = property(lambda self: [int(x) for x in self.metadata["layers"]], doc="Absolute layers read.")

    def _set_batch_size(self, value: int) -> None:
        self._batch_size = check_batch_size(value)

    batch_size = property(lambda self: self._batch_size, _set_batch_size, doc="Prompts per forward pass in `check`.")

    @property
    def config(self) -> GuardConfig:
        """The variant and settings this guard was fitted with (rebuilt from the metadata for older files)."""
        return guard_config(self.metadata)

    @property
    def alpha(self) -> float:
        """Decision threshold: harmful ⇔ score ≥ alpha (0 unless calibrated)."""
        return float(self.metadata.get("alpha", 0.0))

    @alpha.setter
    def alpha(self, value: float) -> None:
        if isinstance(value, (bool, str)) or not math.isfinite(float(value)):
            raise HarmlensError(f"alpha must be a finite number, got {value!r}")
        self.metadata["alpha"] = float(value)

    def __repr__(self) -> str:
        return (
            f"LatentGuard(model={self.metadata.get('model')!r}, method={self.method!r}, position={self.position!r}, "
            f"layers={layers_text(self.layers)}, alpha={self.alpha:.4g})"
        )

    @classmethod
    def fit(
        cls,
        model: TransformerBridge,
        harmful: Sequence[str | ChatPrompt],
        harmless: Sequence[str | ChatPrompt],
        config: GuardConfig | None = None,
        *,
        val_harmful: Sequence[str | ChatPrompt] | None = None,
        val_harmless: Sequence[str | ChatPrompt] | None = None,
        progress: bool = False,
    ) -> LatentGuard:
        """Fit the variant `config` names (default DualConfig(), the t_inst + span guard at 5% FPR; see harmlens.guards.latent.variants for each
        variant's fields); val_harmful/val_harmless, when given, replace the held-out share of the fit sets.
        The fitting code (harmlens.guards.fitting) is imported here, when called: a deployment that only loads and
        runs guard files carries no fitting code and none of harmlens.attacks in its import closure."""
        from harmlens.guards.fitting.fitters import fit_guard  # lazy: keeps the deployable closure (see docstring)

        val = {"val_harmful": val_harmful, "val_harmless": val_harmless}
        return fit_guard(
            lambda tensors, meta: cls(tensors, meta, model), model, harmful, harmless, config, **val, progress=progress
        )

    def attach(self, model: TransformerBridge) -> LatentGuard:
        """Bind the model this guard reads (must match the one it was fitted on)."""
        check_compatible(self.metadata, model)
        self.model, self._fmt = model, chat_format(model, system=self.metadata.get("system"))
        return self

    def _require_model(self) -> TransformerBridge:
        if self.model is None:
            raise HarmlensError("this guard has no model: pass one to LatentGuard.load(path, model) or attach(model)")
        return self.model

    def score_acts(self, acts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(score [n], per-layer scores [n, n_layers]) from activations [n, n_layers, d_model] at the read position;
        given a read [n, n_layers, n_pos, d_model], the top token's score, or, for a two-part span guard, the larger
        scaled part (the variant's Scorer.score)."""
        return self.scorer.score(acts.detach().float().cpu())

    def verdicts_from_acts(self, acts: torch.Tensor, truncated: Sequence[bool] | None = None) -> list[Verdict]:
        """Verdicts for a batch of activations; rows with NaN/inf fail closed (harmful unless fail_closed=False)."""
        truncated = truncated or [False] * len(acts)
        if not math.isfinite(self.alpha):  # set behind the setter's back: no verdict can be trusted
            raise HarmlensError(f"alpha is not finite ({self.alpha})")
        finite = torch.isfinite(acts).flatten(1).all(-1)
        layer_ok = torch.isfinite(acts).flatten(2).all(-1)  # [n, n_layers]
        score, per_layer = self.score_acts(torch.where(torch.isfinite(acts), acts, torch.zeros_like(acts)))
        out = []
        for i in range(len(acts)):
            if not finite[i] or not math.isfinite(float(score[i])):
                bad = [layer for layer, ok in zip(self.layers, layer_ok[i].tolist()) if not ok]
                reason = f"non-finite activations (nan/inf) at layer(s) {bad or '?'}"
                out.append(self.failed(reason, truncated[i], attempted=True))
            else:
                s, layer_scores = float(score[i]), dict(zip(self.layers, per_layer[i].tolist()))
                out.append(Verdict(s >= self.alpha, s, layer_scores, self.alpha, None, truncated[i]))
        return out

    def failed(self, reason: object, truncated: bool = False, *, attempted: bool = False) -> Verdict:
        """The verdict for a prompt that could not be scored; never raises (see verdict.failed_verdict)."""
        return failed_verdict(self, reason, truncated, attempted=attempted)

    def prepare(self, prompt, *, image_text: str | None = None, image_at: int | None = None) -> tuple[ChatPrompt, bool]:
        """Render one prompt (str, pre-rendered ChatPrompt, e.g. RMA-perturbed, or an OpenAI-style message list) as
        this guard reads it; a conversation may carry a VLM's `image_text` at user message `image_at`."""
        if not isinstance(prompt, (str, ChatPrompt)) and not is_conversation(prompt):
            raise HarmlensError(f"prompt must be a string, a ChatPrompt or a message list, got {type(prompt).__name__}")
        if image_text is not None and isinstance(prompt, ChatPrompt):
            raise HarmlensError("a pre-rendered ChatPrompt cannot take an image: render it with one (ImagePrompt)")
        self._require_model()
        context = self.max_length if self.max_length is not None else self._fmt.max_length
        if is_conversation(prompt) or image_text is not None:  # rendered whole (no truncation)
            messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
            system, limit = self.metadata.get("system"), self.max_tokens
            rendered = render_conversation_within(self._fmt, messages, system, context, limit, image_text, image_at)
            return rendered, False
        return render_within_limits(self._fmt, prompt, context, self.max_tokens, self.on_long)

    def select(self, prompt: ChatPrompt, width: int = 1) -> tuple[int, ...]:
        """Positions read: t_inst, t_post_inst (a Δrefuse guard) or, for a span guard, every token up to t_inst,
        padded to `width` by repeating t_inst (a repeat never changes the maximum)."""
        return self.scorer.select(prompt, width)

    def width(self, prompts: Sequence[ChatPrompt]) -> int:
        """Positions read per prompt in a batch of these prompts."""
        return self.scorer.width(prompts)

    def read(self, prompts: Sequence[ChatPrompt]) -> torch.Tensor:
        """Activations [n, n_layers, positions, d_model] this guard reads from rendered prompts, in one forward."""
        width = self.width(prompts)
        _, acts = next(
            iter_resid_batches(
                self._require_model(),
                prompts,
                lambda p: self.select(p, width),
                layers=self.layers,
                batch_size=len(prompts),
                progress=False,
            )
        )
        return acts

    def check(self, prompts: Sequence[str | ChatPrompt]) -> list[Verdict]:
        """Verdicts for a list, batched by length; a batch that fails is retried prompt by prompt, so only the prompts
        that fail alone get failed verdicts."""
        self._require_model()  # no model: raise, do not fail every prompt closed
        out: list[Verdict | None] = [None] * len(prompts)
        ready = []
        for i, prompt in enumerate(prompts):
            try:
                ready.append((i, *self.prepare(prompt)))
            except Exception as exc:  # noqa: BLE001 - a bad prompt fails closed on its own
                out[i] = self.failed(one_line(exc))
        ready.sort(key=lambda r: len(r[1]))
        for start in range(0, len(ready), self.batch_size):
            chunk = ready[start : start + self.batch_size]
            try:
                verdicts = self._score(chunk)
            except Exception:  # noqa: BLE001 - retry alone, so one bad prompt fails alone
                verdicts = [self._score_alone(r) for r in chunk]
            for (i, _, _), verdict in zip(chunk, verdicts):
                out[i] = verdict
        return mark_injections(self, prompts, out)

    def _score(self, chunk: list) -> list[Verdict]:
        verdicts = self.verdicts_from_acts(self.read([r[1] for r in chunk]), [r[2] for r in chunk])
        if len(verdicts) != len(chunk):
            raise HarmlensError(f"{len(verdicts)} verdicts for {len(chunk)} prompts")
        return verdicts

    def _score_alone(self, item: tuple) -> Verdict:
        try:
            return self._score([item])[0]
        except Exception as exc:  # noqa: BLE001 - fail closed, say why
            return self.failed(f"internal error: {one_line(exc)}", item[2], attempted=True)

    def __call__(self, prompts) -> Verdict | list[Verdict]:
        """Verdict for one prompt (a string, ChatPrompt or message list), or a list of verdicts for a list of them
        (runs the model up to the last layer read)."""
        if isinstance(prompts, (str, ChatPrompt)) or is_conversation(prompts):
            return self.check([prompts])[0]
        if not isinstance(prompts, Sequence):
            raise HarmlensError(f"prompts must be a string or a list, got {type(prompts).__name__}")
        return self.check(list(prompts))

    def calibrate(self, harmless: Sequence[str | ChatPrompt], target_fpr: float, rule: str = "conformal") -> float:
        """Set alpha from these held-out harmless prompts so the expected FPR on new ones is ≤ target_fpr (rule
        'conformal'; 'empirical': at most target_fpr of these are flagged); returns alpha."""
        scores = torch.tensor([v.score for v in self.check(list(harmless)) if v.error is None])
        self.alpha = threshold_for_fpr(scores, target_fpr, rule)
        self.metadata["calibration"] = calibration_record(len(scores), target_fpr, rule)
        return self.alpha

    def refusal_guard(self) -> LatentGuard:
        """The Δrefuse baseline: the same centroid rule on t_post-inst activations, same layers (fitted alongside)."""
        tensors, meta = refusal_read(self.tensors, self.metadata)
        settings = ("fail_closed", "batch_size", "max_length", "on_injection", "max_tokens", "on_long")
        guard = LatentGuard(tensors, meta, **{k: getattr(self, k) for k in settings})
        return guard.attach(self.model) if self.model is not None else guard

    def wrap(self, model: TransformerBridge | None = None, **kwargs):
        """A GuardedModel: generation whose own prefill feeds this guard (zero extra forward passes)."""
        return GuardedModel(model if model is not None else self._require_model(), self, **kwargs)

    def save(self, path: str | os.PathLike) -> Path:
        """Write safetensors (centroids / probe weights) + JSON metadata atomically."""
        return save_tensors(path, self.tensors, self.metadata)

    @classmethod
    def load(cls, path: str | os.PathLike, model: TransformerBridge | None = None, **kwargs) -> LatentGuard:
        """Read a guard file, refusing a malformed one (see guard_file); with `model`, check it was fitted on that
        model (name, d_model, n_layers)."""
        tensors, meta, _ = read_guard_file(path)
        return cls(tensors, meta, model, **kwargs)
