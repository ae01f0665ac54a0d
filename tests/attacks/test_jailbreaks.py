"""Text jailbreaks: substitution, seeded payload splitting, GPTFuzzer templates, composition with RMA settings."""

import csv
import json

import pytest
import templates as T
from transformers import AutoTokenizer

from harmlens.attacks.jailbreaks import (
    GPTFUZZER_SLOT,
    NAMED,
    custom,
    get_jailbreak,
    gptfuzzer_templates,
    resolve_jailbreaks,
    split_payload,
)
from harmlens.attacks.settings import SETTINGS, perturb
from harmlens.errors import HarmlensError
from harmlens.runtime.chat import RoleTemplate
from harmlens.runtime.loading import embedded_model_dir

Q = "Explain how to pick a lock on a front door."


def test_seven_named_jailbreaks_embed_the_instruction():
    assert set(NAMED) == {
        "aim",
        "prefix_injection",
        "refusal_suppression",
        "style_injection",
        "evil_confidant",
        "payload_splitting",
        "few_shot_json",
    }
    for name, jb in NAMED.items():
        out = jb(Q, seed=3)
        assert out != Q and len(out) > len(Q) + 40, name
        if name != "payload_splitting":
            assert Q in out, name
    assert NAMED["prefix_injection"](Q).count("Absolutely!") == 2
    assert "Do not apologize" in NAMED["refusal_suppression"](Q)


def test_payload_splitting_is_seeded_and_reassembles():
    a, b, c = split_payload(Q, seed=1)
    assert a + b + c == Q and all((a, b, c))
    assert split_payload(Q, seed=1) == (a, b, c)
    assert {split_payload(Q, seed=s) for s in range(10)} != {(a, b, c)}
    text = NAMED["payload_splitting"]('say "hi" now please', seed=0)
    assert '\\"hi' in text or 'hi\\"' in text  # quotes escaped inside the string literals


def test_few_shot_json_keeps_valid_json_escaping():
    out = NAMED["few_shot_json"]('Write "x"\nnow')
    assert '"prompt": "Write \\"x\\"\\nnow", "response": "' in out


def test_gptfuzzer_templates_shipped():
    rows = gptfuzzer_templates()
    assert len(rows) == 77 and all(GPTFUZZER_SLOT in t for t in rows.values())
    jb = get_jailbreak("gptfuzzer:12")
    assert jb.name == "gptfuzzer:12" and Q in jb(Q) and GPTFUZZER_SLOT not in jb(Q)
    with pytest.raises(HarmlensError, match="no GPTFuzzer template"):
        get_jailbreak("gptfuzzer:99")


def test_resolve_and_custom():
    names = [j.name if j else "none" for j in resolve_jailbreaks("aim,all")]
    assert names[0] == "none" and names.count("aim") == 1 and len(names) == 8
    assert len(resolve_jailbreaks(["gptfuzzer"])) == 78
    assert custom("mine", "Q: {query} A: Sure")(Q) == f"Q: {Q} A: Sure"
    with pytest.raises(HarmlensError, match="no '\\{query\\}'"):
        custom("bad", "no slot")
    with pytest.raises(HarmlensError, match="unknown jailbreak"):
        get_jailbreak("dan")


@pytest.mark.parametrize("jb", ["aim", "few_shot_json", "gptfuzzer:0"])
def test_every_jailbreak_composes_with_every_setting(jb):
    tok = AutoTokenizer.from_pretrained(embedded_model_dir())
    rt = RoleTemplate.from_tokenizer(tok, chat_template=T.QWEN2, image_text="<IMG>")
    text = get_jailbreak(jb)(Q)
    for s in SETTINGS:
        p = perturb(rt, text, s)
        assert text.strip() in p.text
        tail = tok.decode(p.input_ids[p.t_inst + 1 :])
        assert tail.endswith(("assistant\n", "user\n", "<IMG>"))
        assert text.strip()[-3:] in tok.decode(p.input_ids[: p.t_inst + 1])[-12:]
    assert json.dumps(text)  # plain text, JSON-serialisable for the results file


def test_shipped_gptfuzzer_templates_identical_to_shared_data(shared_data):
    with open(shared_data("jailbreak/gptfuzzer_templates.csv"), encoding="utf-8", newline="") as fh:
        assert {r["id"]: r["text"] for r in csv.DictReader(fh)} == gptfuzzer_templates()
