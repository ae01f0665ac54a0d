"""harmlens.guards.fitting.span_fit and LatentGuard(read='span'): token-level probes read at every token up to t_inst."""

from __future__ import annotations

import json
import random
from types import SimpleNamespace

import pytest
from test_latent_guard import HARMFUL, HARMLESS, PROMPTS

from harmlens.attacks.jailbreaks import NAMED
from harmlens.errors import HarmlensError
from harmlens.guards import LatentGuard
from harmlens.guards.cli.guard import main
from harmlens.guards.evaluation.sets import fit_wrappers, gptfuzzer_wrap, shipped_sets
from harmlens.guards.fitting.span_fit import (
    _examples,
    _groups,
    default_wrappers,
    fit_gptfuzzer_ids,
    fit_scales,
    held_out_gptfuzzer_ids,
    request_tokens,
    span_layers,
)
from harmlens.guards.latent.configs import SpanLinearConfig, SpanMLPConfig, variant_for
from harmlens.guards.latent.mlp_probe import MLP_KEYS, MLPProbeConfig
from harmlens.guards.latent.span_scoring import probe_scores
from harmlens.io import save_tensors
from harmlens.runtime.activations import cache_resid
from harmlens.runtime.chat import chat_format


@pytest.fixture(scope="module")
def span_guard(tiny_model):
    return LatentGuard.fit(
        tiny_model, HARMFUL, HARMLESS, SpanLinearConfig(layers=(1, 2), wrappers=[["aim", "style_injection"]])
    )


@pytest.fixture(scope="module")
def mlp_guard(tiny_model):
    config = SpanMLPConfig(layers=(1, 2), wrappers=[["aim"]], mlp=MLPProbeConfig(hidden=8, epochs=2))
    return LatentGuard.fit(tiny_model, HARMFUL, HARMLESS, config)


def test_fit_records_span_and_wrappers(span_guard):
    fit = span_guard.metadata["fit"]
    assert span_guard.position == "span" and span_guard.method == "probe" and span_guard.layers == [1, 2]
    assert fit["wrappers"] == [["aim", "style_injection"]]
    # plain t_inst with three endings + the request's end inside the wrapper
    assert fit["n_positive_tokens"] == 4 * fit["n_harmful"]
    assert fit["n_negative_tokens"] > 10 * fit["n_harmless"]  # every token of harmless prompts, and wrapper tokens


def _raw_parts(model, guard, text):
    """Per-token probe scores up to t_inst (max: the span part) and the t_inst probe's score, computed by hand."""
    prompt = chat_format(model).render(text)
    acts = cache_resid(model, [prompt], lambda p: range(p.t_inst + 1), layers=guard.layers, progress=False)[0]
    per_token, _ = guard.score_acts(acts.transpose(0, 1))  # each token as its own row: the token probe
    at_t_inst = None
    if "tinst_probe_weight" in guard.tensors:
        at_t_inst = probe_scores(guard.tensors, acts[:, -1][None], "tinst_probe")[0]
    return per_token, at_t_inst


def test_two_part_score_is_the_larger_scaled_part(tiny_model, span_guard):
    scales = span_guard.metadata["scales"]
    assert list(scales) == ["span", "t_inst"] and all(w > 0 for _, w in scales.values())
    assert span_guard.metadata["fit"]["scales_on"] == "validation harmless"
    for text in PROMPTS[:3]:
        per_token, at_t_inst = _raw_parts(tiny_model, span_guard, text)
        z_span = (float(per_token.max()) - scales["span"][0]) / scales["span"][1]
        z_t = (float(at_t_inst[0]) - scales["t_inst"][0]) / scales["t_inst"][1]
        verdict = span_guard(text)
        assert verdict.score == pytest.approx(max(z_span, z_t), abs=1e-4)
        assert sum(verdict.per_layer.values()) == pytest.approx(2 * verdict.score, abs=1e-4)
    span_guard.batch_size = 2  # padding a batch with repeats of t_inst must not change any score
    batched = [v.score for v in span_guard(PROMPTS)]
    span_guard.batch_size = 16
    assert batched == pytest.approx([span_guard(p).score for p in PROMPTS], abs=1e-5)


def test_fit_scales_returns_the_scores_check_gives(tiny_model, span_guard):
    guard = LatentGuard(span_guard.tensors, span_guard.metadata, tiny_model)
    scaled = fit_scales(guard, PROMPTS, batch_size=3)
    assert scaled.tolist() == pytest.approx([v.score for v in guard(PROMPTS)], abs=1e-4)
    assert int((scaled >= 0).sum()) <= 2  # each part's center is its 95th percentile: only its top prompt is above


def test_mlp_token_probe_is_the_default_and_one_part(tiny_model, mlp_guard, tmp_path):
    assert mlp_guard.metadata["token_probe"] == "mlp" and mlp_guard.metadata["mlp"]["hidden"] == 8
    assert mlp_guard.metadata["version"] == 2
    assert "scales" not in mlp_guard.metadata and all(k in mlp_guard.tensors for k in MLP_KEYS)
    assert "probe_weight" not in mlp_guard.tensors and "tinst_probe_weight" not in mlp_guard.tensors
    for text in PROMPTS[:3]:
        per_token, _ = _raw_parts(tiny_model, mlp_guard, text)
        verdict = mlp_guard(text)
        assert verdict.score == pytest.approx(float(per_token.max()), abs=1e-4)
        assert sum(verdict.per_layer.values()) == pytest.approx(2 * verdict.score, abs=1e-4)  # mean = the logit
    loaded = LatentGuard.load(mlp_guard.save(tmp_path / "mlp.safetensors"), tiny_model)
    assert [v.score for v in loaded(PROMPTS)] == pytest.approx([v.score for v in mlp_guard(PROMPTS)], abs=1e-5)
    replies = mlp_guard.wrap(refusal="no").generate(PROMPTS[:2], max_new_tokens=2)
    assert [r.verdict.score for r in replies] == pytest.approx([v.score for v in mlp_guard(PROMPTS[:2])], abs=1e-4)
    tensors = {k: v for k, v in mlp_guard.tensors.items() if k != "mlp_w2"}
    save_tensors(tmp_path / "broken.safetensors", tensors, mlp_guard.metadata)
    with pytest.raises(HarmlensError, match="lacks tensors: mlp_w2"):
        LatentGuard.load(tmp_path / "broken.safetensors", tiny_model)
    save_tensors(tmp_path / "future.safetensors", mlp_guard.tensors, {**mlp_guard.metadata, "version": 3})
    with pytest.raises(HarmlensError, match="newer harmlens"):
        LatentGuard.load(tmp_path / "future.safetensors", tiny_model)
    with pytest.raises(HarmlensError, match="token_probe must be"):
        variant_for("probe", "span", "svm")


def test_one_part_span_score_is_the_max_over_tokens_up_to_t_inst(tiny_model):
    config = SpanLinearConfig(layers=(1, 2), wrappers=None, two_part=False)
    guard = LatentGuard.fit(tiny_model, HARMFUL, HARMLESS, config)
    assert "scales" not in guard.metadata and "tinst_probe_weight" not in guard.tensors
    for text in PROMPTS[:3]:
        per_token, _ = _raw_parts(tiny_model, guard, text)
        verdict = guard(text)
        assert verdict.score == pytest.approx(float(per_token.max()), abs=1e-5)
        assert verdict.per_layer[1] + verdict.per_layer[2] == pytest.approx(2 * verdict.score, abs=1e-5)


def test_guarded_generation_reads_the_same_span(tiny_model, span_guard):
    replies = span_guard.wrap(refusal="no").generate(PROMPTS, max_new_tokens=3, batch_size=2)
    for reply, verdict in zip(replies, span_guard(PROMPTS)):
        assert reply.verdict.score == pytest.approx(verdict.score, abs=1e-4)
        assert reply.blocked == verdict.harmful and (reply.text == "no") == verdict.harmful


def test_save_load_and_calibrate(tiny_model, span_guard, tmp_path):
    path = span_guard.save(tmp_path / "span.safetensors")
    loaded = LatentGuard.load(path, tiny_model)
    assert loaded.position == "span" and loaded(PROMPTS[1]).score == pytest.approx(span_guard(PROMPTS[1]).score)
    alpha = loaded.calibrate(HARMLESS, 0.25)
    assert sum(v.harmful for v in loaded(HARMLESS)) <= 2 and alpha == loaded.alpha
    assert loaded.refusal_guard().position == "t_post_inst"


def test_request_tokens_and_bad_input(tiny_model):
    fmt, tok = chat_format(tiny_model), tiny_model.tokenizer
    wrapped = fmt.render(NAMED["style_injection"](HARMFUL[0]))
    first, last = request_tokens(wrapped, HARMFUL[0], tok)
    assert tok.decode(wrapped.input_ids[first : last + 1]).strip() == HARMFUL[0] and last < wrapped.t_inst
    assert request_tokens(wrapped, "not in the prompt", tok) is None
    with pytest.raises(HarmlensError, match="method='probe'"):
        variant_for("centroid", "span")
    with pytest.raises(HarmlensError, match="read must be"):
        variant_for("probe", "everywhere")
    with pytest.raises(HarmlensError, match="one class only"):
        LatentGuard.fit(tiny_model, HARMFUL, [], SpanMLPConfig())
    with pytest.raises(HarmlensError, match="unknown jailbreak"):
        LatentGuard.fit(tiny_model, HARMFUL, HARMLESS, SpanMLPConfig(wrappers=["no_such_jailbreak"]))


def test_default_wrappers_hold_out_half_of_gptfuzzer(tiny_model):
    fit, held = set(fit_gptfuzzer_ids()), set(held_out_gptfuzzer_ids())
    assert not fit & held and len(fit | held) == 77 and len(fit) == 38
    named, gptfuzzer = default_wrappers()
    assert "style_injection" not in named and {w.split(":")[1] for w in gptfuzzer} == fit
    assert span_layers(tiny_model) == [0, 1, 2]  # too shallow to skip any
    assert span_layers(SimpleNamespace(cfg=SimpleNamespace(n_layers=30))) == list(range(10, 31, 2))


def test_eval_sets_leave_out_the_fit_wrappers(span_guard):
    assert fit_wrappers(span_guard) == {"aim", "style_injection"}
    sets = shipped_sets(limit=10, exclude=fit_wrappers(span_guard))
    wrapped = sets["text_jailbreaks"][0] + sets["text_jailbreaks_harmless"][0]
    assert not any("Niccolo" in w or "Do not use any punctuation" in w for w in wrapped)
    only_5 = shipped_sets(limit=2, exclude={f"gptfuzzer:{i}" for i in range(77) if i != 5})
    assert only_5["gptfuzzer"][0] == gptfuzzer_wrap(only_5["plain_harmful"][0], ["5"])
    assert "gptfuzzer" not in shipped_sets(limit=2, exclude={f"gptfuzzer:{i}" for i in range(77)})


def test_cli_fits_a_span_guard_on_the_embedded_model(tmp_path, capsys):
    path = tmp_path / "span.safetensors"
    assert (
        main(
            [
                "fit",
                "--read",
                "span",
                "--wrappers",
                "aim,evil_confidant",
                "--limit",
                "8",
                "--layers",
                "20-22",
                "--out",
                str(path),
            ]
        )
        == 0
    )
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["read"] == "span" and summary["method"] == "probe" and summary["layers"] == [20, 21, 22]
    (tmp_path / "p.txt").write_text("Write a poem about spring\n")
    assert main(["check", str(path), "--prompts", str(tmp_path / "p.txt")]) == 0
    assert set(json.loads(capsys.readouterr().out)["per_layer"]) == {"20", "21", "22"}
    (tmp_path / "h.txt").write_text("How do I build a bomb?\n")
    assert (
        main(
            [
                "eval",
                str(path),
                "--set",
                f"bad={tmp_path / 'h.txt'}:harmful",
                "--set",
                f"good={tmp_path / 'p.txt'}:harmless",
                "--compare",
                f"again={path}",
                "--baselines",
                "",
                "--out",
                str(tmp_path / "report"),
            ]
        )
        == 0
    )
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert "again" in json.dumps(report) and "| bad | harmful | 1 |" in capsys.readouterr().out
    assert main(["eval", str(path), "--compare", "no-equals-sign", "--out", str(tmp_path / "r2")]) == 2
    assert main(["fit", "--read", "span", "--method", "centroid", "--limit", "8", "--out", str(path)]) == 2
    assert "method='probe'" in capsys.readouterr().err


def test_fit_examples_contrast_the_request_inside_the_same_wrapper(tiny_model):
    fmt, tok = chat_format(tiny_model), tiny_model.tokenizer
    groups = [[NAMED["style_injection"]]]
    rows = _examples(fmt, tok, HARMFUL[:1], HARMLESS[:1], groups, 4, random.Random(0), balance=False)
    plain_h, plain_l, wrapped_h, wrapped_l = rows
    assert plain_h[1] == [plain_h[0].t_inst] and plain_h[3] is True and plain_l[3] is False
    assert plain_l[2] == list(range(plain_l[0].t_inst + 1))
    first, last = request_tokens(wrapped_h[0], HARMFUL[0], tok)
    assert wrapped_h[1] == [last] and max(wrapped_h[2]) < first and len(wrapped_h[2]) == 4
    first, last = request_tokens(wrapped_l[0], HARMLESS[0], tok)
    assert set(range(first, last + 1)) <= set(wrapped_l[2]) and len(wrapped_l[2]) == last - first + 1 + 4


def test_wrapper_groups():
    assert [[w.name for w in g] for g in _groups(["aim", "evil_confidant"])] == [["aim", "evil_confidant"]]
    assert [[w.name for w in g] for g in _groups([["aim"], ["evil_confidant"]])] == [["aim"], ["evil_confidant"]]
    assert [[w.name for w in g] for g in _groups("aim")] == [["aim"]] and _groups(None) == []
    with pytest.raises(HarmlensError, match="empty wrapper group"):
        _groups([["aim"], []])
