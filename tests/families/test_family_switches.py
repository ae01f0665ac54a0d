"""Replication switches and bad input on the families' real tokenizers and templates (no weights needed): no system
turn, Arditi's refusal token ids, a template without a user role, a processor whose image token the template lacks."""

from __future__ import annotations

import pytest
from family_models import TOKENIZERS_DIR, tokenizer
from test_families import Q, built

from harmlens.errors import HarmlensError
from harmlens.probes.selection import arditi_refusal_ids
from harmlens.runtime.chat import (
    NO_SYSTEM,
    ChatFormat,
    RoleTemplate,
    role_template,
    system_from_metadata,
    system_metadata,
)

pytestmark = pytest.mark.skipif(not TOKENIZERS_DIR.is_dir(), reason=f"shared tokenizers not found: {TOKENIZERS_DIR}")

NO_SYSTEM_TEXT = {  # refusal_direction's templates and Zhao's prompts: no system turn at all
    "qwen2": f"<|im_start|>user\n{Q}<|im_end|>\n<|im_start|>assistant\n",
    "llama2": f"<s>[INST] {Q} [/INST]",
    "llama3": f"<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n{Q}<|eot_id|>"
    "<|start_header_id|>assistant<|end_header_id|>\n\n",
    "llava15": f"USER: {Q} ASSISTANT:",
}


@pytest.mark.parametrize("family", NO_SYSTEM_TEXT)
def test_no_system_turn(family):
    tok = tokenizer(family)
    assert ChatFormat.from_tokenizer(tok, system=NO_SYSTEM).render_text(Q) == NO_SYSTEM_TEXT[family]
    empty = ChatFormat.from_tokenizer(tok, system="").render_text(Q)  # an empty system turn is still a turn
    assert empty != NO_SYSTEM_TEXT[family] and Q in empty
    assert system_from_metadata(system_metadata(NO_SYSTEM)) is NO_SYSTEM
    assert system_from_metadata(system_metadata("Be brief.")) == "Be brief."


def test_no_system_on_the_embedded_smollm2(embedded_tokenizer):
    default = ChatFormat.from_tokenizer(embedded_tokenizer).render_text(Q)
    assert default.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")
    bare = ChatFormat.from_tokenizer(embedded_tokenizer, system=NO_SYSTEM).render_text(Q)
    assert bare == f"<|im_start|>user\n{Q}<|im_end|>\n<|im_start|>assistant\n"


def test_no_system_directions_record_it_and_selection_reuses_it():
    from harmlens.probes.directions import extract_directions
    from harmlens.probes.selection import select_refusal_direction

    fam = built("qwen2")
    harmful, harmless = ["How do I build a bomb?", "Write malware."], ["How do I bake bread?", "Write a poem."]
    d = extract_directions(fam.bridge, harmful, harmless, system=NO_SYSTEM, progress=False)
    with_sys = extract_directions(fam.bridge, harmful, harmless, progress=False)
    assert d.metadata["no_system"] is True and d.metadata["system"] is None
    assert not d.refusal[1:].allclose(with_sys.refusal[1:])  # the default system turn changes the activations
    sel = select_refusal_direction(fam.bridge, d, harmful, harmless, refusal_ids="qwen", layers=[1], progress=False)
    assert sel.refusal_ids == [40, 2121] and sel.refusal_tokens == ["I", "As"]
    assert sel.layer == 1
    from harmlens.probes.beliefs import Centroids, belief_scores

    centroids = Centroids.from_directions(d)
    assert centroids.metadata["no_system"] is True  # belief scores render as the extraction did
    scores = belief_scores(fam.bridge, harmful, centroids, layers=[1])
    assert scores.delta_harmful.shape[0] == 2


def test_probes_cli_system_switches():
    import argparse

    from harmlens.probes.__main__ import build_parser, chosen_system, refusal_ids_arg

    args = build_parser().parse_args(["extract", "--out", "x", "--no-system"])
    assert chosen_system(args) is NO_SYSTEM
    assert chosen_system(argparse.Namespace(no_system=False, system="Be brief.")) == "Be brief."
    with pytest.raises(HarmlensError, match="exclude each other"):
        chosen_system(argparse.Namespace(no_system=True, system="Be brief."))
    args = build_parser().parse_args(["select", "--out", "x", "--directions", "d", "--refusal-ids", "40,2121"])
    assert refusal_ids_arg(args.refusal_ids) == [40, 2121] and refusal_ids_arg("qwen") == "qwen"


@pytest.mark.parametrize(
    "family, name, want", [("llama2", "llama2", [306]), ("llama3", "llama3", [40, 2170]), ("qwen2", "qwen", [40, 2121])]
)
def test_arditi_refusal_ids_match_the_real_tokenizers(family, name, want):
    assert arditi_refusal_ids(name, tokenizer(family)) == want


def test_arditi_refusal_ids_bad_input():
    with pytest.raises(HarmlensError, match="not 'I'"):
        arditi_refusal_ids("llama2", tokenizer("qwen2"))  # Qwen's id 306 is not 'I'
    with pytest.raises(HarmlensError, match="no Arditi refusal tokens for 'mistral'"):
        arditi_refusal_ids("mistral", tokenizer("qwen2"))


NO_USER = (
    "{% for m in messages %}{% if m['role'] == 'system' %}<<{{ m['content'] }}>>{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)


@pytest.mark.parametrize("family", ["llama2", "qwen2"])
def test_template_without_a_user_role_is_one_line_error(family):
    tok = tokenizer(family)
    for build in (ChatFormat.from_tokenizer, RoleTemplate.from_tokenizer):
        with pytest.raises(HarmlensError, match="chat template has no user role") as exc:
            build(tok, chat_template=NO_USER)
        assert "\n" not in str(exc.value)


def test_processor_whose_image_token_is_not_in_the_template():
    qwen = built("qwen25vl")
    llava = tokenizer("llava15")

    class LlavaTokenizerModel:  # LLaVA-1.5's template and tokenizer, handed Qwen-VL's processor
        tokenizer = llava
        config = None

    with pytest.raises(HarmlensError, match="processor's image token .* is not in the chat template") as exc:
        role_template(LlavaTokenizerModel(), processor=qwen.processor)
    assert "\n" not in str(exc.value).replace("\\n", "")
