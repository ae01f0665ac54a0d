"""The main job's orchestration: step parsing, resume from finished steps, and the printed tables."""

import json

import pytest

from harmlens.guards.__main__ import main as guards_cli
from harmlens.guards.cli.main_job import STEPS


def test_unknown_step_is_one_line_error(tmp_path, capsys):
    assert guards_cli(["main", "--out", str(tmp_path), "--steps", "directions,bogus"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: unknown step(s) ['bogus']") and "\n" not in err


def test_finished_steps_are_skipped_and_their_tables_printed(tmp_path, capsys):
    for i, name in enumerate(STEPS):
        (tmp_path / name).mkdir()
        (tmp_path / name / "step.json").write_text(json.dumps({"seconds": i, "markdown": f"table of {name}"}))
    assert guards_cli(["main", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert out.count("done earlier") == len(STEPS)
    assert [line for line in out.splitlines() if line.startswith("table of ")] == [f"table of {s}" for s in STEPS]


def test_help_lists_every_step(capsys):
    with pytest.raises(SystemExit):
        guards_cli(["main", "--help"])
    text = "".join(capsys.readouterr().out.split())  # argparse may wrap inside the long default
    assert ",".join(STEPS) in text
