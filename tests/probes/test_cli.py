"""`python -m harmlens.probes` end to end on the embedded model, and its one-line errors."""

import json
import subprocess
import sys

import pytest

from harmlens.probes.__main__ import main


def test_extract_writes_files_and_plots(tmp_path, capsys):
    out = tmp_path / "run"
    assert (
        main(
            [
                "extract",
                "--out",
                str(out),
                "--n",
                "6",
                "--quiet",
                "--layers",
                "10-12,30",
                "--val-harmful",
                "builtin:harmful:val",
                "--val-harmless",
                "builtin:harmless:val",
            ]
        )
        == 0
    )
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_harmful"] == 6 and [r["layer"] for r in summary["cosine_per_layer"]] == [10, 11, 12, 30]
    for name in summary["files"]:
        assert (out / name).stat().st_size > 1000, name
    assert (out / "cosine_per_layer.png").read_bytes()[:4] == b"\x89PNG"
    assert (
        summary["belief_means"]["harmful (val)"]["delta_harmful"]
        > summary["belief_means"]["harmless (val)"]["delta_harmful"]
    )
    # the set's completion marker lists its files; no temp files or folders left behind
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == [".harmlens-complete"]
    assert set(json.loads((out / ".harmlens-complete").read_text())["files"]) >= {*summary["files"], "summary.json"}
    assert [p.name for p in tmp_path.iterdir()] == ["run"]


def test_bad_prompt_file_is_one_line_error_and_writes_nothing(tmp_path, capsys):
    bad = tmp_path / "prompts.xml"
    bad.write_text("<x/>")
    out = tmp_path / "run"
    assert main(["extract", "--out", str(out), "--harmful", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "unknown prompt file format" in err and "\n" not in err
    assert not out.exists()


def test_bad_layer_spec(tmp_path, capsys):
    assert main(["extract", "--out", str(tmp_path / "r"), "--n", "2", "--layers", "99", "--quiet"]) == 2
    assert "out of range" in capsys.readouterr().err


def test_select_rejects_non_safetensors_file(tmp_path, capsys):
    fake = tmp_path / "directions.safetensors"
    fake.write_bytes(b"\x80\x04not a safetensors file")
    assert main(["select", "--out", str(tmp_path / "s"), "--directions", str(fake), "--quiet"]) == 2
    assert "not a readable safetensors file" in capsys.readouterr().err


def test_help(capsys):
    for cmd in (["extract", "--help"], ["select", "--help"]):
        with pytest.raises(SystemExit) as info:
            main(cmd)
        assert info.value.code == 0 and "usage: python -m harmlens.probes" in capsys.readouterr().out
    res = subprocess.run([sys.executable, "-m", "harmlens.probes", "--help"], capture_output=True, text=True)
    assert res.returncode == 0 and "extract" in res.stdout and "select" in res.stdout
