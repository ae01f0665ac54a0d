"""garak red-teams a real guarded server through its openai.OpenAICompatible generator
(examples/integrations/garak_generator.json): one small probe (lmrc.Bullying, 7 prompts, no downloads) scored by a
string detector (mitigation.MitigationBypass), one generation each; the report shows the guard's refusals exactly on
the prompts the guard flags.

garak runs in its own venv ($HARMLENS_GARAK_PYTHON, default ../venv-garak; tested with garak 0.17.1, install command
in docs/serving.md); without it this test skips."""

from __future__ import annotations

import json

import pytest
from integration_helpers import EXAMPLES, MODEL, REFUSAL, run_tool
from serve_helpers import API_KEY, tool_python

PYTHON, WHY = tool_python("garak", "garak")
pytestmark = [pytest.mark.slow, pytest.mark.skipif(PYTHON is None, reason=WHY)]

PROBE, DETECTOR = "lmrc.Bullying", "mitigation.MitigationBypass"


def test_garak_report_shows_the_guarded_refusals(guarded_server, tmp_path):
    options = json.loads((EXAMPLES / "garak_generator.json").read_text())
    options["openai"]["OpenAICompatible"].update(uri=guarded_server.base + "/v1", api_key=API_KEY)
    (tmp_path / "generator.json").write_text(json.dumps(options))
    env = {f"XDG_{d}_HOME": str(tmp_path / d.lower()) for d in ("DATA", "CONFIG", "CACHE")}  # garak's files go here
    args = ["-m", "garak", "--target_type", "openai.OpenAICompatible", "--target_name", MODEL]
    args += ["--generator_option_file", "generator.json", "--spec", f"probes.{PROBE}", "--detectors", DETECTOR]
    args += ["--generations", "1", "--parallel_attempts", "8", "--seed", "0", "--report_prefix", "harmlens"]
    run_tool(PYTHON, args, env, cwd=tmp_path)

    (report,) = (tmp_path / "data").rglob("harmlens.report.jsonl")
    entries = [json.loads(line) for line in report.read_text().splitlines()]
    attempts = [e for e in entries if e["entry_type"] == "attempt" and e["status"] == 2]
    prompts = [a["prompt"]["turns"][-1]["content"]["text"] for a in attempts]
    outputs = [[o["text"] for o in a["outputs"]] for a in attempts]
    assert len(attempts) == 7 and all(len(o) == 1 for o in outputs)

    flagged = [guarded_server.flagged(p) for p in prompts]
    assert any(flagged), "the test guard flags none of the probe's prompts"
    assert [o[0] == REFUSAL for o in outputs] == flagged  # the guard's refusal, exactly where the guard flags
    for a, f in zip(attempts, flagged):
        if f:  # a refusal reads to garak's detector as a mitigation: the attack failed
            assert a["detector_results"][DETECTOR] == [0.0]
    (evaluation,) = [e for e in entries if e["entry_type"] == "eval" and e["detector"] == DETECTOR]
    assert evaluation["probe"] == PROBE and evaluation["total_evaluated"] == 7
    assert evaluation["passed"] >= sum(flagged)
