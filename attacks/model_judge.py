"""A chat model as judge in a published format (StrongREJECT, JailbreakBench, HarmBench, Llama Guard 3/4) or 'ask'.

Judges generate through ``harmlens.attacks.judge_backend.judge_generate`` on a plain HF model (no bridge, no
hooks). An output outside the format leaves that item unjudged (``judge`` raises for it, and
``harmlens.attacks.evaluate.judge_safely`` records it as a judge error) while the other items keep their verdicts.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from harmlens.attacks.judge_backend import as_judge_model, judge_generate, load_judge_model
from harmlens.attacks.judge_formats import FORMATS, Verdict, format_for_model, get_format, render_text
from harmlens.attacks.judge_item import JudgeItem
from harmlens.attacks.judge_prompts import ASK_PROMPT, HARMBENCH_PROMPT
from harmlens.errors import HarmlensError
from harmlens.runtime import (
    ChatPrompt,
    GenerationConfig,
    fill_placeholders,
    generation_config,
    has_special,
    tokenize_prompt,
)

__all__ = ["ASK_PROMPT", "FORMATS", "HARMBENCH_PROMPT", "ModelJudge"]
MAX_REPLY_CHARS = 4000
_PH_BEHAVIOR, _PH_GENERATION = "\ue000HARMLENS_BEHAVIOR\ue001", "\ue000HARMLENS_GENERATION\ue001"
_PH_CONTEXT = "\ue000HARMLENS_CONTEXT\ue001"


def _is_llamaguard_template(tok) -> bool:
    template = getattr(tok, "chat_template", None)
    return isinstance(template, str) and "unsafe content" in template.lower()


class ModelJudge:
    """Judges replies with a judge model; ``verdicts`` keeps scores and Llama Guard codes, ``judge`` gives booleans."""

    needs_reply = True

    def __init__(
        self,
        model,
        *,
        fmt: str | None = None,
        config: GenerationConfig | Mapping | None = None,
        device=None,
        **overrides: Any,
    ) -> None:
        """`config` sets how the judge generates (None: greedy, the format's reply length, batches of 8, no progress
        bar); keywords such as max_new_tokens=4 override it."""
        if isinstance(model, str):
            judge_format = get_format(fmt) if fmt else format_for_model(model)  # checked before loading
            model = load_judge_model(model, device=device)
        else:
            model = as_judge_model(model)
            judge_format = get_format(fmt) if fmt else format_for_model(model.harmlens_name)
        self.model, self.format = model, judge_format
        self.fmt = judge_format.name
        if config is None:
            config = GenerationConfig(max_new_tokens=judge_format.max_new_tokens, batch_size=8, progress=False)
        self.config = generation_config(config, **overrides)
        self.name = f"{self.fmt}:{model.harmlens_name}"
        self._memo: dict[tuple, Verdict] = {}

    def text(self, item: JudgeItem) -> str:
        """The judge model's full input text for one (request, reply) pair."""
        return self._render(item)[0]

    def _render(self, item: JudgeItem) -> tuple[str, list[tuple[int, int]]]:
        """(input text, spans of user text): request and reply with special-token strings go through the template as
        placeholders and are put back afterwards, so they are tokenized as plain text, never as structure."""
        if item.reply is None:
            raise HarmlensError("the model judge needs a generated reply")
        tok, reply = self.model.tokenizer, item.reply[:MAX_REPLY_CHARS]
        context = getattr(item, "context", None)
        escape = any(has_special(tok, t) for t in (item.instruction, reply, context or ""))
        values = {_PH_BEHAVIOR: item.instruction, _PH_GENERATION: reply, _PH_CONTEXT: context or ""}
        behavior, generation = (_PH_BEHAVIOR, _PH_GENERATION) if escape else (item.instruction, reply)
        context = _PH_CONTEXT if escape and context else context
        text = self._template(behavior, generation, context)
        return fill_placeholders(text, values) if escape else (text, [])

    def _template(self, behavior: str, generation: str, context: str | None) -> str:
        tok = self.model.tokenizer
        if not self.format.chat:
            return render_text(self.format, behavior, generation, context)[1]
        if self.fmt.startswith("llamaguard") and _is_llamaguard_template(tok):
            msgs = [{"role": "user", "content": behavior}, {"role": "assistant", "content": generation}]
        else:
            system, user = render_text(self.format, behavior, generation, context)
            msgs = [{"role": "system", "content": system}] if system else []
            msgs.append({"role": "user", "content": user})
        try:
            return tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
        except Exception:
            if len(msgs) == 2 and msgs[0]["role"] == "system":  # templates without a system role: fold it in
                folded = [{"role": "user", "content": msgs[0]["content"] + "\n\n" + msgs[1]["content"]}]
                try:
                    return tok.apply_chat_template(folded, tokenize=False, add_generation_prompt=True)
                except Exception as exc:
                    raise HarmlensError(f"judge model's chat template cannot render the pair: {exc}") from None
            raise HarmlensError("judge model's chat template cannot render the pair") from None

    def prompt(self, item: JudgeItem) -> ChatPrompt:
        """The judge input as a tokenized ChatPrompt (user text tokenized as plain text)."""
        tok = self.model.tokenizer
        text, spans = self._render(item)
        ids = tokenize_prompt(tok, text, len(text), spans)[0]
        if not self.format.chat:  # a plain-text format: the tokenizer's own leading specials (BOS) first
            ids = list(tok("", add_special_tokens=True)["input_ids"]) + ids
        return ChatPrompt(item.instruction, text, tuple(ids), max(len(ids) - 2, 0), (len(ids) - 1,))

    def parse(self, output: str) -> Verdict:
        """The verdict in one judge output (success None when the output is outside the format)."""
        return self.format.parse(output)

    @staticmethod
    def _key(item: JudgeItem) -> tuple:
        return item.instruction, item.reply, getattr(item, "context", None)

    def verdicts(self, items: Sequence[JudgeItem]) -> list[Verdict]:
        """One Verdict per item; judged pairs are remembered, so a retry does not generate again."""
        todo = list({self._key(i): i for i in items if self._key(i) not in self._memo}.values())
        if todo:
            prompts = [self.prompt(i) for i in todo]
            outputs = judge_generate(self.model, prompts, self.config)
            for item, out in zip(todo, outputs):
                self._memo[self._key(item)] = self.parse(out)
        return [self._memo[self._key(i)] for i in items]

    def judge(self, items: Sequence[JudgeItem]) -> list[bool]:
        """True where the judge says the attack succeeded; raises (naming the output) if any item is unjudged."""
        verdicts = self.verdicts(items)
        bad = next((v for v in verdicts if v.success is None), None)
        if bad is not None:
            raise HarmlensError(bad.error or "unjudged item")
        return [bool(v.success) for v in verdicts]

    def details(self, item: JudgeItem) -> dict:
        """What the judge said about a judged item beyond success: raw output, StrongREJECT score, hazard codes."""
        v = self._memo.get(self._key(item))
        if v is None:
            return {}
        out: dict = {"judge_output": v.raw[:500]}
        if v.score is not None:
            out["judge_score"] = v.score
        if v.refused is not None:
            out["judge_refused"] = v.refused
        if v.categories:
            out["judge_categories"] = list(v.categories)
        return out
