"""The 8 role-modality (RMA) settings and the perturbed prompts they render, with t_inst found in the new structure."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from harmlens.errors import HarmlensError
from harmlens.runtime import ChatPrompt, RoleTemplate, clean_instruction, tokenize_prompt

IMAGE_POSITIONS = ("none", "in", "end", "out")  # no image / start of user turn / end of user turn / assistant turn


@dataclass(frozen=True)
class Setting:
    """One RMA setting: where the image token goes and whether the user and assistant roles are swapped."""

    name: str
    image: str  # one of IMAGE_POSITIONS
    swap: bool
    paper: str  # the name in the RMA notebooks (Visualization/FAPlot.ipynb)

    @property
    def needs_image(self) -> bool:
        """Whether this setting puts an image token in the prompt."""
        return self.image != "none"


SETTINGS: tuple[Setting, ...] = (
    Setting("none", "none", False, "no img no swap"),
    Setting("swap", "none", True, "swap"),
    Setting("img_in", "in", False, "img pos"),
    Setting("img_in+swap", "in", True, "img pos_swap"),
    Setting("img_end", "end", False, "img end"),
    Setting("img_end+swap", "end", True, "img end_swap"),
    Setting("img_out", "out", False, "img out"),
    Setting("img_out+swap", "out", True, "img out_swap"),
)
TEXT_SETTINGS = tuple(s for s in SETTINGS if not s.needs_image)
_BY_NAME = {
    **{s.paper: s for s in SETTINGS},
    **{str(i): s for i, s in enumerate(SETTINGS, 1)},
    **{s.name: s for s in SETTINGS},
}


def get_setting(name: str | Setting) -> Setting:
    """A setting by name ('img_end+swap'), RMA notebook name ('img end_swap') or number 1..8."""
    if isinstance(name, Setting):
        return name
    setting = _BY_NAME.get(str(name).strip())
    if setting is None:
        raise HarmlensError(f"unknown setting {name!r}; choose from {', '.join(s.name for s in SETTINGS)}")
    return setting


def resolve_settings(names: Iterable[str | Setting] | str | None, *, supports_images: bool) -> list[Setting]:
    """Settings to run: None/'all' = every setting the model supports (2 text-only, 8 for a VLM)."""
    if names is None or names == "all":
        return list(SETTINGS if supports_images else TEXT_SETTINGS)
    if isinstance(names, str):
        names = [n for n in names.split(",") if n.strip()]
    out = list(dict.fromkeys(get_setting(n) for n in names))
    if not out:
        raise HarmlensError("empty settings list")
    bad = [s.name for s in out if s.needs_image and not supports_images]
    if bad:
        raise HarmlensError(
            f"setting(s) {', '.join(bad)} need an image but the model is text-only "
            f"(no image token in its config or processor); text settings: none, swap"
        )
    return out


def perturbed_pieces(template: RoleTemplate, instruction: str, setting: Setting) -> tuple[str, str]:
    """(text before the instruction, text after it) under a setting; the instruction's own words are untouched."""
    if setting.needs_image and not template.supports_images:
        raise HarmlensError(f"setting {setting.name} needs an image but the model is text-only (no image token)")
    prefix, suffix = template.swapped() if setting.swap else (template.prefix, template.suffix)
    img = template.image_text or ""
    return (
        prefix + (img if setting.image == "in" else ""),
        (img if setting.image == "end" else "") + suffix + (img if setting.image == "out" else ""),
    )


def check_special_tokens(template: RoleTemplate, instruction: str) -> None:
    """Reject an instruction containing the template's special tokens or image text (training data; rendering for a
    model escapes them instead, see harmlens.runtime.markers)."""
    tokens = (*template.special_tokens, *([template.image_text.strip()] if template.image_text else []))
    found = sorted((instruction.find(t), -len(t), t) for t in tokens if t and t in instruction)
    if found:
        token = found[0][2]  # the first one in the instruction
        raise HarmlensError(
            f"instruction contains the template's special token {token!r}; harmlens rejects such "
            f"instructions rather than escaping them: {instruction[:60]!r}"
        )


def perturb_text(template: RoleTemplate, instruction: str, setting: str | Setting = "none") -> str:
    """The full perturbed prompt string for one instruction."""
    head, tail = perturbed_pieces(template, clean_instruction(instruction), get_setting(setting))
    return head + clean_instruction(instruction) + tail


def perturb(template: RoleTemplate, instruction: str, setting: str | Setting = "none") -> ChatPrompt:
    """Render and tokenize one instruction under a setting; t_inst is the token holding the instruction's last char."""
    instruction = clean_instruction(instruction)
    head, tail = perturbed_pieces(template, instruction, get_setting(setting))
    text, inst_end = head + instruction + tail, len(head) + len(instruction)
    # user text's special tokens are tokenized as plain text (harmlens.runtime.markers), never as structure
    ids, t_inst = tokenize_prompt(template.tokenizer, text, inst_end, [(len(head), inst_end)])
    if t_inst >= len(ids) - 1:
        raise HarmlensError("tokenization leaves no post-instruction token after the instruction")
    if template.max_length is not None and len(ids) > template.max_length:
        raise HarmlensError(
            f"prompt is {len(ids)} tokens, longer than the model's context of {template.max_length}: "
            f"{instruction[:60]!r}..."
        )
    return ChatPrompt(instruction, text, tuple(ids), t_inst, tuple(range(t_inst + 1, len(ids))))


def perturb_many(
    template: RoleTemplate, instructions: Sequence[str], setting: str | Setting = "none"
) -> list[ChatPrompt]:
    """Perturb a non-empty list; errors name the instruction's index."""
    if isinstance(instructions, str) or not instructions:
        raise HarmlensError("empty instruction list" if not instructions else "instructions must be a list of strings")
    out = []
    for i, text in enumerate(instructions):
        try:
            out.append(perturb(template, text, setting))
        except HarmlensError as exc:
            raise HarmlensError(f"instruction {i}: {exc}") from None
    return out
