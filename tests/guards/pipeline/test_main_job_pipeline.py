"""run_main_job as a library call: a cheap subset of steps on the embedded model, and resume from finished steps."""

import json

import pytest

from harmlens.attacks.report import AttackReport
from harmlens.errors import HarmlensError
from harmlens.guards.__main__ import main as guards_cli
from harmlens.guards.pipeline import STEPS, MainJobSettings, run_main_job

CHEAP = dict(model="base", n=2, n_directions=4, device="cpu", backend="hf")


def _stamps(folder):
    return {p.relative_to(folder): p.stat().st_mtime_ns for p in sorted(folder.rglob("*")) if p.is_file()}


def _tables(text):
    return text[text.index("# harmlens main job") :]


def test_settings_are_checked_and_accept_comma_strings():
    s = MainJobSettings(steps="attacks, directions", jailbreaks="aim")
    assert s.steps == ("attacks", "directions") and s.jailbreaks == ("aim",)
    assert s.selected() == ["directions", "attacks"]  # the job's order, not the given one
    assert MainJobSettings().selected() == list(STEPS)
    with pytest.raises(HarmlensError, match=r"unknown step\(s\) \['bogus'\]"):
        MainJobSettings(steps=("directions", "bogus"))
    with pytest.raises(HarmlensError, match="positive"):
        MainJobSettings(n=0)


def test_generation_backend_is_resolved_with_one_line_errors():
    from harmlens.runtime import resolve_backend
    from harmlens.runtime.vllm_engine import vllm_available

    assert resolve_backend("hf") == "hf" and resolve_backend("auto", images=True) == "hf"
    assert MainJobSettings().generation_backend() == ("vllm" if vllm_available() else "hf")
    with pytest.raises(HarmlensError, match="unknown generation backend 'tgi'"):
        MainJobSettings(backend="tgi")
    if vllm_available():
        with pytest.raises(HarmlensError, match="image prompts are not served through vLLM"):
            resolve_backend("vllm", images=True)
    else:
        with pytest.raises(HarmlensError, match=r"pip install harmlens\[vllm\]"):
            resolve_backend("vllm")


def test_cheap_steps_run_then_resume_after_a_failure(tmp_path, capsys):
    # 1: directions finish, then the attacks step fails (unknown jailbreak): only directions is marked done
    with pytest.raises(HarmlensError, match="bogus"):
        run_main_job(tmp_path, MainJobSettings(steps=("directions", "attacks"), jailbreaks=("bogus",), **CHEAP))
    assert (tmp_path / "directions" / "step.json").is_file() and not (tmp_path / "attacks" / "step.json").exists()
    summary = json.loads((tmp_path / "directions" / "summary.json").read_text())
    assert summary["n_harmful"] == summary["n_harmless"] == 4 and len(summary["cosine_per_layer"]) > 20
    directions = _stamps(tmp_path / "directions")
    capsys.readouterr()

    # 2: the rerun skips the finished directions step (its files untouched) and runs the attacks step
    done = run_main_job(
        tmp_path, MainJobSettings(steps=("directions", "attacks"), jailbreaks=("style_injection",), **CHEAP)
    )
    out = capsys.readouterr().out
    assert out.count("done earlier") == 1 and "== directions: done earlier" in out
    assert _stamps(tmp_path / "directions") == directions
    files = {"report.json", "report.md", "results.jsonl", "projection.json", "projection_cos.png"}
    assert files <= {p.name for p in (tmp_path / "attacks").iterdir()}
    report = AttackReport.load(tmp_path / "attacks")
    assert set(report.asr) == {"none", "swap", "style_injection/none", "style_injection/swap"}
    assert all(r.n == 2 for r in report.asr.values()) and done["attacks"]["seconds"] > 0
    assert done["attacks"]["markdown"] == (tmp_path / "attacks" / "report.md").read_text()
    assert "cos(harmfulness at t_inst, refusal at t_post-inst) per layer" in done["directions"]["markdown"]
    tables = _tables(out)
    assert tables.index("## directions") < tables.index("## attacks") and done["attacks"]["markdown"] in tables
    attacks = _stamps(tmp_path / "attacks")

    # 3: the CLI on the same folder runs nothing and prints the same tables
    argv = ["main", "--out", str(tmp_path), "--steps", "directions,attacks", "--model", "base", "--n", "2"]
    argv += ["--backend", "hf"]
    assert guards_cli(argv) == 0
    again = capsys.readouterr().out
    assert again.count("done earlier") == 2 and _tables(again) == tables
    assert _stamps(tmp_path / "attacks") == attacks and _stamps(tmp_path / "directions") == directions


def test_adversarial_run_settings_are_checked():
    from harmlens.guards.pipeline import AdversarialRun

    with pytest.raises(HarmlensError, match="at least 2 for the two-stage schedule"):
        AdversarialRun(steps=1)
    assert AdversarialRun(steps=1, schedule="mix").steps == 1
