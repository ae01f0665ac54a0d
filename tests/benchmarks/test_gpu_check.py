"""benchmarks/gpu_check.py end to end on the CPU with tiny replicas (Llama-3 and LLaVA-1.5 architectures, real
tokenizers): every step that does not need CUDA runs and passes, and the JSON carries the ratio fields, so the GPU
check cannot break unseen between the runs that have a GPU."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from family_models import TOKENIZERS_DIR

ROOT = Path(__file__).resolve().parents[2]
SMALL = (
    "--gen-prompts 2 --new-tokens 2 --batch-size 2 --n-extract 2 --extract-batch-size 2 --guard-fit 4 "
    "--guard-prompts 2 --split-prompts 1 --vlm-prompts 1 --vlm-new-tokens 2 --repeats 0 --threads 1"
).split()
CUDA_ONLY = {"device_map_gpu_cpu"}
STEPS = {
    "replica", "load", "extraction", "extraction_matches_plain", "generation", "guarded_generation", "device_map_split", "device_map_gpu_cpu",
    "vllm", "llava_load", "llava_image_read", "llava_guarded_image_generation", "llava_rma_settings",
}  # fmt: skip

pytestmark = pytest.mark.skipif(not TOKENIZERS_DIR.is_dir(), reason=f"shared tokenizers not found: {TOKENIZERS_DIR}")


@pytest.fixture
def gpu_check(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import gpu_check

    yield gpu_check
    torch.set_num_threads(1)  # the check set its own thread count; give the session its default back


def test_gpu_check_runs_end_to_end_on_cpu(gpu_check, tmp_path, monkeypatch):
    monkeypatch.delenv("OUT", raising=False)
    out = tmp_path / "check.json"
    args = ["--replica", "tiny", "--device", "cpu", "--tokenizers", str(TOKENIZERS_DIR), "--out", str(out), "--no-vllm"]
    status = gpu_check.main([*args, "--replica-dir", str(tmp_path / "replicas"), *SMALL])
    summary = json.loads(out.read_text())
    steps = summary["steps"]
    assert set(steps) == STEPS
    skipped = {k: v["skipped"] for k, v in steps.items() if "skipped" in v}
    assert set(skipped) == CUDA_ONLY | {"vllm"} and "CUDA" in skipped["device_map_gpu_cpu"], skipped
    failed = {k: v.get("error") for k, v in steps.items() if k not in skipped and v.get("ok") is not True}
    assert not failed and status == 0 and summary["failed"] == []
    assert set(summary["ratios"]) == {
        "generation_no_hooks",
        "generation_steered",
        "extraction",
        "guarded_over_unguarded",
    }
    assert all(isinstance(v, float) and v > 0 for v in summary["ratios"].values()), summary["ratios"]
    gen = steps["generation"]
    assert gen["plain_tokens"] > 0 and gen["same_replies_no_hooks"] == "2/2"  # same weights, same greedy tokens
    assert steps["extraction"]["max_rel_diff_inst_means"] < 0.05
    assert steps["llava_rma_settings"]["settings"] == 8 and steps["llava_rma_settings"]["records"] == 8
    assert steps["device_map_split"]["devices"] == ["cpu", "disk"]
    assert (
        summary["model"] == "llama3-tiny replica" and (tmp_path / "replicas" / "llama3-tiny" / "replica.json").is_file()
    )


def test_a_failed_step_is_one_line_and_later_steps_still_run(gpu_check, tmp_path, monkeypatch):
    """A model folder that cannot load: load fails in one line, the steps needing it say so, the LLaVA steps run."""
    monkeypatch.setenv("OUT", str(tmp_path))
    (tmp_path / "not-a-model").mkdir()
    status = gpu_check.main(
        [
            "--model",
            str(tmp_path / "not-a-model"),
            "--device",
            "cpu",
            "--no-vllm",
            "--replica-dir",
            str(tmp_path),
            *SMALL,
        ]
    )
    summary = json.loads((tmp_path / "gpu_check.json").read_text())  # $OUT/gpu_check.json by default
    steps = summary["steps"]
    assert status == 1 and "replica" not in steps
    assert steps["load"]["ok"] is False and "has no config.json" in steps["load"]["error"]
    assert "\n" not in steps["load"]["error"]
    assert steps["generation"] == {"ok": False, "error": "not run: step 'load' did not succeed", "seconds": 0.0}
    assert steps["llava_rma_settings"]["ok"] is True
    assert summary["ratios"]["generation_no_hooks"] is None and "load" in summary["failed"]
