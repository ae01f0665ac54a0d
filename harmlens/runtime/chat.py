"""Render instructions through a model's own chat template and locate t_inst and the post-instruction tokens."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any

from harmlens.errors import HarmlensError
from harmlens.runtime.markers import has_special, tokenize_prompt

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

_PLACEHOLDER = "\ue000HARMLENS_INSTRUCTION\ue001"
_SYS_PLACEHOLDER = "\ue000HARMLENS_SYSTEM\ue001"


class NoSystem:
    """Type of NO_SYSTEM: render no system turn at all, not even the template's default one."""

    def __repr__(self) -> str:
        return "NO_SYSTEM"


NO_SYSTEM = NoSystem()


@dataclass(frozen=True)
class ChatPrompt:
    """One rendered prompt: text, token ids, t_inst index and the post-instruction token indices."""

    instruction: str
    text: str
    input_ids: tuple[int, ...]
    t_inst: int
    post_inst: tuple[int, ...]
    span_start: int = 0  # first token a span read covers (a conversation: the last user turn; see probes.conversation)

    def __post_init__(self) -> None:
        n = len(self.input_ids)
        if isinstance(self.t_inst, bool) or not isinstance(self.t_inst, int) or not 0 <= self.t_inst < n:
            raise HarmlensError(f"ChatPrompt t_inst {self.t_inst!r} is not a token index in 0..{n - 1}")
        if any(not self.t_inst < i < n for i in self.post_inst):  # negative indices would read other tokens
            raise HarmlensError(f"ChatPrompt post_inst must be indices after t_inst ({self.t_inst}) and below {n}")

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
    system_span: tuple[int, int] | None = None  # where a system prompt with special-token strings sits in prefix

    @classmethod
    def from_tokenizer(
        cls,
        tokenizer,
        *,
        system: str | NoSystem | None = None,
        chat_template: str | None = None,
        max_length: int | None = None,
    ) -> ChatFormat:
        """Derive prefix/suffix from the tokenizer's (or the given Jinja) template; system=None keeps its default,
        system=NO_SYSTEM renders no system turn at all."""
        if isinstance(system, str) and "\0" in system:
            raise HarmlensError("system prompt contains a NUL character (\\0)")
        template = chat_template if chat_template is not None else getattr(tokenizer, "chat_template", None)
        if not template:
            raise HarmlensError("the tokenizer has no chat template; pass chat_template=... (a Jinja string)")
        if isinstance(system, NoSystem):
            rendered = _render_without_system(tokenizer, template)
        else:
            rendered = _render_user_turn(tokenizer, template, system)
        prefix, _, suffix = rendered.rpartition(_PLACEHOLDER)
        if _PLACEHOLDER in prefix:  # template repeats the message; keep every copy identical
            prefix = prefix.replace(_PLACEHOLDER, "\0")
        if not suffix:
            raise HarmlensError("chat template renders nothing after the user's message: no post-instruction tokens")
        if max_length is None:
            max_length = getattr(tokenizer, "model_max_length", None)
            if max_length is not None and max_length > 10**7:
                max_length = None
        special = isinstance(system, str) and bool(system) and has_special(tokenizer, system)
        span = _system_span(tokenizer, template, prefix, system) if special and isinstance(system, str) else None
        return cls(prefix=prefix, suffix=suffix, tokenizer=tokenizer, max_length=max_length, system_span=span)

    @cached_property
    def suffix_ids(self) -> tuple[int, ...]:
        """Tokens of the post-instruction template string on its own."""
        tok: Any = self.tokenizer
        return tuple(tok(self.suffix, add_special_tokens=False)["input_ids"])

    def render_text(self, instruction: str) -> str:
        """The full prompt string for an instruction (validated, outer whitespace stripped)."""
        return self._split(clean_instruction(instruction))[0]

    def _split(self, instruction: str) -> tuple[str, int]:
        head = self.prefix.replace("\0", instruction) + instruction
        return head + self.suffix, len(head)

    def _user_spans(self, instruction: str, inst_end: int) -> list[tuple[int, int]]:
        """Where user text (instruction and its copies, system prompt) sits in the prompt; see probes.markers."""
        spans, grow, pos = [(inst_end - len(instruction), inst_end)], len(instruction) - 1, self.prefix.find("\0")
        while pos >= 0:  # copies of the instruction the template repeats in the prefix
            start = pos + grow * len(spans[1:])
            spans.append((start, start + len(instruction)))
            pos = self.prefix.find("\0", pos + 1)
        if self.system_span is not None:
            a, b = self.system_span
            shift = grow * self.prefix[:a].count("\0")
            spans.append((a + shift, b + shift))
        return spans

    def render(self, instruction: str) -> ChatPrompt:
        """Render and tokenize one instruction, locating t_inst and the post-instruction positions."""
        instruction = clean_instruction(instruction)
        text, inst_end = self._split(instruction)
        # t_inst: the token holding the instruction's last character; user text's special tokens stay plain text.
        ids, t_inst = tokenize_prompt(self.tokenizer, text, inst_end, self._user_spans(instruction, inst_end))
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


def _render_user_turn(tokenizer, template: str, system: str | None) -> str:
    """The template's rendering of one user turn holding the placeholder (after a system turn when system is set);
    string content first, then the list-of-parts content VLM templates (LLaVA-1.5) expect."""
    for structured in (False, True):

        def content(text: str, parts: bool = structured):
            return [{"type": "text", "text": text}] if parts else text

        messages = [{"role": "user", "content": content(_PLACEHOLDER)}]
        if system is not None:
            messages.insert(0, {"role": "system", "content": content(system)})
        try:
            rendered = tokenizer.apply_chat_template(
                messages, chat_template=template, tokenize=False, add_generation_prompt=True
            )
        except Exception as exc:  # jinja raise_exception() and syntax errors
            if not structured:
                continue
            msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise HarmlensError(f"chat template cannot render a user turn: {msg}") from None
        if _PLACEHOLDER in rendered:
            return rendered
    raise HarmlensError("chat template has no user role: the user's message does not appear in its output")


def _render_without_system(tokenizer, template: str) -> str:
    """A user turn with no system turn: the template's own rendering when it adds no default system turn, else that
    rendering with its default system turn cut out (the user header has the system header's shape)."""
    plain = _render_user_turn(tokenizer, template, None)
    with_sys = _render_user_turn(tokenizer, template, _SYS_PLACEHOLDER)
    if _SYS_PLACEHOLDER not in with_sys:
        return plain  # the template ignores system messages
    a, _, rest = with_sys.partition(_SYS_PLACEHOLDER)
    b, _, tail = rest.partition(_PLACEHOLDER)
    head = plain.rpartition(_PLACEHOLDER)[0]
    if not (head.startswith(a) and head.endswith(b) and len(head) >= len(a) + len(b)):
        return plain  # no default system turn: the system-less rendering has no system header
    for i in range(len(a)):  # a = BOS + system header; the user header is the system header with the role renamed
        user_header = a[i:].replace("system", "user")
        if user_header != a[i:] and b.endswith(user_header):
            return a[:i] + user_header + _PLACEHOLDER + tail
    raise HarmlensError(
        "cannot render this chat template without its default system turn: pass chat_template=... without one"
    )


def system_metadata(system: str | NoSystem | None) -> dict:
    """JSON-safe record of a system choice for artefact metadata (NO_SYSTEM -> no_system: true)."""
    return {"system": None, "no_system": True} if isinstance(system, NoSystem) else {"system": system}


def system_from_metadata(meta: dict) -> str | NoSystem | None:
    """The system choice an artefact's metadata records (the inverse of system_metadata)."""
    return NO_SYSTEM if meta.get("no_system") else meta.get("system")


def _system_span(tokenizer, template: str, prefix: str, system: str) -> tuple[int, int]:
    """Where the system prompt lies in the prefix, found by rendering a placeholder in its place."""
    messages = [{"role": "system", "content": _PLACEHOLDER}, {"role": "user", "content": "\ue002"}]
    rendered = tokenizer.apply_chat_template(
        messages, chat_template=template, tokenize=False, add_generation_prompt=True
    )
    start = rendered.find(_PLACEHOLDER)
    if start < 0 or prefix[start : start + len(system)] != system:
        raise HarmlensError("system prompt contains special-token strings and the template transforms it; remove them")
    return start, start + len(system)


def clean_instruction(instruction: str) -> str:
    """Strip outer whitespace (templates trim it anyway) and reject empty instructions."""
    if not isinstance(instruction, str):
        raise HarmlensError(f"prompt must be a string, got {type(instruction).__name__}")
    stripped = instruction.strip()
    if not stripped:
        raise HarmlensError("empty or whitespace-only prompt")
    return stripped


def chat_format(
    model: TransformerBridge, *, system: str | NoSystem | None = None, chat_template: str | None = None
) -> ChatFormat:
    """ChatFormat of a loaded model, bounded by its context length (system=NO_SYSTEM: no system turn at all)."""
    n_ctx = getattr(getattr(model, "cfg", None), "n_ctx", None)
    return ChatFormat.from_tokenizer(model.tokenizer, system=system, chat_template=chat_template, max_length=n_ctx)


def format_instruction(
    model_or_tokenizer,
    instruction: str,
    *,
    system: str | NoSystem | None = None,
    chat_template: str | None = None,
) -> ChatPrompt:
    """Convenience: render one instruction with a model's (or tokenizer's) own chat template."""
    if hasattr(model_or_tokenizer, "tokenizer") and hasattr(model_or_tokenizer, "cfg"):
        fmt = chat_format(model_or_tokenizer, system=system, chat_template=chat_template)
    else:
        fmt = ChatFormat.from_tokenizer(model_or_tokenizer, system=system, chat_template=chat_template)
    return fmt.render(instruction)
