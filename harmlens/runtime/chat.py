"""Render instructions through a model's own chat template and locate t_inst and the post-instruction tokens."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import TYPE_CHECKING, Any

from harmlens.errors import HarmlensError
from harmlens.runtime.markers import has_special, special_strings, tokenize_prompt
from harmlens.runtime.roles import (
    NO_SYSTEM,
    NoSystem,
    Roles,
    TemplateSource,
    derive_roles,
    derive_split,
    image_token,
    strip_system_turn,
    system_span,
)

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge


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


_SPECIAL_SYSTEM = "system prompt contains the tokenizer's special-token strings; remove them"


@dataclass(frozen=True)
class ChatFormat:
    """A chat template split around the user instruction (prompt = prefix + instruction + suffix), with the
    user/assistant role markers a swap exchanges and the image text derived from the same template on demand."""

    prefix: str
    suffix: str
    tokenizer: object
    max_length: int | None = None
    system_span: tuple[int, int] | None = None  # where a system prompt with special-token strings sits in prefix
    source: TemplateSource | None = field(default=None, repr=False, hash=False)  # what the roles derive from

    @classmethod
    def from_tokenizer(
        cls,
        tokenizer,
        *,
        system: str | NoSystem | None = None,
        chat_template: str | None = None,
        max_length: int | None = None,
        strip_system: bool = False,
        image_text: str | None = None,
        image_token: str | None = None,
        config=None,
        roles: bool = False,
    ) -> ChatFormat:
        """Derive the format from the tokenizer's (or the given Jinja) template. system=None keeps its default system
        turn, NO_SYSTEM renders none, strip_system cuts everything before the user turn; image text is image_text,
        else what the template renders for an image holding image_token (a processor's) or the config's token.
        roles=True derives markers and image text now (errors at construction, not at first swap)."""
        if isinstance(system, str) and "\0" in system:
            raise HarmlensError("system prompt contains a NUL character (\\0)")
        template = chat_template if chat_template is not None else getattr(tokenizer, "chat_template", None)
        if not template:
            raise HarmlensError("the tokenizer has no chat template; pass chat_template=... (a Jinja string)")
        special = isinstance(system, str) and bool(system) and has_special(tokenizer, system)
        if special and roles:
            raise HarmlensError(_SPECIAL_SYSTEM)
        prefix, suffix, source = derive_split(
            tokenizer, template, system, image_text=image_text, image_token=image_token, config=config
        )
        span = system_span(tokenizer, source, prefix) if special else None
        if max_length is None:
            max_length = getattr(tokenizer, "model_max_length", None)
            if max_length is not None and max_length > 10**7:
                max_length = None
        fmt = cls(
            prefix=prefix, suffix=suffix, tokenizer=tokenizer, max_length=max_length, system_span=span, source=source
        )
        if not (roles or strip_system):
            return fmt
        derived = fmt.roles
        if strip_system:
            bos = getattr(tokenizer, "bos_token", None)
            fmt = replace(fmt, prefix=strip_system_turn(prefix, derived.user_marker, bos))
            fmt.__dict__["roles"] = derived  # derived from the unstripped rendering, as before the cut
        return fmt

    @cached_property
    def roles(self) -> Roles:
        """The role markers and image text of this template (derived once, on first use)."""
        if self.source is None:
            raise HarmlensError("this ChatFormat has no template to derive roles from: build it with from_tokenizer")
        if self.system_span is not None:
            raise HarmlensError(_SPECIAL_SYSTEM)
        if "\0" in self.prefix:
            raise HarmlensError("chat template has no user role: the user's message does not appear once in its output")
        return derive_roles(self.tokenizer, self.source, self.suffix)

    @property
    def user_marker(self) -> str:
        """The user turn's header, which a swap gives to the assistant."""
        return self.roles.user_marker

    @property
    def assistant_marker(self) -> str:
        """The assistant turn's header, which a swap gives to the user."""
        return self.roles.assistant_marker

    @property
    def image_text(self) -> str | None:
        """What an image renders as in the prompt (None: the model names no image token)."""
        return self.roles.image_text

    @property
    def supports_images(self) -> bool:
        """Whether image settings can be rendered (the model or its processor names an image token)."""
        return self.image_text is not None

    @property
    def special_tokens(self) -> tuple[str, ...]:
        """The tokenizer's special-token strings, longest first."""
        return special_strings(self.tokenizer)

    def swapped(self) -> tuple[str, str]:
        """(prefix, suffix) with the user and assistant markers exchanged; the instruction itself is never touched."""
        head, _, rest = self.prefix.rpartition(self.user_marker)
        tail = self.suffix.replace(self.assistant_marker, self.user_marker, 1)
        return head + self.assistant_marker + rest, tail

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
        """Where user text (instruction and its copies, system prompt) sits in the prompt; see runtime.markers."""
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


RoleTemplate = ChatFormat  # the attacks' name for the same model (was a parallel class)


def system_metadata(system: str | NoSystem | None) -> dict:
    """JSON-safe record of a system choice for artefact metadata (NO_SYSTEM -> no_system: true)."""
    return {"system": None, "no_system": True} if isinstance(system, NoSystem) else {"system": system}


def system_from_metadata(meta: dict) -> str | NoSystem | None:
    """The system choice an artefact's metadata records (the inverse of system_metadata)."""
    return NO_SYSTEM if meta.get("no_system") else meta.get("system")


def clean_instruction(instruction: str) -> str:
    """Strip outer whitespace (templates trim it anyway) and reject empty instructions."""
    if not isinstance(instruction, str):
        raise HarmlensError(f"prompt must be a string, got {type(instruction).__name__}")
    stripped = instruction.strip()
    if not stripped:
        raise HarmlensError("empty or whitespace-only prompt")
    return stripped


def chat_format(
    model: TransformerBridge,
    *,
    system: str | NoSystem | None = None,
    chat_template: str | None = None,
    strip_system: bool = False,
    image_text: str | None = None,
    processor=None,
    roles: bool = False,
) -> ChatFormat:
    """ChatFormat of a loaded model, bounded by its context length (system=NO_SYSTEM: no system turn at all); its
    image text is what the template renders for the processor's (or the model config's) image token."""
    tok = getattr(model, "tokenizer", None) or getattr(processor, "tokenizer", None)
    config = getattr(getattr(model, "original_model", None), "config", None) or getattr(model, "config", None)
    token = image_token(config, tok, processor) if image_text is None and processor is not None else None
    n_ctx = getattr(getattr(model, "cfg", None), "n_ctx", None)
    return ChatFormat.from_tokenizer(
        tok,
        system=system,
        chat_template=chat_template,
        max_length=n_ctx,
        strip_system=strip_system,
        image_text=image_text,
        image_token=token,
        config=config,
        roles=roles,
    )


def role_template(
    model: TransformerBridge,
    *,
    chat_template: str | None = None,
    system: str | None = None,
    strip_system: bool = False,
    image_text: str | None = None,
    processor=None,
) -> ChatFormat:
    """chat_format with its role markers and image text derived now, so a template the attacks cannot swap fails
    here (and a system prompt holding special tokens is refused: a swap would tokenize it as structure)."""
    return chat_format(
        model,
        system=system,
        chat_template=chat_template,
        strip_system=strip_system,
        image_text=image_text,
        processor=processor,
        roles=True,
    )


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
