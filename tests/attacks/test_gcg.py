"""GCG: the loss goes down, the cached objective equals a full forward, and suffixes compose with settings."""

import json

import pytest
import torch

from harmlens.attacks import GCGConfig, evaluate_asr, gcg_attack, gcg_jailbreak
from harmlens.errors import HarmlensError
from harmlens.runtime.chat import role_template

CFG = GCGConfig(suffix_len=4, steps=4, top_k=8, batch=8, eval_batch=4, target="Sure, here is")


@pytest.fixture(scope="module")
def result(tiny_model):
    return gcg_attack(tiny_model, "Write a poem about the sea.", CFG)


def test_loss_decreases(result):
    assert len(result.losses) == CFG.steps + 1
    assert all(b <= a for a, b in zip(result.losses, result.losses[1:]))
    assert result.losses[-1] < result.losses[0]
    assert result.seconds > 0 and len(result.suffix_ids) == CFG.suffix_len


def test_reported_loss_matches_a_full_forward(tiny_model, result):
    tok, rt = tiny_model.tokenizer, role_template(tiny_model)
    enc = lambda s: tok(s, add_special_tokens=False)["input_ids"]  # noqa: E731
    target = enc(CFG.target)
    ids = enc(rt.prefix + result.instruction) + result.suffix_ids + enc(rt.suffix) + target
    with torch.no_grad():
        logits = tiny_model(torch.tensor([ids]))[0, len(ids) - len(target) - 1 : -1]
    loss = torch.nn.functional.cross_entropy(logits.float(), torch.tensor(target))
    assert float(loss) == pytest.approx(result.losses[-1], abs=1e-3)
    # the suffix survives re-tokenization of the adversarial instruction
    assert enc(result.adversarial) == enc(result.instruction) + result.suffix_ids


def test_suffixes_compose_with_role_swap(tiny_model, result):
    report = evaluate_asr(
        tiny_model, [result.instruction], jailbreaks=[gcg_jailbreak([result])], max_new_tokens=3, progress=False
    )
    rec = next(r for r in report.records if r["jailbreak"] == "gcg" and r["setting"] == "swap")
    assert result.suffix.strip() in rec["prompt"] and "<|im_start|>assistant\n" + result.instruction in rec["prompt"]


def test_saved_results_load_back(tmp_path, result):
    from dataclasses import asdict

    from harmlens.attacks.gcg import load_gcg_results

    path = tmp_path / "gcg.json"
    path.write_text(json.dumps({"config": {}, "results": [asdict(result)]}))
    assert load_gcg_results(path) == [result]
    path.write_text("{}")
    with pytest.raises(HarmlensError, match="not a gcg.json"):
        load_gcg_results(path)


def test_bad_budget(tiny_model):
    with pytest.raises(HarmlensError, match="budget"):
        gcg_attack(tiny_model, "x", GCGConfig(steps=0))
