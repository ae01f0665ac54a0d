"""Prompt file readers (every format in ../shared/data) and the built-in sets."""

import pytest

from harmlens.errors import HarmlensError
from harmlens.probes.data import builtin_prompts, load_prompt_source, read_prompts


def test_formats(tmp_path):
    (tmp_path / "a.json").write_text('[{"instruction": "x1"}, {"instruction": "x2"}]')
    (tmp_path / "b.jsonl").write_text('{"bad_q": "y1"}\n\n{"prompt": "y2"}\n')
    (tmp_path / "c.csv").write_text('id,prompt,label\n1,"z1, with comma",safe\n2,z2,safe\n')
    (tmp_path / "d.txt").write_text("w1\n\n  \nw2\n")
    (tmp_path / "e.json").write_text('["s1", "s2"]')
    assert read_prompts(tmp_path / "a.json") == ["x1", "x2"]
    assert read_prompts(tmp_path / "b.jsonl") == ["y1", "y2"]
    assert read_prompts(tmp_path / "c.csv") == ["z1, with comma", "z2"]
    assert read_prompts(tmp_path / "d.txt") == ["w1", "w2"]
    assert read_prompts(tmp_path / "e.json", limit=1) == ["s1"]


@pytest.mark.parametrize(
    "rel,n",
    [
        ("harmful/harmful_train.json", 259),
        ("harmful/sorry_badq.jsonl", 438),
        ("harmless/xstest_prompts.csv", 450),
        ("harmless/xstest_harmless.jsonl", 250),
        ("harmful/catqa/adult-content.jsonl", 50),
    ],
)
def test_shared_benchmark_files(rel, n, shared_data):
    prompts = read_prompts(shared_data(rel))
    assert len(prompts) == n and all(isinstance(p, str) and p.strip() for p in prompts)


@pytest.mark.parametrize(
    "name,content,match",
    [
        ("x.yaml", "- a", "unknown prompt file format"),
        ("x.json", "{not json", "not valid JSON"),
        ("x.json", '[{"foo": 1}]', "unknown record layout with columns foo"),
        ("x.csv", "id,foo\n1,a\n", "unknown CSV layout with columns id, foo"),
        ("x.txt", "\n \n", "no prompts"),
    ],
)
def test_bad_files_give_one_line_errors(tmp_path, name, content, match):
    (tmp_path / name).write_text(content)
    with pytest.raises(HarmlensError, match=match) as info:
        read_prompts(tmp_path / name)
    assert "\n" not in str(info.value)


def test_missing_and_non_utf8(tmp_path):
    with pytest.raises(HarmlensError, match="not found"):
        read_prompts(tmp_path / "nope.json")
    (tmp_path / "bin.txt").write_bytes(b"\xff\xfe\x00abc")
    with pytest.raises(HarmlensError, match="UTF-8"):
        read_prompts(tmp_path / "bin.txt")


def test_builtin_sets_are_disjoint_splits():
    train, val = builtin_prompts("harmful", "train"), builtin_prompts("harmful", "val")
    assert len(train) == 259 and len(val) == 39 and not set(train) & set(val)
    assert len(builtin_prompts("harmless", "train")) == 300
    assert load_prompt_source("builtin:harmless:val", "harmful", limit=5) == builtin_prompts("harmless", "val")[:5]
    with pytest.raises(HarmlensError, match="unknown built-in"):
        builtin_prompts("nope")
