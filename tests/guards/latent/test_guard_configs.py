"""harmlens.guards.latent.configs: one frozen config per variant, the registry, configs recorded in guard files."""

from __future__ import annotations

import argparse
import dataclasses
import json

import pytest
import torch
from test_latent_guard import HARMFUL, HARMLESS, PROMPTS

from harmlens.errors import HarmlensError
from harmlens.guards import LatentGuard
from harmlens.guards.cli.guard import add_guard_commands, fit_config, main
from harmlens.guards.latent.configs import (
    VARIANTS,
    CentroidConfig,
    DualConfig,
    ProbeConfig,
    SpanLinearConfig,
    SpanMLPConfig,
    config_class,
    config_from_dict,
)
from harmlens.guards.latent.guard_file import FORMAT
from harmlens.guards.latent.mlp_probe import MLPProbeConfig
from harmlens.io import load_tensors, save_tensors


def test_registry_names_every_variant_and_refuses_unknown_ones():
    assert VARIANTS == {
        "centroid": CentroidConfig,
        "probe": ProbeConfig,
        "span-linear": SpanLinearConfig,
        "span-mlp": SpanMLPConfig,
        "dual": DualConfig,
    }
    with pytest.raises(HarmlensError) as err:
        config_class("svm")
    assert str(err.value) == "unknown guard variant 'svm'; known: centroid, probe, span-linear, span-mlp, dual"
    with pytest.raises(HarmlensError, match="unknown guard variant None"):
        config_from_dict({"layers": [1]})


def test_every_field_says_what_it_is():
    for cls in VARIANTS.values():
        assert cls.__doc__ and cls.variant and cls.method in ("centroid", "probe", "dual")
        for f in dataclasses.fields(cls):
            assert f.metadata.get("help"), f"{cls.__name__}.{f.name} has no help"
            assert f.type, f"{cls.__name__}.{f.name} has no type hint"


def test_configs_are_frozen_validated_and_normalised():
    config = CentroidConfig(layers=[3, 1])
    assert config.layers == (3, 1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.seed = 2  # type: ignore[misc]
    for bad in (
        {"target_fpr": 1.5},
        {"target_fpr": float("nan")},
        {"layers": []},
        {"layers": ["1"]},
        {"layers": [True]},
        {"val_fraction": 0},
        {"batch_size": 0},
        {"balance": "yes"},
    ):
        with pytest.raises(HarmlensError):
            ProbeConfig(**bad)
    assert SpanLinearConfig(wrappers="aim").wrappers == (("aim",),)
    assert SpanLinearConfig(wrappers=["aim", "evil_confidant"]).wrappers == (("aim", "evil_confidant"),)
    assert SpanMLPConfig(wrappers=[["aim"], ["x", "y"]]).wrappers == (("aim",), ("x", "y"))
    assert SpanMLPConfig().wrappers == "default" and SpanMLPConfig(wrappers=None).wrappers is None
    with pytest.raises(HarmlensError, match="empty wrapper group"):
        SpanMLPConfig(wrappers=[["aim"], []])
    assert SpanLinearConfig().two_part and not SpanMLPConfig().two_part and SpanMLPConfig().batch_size == 8
    assert SpanMLPConfig(mlp={"hidden": 8}).mlp == MLPProbeConfig(hidden=8)
    with pytest.raises(HarmlensError, match="unknown mlp config field"):
        SpanMLPConfig(mlp={"hiden": 8})


def test_to_dict_round_trips_through_json():
    configs = [
        CentroidConfig(),
        ProbeConfig(layers=(1, 2), target_fpr=0.05, system="Be brief."),
        SpanLinearConfig(wrappers=[["aim"], ["evil_confidant"]], two_part=False, negatives_per_prompt=None),
        SpanMLPConfig(mlp=MLPProbeConfig(hidden=8, epochs=2), seed=3),
    ]
    for config in configs:
        data = json.loads(json.dumps(config.to_dict(), allow_nan=False))
        assert data["variant"] == config.variant and config_from_dict(data) == config
    with pytest.raises(HarmlensError, match="unknown centroid config field"):
        config_from_dict({"variant": "centroid", "token_probe": "mlp"})


@pytest.fixture(scope="module")
def fitted(tiny_model):
    return {
        "centroid": LatentGuard.fit(tiny_model, HARMFUL, HARMLESS, CentroidConfig(layers=(0, 1))),
        "span-mlp": LatentGuard.fit(
            tiny_model,
            HARMFUL,
            HARMLESS,
            SpanMLPConfig(layers=(1, 2), wrappers=None, mlp=MLPProbeConfig(hidden=8, epochs=1)),
        ),
    }


def test_fit_records_the_config_and_load_restores_it(tiny_model, fitted, tmp_path):
    for name, guard in fitted.items():
        assert guard.config.variant == name and guard.metadata["config"] == guard.config.to_dict()
        loaded = LatentGuard.load(guard.save(tmp_path / f"{name}.safetensors"), tiny_model)
        assert loaded.config == guard.config
        assert [v.score for v in loaded(PROMPTS)] == pytest.approx([v.score for v in guard(PROMPTS)], abs=1e-6)
    with pytest.raises(HarmlensError, match="fit takes a guard config"):
        LatentGuard.fit(tiny_model, HARMFUL, HARMLESS, "centroid")  # type: ignore[arg-type]


def _old_metadata(guard: LatentGuard) -> dict:
    """The metadata keys 0c39fe1's fit wrote (LatentGuard.save wrote tensors + metadata as they were): no config."""
    keys = ("model", "d_model", "n_layers", "method", "position", "layers", "alpha", "alpha_refuse")
    keys += ("target_fpr", "system", "fit", "token_probe", "mlp", "scales")
    meta = {k: guard.metadata[k] for k in keys if k in guard.metadata}
    return {"format": FORMAT, "version": 2 if meta.get("token_probe") == "mlp" else 1, **meta}


def test_old_format_files_keep_loading(tiny_model, fitted, tmp_path):
    for name, guard in fitted.items():
        path = save_tensors(tmp_path / f"old-{name}.safetensors", guard.tensors, _old_metadata(guard))
        assert "config" not in load_tensors(path)[1]
        loaded = LatentGuard.load(path, tiny_model)
        assert loaded.config.variant == name and loaded.config.layers == tuple(guard.layers)
        assert [v.score for v in loaded(PROMPTS)] == pytest.approx([v.score for v in guard(PROMPTS)], abs=1e-6)
    assert LatentGuard.load(path, tiny_model).config.mlp == MLPProbeConfig(hidden=8, epochs=1)
    linear = {**_old_metadata(fitted["centroid"]), "method": "probe"}  # a v1 probe file: the probe variant
    tensors = fitted["centroid"].tensors | {
        "probe_weight": torch.zeros(2, 64),
        "probe_bias": torch.zeros(2),
        "probe_mean": torch.zeros(2, 64),
    }
    assert LatentGuard.load(save_tensors(tmp_path / "p.safetensors", tensors, linear)).config.variant == "probe"


def test_a_config_contradicting_the_file_is_refused(tiny_model, fitted, tmp_path):
    guard = fitted["centroid"]
    meta = {**guard.metadata, "config": ProbeConfig().to_dict()}
    with pytest.raises(HarmlensError, match="contradicts"):
        LatentGuard.load(save_tensors(tmp_path / "x.safetensors", guard.tensors, meta), tiny_model)
    meta = {**guard.metadata, "config": {"variant": "svm"}}
    with pytest.raises(HarmlensError, match="unknown guard variant 'svm'"):
        LatentGuard.load(save_tensors(tmp_path / "y.safetensors", guard.tensors, meta), tiny_model)


def _fit_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_guard_commands(parser.add_subparsers(dest="command"))
    return parser.parse_args(["fit", "--out", "g.safetensors", *argv])


def test_cli_fit_flags_map_onto_config_fields(tmp_path, capsys):
    assert fit_config(_fit_args()) == DualConfig()  # the default guard, calibrated at 5% FPR
    assert fit_config(_fit_args("--target-fpr", "0.02", "--wrappers", "aim")) == DualConfig(
        target_fpr=0.02, wrappers=(("aim",),)
    )
    assert fit_config(_fit_args("--read", "t_inst")) == CentroidConfig()
    assert fit_config(_fit_args("--method", "probe", "--layers", "2-4", "--target-fpr", "0.1")) == ProbeConfig(
        layers=(2, 3, 4), target_fpr=0.1
    )
    span = fit_config(_fit_args("--read", "span", "--wrappers", "aim,evil_confidant;style_injection", "--no-balance"))
    assert span == SpanMLPConfig(wrappers=(("aim", "evil_confidant"), ("style_injection",)), balance=False)
    assert fit_config(_fit_args("--read", "span", "--token-probe", "linear", "--wrappers", "none")) == (
        SpanLinearConfig(wrappers=None)
    )
    assert fit_config(_fit_args("--variant", "span-linear", "--seed", "4")) == SpanLinearConfig(seed=4)
    assert main(["fit", "--variant", "svm", "--out", str(tmp_path / "g.safetensors")]) == 2
    assert "unknown guard variant 'svm'; known:" in capsys.readouterr().err
    assert main(["fit", "--method", "centroid", "--wrappers", "aim", "--out", str(tmp_path / "g.safetensors")]) == 2
