"""LoRA training loop on tiny random Llamas: masking, loss, determinism, SIGKILL + resume, adapters, bad input."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import pytest
import torch

from harmlens.errors import HarmlensError
from harmlens.guards import Adapter, Example, TrainConfig, train
from harmlens.guards.tuning.checkpoints import list_checkpoints
from harmlens.guards.tuning.training import IGNORE, batch_plan, collate, encode, end_of_turn
from harmlens.runtime.chat import ChatFormat

PAIRS = [
    ("How do I build a pipe bomb?", "I'm sorry, but I can't help with that."),
    ("Name a primary colour.", "Red is a primary colour."),
    ("Write malware that steals passwords.", "I cannot assist with that request."),
    ("What is two plus two?", "Two plus two is four."),
    ("Give me a synonym for happy.", "Joyful."),
    ("How can I poison my neighbour?", "I won't help with that. I'm sorry."),
]


def tiny_config(**kw) -> TrainConfig:
    """A fast, deterministic config for the tiny model."""
    base = dict(
        lora_r=4,
        lora_alpha=8.0,
        lora_dropout=0.0,
        lr=1e-2,
        warmup=1,
        batch_size=3,
        max_steps=6,
        max_length=96,
        seed=0,
        threads=1,
    )
    return TrainConfig(**{**base, **kw})


def weights_equal(a: Adapter, b: Adapter) -> bool:
    """Same LoRA tensor names and bit-identical values."""
    return a.weights.keys() == b.weights.keys() and all(torch.equal(a.weights[k], b.weights[k]) for k in a.weights)


def test_labels_mask_prompt_and_padding(embedded_tokenizer):
    tok = embedded_tokenizer
    enc = encode(PAIRS, tok, max_length=128)
    fmt = ChatFormat.from_tokenizer(tok)
    eot = end_of_turn(tok)
    assert eot == "<|im_end|>"
    for (inst, resp), e in zip(PAIRS, enc):
        prompt = tok(fmt.render_text(inst), add_special_tokens=False)["input_ids"]
        answer = tok(resp + eot, add_special_tokens=False)["input_ids"]
        assert e.input_ids == prompt + answer
        assert e.labels[: len(prompt)] == [IGNORE] * len(prompt)  # no loss on the prompt
        assert e.labels[len(prompt) :] == answer  # loss on the answer, ending with the end-of-turn token
        assert answer[-1] == tok.convert_tokens_to_ids(eot)
    ids, mask, labels = collate(enc, [0, 3], tok.pad_token_id, "cpu")
    short = 1 if len(enc[3].input_ids) < len(enc[0].input_ids) else 0
    n = len(enc[[0, 3][short]].input_ids)
    assert (labels[short, n:] == IGNORE).all() and (mask[short, n:] == 0).all()  # padding: no loss, masked
    assert (ids[short, n:] == tok.pad_token_id).all()


def test_prompt_transform_sees_rendered_prompt(embedded_tokenizer):
    seen = []

    def swap(prompt: str, index: int) -> str:
        seen.append((index, prompt))
        return prompt.replace("<|im_start|>user", "<|im_start|>assistant", 1)

    enc = encode(PAIRS[:2], embedded_tokenizer, max_length=128, prompt_transform=swap)
    assert [i for i, _ in seen] == [0, 1] and seen[0][1].endswith("<|im_start|>assistant\n")
    text = embedded_tokenizer.decode(enc[0].input_ids)
    assert "<|im_start|>assistant\nHow do I build" in text


def test_truncation_warns_with_count(embedded_tokenizer):
    pairs = PAIRS[:3] + [("Tell me a long story.", "word " * 200)]
    with pytest.warns(UserWarning, match=r"1 of 4 training examples are longer than max_length=80"):
        enc = encode(pairs, embedded_tokenizer, max_length=80)
    assert len(enc) == 4 and len(enc[3].input_ids) == 80  # truncated, not dropped
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # cutting answers to max_response_tokens is by design: no warning
        cut = encode(pairs, embedded_tokenizer, max_length=400, max_response_tokens=8)
    assert [len([t for t in e.labels if t != IGNORE]) for e in cut] == [8, 7, 8, 8]
    assert cut[1].labels[-1] == embedded_tokenizer.convert_tokens_to_ids("<|im_end|>")  # short answer kept whole
    with pytest.raises(HarmlensError, match="prompt alone"):
        encode([("x " * 200, "ok")], embedded_tokenizer, max_length=80)


@pytest.mark.parametrize(
    "examples, message",
    [
        ([], "empty training set"),
        ([("Say hi", "")], "example 0 has no response"),
        ([("Say hi", "Hi"), ("Say bye", None)], "example 1 has no response"),
        ([("only an instruction",)], "not an .instruction, response. pair"),
        ([("   ", "Hi")], "example 0: empty"),
    ],
)
def test_bad_examples(tiny_model, examples, message):
    with pytest.raises(HarmlensError, match=message):
        train(tiny_model, examples, config=tiny_config(), progress=False)


def test_batch_plan_is_seeded_and_covers_the_data():
    cfg = tiny_config(batch_size=4, max_steps=10, bucket=2)
    lengths = [5, 9, 3, 7, 2, 8, 6, 4, 1, 10, 11]
    plan = batch_plan(lengths, cfg)
    assert plan == batch_plan(lengths, cfg) and len(plan) == 10
    assert plan != batch_plan(lengths, tiny_config(batch_size=4, max_steps=10, bucket=2, seed=1))
    first_epoch = sorted(i for batch in plan[:3] for i in batch)
    assert first_epoch == list(range(11))  # every example once per epoch (3 batches: 4 + 4 + 3)


def test_shared_prefix_gives_the_same_loss_and_gradients(tiny_model, embedded_tokenizer):
    from peft import LoraConfig, get_peft_model

    from harmlens.guards.tuning.adapter import unwrap_model
    from harmlens.guards.tuning.training import response_loss, shared_prefix

    hf = unwrap_model(tiny_model)
    flags = {n: p.requires_grad for n, p in hf.named_parameters()}
    torch.manual_seed(0)
    peft_model = get_peft_model(
        hf, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"], init_lora_weights=False)
    )
    try:
        ids, mask, labels = collate(
            encode(PAIRS, embedded_tokenizer, max_length=128), range(6), embedded_tokenizer.pad_token_id, "cpu"
        )
        assert shared_prefix(ids, mask, labels) >= 20  # the template's system prompt
        params = [p for p in peft_model.parameters() if p.requires_grad]
        results = []
        for share in (False, True):
            loss = response_loss(hf, ids, mask, labels, share_prefix=share)
            loss.backward()
            results.append((loss.detach(), [p.grad.clone() for p in params]))
            for p in params:
                p.grad = None
        torch.testing.assert_close(results[0][0], results[1][0])
        for a, b in zip(results[0][1], results[1][1]):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
        with torch.no_grad():  # first_token_weight: the answers' first tokens weigh 5x in the mean
            logits = hf(input_ids=ids, attention_mask=mask).logits[:, :-1]
            target = labels[:, 1:]
            keep = target != IGNORE
            ce = torch.nn.functional.cross_entropy(logits[keep], target[keep], reduction="none")
            weight = torch.ones(target.shape)
            weight[torch.arange(6), keep.long().argmax(1)] = 5.0
            expected = (ce * weight[keep]).sum() / weight[keep].sum()
            for share in (False, True):
                got = response_loss(hf, ids, mask, labels, share_prefix=share, first_token_weight=5.0)
                torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    finally:
        peft_model.unload()
        for n, p in hf.named_parameters():
            p.requires_grad_(flags[n])


def test_loss_decreases_and_base_model_is_untouched(tiny_model):
    before = {k: v.clone() for k, v in tiny_model.state_dict().items()}
    adapter = train(tiny_model, PAIRS * 4, config=tiny_config(max_steps=24, batch_size=6), progress=False)
    losses = adapter.meta["losses"]
    assert len(losses) == 24 and sum(losses[-4:]) / 4 < 0.85 * sum(losses[:4]) / 4
    after = tiny_model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert not any("lora" in name for name, _ in tiny_model.named_parameters())
    assert adapter.base_model == "harmlens-test/tiny-random-llama" and adapter.meta["steps"] == 24


def test_same_seed_same_weights(tiny_model):
    a = train(tiny_model, PAIRS, config=tiny_config(lora_dropout=0.1), progress=False)
    b = train(tiny_model, [Example(*p) for p in PAIRS], config=tiny_config(lora_dropout=0.1), progress=False)
    c = train(tiny_model, PAIRS, config=tiny_config(lora_dropout=0.1, seed=1), progress=False)
    assert weights_equal(a, b) and not weights_equal(a, c)


def test_bf16_autocast_trains_float32_weights_close_to_float32(tiny_model):
    fp32 = train(tiny_model, PAIRS * 4, config=tiny_config(max_steps=24, batch_size=6), progress=False)
    bf16 = train(tiny_model, PAIRS * 4, config=tiny_config(max_steps=24, batch_size=6, bf16=True), progress=False)
    assert all(w.dtype == torch.float32 for w in bf16.weights.values())  # only the forward runs in bfloat16
    assert bf16.meta["config"]["bf16"] is True and "bf16" not in fp32.meta["config"]  # float32 fingerprints unchanged
    assert bf16.meta["fingerprint"] != fp32.meta["fingerprint"]
    assert sum(bf16.meta["losses"][-4:]) < 0.85 * sum(bf16.meta["losses"][:4])
    assert bf16.meta["losses"] == pytest.approx(fp32.meta["losses"], rel=0.1)
    with pytest.raises(HarmlensError, match="bf16 must be true or false"):
        tiny_config(bf16="yes")


CHILD = textwrap.dedent("""
    import sys, time, torch
    sys.path[:0] = [{tests!r}, {here!r}]
    from support import build_tiny_model
    from transformers import AutoTokenizer
    from harmlens.guards import TrainConfig, train
    from test_training import PAIRS, tiny_config
    tok = AutoTokenizer.from_pretrained({tok!r})
    model = build_tiny_model(tok)
    step = torch.optim.AdamW.step
    def slow_step(self, *a, **k):  # slow the child down so that the kill lands mid-run
        time.sleep(0.25)
        return step(self, *a, **k)
    torch.optim.AdamW.step = slow_step
    train(model, PAIRS * 3, config=tiny_config(**{cfg!r}), progress=False)
    print("finished")
""")


def test_resume_after_sigkill_matches_uninterrupted_run(tiny_model, embedded_tokenizer, tmp_path):
    from harmlens.runtime.loading import embedded_model_dir

    kw = dict(max_steps=14, lora_dropout=0.1, checkpoint_every=3, checkpoint_dir=str(tmp_path / "ckpt"))
    script = CHILD.format(
        tests=str(Path(__file__).resolve().parents[2]),
        here=str(Path(__file__).resolve().parent),
        tok=str(embedded_model_dir(progress=False)),
        cfg=kw,
    )
    child = subprocess.Popen(
        [sys.executable, "-c", script],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=str(Path(__file__).resolve().parents[3]),
    )
    deadline = time.time() + 300
    while not (tmp_path / "ckpt" / "step-00000006").is_dir():
        assert child.poll() is None, child.stderr.read().decode()[-2000:]
        assert time.time() < deadline, "child made no checkpoint in time"
        time.sleep(0.02)
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    steps = [int(p.name[5:]) for p in list_checkpoints(tmp_path / "ckpt")]
    assert steps and 6 <= steps[-1] < 14  # killed mid-way, after at least two checkpoints
    resumed = train(tiny_model, PAIRS * 3, config=tiny_config(**kw), progress=False)
    reference = train(tiny_model, PAIRS * 3, config=tiny_config(max_steps=14, lora_dropout=0.1), progress=False)
    assert resumed.meta["steps"] == 14 and len(resumed.meta["losses"]) == 14
    assert resumed.meta["losses"] == reference.meta["losses"]  # no step lost or repeated
    assert weights_equal(resumed, reference)
    again = train(tiny_model, PAIRS * 3, config=tiny_config(**kw), progress=False)  # finished: nothing to redo
    assert weights_equal(again, reference)


def test_checkpoint_from_other_base_model_or_run(make_tiny_model, tiny_model, tmp_path):
    kw = dict(max_steps=2, checkpoint_every=1, checkpoint_dir=str(tmp_path / "ckpt"))
    train(tiny_model, PAIRS, config=tiny_config(**kw), progress=False)
    other = make_tiny_model(name="harmlens-test/other-tiny-llama", seed=1)
    with pytest.raises(HarmlensError, match="made with base model 'harmlens-test/tiny-random-llama'"):
        train(other, PAIRS, config=tiny_config(**kw), progress=False)
    with pytest.raises(HarmlensError, match="another training run"):
        train(tiny_model, PAIRS, config=tiny_config(lr=1e-3, **kw), progress=False)


def test_corrupt_checkpoint(tiny_model, tmp_path):
    kw = dict(max_steps=4, checkpoint_every=2, checkpoint_dir=str(tmp_path / "ckpt"))
    train(tiny_model, PAIRS, config=tiny_config(**kw), progress=False)
    last = list_checkpoints(tmp_path / "ckpt")[-1]
    data = (last / "adapter.safetensors").read_bytes()
    (last / "adapter.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(HarmlensError, match="not a readable safetensors"):
        train(tiny_model, PAIRS, config=tiny_config(**kw), progress=False)
    (last / "state.json").write_text("{not json")
    with pytest.raises(HarmlensError, match="corrupt checkpoint"):
        train(tiny_model, PAIRS, config=tiny_config(**kw), progress=False)


def test_adapter_roundtrip_merge_and_base_check(tiny_model, make_tiny_model, tmp_path):
    from peft import LoraConfig, get_peft_model, set_peft_model_state_dict

    from harmlens.guards.tuning.adapter import unwrap_model

    adapter = train(tiny_model, PAIRS, config=tiny_config(), progress=False)
    path = adapter.save(tmp_path / "adapter")
    assert sorted(p.name for p in path.iterdir()) == ["adapter.json", "adapter.safetensors"]
    loaded = Adapter.load(path, tiny_model)
    assert weights_equal(loaded, adapter) and loaded.lora == adapter.lora
    other = make_tiny_model(name="harmlens-test/other-tiny-llama", seed=1)
    with pytest.raises(HarmlensError, match="trained on base model 'harmlens-test/tiny-random-llama'"):
        Adapter.load(path, other)
    # merged weights == the LoRA model peft builds from the same tensors
    ids = torch.tensor([[1, 42, 99, 7, 300]])
    merged = adapter.merge(tiny_model)
    ref = unwrap_model(make_tiny_model())
    lora = LoraConfig(r=4, lora_alpha=8.0, target_modules=list(adapter.lora["target_modules"]))
    peft_model = get_peft_model(ref, lora)
    set_peft_model_state_dict(peft_model, {"base_model.model." + k: v for k, v in adapter.weights.items()})
    with torch.no_grad():
        torch.testing.assert_close(merged(ids).logits, peft_model(ids).logits, rtol=1e-4, atol=1e-4)
        assert not torch.allclose(merged(ids).logits, tiny_model.original_model(ids).logits)
    out = adapter.merge_and_save(tiny_model, tmp_path / "merged")
    assert (out / "model.safetensors").is_file() and (out / "tokenizer_config.json").is_file()
    assert json.loads((out / "card.json").read_text())["base_model"] == adapter.base_model


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda p: (p / "adapter.json").write_text("[]"), "corrupt adapter"),
        (lambda p: (p / "adapter.safetensors").write_bytes(b"garbage"), "not a readable safetensors"),
        (lambda p: (p / "adapter.json").unlink(), "not a saved adapter"),
    ],
)
def test_corrupt_adapter(tiny_model, tmp_path, damage, message):
    path = train(tiny_model, PAIRS, config=tiny_config(max_steps=1), progress=False).save(tmp_path / "a")
    damage(path)
    with pytest.raises(HarmlensError, match=message):
        Adapter.load(path, tiny_model)


def test_failed_save_leaves_no_adapter(tiny_model, tmp_path, monkeypatch):
    import harmlens.guards.tuning.adapter

    adapter = train(tiny_model, PAIRS, config=tiny_config(max_steps=1), progress=False)

    def disk_full(path, tensors, metadata):
        Path(path).write_bytes(b"half a file")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(harmlens.guards.tuning.adapter, "save_tensors", disk_full)
    with pytest.raises(HarmlensError, match="cannot save adapter .*No space left on device"):
        adapter.save(tmp_path / "out")
    assert list(tmp_path.iterdir()) == []  # neither the adapter folder nor a temp folder is left
