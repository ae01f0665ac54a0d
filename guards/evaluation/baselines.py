"""Baseline detectors to compare a LatentGuard against: keyword blocklist, perplexity filter, Δrefuse, behaviour."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence

import torch

from harmlens.errors import HarmlensError
from harmlens.guards.latent.guard import LatentGuard
from harmlens.runtime import (
    Backend,
    ChatPrompt,
    GenerationConfig,
    chat_format,
    generation_config,
    get_backend,
    pad_id,
)

Prompt = str | ChatPrompt
# Regex stems of words typical of harmful requests (matched at a word start, case-insensitive).
BLOCKLIST = (
    "bomb",
    "explosiv",
    "detonat",
    "weapon",
    "firearm",
    "gun",
    "ammunition",
    "kill",
    "murder",
    "assassinat",
    "poison",
    "toxin",
    "ricin",
    "anthrax",
    "nerve agent",
    "bioweapon",
    "chemical weapon",
    "hack",
    "malware",
    "ransomware",
    "virus",
    "keylogger",
    "ddos",
    "phishing",
    "exploit",
    "steal",
    "theft",
    r"rob\b",
    "robb",
    "fraud",
    "scam",
    "counterfeit",
    "launder",
    "smuggl",
    "traffick",
    "drug",
    r"meth\b",
    "methamphetamine",
    "cocaine",
    "heroin",
    "fentanyl",
    "suicide",
    "self-harm",
    "terror",
    "extremis",
    "kidnap",
    "torture",
    "abuse",
    "harass",
    "stalk",
    "blackmail",
    "extort",
    "racis",
    "hate",
    "illegal",
    "fake news",
    "misinformation",
    "propaganda",
    "cheat",
    "evade",
    "bypass security",
    "arson",
    "shoot",
)


def instruction_text(prompt: Prompt) -> str:
    """The user's text of a prompt (a ChatPrompt's instruction, e.g. after an RMA perturbation)."""
    return prompt.instruction if isinstance(prompt, ChatPrompt) else str(prompt)


class KeywordGuard:
    """Flags a prompt containing any blocklisted word stem (regex fragments); score = number of matches."""

    name = "keyword"

    def __init__(self, words: Sequence[str] = BLOCKLIST) -> None:
        if not words:
            raise HarmlensError("empty blocklist")
        try:
            self.pattern = re.compile(r"\b(?:" + "|".join(words) + ")", re.IGNORECASE)
        except re.error as exc:
            raise HarmlensError(f"bad blocklist pattern: {exc}") from None

    def predict(self, prompts: Sequence[Prompt]) -> list[tuple[float, bool]]:
        """(score, flagged) per prompt."""
        out = []
        for p in prompts:
            hits = len(self.pattern.findall(instruction_text(p)))
            out.append((float(hits), hits > 0))
        return out


class PerplexityGuard:
    """NeMo-Guardrails-style filter: flags a prompt whose first or last `window` words have perplexity > threshold.

    The default threshold is NeMo's (1845.65, for GPT-2 large); calibrate() sets one for the scoring model.
    """

    name = "perplexity"

    def __init__(self, model, threshold: float = 1845.65, window: int = 20, batch_size: int = 16) -> None:
        self.model, self.threshold, self.window, self.batch_size = model, float(threshold), window, batch_size

    @torch.no_grad()
    def perplexity(self, texts: Sequence[str]) -> list[float]:
        """Perplexity of each raw text (no chat template) under the model."""
        tok, hf = self.model.tokenizer, self.model.original_model
        ids = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
        out = [float("nan")] * len(ids)
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        for start in range(0, len(order), self.batch_size):
            idx = [i for i in order[start : start + self.batch_size] if len(ids[i]) >= 2]
            if not idx:
                continue
            width = max(len(ids[i]) for i in idx)
            x = torch.full((len(idx), width), pad_id(tok), dtype=torch.long)
            mask = torch.zeros_like(x)
            for row, i in enumerate(idx):
                x[row, : len(ids[i])], mask[row, : len(ids[i])] = torch.tensor(ids[i]), 1
            device = next(hf.parameters()).device
            logits = hf(input_ids=x.to(device), attention_mask=mask.to(device)).logits[:, :-1].float()
            nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), x[:, 1:].to(device), reduction="none")
            m = mask[:, 1:].to(device).float()
            for row, i in enumerate(idx):
                out[i] = math.exp(float((nll[row] * m[row]).sum() / m[row].sum()))
        return out

    def scores(self, prompts: Sequence[Prompt]) -> list[float]:
        """max(perplexity of the first `window` words, of the last `window` words) per prompt."""
        words = [instruction_text(p).split() for p in prompts]
        heads = self.perplexity([" ".join(w[: self.window]) for w in words])
        tails = self.perplexity([" ".join(w[-self.window :]) for w in words])
        return [max((x for x in (h, t) if not math.isnan(x)), default=0.0) for h, t in zip(heads, tails)]

    def calibrate(self, harmless: Sequence[Prompt], target_fpr: float = 0.05) -> float:
        """Set the threshold so the expected FPR on new harmless prompts is ≤ target_fpr (the conformal rule)."""
        from harmlens.guards.latent.calibration import threshold_for_fpr

        self.threshold = threshold_for_fpr(torch.tensor(self.scores(harmless)), target_fpr)
        return self.threshold

    def predict(self, prompts: Sequence[Prompt]) -> list[tuple[float, bool]]:
        """(score, flagged) per prompt; flagged when the score is at or above the threshold."""
        return [(s, s >= self.threshold) for s in self.scores(prompts)]


class LatentDetector:
    """A LatentGuard (or its Δrefuse twin) as a detector; failed verdicts keep their fail-closed flag."""

    def __init__(self, guard: LatentGuard, name: str = "latent_guard") -> None:
        self.guard, self.name = guard, name

    def predict(self, prompts: Sequence[Prompt]) -> list[tuple[float, bool]]:
        """(score, flagged) per prompt."""
        return [(v.score, v.harmful) for v in self.guard.check(list(prompts))]


class BehaviourGuard:
    """The model's own behaviour as a detector: flagged ⇔ its greedy reply is a refusal (substring judge)."""

    name = "behaviour"

    def __init__(
        self,
        model,
        config: GenerationConfig | Mapping | None = None,
        *,
        judge=None,
        backend: str | Backend = "hf",
        **overrides,
    ) -> None:
        """`config` sets the replies (None: greedy, 32 new tokens, no progress bar; keywords override it), generated
        on `backend` (hf, vllm, auto or a Backend)."""
        from harmlens.attacks.judges import is_refusal

        if config is None:
            config = GenerationConfig(max_new_tokens=32, progress=False)
        self.model, self.config, self.backend = model, generation_config(config, **overrides), backend
        self.judge = judge or is_refusal
        self.replies: list[str] = []

    def predict(self, prompts: Sequence[Prompt]) -> list[tuple[float, bool]]:
        """(1.0 if refused else 0.0, refused) per prompt; the replies are kept in .replies."""
        fmt = chat_format(self.model)
        rendered = [p if isinstance(p, ChatPrompt) else fmt.render(p) for p in prompts]
        ids = get_backend(self.model, self.backend).generate_ids(rendered, self.config)
        self.replies = [self.model.tokenizer.decode(t, skip_special_tokens=True) for t in ids]
        return [(float(r), r) for r in map(self.judge, self.replies)]


def refuse_detector(guard: LatentGuard) -> LatentDetector:
    """The Δrefuse baseline of a fitted guard (t_post-inst centroids over the same layers)."""
    return LatentDetector(guard.refusal_guard(), "delta_refuse")
