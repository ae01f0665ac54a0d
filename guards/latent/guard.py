"""LatentGuard: flag prompts from the model's own harmfulness belief at t_inst (Zhao et al. 2025's Latent Guard)."""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from harmlens.errors import HarmlensError
from harmlens.guards.latent.mlp_probe import MLP_KEYS, mlp_scores
from harmlens.guards.latent.span_scoring import probe_scores, scaled_max, span_parts, top_position
from harmlens.io import check_compatible, load_tensors, save_tensors
from harmlens.probes.activations import iter_resid_batches
from harmlens.probes.beliefs import delta_scores
from harmlens.probes.chat import ChatFormat, ChatPrompt, chat_format
from harmlens.probes.conversation import is_conversation, render_conversation
from harmlens.probes.directions import layer_span

FORMAT = "harmlens.latent_guard"
VERSION = 1
MLP_VERSION = 2  # guard files with an MLP token probe: older readers refuse them with "written by a newer harmlens"
METHODS = ("centroid", "probe")
POSITIONS = ("t_inst", "t_post_inst", "span")  # span: every token up to t_inst, keeping the top score
_PROBE = ("probe_weight", "probe_bias", "probe_mean")
_TINST_PROBE = ("tinst_probe_weight", "tinst_probe_bias", "tinst_probe_mean")


@dataclass(frozen=True)
class Verdict:
    """One prompt's decision: harmful ⇔ score ≥ threshold; `error` says why no score exists (then fail-closed)."""

    harmful: bool
    score: float
    per_layer: dict[int, float] = field(default_factory=dict)
    threshold: float = 0.0
    error: str | None = None
    truncated: bool = False  # the instruction was cut from the left to fit the context

    def to_dict(self) -> dict:
        """JSON-ready dict (NaN score -> None)."""
        score = None if math.isnan(self.score) else round(self.score, 6)
        return {
            "harmful": self.harmful,
            "score": score,
            "threshold": self.threshold,
            "error": self.error,
            "truncated": self.truncated,
            "per_layer": {str(k): round(v, 6) for k, v in self.per_layer.items()},
        }


def span_positions(prompt: ChatPrompt, width: int) -> tuple[int, ...]:
    """Every token from span_start up to t_inst, padded to `width` by repeating t_inst (a repeat never changes a
    maximum)."""
    n = prompt.t_inst + 1 - prompt.span_start
    return tuple(range(prompt.span_start, prompt.t_inst + 1)) + (prompt.t_inst,) * max(0, width - n)


def render_prompt(fmt: ChatFormat, prompt: str | ChatPrompt, max_length: int | None) -> tuple[ChatPrompt, bool]:
    """(rendered prompt, truncated): an over-long instruction loses tokens from its left until the prompt fits."""
    if isinstance(prompt, ChatPrompt):
        if max_length is not None and len(prompt) > max_length:
            raise HarmlensError(f"pre-rendered prompt is {len(prompt)} tokens, over the context of {max_length}")
        return prompt, False
    free = dataclasses.replace(fmt, max_length=None)
    rendered = free.render(prompt)
    if max_length is None or len(rendered) <= max_length:
        return rendered, False
    tok = fmt.tokenizer
    ids = tok(rendered.instruction, add_special_tokens=False)["input_ids"]
    keep = len(ids) - (len(rendered) - max_length)
    while keep > 0:
        text = tok.decode(ids[-keep:]).strip()
        if text:
            rendered = free.render(text)
            if len(rendered) <= max_length:
                return rendered, True
            keep -= max(1, len(rendered) - max_length)
        else:
            keep -= 1
    raise HarmlensError(f"the chat template alone does not fit the context of {max_length} tokens")


class LatentGuard:
    """Harmful ⇔ score ≥ alpha, the score read from residual activations at t_inst over a few layers."""

    def __init__(
        self,
        tensors: dict[str, torch.Tensor],
        metadata: dict,
        model=None,
        *,
        fail_closed: bool = True,
        batch_size: int = 16,
        max_length: int | None = None,
    ) -> None:
        self.tensors = {k: v.detach().float().cpu() for k, v in tensors.items()}
        self.metadata = dict(metadata)
        if self.method not in METHODS or self.position not in POSITIONS:
            raise HarmlensError(f"unknown guard method/position {self.method!r}/{self.position!r}")
        self.fail_closed, self.batch_size, self.max_length = fail_closed, batch_size, max_length
        self.model = None
        if model is not None:
            self.attach(model)

    method = property(lambda self: self.metadata["method"], doc="'centroid' or 'probe'.")
    position = property(
        lambda self: self.metadata.get("position", "t_inst"),
        doc="Token(s) read: t_inst, t_post_inst, or span (max over the tokens up to t_inst).",
    )
    layers = property(lambda self: [int(x) for x in self.metadata["layers"]], doc="Absolute layers read.")

    @property
    def alpha(self) -> float:
        """Decision threshold: harmful ⇔ score ≥ alpha (0 unless calibrated)."""
        return float(self.metadata.get("alpha", 0.0))

    @alpha.setter
    def alpha(self, value: float) -> None:
        if not math.isfinite(float(value)):
            raise HarmlensError(f"alpha must be finite, got {value!r}")
        self.metadata["alpha"] = float(value)

    def __repr__(self) -> str:
        return (
            f"LatentGuard(model={self.metadata.get('model')!r}, method={self.method!r}, "
            f"position={self.position!r}, "
            f"layers={layer_span(self.layers)}, alpha={self.alpha:.4g})"
        )

    @classmethod
    def fit(
        cls,
        model,
        harmful: Sequence[str],
        harmless: Sequence[str],
        *,
        method: str = "centroid",
        layers: Sequence[int] | None = None,
        target_fpr: float | None = None,
        read: str = "t_inst",
        **kwargs,
    ) -> LatentGuard:
        """Fit centroids (or per-layer logistic probes) at t_inst; layers chosen on held-out data when None.

        Keywords: val_harmful/val_harmless (else val_fraction=0.25 of each set is held out for the layer choice and
        the alpha calibration; target_fpr sets alpha by the conformal rule, see latent_fit.flagged_allowed, so the
        expected FPR on new harmless prompts is ≤ target_fpr), balance=True, system=None, batch_size=16, seed=0,
        progress=False, and the guard's own fail_closed/batch_size/max_length. See harmlens.guards.latent.fit.fit_guard.
        read='span' (method='probe'): token-level probes scored at every token up to t_inst, keeping the top score,
        fitted on the prompts plain and wrapped in jailbreaks (wrappers=...); catches requests inside jailbreak
        wrappers that end in constant text; token_probe='mlp' (default, harmlens.guards.latent.mlp_probe) or 'linear'; two_part
        (default for 'linear') also reads a t_inst probe, the larger scaled part deciding. See
        harmlens.guards.latent.span_fit.fit_span_guard.
        """
        if read == "span":
            from harmlens.guards.latent.span_fit import fit_span_guard

            return fit_span_guard(
                cls, model, harmful, harmless, method=method, layers=layers, target_fpr=target_fpr, **kwargs
            )
        if read != "t_inst":
            raise HarmlensError(f"read must be 't_inst' or 'span', got {read!r}")
        from harmlens.guards.latent.fit import fit_guard

        return fit_guard(cls, model, harmful, harmless, method=method, layers=layers, target_fpr=target_fpr, **kwargs)

    def attach(self, model) -> LatentGuard:
        """Bind the model this guard reads (must match the one it was fitted on)."""
        check_compatible(self.metadata, model)
        self.model, self._fmt = model, chat_format(model, system=self.metadata.get("system"))
        return self

    def _require_model(self):
        if self.model is None:
            raise HarmlensError("this guard has no model: pass one to LatentGuard.load(path, model) or attach(model)")
        return self.model

    def score_acts(self, acts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(score [n], per-layer scores [n, n_layers]) from activations [n, n_layers, d_model] at the read position;
        given a span read [n, n_layers, n_pos, d_model], the top token's score, or, when the guard has `scales`, the
        larger scaled part (see harmlens.guards.latent.span_scoring)."""
        acts = acts.detach().float().cpu()
        if acts.dim() == 4:
            scales = self.metadata.get("scales") if self.position == "span" else None
            if not scales:  # one position, or a span guard without a t_inst part: the top position speaks
                return top_position(self.score_acts, acts)
            return scaled_max(span_parts(self.score_acts, self.tensors, acts), scales)
        if self.method == "centroid":
            return delta_scores(acts, self.tensors["harmful"], self.tensors["harmless"])
        return mlp_scores(self.tensors, acts) if "mlp_w1" in self.tensors else probe_scores(self.tensors, acts)

    def verdicts_from_acts(self, acts: torch.Tensor, truncated: Sequence[bool] | None = None) -> list[Verdict]:
        """Verdicts for a batch of activations; rows with NaN/inf fail closed (harmful unless fail_closed=False)."""
        truncated = truncated or [False] * len(acts)
        finite = torch.isfinite(acts).flatten(1).all(-1)
        layer_ok = torch.isfinite(acts).flatten(2).all(-1)  # [n, n_layers]
        score, per_layer = self.score_acts(torch.where(torch.isfinite(acts), acts, torch.zeros_like(acts)))
        out = []
        for i in range(len(acts)):
            if not finite[i] or not math.isfinite(float(score[i])):
                bad = [layer for layer, ok in zip(self.layers, layer_ok[i].tolist()) if not ok]
                out.append(self.failed(f"non-finite activations (nan/inf) at layer(s) {bad or '?'}", truncated[i]))
            else:
                s = float(score[i])
                out.append(
                    Verdict(
                        s >= self.alpha,
                        s,
                        dict(zip(self.layers, per_layer[i].tolist())),
                        self.alpha,
                        None,
                        truncated[i],
                    )
                )
        return out

    def failed(self, reason: str, truncated: bool = False) -> Verdict:
        """The verdict for a prompt that could not be scored: harmful when failing closed (the default)."""
        return Verdict(self.fail_closed, float("nan"), {}, self.alpha, reason, truncated)

    def prepare(self, prompt) -> tuple[ChatPrompt, bool]:
        """Render one prompt (str, pre-rendered ChatPrompt, e.g. RMA-perturbed, or an OpenAI-style message list) as
        this guard reads it."""
        if not isinstance(prompt, (str, ChatPrompt)) and not is_conversation(prompt):
            raise HarmlensError(f"prompt must be a string, a ChatPrompt or a message list, got {type(prompt).__name__}")
        self._require_model()
        limit = self.max_length if self.max_length is not None else self._fmt.max_length
        if is_conversation(prompt):
            system = self.metadata.get("system")
            return render_conversation(self._fmt.tokenizer, prompt, system=system, max_length=limit), False
        return render_prompt(self._fmt, prompt, limit)

    def select(self, prompt: ChatPrompt, width: int = 1) -> tuple[int, ...]:
        """Positions read: t_inst, t_post_inst (a Δrefuse guard) or, for a span guard, every token up to t_inst,
        padded to `width` by repeating t_inst (a repeat never changes the maximum)."""
        if self.position == "span":
            return span_positions(prompt, width)
        return (prompt.t_inst,) if self.position == "t_inst" else (prompt.t_post_inst,)

    def width(self, prompts: Sequence[ChatPrompt]) -> int:
        """Positions read per prompt in a batch of these prompts."""
        return max(p.t_inst + 1 - p.span_start for p in prompts) if self.position == "span" else 1

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
        """Verdicts for a list, batched by length; bad prompts and internal errors give per-prompt failed verdicts."""
        self._require_model()  # no model: raise, do not fail every prompt closed
        out: list[Verdict | None] = [None] * len(prompts)
        ready = []
        for i, prompt in enumerate(prompts):
            try:
                ready.append((i, *self.prepare(prompt)))
            except Exception as exc:  # noqa: BLE001 - a bad prompt fails closed on its own
                out[i] = self.failed(_one_line(exc))
        ready.sort(key=lambda r: len(r[1]))
        for start in range(0, len(ready), self.batch_size):
            chunk = ready[start : start + self.batch_size]
            try:
                verdicts = self.verdicts_from_acts(self.read([r[1] for r in chunk]), [r[2] for r in chunk])
            except Exception as exc:  # noqa: BLE001 - fail closed, say why
                verdicts = [self.failed(f"internal error: {_one_line(exc)}", r[2]) for r in chunk]
            for (i, _, _), verdict in zip(chunk, verdicts):
                out[i] = verdict
        return out  # type: ignore[return-value]

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
        from harmlens.guards.latent.fit import calibration_record, threshold_for_fpr

        scores = torch.tensor([v.score for v in self.check(list(harmless)) if v.error is None])
        self.alpha = threshold_for_fpr(scores, target_fpr, rule)
        self.metadata["calibration"] = calibration_record(len(scores), target_fpr, rule)
        return self.alpha

    def refusal_guard(self) -> LatentGuard:
        """The Δrefuse baseline: the same centroid rule on t_post-inst activations, same layers (fitted alongside)."""
        if "refuse" not in self.tensors:
            raise HarmlensError("this guard file has no t_post-inst centroids (refuse/accept)")
        meta = {
            **self.metadata,
            "method": "centroid",
            "position": "t_post_inst",
            "alpha": self.metadata.get("alpha_refuse", 0.0),
        }
        guard = LatentGuard(
            {"harmful": self.tensors["refuse"], "harmless": self.tensors["accept"]},
            meta,
            fail_closed=self.fail_closed,
            batch_size=self.batch_size,
            max_length=self.max_length,
        )
        return guard.attach(self.model) if self.model is not None else guard

    def wrap(self, model=None, **kwargs):
        """A GuardedModel: generation whose own prefill feeds this guard (zero extra forward passes)."""
        from harmlens.guards.latent.guarded import GuardedModel

        return GuardedModel(model if model is not None else self._require_model(), self, **kwargs)

    def save(self, path: str | os.PathLike) -> Path:
        """Write safetensors (centroids / probe weights) + JSON metadata atomically."""
        return save_tensors(path, self.tensors, self.metadata)

    @classmethod
    def load(cls, path: str | os.PathLike, model=None, **kwargs) -> LatentGuard:
        """Read a guard file; with `model`, check it was fitted on that model (name, d_model, n_layers)."""
        tensors, meta = load_tensors(path)
        if meta.get("format") != FORMAT:
            raise HarmlensError(f"{path} is not a harmlens latent-guard file (format {meta.get('format')!r})")
        if int(meta.get("version", 0)) > MLP_VERSION:
            raise HarmlensError(f"{path} was written by a newer harmlens (guard format v{meta.get('version')})")
        probe = MLP_KEYS if meta.get("token_probe") == "mlp" else _PROBE
        need = ("harmful", "harmless") + (probe if meta.get("method") == "probe" else ())
        missing = [k for k in need if k not in tensors]
        if missing:
            raise HarmlensError(f"{path} lacks tensors: {', '.join(missing)}")
        want = (len(meta.get("layers") or []), meta.get("d_model"))
        if meta.get("scales") and "t_inst" in meta["scales"] and not all(k in tensors for k in _TINST_PROBE):
            raise HarmlensError(f"{path} lacks the t_inst probe its scales name")
        for key in (
            "harmful",
            "harmless",
            "refuse",
            "accept",
            "probe_weight",
            "probe_mean",
            "tinst_probe_weight",
            "tinst_probe_mean",
            "mlp_mean",
            "mlp_std",
            "mlp_w1",
        ):
            if key not in tensors:
                continue
            shape = tuple(tensors[key].shape)
            if (shape[1:] if key == "mlp_w1" else shape) != want:  # mlp_w1: [hidden, n_layers, d_model]
                raise HarmlensError(f"{path}: tensor {key} has shape {tuple(tensors[key].shape)}, metadata says {want}")
        return cls(tensors, meta, model, **kwargs)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text if isinstance(exc, HarmlensError) else f"{type(exc).__name__}: {text}"[:300]
