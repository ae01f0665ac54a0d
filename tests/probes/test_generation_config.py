"""GenerationConfig: impossible settings are one-line errors, overrides apply, backends are resolved in one place."""

import pytest

from harmlens.cli import Parser, add_generation_args, generation_fields
from harmlens.errors import HarmlensError
from harmlens.runtime import GenerationConfig, generation_config, get_backend, resolve_backend
from harmlens.runtime.vllm_engine import vllm_available

BAD = [
    (dict(max_new_tokens=-1), "max_new_tokens must be at least 1, got -1"),
    (dict(max_new_tokens=0), "max_new_tokens must be at least 1, got 0"),
    (dict(max_new_tokens=1.5), "max_new_tokens must be an integer, got 1.5"),
    (dict(max_new_tokens=True), "max_new_tokens must be an integer, got True"),
    (dict(batch_size=-3), "batch_size must be at least 1, got -3"),
    (dict(batch_size=2.0001), "batch_size must be an integer"),
    (dict(seed=-1), "seed must be at least 0, got -1"),
    (dict(temperature=-0.5), "temperature must be >= 0, got -0.5"),
    (dict(temperature=float("nan")), "temperature must be finite"),
    (dict(do_sample=True, temperature=0), r"temperature must be positive when sampling \(do_sample=True\), got 0"),
    (dict(top_p=0), "top_p must be > 0, got 0"),
    (dict(top_p=1.5), "top_p must be <= 1, got 1.5"),
    (dict(do_sample="yes"), "do_sample must be True or False"),
    (dict(cache="paged"), "cache must be one of dynamic, static"),
]


@pytest.mark.parametrize("fields, message", BAD, ids=[next(iter(f)) + str(i) for i, (f, _) in enumerate(BAD)])
def test_impossible_settings_are_one_line_errors(fields, message):
    with pytest.raises(HarmlensError, match=message) as info:
        GenerationConfig(**fields)
    assert "\n" not in str(info.value)
    with pytest.raises(HarmlensError, match=message):  # the same check through an override
        generation_config(None, **fields)


def test_greedy_allows_temperature_zero_and_strings_from_files_become_numbers():
    assert GenerationConfig(temperature=0).temperature == 0.0
    config = generation_config({"max_new_tokens": "8", "seed": "2"})  # e.g. read from a JSON/CLI string
    assert (config.max_new_tokens, config.seed) == (8, 2) and isinstance(config.max_new_tokens, int)


def test_overrides_apply_and_unknown_keys_are_refused():
    base = GenerationConfig(max_new_tokens=8)
    config = generation_config(base, seed=3)
    assert (config.max_new_tokens, config.seed) == (8, 3)
    assert base.seed == 0  # frozen: the base is untouched
    assert generation_config(base) is base and generation_config(None) == GenerationConfig()
    assert generation_config({"batch_size": 4}, batch_size=2).batch_size == 2  # the keyword wins over the dict
    assert config.to_dict()["seed"] == 3 and set(config.to_dict()) >= {"max_new_tokens", "do_sample", "progress"}
    with pytest.raises(HarmlensError, match=r"unknown generation setting\(s\) \['max_tokens'\]; choose from"):
        generation_config(base, max_tokens=3)
    with pytest.raises(HarmlensError, match=r"unknown generation setting\(s\) \['nope'\]"):
        generation_config({"nope": 1})
    with pytest.raises(HarmlensError, match="unknown generation setting"):
        base.replace(temprature=0.5)
    with pytest.raises(HarmlensError, match="config must be a GenerationConfig, a dict or None, got int"):
        generation_config(3)  # type: ignore[arg-type]


def test_unknown_backend_is_one_line_error(tiny_model):
    for call in (lambda: resolve_backend("tgi"), lambda: get_backend(tiny_model, "tgi")):
        with pytest.raises(HarmlensError, match="unknown generation backend 'tgi'; choose from auto, hf, vllm"):
            call()
    with pytest.raises(HarmlensError, match="backend must be 'hf', 'vllm', 'auto' or a Backend, got int"):
        get_backend(tiny_model, 3)  # type: ignore[arg-type]
    assert resolve_backend("auto", hooks=True) == "hf" and resolve_backend("auto", images=True) == "hf"
    assert get_backend(tiny_model, "hf").name == "hf"


@pytest.mark.skipif(not vllm_available(), reason="vllm is not installed")
def test_vllm_with_hooks_or_images_is_refused():
    with pytest.raises(HarmlensError, match="vLLM cannot run activation hooks"):
        resolve_backend("vllm", hooks=True)
    with pytest.raises(HarmlensError, match="image prompts are not served through vLLM"):
        resolve_backend("vllm", images=True)
    assert resolve_backend("vllm") == "vllm"


def test_cli_flags_become_one_config(capsys):
    parser = Parser(prog="test")
    add_generation_args(parser, max_new_tokens=32, batch_size=8, batch_flag="--eval-batch-size")
    args = parser.parse_args(["--max-new-tokens", "5", "--eval-batch-size", "3", "--sample", "--temperature", "0.7"])
    config = GenerationConfig(**generation_fields(args))
    assert config == GenerationConfig(max_new_tokens=5, batch_size=3, do_sample=True, temperature=0.7)
    assert GenerationConfig(**generation_fields(parser.parse_args(["--quiet"]), seed=4)) == GenerationConfig(
        max_new_tokens=32, batch_size=8, progress=False, seed=4
    )
    with pytest.raises(SystemExit):
        parser.parse_args(["--sample", "--top-p", "2"])
    assert capsys.readouterr().err.startswith("error: argument --top-p: must be <= 1, got 2")
