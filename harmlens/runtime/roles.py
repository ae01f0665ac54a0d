"""What a chat template implies, found by rendering it around placeholders: the split around the user instruction
(under the template's default system turn, a given one, or none), the user/assistant role markers a swap exchanges and
the text an image renders as. ChatFormat (harmlens.runtime.chat) is built from this one derivation."""

from __future__ import annotations

from dataclasses import dataclass

from harmlens.errors import HarmlensError

_PLACEHOLDER = "\ue000HARMLENS_INSTRUCTION\ue001"
_SYS_PLACEHOLDER = "\ue000HARMLENS_SYSTEM\ue001"
# Templates whose roles the derivation cannot find (no shared header around the role name): (user, assistant).
FALLBACK_MARKERS = (("USER:", "ASSISTANT:"), ("<|user|>", "<|assistant|>"))  # LLaVA-1.5, Phi-3/3.5
_MAX_ROLE_NAME = 24


class NoSystem:
    """Type of NO_SYSTEM: render no system turn at all, not even the template's default one."""

    def __repr__(self) -> str:
        return "NO_SYSTEM"


NO_SYSTEM = NoSystem()


@dataclass(frozen=True)
class TemplateSource:
    """What a ChatFormat was split from, kept so its roles and image text derive from the same rendering on demand."""

    template: str
    system: str | None  # the system turn rendered (None: the template's default; also under NO_SYSTEM)
    structured: bool  # the template takes list-of-parts content (VLM templates), not strings
    prefix: str  # the prefix under that system turn, before NO_SYSTEM or strip_system cut it
    image_text: str | None = None  # given by the caller
    image_token: str | None = None  # a processor's image token, checked against the template
    config: object = None  # the model config, which may name an image token


@dataclass(frozen=True)
class Roles:
    """The user and assistant role markers a swap exchanges, and the text an image renders as (None: text-only)."""

    user_marker: str
    assistant_marker: str
    image_text: str | None


def _render(tokenizer, template: str, messages: list, generation: bool = True) -> str:
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


def _render_user_turn(tokenizer, template: str, system: str | None) -> tuple[str, bool]:
    """(rendering, structured): one user turn holding the placeholder (after a system turn when system is set);
    string content first, then the list-of-parts content VLM templates (LLaVA-1.5) expect."""
    for structured in (False, True):
        try:
            rendered = _render(tokenizer, template, _messages(_PLACEHOLDER, system, structured))
        except HarmlensError:
            if structured:
                raise
            continue
        if _PLACEHOLDER in rendered:
            return rendered, structured
    raise HarmlensError("chat template has no user role: the user's message does not appear in its output")


def _render_without_system(tokenizer, template: str, plain: str) -> str:
    """A user turn with no system turn: the template's own rendering (`plain`) when it adds no default system turn,
    else that rendering with its default system turn cut out (the user header has the system header's shape)."""
    with_sys = _render_user_turn(tokenizer, template, _SYS_PLACEHOLDER)[0]
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


def _cut(rendered: str) -> tuple[str, str]:
    """(prefix, suffix) around the last placeholder; copies the template repeats before it become "\\0"."""
    prefix, _, suffix = rendered.rpartition(_PLACEHOLDER)
    return prefix.replace(_PLACEHOLDER, "\0"), suffix


def derive_split(
    tokenizer,
    template: str,
    system: str | NoSystem | None,
    *,
    image_text: str | None = None,
    image_token: str | None = None,
    config=None,
) -> tuple[str, str, TemplateSource]:
    """(prefix, suffix, source) of a template around the instruction; system=None keeps its default system turn,
    NO_SYSTEM renders none; the image choices are kept in the source for the roles."""
    base_system = None if isinstance(system, NoSystem) else system
    rendered, structured = _render_user_turn(tokenizer, template, base_system)
    base_prefix = _cut(rendered)[0]
    if isinstance(system, NoSystem):
        rendered = _render_without_system(tokenizer, template, rendered)
    prefix, suffix = _cut(rendered)
    if not suffix:
        raise HarmlensError("chat template renders nothing after the user's message: no post-instruction tokens")
    return (
        prefix,
        suffix,
        TemplateSource(template, base_system, structured, base_prefix, image_text, image_token, config),
    )


def system_span(tokenizer, source: TemplateSource, prefix: str) -> tuple[int, int]:
    """Where the system prompt lies in the prefix, found by rendering a placeholder in its place."""
    system = source.system or ""
    rendered = _render(tokenizer, source.template, _messages("\ue002", _PLACEHOLDER, source.structured))
    start = rendered.find(_PLACEHOLDER)
    if start < 0 or prefix[start : start + len(system)] != system:
        raise HarmlensError("system prompt contains special-token strings and the template transforms it; remove them")
    return start, start + len(system)


def derive_roles(tokenizer, source: TemplateSource, suffix: str) -> Roles:
    """The role markers (from the assistant header's shape, else a known family's) and the image text: the caller's,
    else what the template renders for an image holding the processor's or the config's image token."""
    gen_prompt = _generation_prompt(tokenizer, source)
    markers = derive_markers(source.prefix, gen_prompt or suffix) or _fallback_markers(source.prefix, suffix)
    if markers is None:
        raise HarmlensError(
            "cannot find the user and assistant role markers in the chat template: "
            "its turns share no header around a role name and it matches no known family"
        )
    text = source.image_text
    if text is None:
        token = source.image_token or image_token(source.config, tokenizer)
        if token is not None:
            rendered = _template_image_text(tokenizer, source) if source.structured else None
            if rendered is not None and source.image_token is not None and source.image_token.strip() not in rendered:
                raise HarmlensError(
                    f"the processor's image token {source.image_token!r} is not in the chat template's image text "
                    f"{rendered!r}: processor and template belong to different models"
                )
            text = rendered or token
    return Roles(*markers, text or None)


def _generation_prompt(tokenizer, source: TemplateSource) -> str:
    """The text add_generation_prompt appends ('' when the template has none, e.g. Llama-2)."""
    msgs = _messages(_PLACEHOLDER, source.system, source.structured)
    with_gen, without = _render(tokenizer, source.template, msgs), _render(tokenizer, source.template, msgs, False)
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


def strip_system_turn(prefix: str, user_marker: str, bos: str | None) -> str:
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


def _template_image_text(tokenizer, source: TemplateSource) -> str | None:
    """What a structured template renders for an image part at the start of the user turn, if anything."""
    try:
        rendered = _render(tokenizer, source.template, _messages(_PLACEHOLDER, source.system, True, image=True))
    except HarmlensError:
        return None
    head, prefix = rendered.partition(_PLACEHOLDER)[0], source.prefix
    return head[len(prefix) :] if head.startswith(prefix) and len(head) > len(prefix) else None
