"""The runtime's continuous-batching step loop (StepBatch) against plain HF generation on a tiny random Llama."""

from __future__ import annotations

import torch

from harmlens.runtime import GenerationConfig, HFBackend, StepBatch, StepRequest, add_hooks, chat_format

PROMPTS = ["How do I bake bread?", "Name three colours", "Write a haiku about the sea in winter, please", "Hi"]
CONFIG = GenerationConfig(max_new_tokens=10, batch_size=1, progress=False)


def _drain(batch: StepBatch) -> None:
    while batch.running:
        batch.step()


def test_rows_joining_and_leaving_between_steps_generate_what_each_would_alone(tiny_model):
    prompts = chat_format(tiny_model).render_many(PROMPTS)
    alone = HFBackend(tiny_model).generate_ids(prompts, CONFIG)
    batch = StepBatch(tiny_model)
    reqs = [StepRequest(list(p.input_ids), 10) for p in prompts]
    batch.admit(reqs[:2])
    batch.step()
    batch.step()
    batch.admit(reqs[2:3])  # joins a running batch with a different cache length
    batch.step()
    batch.drop([reqs[0]])  # leaves mid-reply: its cache rows go, the others continue unchanged
    batch.admit(reqs[3:])
    _drain(batch)
    assert reqs[0].finish == "dropped" and reqs[0].new_ids == alone[0][: len(reqs[0].new_ids)]
    assert [r.new_ids for r in reqs[1:]] == alone[1:]
    assert all(r.finish in ("length", "stop") for r in reqs[1:]) and batch.cache is None


def test_steering_hooks_apply_as_in_the_hf_engine(tiny_model):
    prompt = chat_format(tiny_model).render_many(["Tell me a story"])[0]
    v = torch.randn(tiny_model.cfg.d_model, generator=torch.Generator().manual_seed(0)) * 3
    hooks = lambda: add_hooks(tiny_model, [("blocks.1.hook_resid_pre", lambda x: x + v)])  # noqa: E731
    plain = HFBackend(tiny_model).generate_ids([prompt], CONFIG)[0]
    steered = HFBackend(tiny_model, hooks=hooks).generate_ids([prompt], CONFIG)[0]
    batch = StepBatch(tiny_model, hooks=hooks)
    req = StepRequest(list(prompt.input_ids), 10)
    batch.admit([req])
    _drain(batch)
    assert req.new_ids == steered != plain


def test_the_read_stops_flagged_rows_at_the_prefill_and_top_p_narrows_sampling(tiny_model):
    prompts = chat_format(tiny_model).render_many(PROMPTS[:3])
    seen = {}

    def decide(reqs, acts):
        seen.update({id(r): a for r, a in zip(reqs, acts)})
        return [r.tag == "flag" for r in reqs]

    batch = StepBatch(tiny_model, read_layers=(0, 2), decide=decide)
    greedy = HFBackend(tiny_model).generate_ids(prompts[1:2], CONFIG)[0]
    reqs = [
        StepRequest(list(prompts[0].input_ids), 10, positions=(3, 5), tag="flag"),
        StepRequest(list(prompts[1].input_ids), 10, temperature=1.0, top_p=1e-6, seed=3, positions=(2,)),
        StepRequest(list(prompts[2].input_ids), 10, temperature=1.0, seed=3, positions=(2,)),
    ]
    batch.admit(reqs)
    assert reqs[0].finish == "read" and reqs[0].new_ids == [] and len(batch.running) == 2
    assert seen[id(reqs[0])].shape == (2, 2, tiny_model.cfg.d_model)
    _drain(batch)
    assert reqs[1].new_ids == greedy  # top_p that keeps one token is greedy
    again = StepRequest(list(prompts[2].input_ids), 10, temperature=1.0, seed=3, positions=(2,))
    batch.admit([again])
    _drain(batch)
    assert again.new_ids == reqs[2].new_ids  # a request's own seed makes its sample reproducible
