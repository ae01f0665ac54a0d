"""The inference half of a Latent Guard variant: where it reads a prompt, which tensors it needs, how it scores.

A variant is a config class (its fit settings) plus a Scorer subclass, registered together in
harmlens.guards.latent.registry; LatentGuard reads and scores through its scorer and never branches on variant names.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import ClassVar

import torch

from harmlens.errors import HarmlensError
from harmlens.guards.latent.span_scoring import TINST_PROBE_KEYS, Scores, scaled_max, span_parts, top_position
from harmlens.guards.latent.verdict import span_positions
from harmlens.runtime import ChatPrompt


class Scorer:
    """Scores residual activations read at the variant's position(s); subclasses set the class attributes and
    `score_point` (and `tensor_keys` / `check` when they need more than the class centroids)."""

    variant: ClassVar[str] = ""  # set by register_variant from the config class
    method: ClassVar[str]  # the 'method' a guard file records (older readers check it)
    position: ClassVar[str]  # the 'position' a guard file records: t_inst, t_post_inst or span
    token_probe: ClassVar[str | None] = None  # a span variant's token probe ('linear', 'mlp')
    span: ClassVar[bool] = False  # reads every token up to t_inst (top score) rather than one position
    own_config: ClassVar[bool] = True  # False: the file's recorded config is the variant it was fitted alongside
    legacy: ClassVar[bool] = False  # True: older files name it by method/position/token_probe alone (no `variant`)
    keys: ClassVar[tuple[str, ...]] = ("harmful", "harmless")

    def __init__(self, tensors: Mapping[str, torch.Tensor], metadata: Mapping) -> None:
        self.tensors, self.metadata = tensors, metadata  # the guard's own (live) dicts: alpha and scales may change

    @classmethod
    def matches(cls, meta: Mapping) -> bool:
        """Whether a guard file's method/position (and token_probe) are the ones this variant records."""
        return (meta.get("method"), meta.get("position", "t_inst")) == (cls.method, cls.position)

    @classmethod
    def check(cls, meta: Mapping) -> None:
        """Raise HarmlensError (one line) unless the metadata is this variant's."""
        if not cls.matches(meta):
            raise HarmlensError(
                f"unknown guard method/position {meta.get('method')!r}/{meta.get('position', 't_inst')!r} for variant "
                f"{cls.variant} (it reads {cls.method!r}/{cls.position!r})"
            )

    @classmethod
    def tensor_keys(cls, meta: Mapping) -> tuple[str, ...]:
        """The tensors a guard file of this variant must hold."""
        return cls.keys

    def select(self, prompt: ChatPrompt, width: int = 1) -> tuple[int, ...]:
        """Positions read in a rendered prompt (`width` pads a span; a one-position variant ignores it)."""
        return (int(getattr(prompt, self.position)),)

    def width(self, prompts: Sequence[ChatPrompt]) -> int:
        """Positions read per prompt in a batch of these prompts."""
        return 1

    def score(self, acts: torch.Tensor) -> Scores:
        """(score [n], per-layer scores [n, n_layers]) of activations [n, n_layers, d_model] at the read position, or
        of a read [n, n_layers, n_pos, d_model]: the top position's (`score_span`)."""
        if acts.dim() == 4:
            return self.score_span(acts)
        if acts.dim() != 3:
            raise HarmlensError(
                f"acts must be [n, layers, d_model] or [n, layers, positions, d_model], got {acts.dim()}-d"
            )
        return self.score_point(acts)

    def score_span(self, acts: torch.Tensor) -> Scores:
        """The top-scoring position of each row of a read [n, n_layers, n_pos, d_model]."""
        return top_position(self.score_point, acts)

    def score_point(self, acts: torch.Tensor) -> Scores:
        """Scores of activations [n, n_layers, d_model] at one position each."""
        raise NotImplementedError


class SpanScorer(Scorer):
    """A token probe read at every token from the instruction's start up to t_inst, padded by repeating t_inst."""

    method: ClassVar[str] = "probe"
    position: ClassVar[str] = "span"
    span: ClassVar[bool] = True

    @classmethod
    def matches(cls, meta: Mapping) -> bool:
        """A span file of this token probe (files from before token_probe was recorded are linear)."""
        return super().matches(meta) and meta.get("token_probe", "linear") == cls.token_probe

    def select(self, prompt: ChatPrompt, width: int = 1) -> tuple[int, ...]:
        """Every token from span_start up to t_inst, padded to `width` by repeating t_inst (a repeat never changes a
        maximum)."""
        return span_positions(prompt, width)

    def width(self, prompts: Sequence[ChatPrompt]) -> int:
        """The longest span in the batch."""
        return max(p.t_inst + 1 - p.span_start for p in prompts)

    @classmethod
    def tensor_keys(cls, meta: Mapping) -> tuple[str, ...]:
        """The token probe's tensors, and the t_inst probe's when the file scales a t_inst part."""
        return cls.keys + (TINST_PROBE_KEYS if "t_inst" in (meta.get("scales") or {}) else ())

    def score_span(self, acts: torch.Tensor) -> Scores:
        """The top token's score, or, when the guard has `scales` (two-part), the larger scaled part
        (harmlens.guards.latent.span_scoring)."""
        scales = self.metadata.get("scales")
        if not scales:
            return top_position(self.score_point, acts)
        return scaled_max(span_parts(self.score_point, self.tensors, acts), scales)
