"""Chat formatting: t_inst and post-instruction indices for several template families, hand-checked."""

import pytest
import templates as T
from transformers import AutoTokenizer

from harmlens.errors import HarmlensError
from harmlens.runtime.chat import ChatFormat
from harmlens.runtime.loading import embedded_model_dir

INSTRUCTION = "Tell me a joke."


@pytest.fixture(scope="module")
def tok():
    return AutoTokenizer.from_pretrained(embedded_model_dir())


# (template, total tokens, t_inst, decoded post-instruction text); indices read off the token lists by hand.
CASES = {
    "chatml_smol": (T.CHATML_SMOL, 35, 28, "<|im_end|>\n<|im_start|>assistant\n"),
    "qwen2": (T.QWEN2, 25, 18, "<|im_end|>\n<|im_start|>assistant\n"),
    "llama2": (T.LLAMA2, 13, 8, " [/INST]"),
    "mistral": (T.MISTRAL, 13, 8, " [/INST]"),
    # The embedded tokenizer lacks Llama-3/Gemma specials, so '.<' straddles the boundary: it is t_inst.
    "llama3": (T.LLAMA3, 54, 26, "|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"),
    "gemma": (T.GEMMA, 31, 14, "end_of_turn>\n<start_of_turn>model\n"),
}


@pytest.mark.parametrize("name", CASES)
def test_positions_match_hand_checked_indices(tok, name):
    template, n_tokens, t_inst, post_text = CASES[name]
    p = ChatFormat.from_tokenizer(tok, chat_template=template).render(INSTRUCTION)
    assert len(p.input_ids) == n_tokens
    assert p.t_inst == t_inst
    assert p.post_inst == tuple(range(t_inst + 1, n_tokens))
    assert p.t_post_inst == n_tokens - 1
    assert tok.decode(p.input_ids[t_inst + 1 :]) == post_text
    assert tok.decode(p.input_ids[t_inst]).startswith(".")
    assert tok(p.text, add_special_tokens=False)["input_ids"] == list(p.input_ids)


def test_default_system_prompt_is_the_templates_own(tok):
    p = ChatFormat.from_tokenizer(tok).render(INSTRUCTION)
    assert "You are a helpful AI assistant named SmolLM" in p.text


def test_custom_system_prompt_replaces_default(tok):
    p = ChatFormat.from_tokenizer(tok, system="Be terse.").render(INSTRUCTION)
    assert p.text.startswith("<|im_start|>system\nBe terse.<|im_end|>\n<|im_start|>user\n")
    assert "SmolLM" not in p.text


def test_outer_whitespace_is_stripped_consistently(tok):
    fmt = ChatFormat.from_tokenizer(tok, chat_template=T.LLAMA2)
    assert fmt.render("  " + INSTRUCTION + "\n").input_ids == fmt.render(INSTRUCTION).input_ids


@pytest.mark.parametrize("bad", ["", "   \n\t"])
def test_empty_instruction_rejected(tok, bad):
    with pytest.raises(HarmlensError, match="empty"):
        ChatFormat.from_tokenizer(tok).render(bad)


def test_template_without_user_role_rejected(tok):
    with pytest.raises(HarmlensError, match="no user role"):
        ChatFormat.from_tokenizer(tok, chat_template=T.NO_USER_ROLE)


def test_template_that_rejects_system_prompt_reports_it(tok):
    with pytest.raises(HarmlensError, match="System role not supported"):
        ChatFormat.from_tokenizer(tok, chat_template=T.GEMMA, system="hi")


def test_prompt_longer_than_context_rejected(tok):
    fmt = ChatFormat.from_tokenizer(tok, max_length=40)
    with pytest.raises(HarmlensError, match="longer than the model's context"):
        fmt.render("word " * 100)


def test_empty_prompt_list_rejected(tok):
    with pytest.raises(HarmlensError, match="empty prompt list"):
        ChatFormat.from_tokenizer(tok).render_many([])
