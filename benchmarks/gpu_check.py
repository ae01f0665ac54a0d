"""One check of harmlens against plain transformers on the same weights, in one process, writing one JSON.

Run: python benchmarks/gpu_check.py [--model FOLDER | --replica 8b|1b|tiny] [--out FILE]
(default: the Meta-Llama-3-8B-architecture replica on a CUDA machine, the tiny one on the CPU; built with the recipe
of ../shared/gpu-evidence/make_replica.py, real Llama-3 tokenizer and template from --tokenizers). Steps: load,
extract_directions vs one hidden-states forward, generation (no hook; one steering hook) vs plain `generate`,
guarded vs unguarded generation on allowed prompts, an explicit device_map split, the GPU+CPU map refusal (CUDA only),
vLLM (when installed), then a LLaVA-1.5 replica (real processor from --tokenizers/llava15): an image read, guarded
image generation and the 8 RMA settings. Each step records its seconds and its numbers, {"skipped": reason}, or
{"ok": false, "error": one line}; a failed step never stops the later ones. The JSON (--out, default
$OUT/gpu_check.json or ./gpu_check.json) is rewritten after every step, so a run cut short keeps what it measured.
Sized for < 6 minutes on one H200 with the 8B replica; the sizes are flags.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import replicas  # noqa: E402

RATIOS = {  # summary ratio -> (step, field)
    "generation_no_hooks": ("generation", "ratio_no_hooks"),
    "generation_steered": ("generation", "ratio_steered"),
    "extraction": ("extraction", "ratio"),
    "guarded_over_unguarded": ("guarded_generation", "ratio"),
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    which = p.add_mutually_exclusive_group()
    which.add_argument("--model", help="an HF model folder (a chat model with its tokenizer and template)")
    which.add_argument("--replica", choices=tuple(replicas.LLAMA3_SIZES), help="build a Llama-3 replica (default 8b "
                       "on CUDA, tiny on CPU)")  # fmt: skip
    p.add_argument("--replica-dir", help="where replicas are built and reused (default: a temporary folder, removed)")
    p.add_argument("--tokenizers", default=str(replicas.DEFAULT_TOKENIZERS), help="folder with llama3/, llava15/, "
                   "templates/ (default ../shared/tokenizers)")  # fmt: skip
    p.add_argument("--out", help="JSON path (default $OUT/gpu_check.json, else ./gpu_check.json)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float16", "float32"))
    p.add_argument("--gen-prompts", type=int, default=64)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--n-extract", type=int, default=128, help="harmful and harmless prompts each for extraction")
    p.add_argument("--extract-batch-size", type=int, default=32)
    p.add_argument("--guard-fit", type=int, default=64, help="harmful and harmless prompts each to fit the guard")
    p.add_argument("--guard-prompts", type=int, default=32, help="harmless prompts for guarded generation")
    p.add_argument("--split-prompts", type=int, default=8, help="prompts read by the device_map split")
    p.add_argument("--repeats", type=int, default=1, help="timed runs after one warm-up (the fastest counts; 0: one "
                   "run, no warm-up)")  # fmt: skip
    p.add_argument("--vlm-prompts", type=int, default=4, help="instructions per RMA setting on the LLaVA replica")
    p.add_argument("--vlm-new-tokens", type=int, default=8)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--no-vllm", action="store_true")
    p.add_argument("--no-vlm", action="store_true")
    return p.parse_args(argv)


def one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0][:300] if text else ''}".rstrip(": ")


class Check:
    """The steps' results, rewritten to the JSON after each step; a step's failure is recorded, never raised."""

    def __init__(self, out: Path, header: dict) -> None:
        self.out, self.summary = out, {**header, "steps": {}}
        self.start = time.perf_counter()

    def run(self, key: str, fn: Callable[[], dict | None], needs: tuple[str, ...] = ()) -> Any:
        """Run one step after the steps it needs; record its numbers, its skip reason or its one-line error."""
        missing = [k for k in needs if not self.ok(k)]
        start = time.perf_counter()
        if missing:
            result: dict = {"ok": False, "error": f"not run: step {missing[0]!r} did not succeed"}
        else:
            try:
                got = fn() or {}
                result = dict(got) if "skipped" in got else {"ok": True, **got}
            except Exception as exc:  # noqa: BLE001 - the JSON reports every failure
                result = {"ok": False, "error": one_line(exc)}
                if os.environ.get("GPU_CHECK_TRACEBACK"):
                    traceback.print_exc()
        result["seconds"] = round(time.perf_counter() - start, 2)
        self.summary["steps"][key] = result
        print(f"gpu_check {key}: {json.dumps(result)}", flush=True)
        self.write()
        return result

    def ok(self, key: str) -> bool:
        return bool(self.summary["steps"].get(key, {}).get("ok"))

    def write(self) -> None:
        steps = self.summary["steps"]
        self.summary["ratios"] = {
            name: steps.get(step, {}).get(field) if steps.get(step, {}).get("ok") else None
            for name, (step, field) in RATIOS.items()
        }
        self.summary["failed"] = sorted(k for k, v in steps.items() if v.get("ok") is False)
        self.summary["total_s"] = round(time.perf_counter() - self.start, 1)
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.out.write_text(json.dumps(self.summary, indent=2))


def out_path(arg: str | None) -> Path:
    if arg:
        return Path(arg)
    return Path(os.environ["OUT"], "gpu_check.json") if os.environ.get("OUT") else Path("gpu_check.json")


def main(argv: list[str] | None = None) -> int:
    """Run every step; exit status 1 when any step failed (the JSON says which)."""
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    import transformers

    from harmlens.probes import builtin_prompts

    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    cuda = device.type == "cuda"
    replica = args.replica or (None if args.model else "8b" if cuda else "tiny")
    header = {
        "device": torch.cuda.get_device_name(device) if cuda else f"cpu ({torch.get_num_threads()} threads)",
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "model": args.model or f"llama3-{replica} replica",
        "dtype": args.dtype,
        "args": vars(args),
    }
    check = Check(out_path(args.out), header)
    work = Path(args.replica_dir) if args.replica_dir else Path(tempfile.mkdtemp(prefix="gpu-check-"))
    state: dict[str, Any] = {"folder": args.model}
    harmful = builtin_prompts("harmful", "train")
    harmless = builtin_prompts("harmless", "train")
    allowed = builtin_prompts("harmless", "val")[: args.guard_prompts]
    try:
        if replica:

            def build() -> dict:
                state["folder"] = str(
                    replicas.llama3_replica(work / f"llama3-{replica}", replica, tokenizers=args.tokenizers)
                )
                return {"size": replica, "folder": state["folder"]}

            check.run("replica", build)

        def load() -> dict:
            import gpu_check_devices  # imported here: a library change that breaks them fails this step, in the JSON
            import gpu_check_text

            state["text"], state["devices"] = gpu_check_text, gpu_check_devices
            if not state["folder"]:
                raise RuntimeError("no model folder")
            if cuda:
                torch.cuda.reset_peak_memory_stats(device)
            state["model"], state["plain"], info = gpu_check_text.load_both(state["folder"], device, dtype)
            if cuda:
                info["gpu_memory_gb"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 1)
            return info

        check.run("load", load, ("replica",) if replica else ())
        text, devices = state.get("text"), state.get("devices")

        def extraction() -> dict:
            n = args.n_extract
            info, state["directions"] = text.extraction(
                state["model"], state["plain"], harmful[:n], harmless[:n],
                batch_size=args.extract_batch_size, repeats=args.repeats,
            )  # fmt: skip
            return info

        check.run("extraction", extraction, ("load",))
        check.run(
            "extraction_matches_plain", lambda: text.means_agree(check.summary["steps"]["extraction"]), ("extraction",)
        )

        def generation() -> dict:
            model = state["model"]
            if "directions" in state:  # minus the refusal direction at the steered layer, as steering is used
                d = state["directions"]
                vector = -d.refusal[d.row(model.cfg.n_layers // 2)]
            else:
                vector = torch.randn(model.cfg.d_model, generator=torch.Generator().manual_seed(0))
            return text.generation(
                model, state["plain"], harmful[: args.gen_prompts], new_tokens=args.new_tokens,
                batch_size=args.batch_size, repeats=args.repeats, vector=vector,
            )  # fmt: skip

        check.run("generation", generation, ("load",))

        def guarded() -> dict:
            n = args.guard_fit
            return text.guarded_generation(
                state["model"], (harmful[-n:], harmless[-n:]), allowed, new_tokens=args.new_tokens,
                batch_size=args.batch_size, repeats=args.repeats,
            )  # fmt: skip

        check.run("guarded_generation", guarded, ("load",))

        def split() -> dict:
            return devices.device_map_split(
                state["model"], state["folder"], harmful[: args.split_prompts], device, dtype
            )

        check.run("device_map_split", split, ("load",))

        def gpu_cpu() -> dict:
            if not cuda:
                return {"skipped": f"needs a CUDA device (running on {device})"}
            return devices.device_map_gpu_cpu(state["model"], state["folder"])

        check.run("device_map_gpu_cpu", gpu_cpu, ("load",))

        def vllm() -> dict:
            if args.no_vllm:
                return {"skipped": "--no-vllm"}
            if importlib.util.find_spec("vllm") is None:
                return {"skipped": "vllm is not installed"}
            if not cuda and (reason := devices.vllm_cpu_unsupported(state["model"])):
                return {"skipped": reason}
            if cuda:
                torch.cuda.empty_cache()
            return devices.vllm_generation(
                state["model"], state["plain"], harmful[: args.gen_prompts], new_tokens=args.new_tokens,
                batch_size=args.batch_size,
            )  # fmt: skip

        check.run("vllm", vllm, ("load",))
        for key in ("model", "plain"):
            state.pop(key, None)
        if cuda:
            torch.cuda.empty_cache()
        if not args.no_vlm:
            run_vlm(check, args, work, device, dtype, harmful)
    finally:
        if not args.replica_dir:
            shutil.rmtree(work, ignore_errors=True)
    check.write()
    print(json.dumps(check.summary, indent=2))
    print(f"gpu_check: wrote {check.out} ({check.summary['total_s']} s)", flush=True)
    return 1 if check.summary["failed"] else 0


def run_vlm(check: Check, args, work: Path, device: torch.device, dtype: torch.dtype, harmful: list) -> None:
    """The LLaVA-1.5 replica's steps: load, image read, guarded image generation, the 8 RMA settings."""
    state: dict[str, Any] = {}
    vlm: Any = None

    def load() -> dict:
        nonlocal vlm
        import gpu_check_vlm as vlm

        folder = replicas.llava_replica(work / "llava15-tiny", tokenizers=args.tokenizers)
        state["model"], info = vlm.load(str(folder), device, dtype)
        state["guard"] = vlm.fit_guard(state["model"])
        return info

    check.run("llava_load", load)
    check.run("llava_image_read", lambda: vlm.image_read(state["model"], state["guard"]), ("llava_load",))
    check.run(
        "llava_guarded_image_generation",
        lambda: vlm.guarded_images(state["model"], state["guard"], new_tokens=args.vlm_new_tokens),
        ("llava_load",),
    )
    check.run(
        "llava_rma_settings",
        lambda: vlm.rma_settings(
            state["model"], harmful[: args.vlm_prompts], new_tokens=args.vlm_new_tokens, batch_size=args.batch_size
        ),
        ("llava_load",),
    )


if __name__ == "__main__":  # vLLM spawns its engine process: this guard is required
    sys.exit(main())
