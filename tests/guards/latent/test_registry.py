"""harmlens.guards.latent.registry: variants are registered classes (config + Scorer), a new one is one file and one
register call, and bad registrations, unknown variants, batch sizes and empty prompts get one-line answers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import pytest
import torch
from test_latent_guard import HARMFUL, HARMLESS, PROMPTS

import harmlens.guards.fitting.fitters as fitters
import harmlens.guards.latent.registry as registry
from harmlens.errors import HarmlensError
from harmlens.guards import LatentGuard
from harmlens.guards.fitting import fit_tinst_guard, register_fitter
from harmlens.guards.latent import CentroidConfig, DeltaRefuseConfig, GuardConfig, Scorer, register_variant
from harmlens.guards.latent.variants.centroid import CentroidScorer, centroid_margins
from harmlens.io import save_tensors
from harmlens.probes.beliefs import delta_scores

BUILT_IN = "centroid, probe, span-linear, span-mlp, delta-refuse, dual"


@pytest.fixture(scope="module")
def guard(tiny_model):
    return LatentGuard.fit(tiny_model, HARMFUL, HARMLESS, CentroidConfig(layers=(0, 1), target_fpr=0.25))


def _one_line(exc: pytest.ExceptionInfo) -> str:
    message = str(exc.value)
    assert "\n" not in message
    return message


def test_registering_twice_or_a_non_class_is_one_line():
    with pytest.raises(HarmlensError) as err:
        register_variant(CentroidConfig, CentroidScorer)
    assert _one_line(err) == "guard variant 'centroid' is already registered (CentroidConfig)"
    with pytest.raises(HarmlensError) as err:
        register_variant(TopLayerConfig, CentroidScorer)  # one scorer class per variant name
    assert _one_line(err) == "CentroidScorer already scores variant 'centroid'; subclass it"
    with pytest.raises(HarmlensError, match="takes a GuardConfig subclass"):
        register_variant("centroid", CentroidScorer)  # type: ignore[arg-type]
    with pytest.raises(HarmlensError, match="takes a Scorer subclass"):
        register_variant(CentroidConfig, object)  # type: ignore[arg-type]
    with pytest.raises(HarmlensError) as err:
        registry.get_variant("svm")
    assert _one_line(err) == f"unknown guard variant 'svm'; registered: {BUILT_IN}"
    with pytest.raises(HarmlensError, match="already has a fitter"):
        register_fitter("centroid", fit_tinst_guard)
    with pytest.raises(HarmlensError, match=f"unknown guard variant 'svm'; registered: {BUILT_IN}"):
        register_fitter("svm", fit_tinst_guard)


def test_a_guard_file_of_an_unregistered_variant_names_the_registered_ones(tmp_path, guard):
    path = save_tensors(tmp_path / "svm.safetensors", guard.tensors, {**guard.metadata, "variant": "svm"})
    with pytest.raises(HarmlensError) as err:
        LatentGuard.load(path)
    assert _one_line(err) == f"{path} (guard format v1): unknown guard variant 'svm'; registered: {BUILT_IN}"
    wrong = save_tensors(tmp_path / "wrong.safetensors", guard.tensors, {**guard.metadata, "variant": "delta-refuse"})
    with pytest.raises(HarmlensError, match="'centroid'/'t_inst' for variant delta-refuse"):
        LatentGuard.load(wrong)


def test_batch_size_is_a_one_line_error_not_a_range_error(tmp_path, tiny_model, guard):
    path = guard.save(tmp_path / "g.safetensors")
    for bad in (0, -3, 2.5, "8", True, None):
        with pytest.raises(HarmlensError) as err:
            LatentGuard.load(path, tiny_model, batch_size=bad)
        assert _one_line(err) == f"batch_size must be an integer >= 1, got {bad!r}"
        with pytest.raises(HarmlensError, match="batch_size must be"):
            LatentGuard(guard.tensors, guard.metadata, batch_size=bad)
    live = LatentGuard.load(path, tiny_model, batch_size=2)
    with pytest.raises(HarmlensError, match="batch_size must be"):
        live.batch_size = 0
    assert live.batch_size == 2 and [v.score for v in live(PROMPTS)] == pytest.approx([v.score for v in guard(PROMPTS)])


def test_empty_input_is_refused_as_bad_input_even_failing_open(tiny_model, guard):
    """fail_closed=False fails open only for prompts the model read; empty input is never read, so it is harmful."""
    for fail_closed in (True, False):
        live = LatentGuard(guard.tensors, guard.metadata, tiny_model, fail_closed=fail_closed)
        verdicts = live(["", "   ", "\n\t", "Tell me a joke"])
        for verdict in verdicts[:3]:
            assert verdict.harmful and verdict.to_dict()["score"] is None
            assert verdict.error == "empty or whitespace-only prompt"
        assert verdicts[3].error is None and verdicts[3].score == pytest.approx(guard("Tell me a joke").score)
        assert live([]) == []


def test_centroid_scores_match_the_probes_delta_rule():
    """The centroid variant scores without importing harmlens.probes; it is the same rule as delta_scores."""
    g = torch.Generator().manual_seed(0)
    acts, pos, neg = (
        torch.randn(5, 3, 16, generator=g),
        torch.randn(3, 16, generator=g),
        torch.randn(3, 16, generator=g),
    )
    ours, theirs = centroid_margins(acts, pos, neg), delta_scores(acts, pos, neg)
    assert torch.equal(ours[0], theirs[0]) and torch.equal(ours[1], theirs[1])
    with pytest.raises(HarmlensError, match="harmful centroid has shape"):
        centroid_margins(acts, pos[:2], neg)


def test_the_refusal_read_is_the_delta_refuse_variant(tmp_path, tiny_model, guard):
    refuse = guard.refusal_guard()
    assert (refuse.variant, refuse.position, refuse.method) == ("delta-refuse", "t_post_inst", "centroid")
    assert refuse.config == guard.config  # fitted alongside the centroid guard: its config is that guard's
    assert (
        torch.equal(refuse.tensors["harmful"], guard.tensors["refuse"])
        and refuse.alpha == guard.metadata["alpha_refuse"]
    )
    loaded = LatentGuard.load(refuse.save(tmp_path / "refuse.safetensors"), tiny_model)
    assert loaded.variant == "delta-refuse"
    assert [v.score for v in loaded(PROMPTS)] == pytest.approx([v.score for v in refuse(PROMPTS)], abs=1e-6)
    with pytest.raises(HarmlensError) as err:
        LatentGuard.fit(tiny_model, HARMFUL, HARMLESS, DeltaRefuseConfig())
    assert _one_line(err) == (
        "guard variant 'delta-refuse' cannot be fitted on its own; fittable: centroid, probe, span-linear, span-mlp, dual"
    )


@dataclass(frozen=True)
class TopLayerConfig(GuardConfig):
    """A test variant: the centroid margins, the best layer speaking (what a new variant file holds)."""

    variant: ClassVar[str] = "top-layer"
    method: ClassVar[str] = "centroid"
    position: ClassVar[str] = "t_inst"


class TopLayerScorer(Scorer):
    """The largest per-layer centroid margin at t_inst."""

    method: ClassVar[str] = "centroid"
    position: ClassVar[str] = "t_inst"

    def score_point(self, acts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        per_layer = centroid_margins(acts, self.tensors["harmful"], self.tensors["harmless"])[1]
        return per_layer.max(-1).values, per_layer


def _fit_top_layer(make_guard, model, harmful, harmless, config, **kw):
    """The t_inst fit, naming its variant in the file (a new variant is told apart by name, not method/position)."""
    return fit_tinst_guard(
        lambda t, m: make_guard(t, {**m, "variant": config.variant}), model, harmful, harmless, config, **kw
    )


def test_a_new_variant_is_one_config_one_scorer_and_one_register_call(tmp_path, tiny_model, guard, monkeypatch):
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    monkeypatch.setattr(registry, "VARIANTS", dict(registry.VARIANTS))
    monkeypatch.setattr(fitters, "_FITTERS", dict(fitters._FITTERS))
    register_variant(TopLayerConfig, TopLayerScorer)
    register_fitter("top-layer", _fit_top_layer)
    top = LatentGuard.fit(tiny_model, HARMFUL, HARMLESS, TopLayerConfig(layers=(0, 1), target_fpr=0.25))
    assert (top.variant, top.config) == ("top-layer", TopLayerConfig(layers=(0, 1), target_fpr=0.25))
    verdicts, plain = top(PROMPTS), guard(PROMPTS)
    assert [v.score for v in verdicts] == pytest.approx([max(v.per_layer.values()) for v in plain], abs=1e-6)
    path = top.save(tmp_path / "top.safetensors")
    loaded = LatentGuard.load(path, tiny_model)
    assert loaded.variant == "top-layer" and [v.score for v in loaded(PROMPTS)] == [v.score for v in verdicts]
    monkeypatch.setattr(registry, "_REGISTRY", {k: v for k, v in registry._REGISTRY.items() if k != "top-layer"})
    with pytest.raises(HarmlensError, match=f"unknown guard variant 'top-layer'; registered: {BUILT_IN}$"):
        LatentGuard.load(path)
