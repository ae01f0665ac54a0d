"""A chat template split around the instruction, with its user/assistant role markers and image text derived from it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from harmlens.errors import HarmlensError
from harmlens.runtime.markers import has_special

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

_PH = "\ue000HARMLENS_INSTRUCTION\ue001"
# Templates whose roles the derivation cannot find (no shared header around the role name): (user, assistant).
FALLBACK_MARKERS = (("USER:", "ASSISTANT:"), ("<|user|>", "<|assistant|>"))  # LLaVA-1.5, Phi-3/3.5
_MAX_ROLE_NAME = 24


@dataclass(frozen=True)
class RoleTemplate:
    """prompt = prefix + instruction + suffix, plus the role markers a swap exchanges and the image text (or None)."""

    prefix: str
    suffix: str
    user_marker: str
    assistant_marker: str
    image_text: str | None
    tokenizer: object
    special_tokens: tuple[str, ...] = ()
    max_length: int | None = None

    @classmethod
    def from_tokenizer(
        cls,
        tokenizer,
        *,
        chat_template: str | None = None,
        system: str | None = None,
        strip_system: bool = False,
        image_text: str | None = None,
        config=None,
        max_length: int | None = None,
        image_token: str | None = None,
    ) -> RoleTemplate:
        """Derive the pieces from the tokenizer's (or the given Jinja) template; image text from the args, else
        what the template renders for an image holding `image_token` (a processor's) or the config's token."""
        template = chat_template if chat_template is not None else getattr(tokenizer, "chat_template", None)
        if not template:
            raise HarmlensError("the tokenizer has no chat template; pass chat_template=... (a Jinja string)")
        if system and has_special(tokenizer, system):
            raise HarmlensError("system prompt contains the tokenizer's special-token strings; remove them")
        prefix, suffix, structured = _split(tokenizer, template, system)
        gen_prompt = _generation_prompt(tokenizer, template, system, structured)
        markers = derive_markers(prefix, gen_prompt or suffix) or _fallback_markers(prefix, suffix)
        if markers is None:
            raise HarmlensError(
                "cannot find the user and assistant role markers in the chat template: "
                "its turns share no header around a role name and it matches no known family"
            )
        user, assistant = markers
        if image_text is None:
            token = image_token or _image_token(config, tokenizer)
            if token is not None:
                rendered = _template_image_text(tokenizer, template, system, prefix) if structured else None
                if rendered is not None and image_token is not None and image_token.strip() not in rendered:
                    raise HarmlensError(
                        f"the processor's image token {image_token!r} is not in the chat template's image text "
                        f"{rendered!r}: processor and template belong to different models"
                    )
                image_text = rendered or token
        if strip_system:
            prefix = _strip_system(prefix, user, getattr(tokenizer, "bos_token", None))
        special = sorted(
            {t.content for t in getattr(tokenizer, "added_tokens_decoder", {}).values() if t.special}
            | set(getattr(tokenizer, "all_special_tokens", ())),
            key=len,
            reverse=True,
        )
        if max_length is None:
            max_length = getattr(tokenizer, "model_max_length", None)
            max_length = max_length if max_length is not None and max_length <= 10**7 else None
        return cls(prefix, suffix, user, assistant, image_text or None, tokenizer, tuple(special), max_length)

    @property
    def supports_images(self) -> bool:
        """Whether image settings can be rendered (the model or its processor names an image token)."""
        return self.image_text is not None

    def swapped(self) -> tuple[str, str]:
        """(prefix, suffix) with the user and assistant markers exchanged; the instruction itself is never touched."""
        head, cut, rest = self.prefix.rpartition(self.user_marker)
        tail = self.suffix.replace(self.assistant_marker, self.user_marker, 1)
        return head + self.assistant_marker + rest, tail


def _render(tokenizer, template: str, messages: list, generation: bool) -> str:
    try:
        return tokenizer.apply_chat_template(
            messages, chat_template=template, tokenize=False, add_generation_prompt=generation
        )
    except Exception as exc:  # jinja raise_exception() and syntax errors
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise HarmlensError(f"chat template cannot render a user turn: {msg}") from None


def _messages(text: str, system: str | None, structured: bool, image: bool = False) -> list:
    def content(s: str, img: bool = False):
        return [*([{"type": "image"}] if img else []), {"type": "text", "text": s}] if structured else s

    msgs = [{"role": "user", "content": content(text, image)}]
    return ([{"role": "system", "content": content(system)}] if system is not None else []) + msgs


def _split(tokenizer, template: str, system: str | None) -> tuple[str, str, bool]:
    """(prefix, suffix, structured): string content first, then the list-of-parts content VLM templates expect."""
    for structured in (False, True):
        try:
            rendered = _render(tokenizer, template, _messages(_PH, system, structured), True)
        except HarmlensError:
            if structured:
                raise
            continue
        if rendered.count(_PH) == 1:
            prefix, _, suffix = rendered.partition(_PH)
            if not suffix:
                raise HarmlensError(
                    "chat template renders nothing after the user's message: no post-instruction tokens"
                )
            return prefix, suffix, structured
    raise HarmlensError("chat template has no user role: the user's message does not appear once in its output")


def _generation_prompt(tokenizer, template: str, system: str | None, structured: bool) -> str:
    """The text add_generation_prompt appends ('' when the template has none, e.g. Llama-2)."""
    msgs = _messages(_PH, system, structured)
    with_gen, without = _render(tokenizer, template, msgs, True), _render(tokenizer, template, msgs, False)
    return with_gen[len(without) :] if with_gen.startswith(without) else ""


def derive_markers(prefix: str, assistant_header: str) -> tuple[str, str] | None:
    """(user, assistant) markers: the user header in the prefix that has the assistant header's shape, or None."""
    a, p = assistant_header.strip(), prefix.rstrip()
    n = 0  # longest common tail, cut back so it does not begin inside a role name
    while n < min(len(a), len(p)) and a[-1 - n] == p[-1 - n]:
        n += 1
    while n and a[len(a) - n].isalnum():
        n -= 1
    tail, a_core, p_core = a[len(a) - n :], a[: len(a) - n], p[: len(p) - n]
    for i in range(len(a_core) - 1, 0, -1):  # longest head of the assistant header that opens the user header
        head = a_core[:i]
        if head[-1].isalnum() or (pos := p_core.rfind(head)) < 0:
            continue
        u_name, a_name = p_core[pos + len(head) :], a_core[len(head) :]
        names_ok = all(0 < len(x) <= _MAX_ROLE_NAME and not any(c.isspace() for c in x) for x in (u_name, a_name))
        return (p_core[pos:] + tail, a_core + tail) if names_ok and u_name != a_name else None
    return None


def _fallback_markers(prefix: str, suffix: str) -> tuple[str, str] | None:
    return next(((u, a) for u, a in FALLBACK_MARKERS if u in prefix and a in suffix), None)


def _strip_system(prefix: str, user_marker: str, bos: str | None) -> str:
    """Drop everything before the user turn (the default system prompt), keeping a leading BOS that is not a header."""
    keep_bos = bos is not None and bos != "" and prefix.startswith(bos) and not user_marker.startswith(bos)
    return (bos if keep_bos and bos is not None else "") + prefix[prefix.rfind(user_marker) :]


def image_token(config=None, tokenizer=None, processor=None) -> str | None:
    """The image placeholder text from a processor or model config (Qwen2-VL wraps it in vision start/end)."""
    token = getattr(processor, "image_token", None)
    cfg = config
    if token is None and cfg is not None and tokenizer is not None:
        for attr in ("image_token_index", "image_token_id"):
            idx = getattr(cfg, attr, None)
            if isinstance(idx, int) and 0 <= idx < len(tokenizer):
                token = tokenizer.convert_ids_to_tokens(idx)
                break
    if token is None and getattr(cfg, "model_type", None) == "phi3_v":
        return "<|image_1|>\n"
    start, end = (getattr(cfg, f"vision_{x}_token_id", None) for x in ("start", "end"))
    if token is not None and tokenizer is not None and isinstance(start, int) and isinstance(end, int):
        return tokenizer.convert_ids_to_tokens(start) + token + tokenizer.convert_ids_to_tokens(end)
    return token


_image_token = image_token  # from_tokenizer's image_token argument shadows the function


def _template_image_text(tokenizer, template: str, system: str | None, prefix: str) -> str | None:
    """What a structured template renders for an image part at the start of the user turn, if anything."""
    try:
        rendered = _render(tokenizer, template, _messages(_PH, system, True, image=True), True)
    except HarmlensError:
        return None
    head = rendered.partition(_PH)[0]
    return head[len(prefix) :] if head.startswith(prefix) and len(head) > len(prefix) else None


def role_template(
    model: TransformerBridge,
    *,
    chat_template: str | None = None,
    system: str | None = None,
    strip_system: bool = False,
    image_text: str | None = None,
    processor=None,
) -> RoleTemplate:
    """RoleTemplate of a loaded model (image text as its template renders its processor's or config's image token),
    bounded by its context length."""
    tok = getattr(model, "tokenizer", None) or getattr(processor, "tokenizer", None)
    config = getattr(getattr(model, "original_model", None), "config", None) or getattr(model, "config", None)
    token = image_token(config, tok, processor) if image_text is None and processor is not None else None
    n_ctx = getattr(getattr(model, "cfg", None), "n_ctx", None)
    return RoleTemplate.from_tokenizer(
        tok,
        chat_template=chat_template,
        system=system,
        strip_system=strip_system,
        image_text=image_text,
        config=config,
        max_length=n_ctx,
        image_token=token,
    )
