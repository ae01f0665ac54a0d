"""Hostile guard files and inputs: malformed files are refused at load, failure verdicts never fail, verdicts are
strict JSON, a bad item fails alone, and failing open never lets through an item the guard did not score."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from test_latent_guard import HARMFUL, HARMLESS, PROMPTS

import harmlens.guards.latent.guard as lg
from harmlens.errors import HarmlensError
from harmlens.guards import LatentGuard, Verdict
from harmlens.guards.cli.guard import main
from harmlens.guards.latent.configs import CentroidConfig
from harmlens.io import save_tensors
from harmlens.runtime.chat import chat_format


@pytest.fixture(scope="module")
def guard(tiny_model):
    return LatentGuard.fit(tiny_model, HARMFUL, HARMLESS, CentroidConfig(layers=(0, 1), target_fpr=0.25))


def _refused(tmp_path, tensors, meta, match: str) -> str:
    path = save_tensors(tmp_path / "bad.safetensors", tensors, meta)
    with pytest.raises(HarmlensError, match=match) as err:
        LatentGuard.load(path)
    message = str(err.value)
    assert "\n" not in message and message.startswith(str(path))
    return message


@pytest.mark.parametrize("alpha", [float("nan"), float("inf"), -float("inf"), "0.5", True, None, [0.1]])
def test_non_numeric_or_non_finite_alpha_is_refused(tmp_path, guard, alpha):
    _refused(tmp_path, guard.tensors, {**guard.metadata, "alpha": alpha}, "alpha must be a finite number")


def test_nan_alpha_no_longer_passes_every_prompt(tmp_path, tiny_model, guard):
    meta = {**guard.metadata, "alpha": float("nan")}
    path = save_tensors(tmp_path / "nan.safetensors", guard.tensors, meta)
    with pytest.raises(HarmlensError, match="alpha"):
        LatentGuard.load(path, tiny_model)
    live = LatentGuard(guard.tensors, guard.metadata, tiny_model, fail_closed=False)
    live.metadata["alpha"] = float("nan")  # behind the setter's back: every prompt fails, harmful or not
    assert all(v.error and v.harmful is False for v in live(HARMFUL[:2]))  # failing open was asked for...
    live.fail_closed = True
    assert all(v.error and v.harmful for v in live(HARMFUL[:2]))  # ...and by default nothing passes
    with pytest.raises(HarmlensError, match="finite"):
        live.alpha = float("nan")


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"method": "svm"}, "unknown guard method"),
        ({"position": "everywhere"}, "unknown guard method/position"),
        ({"layers": "0-1"}, "layers must be"),
        ({"layers": []}, "layers must be"),
        ({"layers": [0, -1]}, "layers must be"),
        ({"layers": [0, 9]}, "past the model's 2 layers"),
        ({"d_model": "64"}, "d_model must be"),
        ({"version": "1"}, "bad guard format version"),
        ({"version": 7}, "newer harmlens"),
        ({"target_fpr": 2.0}, "target_fpr"),
        ({"scales": {"span": [0.0, 0.0]}}, "scales"),
        ({"system": 5}, "system prompt"),
    ],
)
def test_bad_metadata_is_refused(tmp_path, guard, change, match):
    _refused(tmp_path, guard.tensors, {**guard.metadata, **change}, match)


@pytest.mark.parametrize(
    "record",
    [
        "calibrated",
        {"rule": "median", "target_fpr": 0.05, "n_harmless": 4, "fpr_bound": 0.2},
        {"rule": "conformal", "target_fpr": float("nan"), "n_harmless": 4, "fpr_bound": 0.2},
        {"rule": "conformal", "target_fpr": 0.05, "n_harmless": -1, "fpr_bound": 0.2},
        {"rule": "conformal", "target_fpr": 0.05, "n_harmless": 4, "fpr_bound": "low"},
    ],
)
def test_bad_calibration_record_is_refused(tmp_path, guard, record):
    assert guard.metadata["fit"]["calibration"]["rule"] == "conformal"  # the fit wrote a good one
    meta = {**guard.metadata, "fit": {**guard.metadata["fit"], "calibration": record}}
    _refused(tmp_path, guard.tensors, meta, "calibration")


def test_bad_tensors_are_refused(tmp_path, guard):
    t = guard.tensors
    _refused(tmp_path, {k: v for k, v in t.items() if k != "harmless"}, guard.metadata, "lacks tensors: harmless")
    _refused(tmp_path, t | {"harmful": torch.zeros(2, 63)}, guard.metadata, r"harmful has shape \(2, 63\)")
    _refused(tmp_path, t | {"harmful": torch.zeros(3, 64)}, guard.metadata, r"metadata says \(2, 64\)")
    nan = t["harmful"].clone()
    nan[0, 0] = float("nan")
    _refused(tmp_path, t | {"harmful": nan}, guard.metadata, "harmful is not a finite float tensor")
    _refused(tmp_path, t | {"refuse": torch.zeros(2, 64, dtype=torch.int64)}, guard.metadata, "refuse is not")
    probe = {**guard.metadata, "method": "probe"}
    _refused(tmp_path, t, probe, "lacks tensors: probe_weight, probe_bias, probe_mean")
    weights = {"probe_weight": torch.zeros(2, 64), "probe_bias": torch.zeros(3), "probe_mean": torch.zeros(2, 64)}
    _refused(tmp_path, t | weights, probe, r"probe_bias has shape \(3,\)")


def test_failed_cannot_fail_and_every_verdict_is_strict_json(tiny_model, guard):
    broken = LatentGuard(guard.tensors, guard.metadata, tiny_model)
    broken.metadata["alpha"] = "not a number"

    class Hostile:
        def __str__(self):
            raise RuntimeError("no")

    for reason in ("plain", Hostile(), "multi\nline\treason"):
        verdict = broken.failed(reason, truncated=True)
        assert isinstance(verdict, Verdict) and verdict.harmful and verdict.error
        json.dumps(verdict.to_dict(), allow_nan=False)
    assert broken.failed("x").error == "internal error: the guard could not describe a failure"
    assert guard.failed("multi\nline").error == "multi line"
    verdicts = guard(PROMPTS + ["", 42]) + [guard.failed("no score"), Verdict(True, float("inf"), {0: float("nan")})]
    for verdict in verdicts:
        data = json.loads(json.dumps(verdict.to_dict(), allow_nan=False))
        assert data["score"] is None or isinstance(data["score"], float)
    assert verdicts[-2].to_dict()["score"] is None and verdicts[-1].to_dict()["per_layer"] == {"0": None}


def test_a_bad_item_fails_alone(tiny_model, guard, monkeypatch):
    """A batch that fails is retried prompt by prompt: only the prompt that fails on its own gets a failed verdict."""
    real = lg.iter_resid_batches

    def fails_on_poison(model, prompts, *args, **kwargs):
        if any("POISON" in p.instruction for p in prompts):
            raise RuntimeError("poisoned batch")
        return real(model, prompts, *args, **kwargs)

    expected = [v.score for v in guard(PROMPTS)]
    monkeypatch.setattr(lg, "iter_resid_batches", fails_on_poison)
    verdicts = guard(PROMPTS[:2] + ["POISON pill"] + PROMPTS[2:])
    assert [v.error for v in verdicts].count(None) == len(PROMPTS)
    bad = verdicts.pop(2)
    assert bad.harmful and bad.error == "internal error: RuntimeError: poisoned batch"
    assert [v.score for v in verdicts] == pytest.approx(expected, abs=1e-5)
    guard.fail_closed = False  # failing open applies to the prompt the model read but could not score...
    try:
        assert not guard("POISON pill").harmful
        assert guard("   ").harmful and guard([None])[0].harmful  # ...never to one refused before scoring
    finally:
        guard.fail_closed = True


def test_hostile_pre_rendered_prompt_fails_closed_even_failing_open(tiny_model, guard):
    good = chat_format(tiny_model).render("Tell me a joke")
    oov = dataclasses.replace(good, input_ids=good.input_ids[:-1] + (10**9,))
    with pytest.raises(HarmlensError, match="not a token index"):  # positions outside the prompt: refused at once
        dataclasses.replace(good, t_inst=len(good) + 5)
    guard.fail_closed = False
    try:
        verdicts = guard([good, oov, "Hi"])
    finally:
        guard.fail_closed = True
    assert verdicts[0].error is None and verdicts[2].error is None
    assert verdicts[0].score == pytest.approx(guard("Tell me a joke").score, abs=1e-5)
    assert verdicts[1].harmful and "outside the vocabulary" in verdicts[1].error


def test_cli_check_prints_strict_json_and_never_fails_unscored_lines_open(tmp_path, model, guard, capsys):
    bad = save_tensors(tmp_path / "nan.safetensors", guard.tensors, {**guard.metadata, "alpha": float("nan")})
    assert main(["check", str(bad), "--prompts", "-"]) == 2  # refused before any model is loaded
    assert "alpha must be a finite number" in capsys.readouterr().err
    real = LatentGuard.fit(model, HARMFUL[:4], HARMLESS[:4], CentroidConfig(layers=(20,), balance=False))
    path = real.save(tmp_path / "g.safetensors")
    (tmp_path / "p.txt").write_bytes(b"Tell me a joke\n\xff\xfe broken utf-8\n")
    assert main(["check", str(path), "--prompts", str(tmp_path / "p.txt"), "--fail-open"]) == 0
    ok, broken = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert ok["error"] is None and broken["line"] == 2 and broken["harmful"] is True and "UTF-8" in broken["error"]
    assert broken["score"] is None


def test_guarded_generation_retries_a_failed_batch_row_by_row(tiny_model, guard, monkeypatch):
    """The prefill's verdicts: a batch that cannot be scored is scored row by row (here only batches fail)."""
    standalone = [v.score for v in guard(PROMPTS[:3])]
    real = guard.verdicts_from_acts

    def only_single_rows(acts, truncated=None):
        if len(acts) > 1:
            raise RuntimeError("batch too big")
        return real(acts, truncated)

    monkeypatch.setattr(guard, "verdicts_from_acts", only_single_rows)
    replies = guard.wrap(block=False).generate(PROMPTS[:3], max_new_tokens=2)
    assert all(r.verdict.error is None for r in replies)
    assert [r.verdict.score for r in replies] == pytest.approx(standalone, abs=1e-4)
    monkeypatch.setattr(guard, "verdicts_from_acts", lambda acts, truncated=None: 1 / 0)
    failed = guard.wrap(block=False).generate(PROMPTS[:2], max_new_tokens=2)
    assert all(r.verdict.harmful and "ZeroDivisionError" in r.verdict.error for r in failed)
