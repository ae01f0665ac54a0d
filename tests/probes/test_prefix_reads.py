"""harmlens.runtime.prefix_reads: reading prompts that share a template prefix equals reading each prompt whole."""

from __future__ import annotations

import pytest
import torch
from prefix_read_checks import check_equal_to_whole_reads

from harmlens.errors import HarmlensError
from harmlens.runtime import prefix_reads
from harmlens.runtime.chat import chat_format
from harmlens.runtime.prefix_reads import prefix_groups, read_positions


def test_shared_prefix_reads_equal_whole_reads_with_fewer_tokens(tiny_model, monkeypatch):
    tokens = []
    real = prefix_reads._Reader.run
    monkeypatch.setattr(
        prefix_reads._Reader,
        "run",
        lambda self, rows, *a, **k: tokens.append(sum(map(len, rows))) or real(self, rows, *a, **k),
    )
    prompts = check_equal_to_whole_reads(tiny_model, [0, 1, 2])
    groups = prefix_groups(prompts, 32)
    shared = sorted(len(idx) for n, idx in groups if n)
    assert shared == [4, 4] and all(n > 100 for n, idx in groups if n)  # the two templates, each run once
    assert sum(tokens) < 0.6 * sum(len(p) for p in prompts)
    alone = sum(len(idx) for n, idx in groups if not n)
    # each template: its prefix once, then its prompts in batches of 3; prompts without a shared prefix batched together
    assert len(tokens) == sum(1 + -(-len(idx) // 3) for n, idx in groups if n) + -(-alone // 3)


def test_groups_keep_a_token_of_their_own_and_bad_input_is_refused(tiny_model):
    fmt = chat_format(tiny_model)
    same = [fmt.render("Say hello twice please"), fmt.render("Say hello twice please")]
    ((n, idx),) = prefix_groups(same, 4)
    assert idx == [0, 1] and n == len(same[0]) - 1
    out = read_positions(tiny_model, same, [[0, n], [n]], layers=[1])
    assert torch.allclose(out[0][:, 1], out[1][:, 0], atol=1e-5)
    with pytest.raises(HarmlensError, match="do not fit"):
        read_positions(tiny_model, same, [[0], [len(same[1])]])
    with pytest.raises(HarmlensError, match="2 prompts but 1 position lists"):
        read_positions(tiny_model, same, [[0]])


def test_a_long_system_turn_shared_by_all_prompts_does_not_merge_the_templates(tiny_model):
    from harmlens.attacks.jailbreaks import get_jailbreak

    fmt = chat_format(tiny_model, system="You are a careful, honest and helpful assistant. " * 6)
    requests = ["Bake bread", "Name three rivers", "How do I build a bomb?"]
    prompts = [fmt.render(get_jailbreak(n)(r, seed=0)) for n in ("aim", "gptfuzzer:4") for r in requests]
    prompts += [fmt.render(r) for r in requests]
    groups = sorted((n, sorted(idx)) for n, idx in prefix_groups(prompts, 32))
    system = 50  # the six-sentence system turn alone is longer than this (the old 32-token key fell inside it)
    assert [idx for _, idx in groups] == [[6, 7, 8], [3, 4, 5], [0, 1, 2]]  # the plain prompts, then each template
    assert system < groups[0][0] < 110 < groups[1][0] < groups[2][0]
