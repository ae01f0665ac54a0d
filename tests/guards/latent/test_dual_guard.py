"""The dual variant (t_inst centroid + span MLP, the larger standardised part deciding), the default of LatentGuard.fit."""

from __future__ import annotations

import pytest
import torch
from test_latent_guard import PROMPTS

from harmlens.errors import HarmlensError
from harmlens.guards import LatentGuard
from harmlens.guards.fitting.dual_fit import wrap_in, xstest_calibration
from harmlens.guards.fitting.span_fit import wrapper_groups
from harmlens.guards.latent.mlp_probe import MLPProbeConfig
from harmlens.guards.latent.variants.dual import DualConfig, corroborated
from harmlens.probes.data import builtin_prompts

HARMFUL, HARMLESS = builtin_prompts("harmful", "train", limit=24), builtin_prompts("harmless", "train", limit=24)

SMALL = dict(wrappers=[["aim"], ["style_injection"]], mlp=MLPProbeConfig(hidden=8, epochs=2))


@pytest.fixture(scope="module")
def default_guard(tiny_model):
    """LatentGuard.fit with no config: the default variant (dual, calibrated at 5% FPR)."""
    return LatentGuard.fit(tiny_model, HARMFUL, HARMLESS)


@pytest.fixture(scope="module")
def dual_guard(tiny_model):
    return LatentGuard.fit(tiny_model, HARMFUL, HARMLESS, DualConfig(corroborate=0.5, **SMALL))


def test_the_default_fit_is_the_calibrated_dual_guard(default_guard):
    assert default_guard.variant == "dual" and default_guard.config == DualConfig()
    assert default_guard.metadata["target_fpr"] == 0.05 and default_guard.metadata["corroborate"] is None
    parts = default_guard.metadata["parts"]
    assert set(parts["t_inst"]) | set(parts["span"]) == set(default_guard.layers)
    sources = default_guard.metadata["fit"]["calibration_sources"]
    assert set(sources) == {"plain", "wrapped"}
    assert default_guard.alpha == max(s["alpha"] for s in sources.values())
    scales = default_guard.metadata["scales"]
    for text in PROMPTS[:3]:  # the larger standardised part decides
        raw = default_guard.scorer.parts(default_guard.read([default_guard.prepare(text)[0]]))
        z = [float((raw[k][0] - scales[k][0]) / scales[k][1]) for k in ("t_inst", "span")]
        assert default_guard(text).score == pytest.approx(max(z), abs=1e-4)


def test_verdict_follows_the_corroborated_rule(dual_guard):
    texts = PROMPTS[:4]
    verdicts = dual_guard(texts)
    for text, v in zip(texts, verdicts):  # the full span read, one prompt at a time
        acts = dual_guard.read([dual_guard.prepare(text)[0]])
        raw = dual_guard.scorer.parts(acts)
        scales = dual_guard.metadata["scales"]
        z_t = float((raw["t_inst"][0] - scales["t_inst"][0]) / scales["t_inst"][1])
        z_s = float((raw["span"][0] - scales["span"][0]) / scales["span"][1])
        assert v.score == pytest.approx(max(z_t, min(z_s, z_t + 0.5)), abs=1e-4)
        assert v.harmful == (v.score >= dual_guard.alpha)
    # a span part far above threshold cannot flag a prompt t_inst calls clearly benign
    low_t, high_s = torch.tensor([-5.0]), torch.tensor([50.0])
    assert float(corroborated(low_t, high_s, 1.0)) == -4.0 and float(corroborated(low_t, high_s, None)) == 50.0


def test_round_trip_keeps_scores_and_variant(tmp_path, tiny_model, dual_guard):
    path = dual_guard.save(tmp_path / "dual.safetensors")
    loaded = LatentGuard.load(path, tiny_model)
    assert loaded.variant == "dual" and loaded.config == dual_guard.config and loaded.alpha == dual_guard.alpha
    assert [v.score for v in loaded(PROMPTS)] == pytest.approx([v.score for v in dual_guard(PROMPTS)], abs=1e-5)


def test_alpha_holds_on_every_calibration_source(tiny_model, dual_guard):
    """α is the largest per-source threshold, so at most the conformal share of each source is flagged."""
    sources = dual_guard.metadata["fit"]["calibration_sources"]
    assert dual_guard.alpha == pytest.approx(max(s["alpha"] for s in sources.values()))
    assert dual_guard.metadata["fit"]["calibration"]["n_harmless"] == min(s["n"] for s in sources.values())
    assert all(s["alpha"] <= dual_guard.alpha for s in sources.values())
    wrapped = wrap_in(wrapper_groups(SMALL["wrappers"]), ["Explain photosynthesis", "Name three rivers"])
    assert "Explain photosynthesis" in wrapped[0] and "Name three rivers" in wrapped[1]
    assert wrapped[0] != "Explain photosynthesis" and wrapped[1] != "Name three rivers"


def test_xstest_calibration_prompts_are_not_the_evaluation_ones():
    from harmlens.guards.organisms.datasets import eval_prompts

    cal, evaluated = set(xstest_calibration()), set(eval_prompts("xstest")[:125])
    assert len(cal) == 125 and not cal & evaluated


@pytest.mark.parametrize(
    "bad, words",
    [
        (dict(corroborate=-1.0), "corroborate"),
        (dict(calibrate_on=("wrapped",)), "plain"),
        (dict(calibrate_on=("plain", "imagenet")), "calibrate_on"),
        (dict(two_part=True), "two_part"),
    ],
)
def test_bad_config_is_one_line(bad, words):
    with pytest.raises(HarmlensError, match=words) as err:
        DualConfig(**bad)
    assert "\n" not in str(err.value)


def test_a_file_without_parts_is_refused(tmp_path, dual_guard):
    meta = {k: v for k, v in dual_guard.metadata.items() if k != "parts"}
    with pytest.raises(HarmlensError, match="parts"):
        LatentGuard(dual_guard.tensors, meta)
