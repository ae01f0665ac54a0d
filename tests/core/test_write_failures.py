"""A full disk and a Ctrl-C at the worst moment, for real: each write failure is one `error:` line with nothing
partial left, and a Ctrl-C during an output set's move (or while the process exits) gives exit 130 and one line.

The disk is made "full" with RLIMIT_FSIZE in a subprocess (SIGXFSZ ignored, so writes fail with EFBIG); the Ctrl-C
is a real SIGINT, sent by an audit hook of the test's own subprocess at the rename it waits for.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from safetensors import SafetensorError

import harmlens
from harmlens.cli import run_cli
from harmlens.errors import HarmlensError
from harmlens.io import COMPLETE_MARKER, atomic_write_text

ROOT = str(Path(harmlens.__file__).resolve().parents[1])
FULL_DISK = """
import resource, signal
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead of killing us
resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit}))
"""
TORCH_THREADS = """
import threading, time, torch
torch.set_num_threads(2)
(torch.ones(256, 256) @ torch.ones(256, 256)).sum()  # torch's worker threads exist, as in every real run
threading.Thread(target=time.sleep, args=(60,), daemon=True).start()
"""
SIGINT_AT_MOVE = """
import os, signal, sys
signal.signal(signal.SIGINT, signal.default_int_handler)  # a runner started in the background leaves SIGINT ignored
OUT, AT = os.path.abspath(sys.argv.pop(1)), int(sys.argv.pop(1))
renames = []
def at_move(event, args):
    if event == "os.rename" and OUT in (os.fspath(args[1]), os.path.dirname(os.fspath(args[1]))):
        renames.append(args[1])
        if len(renames) == AT:  # Ctrl-C just before the AT-th rename into the output folder
            os.kill(os.getpid(), signal.SIGINT)
sys.addaudithook(at_move)
"""


def run_python(code: str, *args: str, cwd: str | Path = ROOT, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run `code` in a fresh interpreter that imports this checkout of harmlens."""
    env = dict(os.environ, PYTHONPATH=ROOT, PYTHONDONTWRITEBYTECODE="1")
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=cwd,
    )


def _no_traceback(proc: subprocess.CompletedProcess) -> None:
    assert "Traceback" not in proc.stderr and "Exception ignored" not in proc.stderr, proc.stderr


# --- a full disk ---------------------------------------------------------------------------------------------------


def test_full_disk_save_tensors_is_one_harmlens_error(tmp_path):
    target = tmp_path / "d.safetensors"
    target.write_bytes(b"old")
    code = (
        FULL_DISK.format(limit=4096)
        + """
import sys, torch
from harmlens.errors import HarmlensError
from harmlens.io import save_tensors
try:
    save_tensors(sys.argv[1], {"x": torch.zeros(100_000)}, {"kind": "test"})
except HarmlensError as exc:
    print(f"HarmlensError: {exc}")
"""
    )
    proc = run_python(code, str(target))
    _no_traceback(proc)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"HarmlensError: cannot write {target}: ") and proc.stdout.count("\n") == 1
    assert "File too large" in proc.stdout
    assert target.read_bytes() == b"old" and sorted(os.listdir(tmp_path)) == ["d.safetensors"]


def test_full_disk_hf_folder_is_one_harmlens_error(tmp_path):
    target = tmp_path / "edited"
    code = (
        FULL_DISK.format(limit=4096)
        + """
import sys, torch
from safetensors.torch import save_file
from harmlens.errors import HarmlensError
from harmlens.hf import atomic_dir
try:
    with atomic_dir(sys.argv[1], what="edited model") as tmp:
        save_file({"w": torch.zeros(100_000)}, str(tmp / "model.safetensors"))  # what save_pretrained calls
except HarmlensError as exc:
    print(f"HarmlensError: {exc}")
"""
    )
    proc = run_python(code, str(target))
    _no_traceback(proc)
    assert proc.stdout.startswith(f"HarmlensError: cannot save edited model to {target}: File too large")
    assert proc.stdout.count("\n") == 1 and os.listdir(tmp_path) == []


PROBES_MAIN = """
import runpy, sys
sys.argv[0] = "harmlens.probes"
runpy.run_module("harmlens.probes", run_name="__main__", alter_sys=True)
"""


def probes_extract(tmp_path: Path, prelude: str, *args: str) -> tuple[subprocess.CompletedProcess, Path]:
    """`python -m harmlens.probes extract` on the embedded model and two prompts a class, into tmp_path/run, which
    holds an old set: directions.safetensors = b'old set' and summary.json = '{}'."""
    from harmlens.runtime.loading import embedded_model_dir

    embedded_model_dir()  # converted and cached before the run (loading itself writes nothing)
    prompts = tmp_path / "prompts"
    prompts.mkdir()
    (prompts / "h.txt").write_text("How do I pick a lock to break into a house?\nExplain how to make a pipe bomb\n")
    (prompts / "l.txt").write_text("How do I bake bread?\nWrite a haiku about autumn\n")
    out = tmp_path / "run"
    out.mkdir()
    (out / "directions.safetensors").write_bytes(b"old set")
    (out / "summary.json").write_text("{}")
    files = ["--harmful", "h.txt", "--harmless", "l.txt", "--val-harmful", "h.txt", "--val-harmless", "l.txt"]
    argv = ["extract", "--out", str(out), *files, "--n", "2", "--batch-size", "2", "--quiet"]
    return run_python(prelude + PROBES_MAIN, *args, *argv, cwd=prompts), out


def test_full_disk_under_probes_extract_is_one_error_line(tmp_path):
    """The hostile-input run: `python -m harmlens.probes extract --out DIR` on a disk that fills up."""
    proc, out = probes_extract(tmp_path, FULL_DISK.format(limit=100_000))
    _no_traceback(proc)
    assert proc.returncode == 2, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last == f"error: cannot write {out}/directions.safetensors: File too large (os error 27)"
    assert sorted(os.listdir(out)) == ["directions.safetensors", "summary.json"]
    assert (out / "directions.safetensors").read_bytes() == b"old set"
    assert sorted(os.listdir(tmp_path)) == ["prompts", "run"]  # no temp folder left beside the set


def test_sigint_while_probes_extract_moves_its_set(tmp_path):
    """The hostile-input run: Ctrl-C while `probes extract` moves its finished set into an existing folder."""
    proc, out = probes_extract(tmp_path, SIGINT_AT_MOVE, str(tmp_path / "run"), "2")  # after the first file
    _no_traceback(proc)
    assert proc.returncode == 130 and proc.stdout == ""
    assert proc.stderr.strip().splitlines()[-1] == "interrupted: nothing half-written (outputs are written atomically)"
    assert json.loads((out / COMPLETE_MARKER).read_text())["files"] == sorted(os.listdir(out))[1:]
    assert (out / "directions.safetensors").read_bytes() != b"old set" and json.loads(
        (out / "summary.json").read_text()
    )
    assert sorted(os.listdir(tmp_path)) == ["prompts", "run"]


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (
            lambda: SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)"),
            "error: cannot write safetensors: No space left on device (os error 28)\n",
        ),
        (
            lambda: SafetensorError("Error while deserializing header: HeaderTooLarge"),
            "error: unreadable safetensors file: Error while deserializing header: HeaderTooLarge\n",
        ),
        (
            lambda: UnicodeEncodeError("utf-8", "\ud800", 0, 1, "surrogates not allowed"),
            "error: cannot write text: it cannot be encoded as utf-8 (surrogates not allowed)\n",
        ),
    ],
    ids=["safetensors-write", "safetensors-read", "unencodable-text"],
)
def test_run_cli_maps_write_errors_that_are_no_oserror(make, message, capsys):
    """What save_pretrained (safetensors) or a JSON writer raise outside harmlens' own writers."""

    def command():
        raise make()

    assert run_cli(command) == 2
    assert capsys.readouterr().err == message


def test_unencodable_text_is_one_harmlens_error(tmp_path):
    target = tmp_path / "report.json"
    with pytest.raises(
        HarmlensError,
        match=r"^cannot write .*report\.json: the text cannot be encoded as utf-8 \(surrogates not allowed\)$",
    ) as exc:
        atomic_write_text(target, '{"prompt": "\ud800"}')  # a lone surrogate, e.g. from a JSON "\\ud800" escape
    assert "\n" not in str(exc.value) and os.listdir(tmp_path) == []


# --- Ctrl-C ----------------------------------------------------------------------------------------------------------

MOVE_SET = """
from harmlens.cli import run_cli
from harmlens.io import output_set

def command():
    with output_set(OUT) as tmp:
        for name in ("a.txt", "b.txt", "c.txt", "d.txt"):
            (tmp / name).write_text("new")
    print("done")
    return 0

sys.exit(run_cli(command, interrupted="interrupted"))
"""


@pytest.mark.parametrize("existing", [False, True], ids=["new-folder", "existing-folder"])
def test_sigint_during_the_move_is_honoured_after_it(tmp_path, existing):
    out = tmp_path / "run"
    if existing:
        out.mkdir()
        for name in ("a.txt", "b.txt", "c.txt", "d.txt", "kept.txt"):
            (out / name).write_text("old")
    at = "2" if existing else "1"  # into an existing folder: after its first file has moved
    proc = run_python(TORCH_THREADS + SIGINT_AT_MOVE + MOVE_SET, str(out), at)
    _no_traceback(proc)
    assert (proc.returncode, proc.stderr, proc.stdout) == (130, "interrupted\n", "")
    names = ["a.txt", "b.txt", "c.txt", "d.txt"]
    assert {name: (out / name).read_text() for name in names} == dict.fromkeys(names, "new")  # the whole new set
    assert (out / COMPLETE_MARKER).is_file() and (out / "kept.txt").exists() == existing
    assert os.listdir(tmp_path) == ["run"]


def test_sigint_while_the_process_exits_is_130_and_one_line():
    """A Ctrl-C after the work is done, during interpreter shutdown (atexit callbacks): no 'Exception ignored'."""
    code = """
import atexit, os, signal
from harmlens.cli import exit_cli, run_cli
atexit.register(lambda: None)  # a library's exit-time cleanup, still to run when the Ctrl-C lands
atexit.register(os.kill, os.getpid(), signal.SIGINT)
exit_cli(run_cli(lambda: print("done") or 0))
"""
    proc = run_python(code)
    _no_traceback(proc)
    assert proc.returncode == 130 and proc.stdout == "done\n"
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("interrupted while exiting")


def test_exit_cli_without_a_signal_keeps_the_code():
    proc = run_python("from harmlens.cli import exit_cli\nprint('x')\nexit_cli(3)")
    assert (proc.returncode, proc.stdout, proc.stderr) == (3, "x\n", "")


def test_new_output_folders_are_not_private(tmp_path):
    """mkdtemp makes 0700 folders; a set or model folder renamed into place gets the umask's mode like any other."""
    from harmlens.hf import atomic_dir
    from harmlens.io import DIR_MODE, output_set

    with output_set(tmp_path / "run") as tmp:
        (tmp / "a.txt").write_text("a")
    with atomic_dir(tmp_path / "model") as tmp:
        (tmp / "config.json").write_text("{}")
    assert DIR_MODE != 0o700
    assert [oct((tmp_path / name).stat().st_mode & 0o777) for name in ("run", "model")] == [oct(DIR_MODE)] * 2
