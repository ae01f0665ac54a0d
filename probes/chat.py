"""Render instructions through a model's own chat template and locate t_inst and the post-instruction tokens."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

from harmlens.errors import HarmlensError

_PLACEHOLDER = "\ue000HARMLENS_INSTRUCTION\ue001"


@dataclass(frozen=True)
class ChatPrompt:
    """One rendered prompt: text, token ids, t_inst index and the post-instruction token indices."""

    instruction: str
    text: str
    input_ids: tuple[int, ...]
    t_inst: int
    post_inst: tuple[int, ...]
    span_start: int = 0  # first token a span read covers (a conversation: the last user turn; see probes.conversation)

    @property
    def t_post_inst(self) -> int:
        """Index of the last prompt token (the last post-instruction token)."""
        return self.post_inst[-1]

    def __len__(self) -> int:
        return len(self.input_ids)


@dataclass(frozen=True)
class ChatFormat:
    """A chat template split around the user instruction: prompt = prefix + instruction + suffix."""

    prefix: str
    suffix: str
    tokenizer: object
    max_length: int | None = None

    @classmethod
    def from_tokenizer(
        cls,
        tokenizer,
        *,
        system: str | None = None,
        chat_template: str | None = None,
        max_length: int | None = None,
    ) -> ChatFormat:
        """Derive prefix/suffix from the tokenizer's (or the given Jinja) template; system=None keeps its default."""
        messages = [{"role": "user", "content": _PLACEHOLDER}]
        if system is not None:
            messages.insert(0, {"role": "system", "content": system})
        template = chat_template if chat_template is not None else getattr(tokenizer, "chat_template", None)
        if not template:
            raise HarmlensError("the tokenizer has no chat template; pass chat_template=... (a Jinja string)")
        try:
            rendered = tokenizer.apply_chat_template(
                messages, chat_template=template, tokenize=False, add_generation_prompt=True
            )
        except Exception as exc:  # jinja raise_exception() and syntax errors
            msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise HarmlensError(f"chat template cannot render a user turn: {msg}") from None
        if _PLACEHOLDER not in rendered:
            raise HarmlensError("chat template has no user role: the user's message does not appear in its output")
        prefix, _, suffix = rendered.rpartition(_PLACEHOLDER)
        if _PLACEHOLDER in prefix:  # template repeats the message; keep every copy identical
            prefix = prefix.replace(_PLACEHOLDER, "\0")
        if not suffix:
            raise HarmlensError("chat template renders nothing after the user's message: no post-instruction tokens")
        if max_length is None:
            max_length = getattr(tokenizer, "model_max_length", None)
            if max_length is not None and max_length > 10**7:
                max_length = None
        return cls(prefix=prefix, suffix=suffix, tokenizer=tokenizer, max_length=max_length)

    @cached_property
    def suffix_ids(self) -> tuple[int, ...]:
        """Tokens of the post-instruction template string on its own."""
        return tuple(self.tokenizer(self.suffix, add_special_tokens=False)["input_ids"])

    def render_text(self, instruction: str) -> str:
        """The full prompt string for an instruction (validated, outer whitespace stripped)."""
        return self._split(clean_instruction(instruction))[0]

    def _split(self, instruction: str) -> tuple[str, int]:
        head = self.prefix.replace("\0", instruction) + instruction
        return head + self.suffix, len(head)

    def render(self, instruction: str) -> ChatPrompt:
        """Render and tokenize one instruction, locating t_inst and the post-instruction positions."""
        instruction = clean_instruction(instruction)
        text, inst_end = self._split(instruction)
        enc = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids = enc["input_ids"]
        offsets = enc.get("offset_mapping")
        if offsets is not None:
            # t_inst: the token holding the instruction's last character.
            t_inst = max(i for i, (start, end) in enumerate(offsets) if start < inst_end and end > start)
        else:  # slow tokenizer: count the tokens of the text up to the instruction's end
            t_inst = len(self.tokenizer(text[:inst_end], add_special_tokens=False)["input_ids"]) - 1
        if t_inst >= len(ids) - 1:
            raise HarmlensError("tokenization leaves no post-instruction token after the instruction")
        if self.max_length is not None and len(ids) > self.max_length:
            raise HarmlensError(
                f"prompt is {len(ids)} tokens, longer than the model's context of {self.max_length}: "
                f"{instruction[:60]!r}..."
            )
        return ChatPrompt(instruction, text, tuple(ids), t_inst, tuple(range(t_inst + 1, len(ids))))

    def render_many(self, instructions: list[str]) -> list[ChatPrompt]:
        """Render a non-empty list of instructions."""
        if not instructions:
            raise HarmlensError("empty prompt list")
        return [self.render(x) for x in instructions]


def clean_instruction(instruction: str) -> str:
    """Strip outer whitespace (templates trim it anyway) and reject empty instructions."""
    if not isinstance(instruction, str):
        raise HarmlensError(f"prompt must be a string, got {type(instruction).__name__}")
    stripped = instruction.strip()
    if not stripped:
        raise HarmlensError("empty or whitespace-only prompt")
    return stripped


def chat_format(model, *, system: str | None = None, chat_template: str | None = None) -> ChatFormat:
    """ChatFormat of a loaded model, bounded by its context length."""
    n_ctx = getattr(getattr(model, "cfg", None), "n_ctx", None)
    return ChatFormat.from_tokenizer(model.tokenizer, system=system, chat_template=chat_template, max_length=n_ctx)


def format_instruction(
    model_or_tokenizer, instruction: str, *, system: str | None = None, chat_template: str | None = None
) -> ChatPrompt:
    """Convenience: render one instruction with a model's (or tokenizer's) own chat template."""
    if hasattr(model_or_tokenizer, "tokenizer") and hasattr(model_or_tokenizer, "cfg"):
        fmt = chat_format(model_or_tokenizer, system=system, chat_template=chat_template)
    else:
        fmt = ChatFormat.from_tokenizer(model_or_tokenizer, system=system, chat_template=chat_template)
    return fmt.render(instruction)
