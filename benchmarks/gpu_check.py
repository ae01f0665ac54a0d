"""One short check of the CUDA path (< 6 min on one H200): bf16 load, extraction, steering, guarded generation, a
device_map split across cuda:0 and cpu, vLLM when installed, and the engines_perf ratios on the GPU.

Run: python benchmarks/gpu_check.py [--model NAME_OR_FOLDER]   (default: the embedded SmolLM2; writes
$OUT/gpu_check.json when OUT is set; exits 0 with one line when no CUDA device exists). Each step records its seconds and either its numbers or its one-line error.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))


def step(summary: dict, name: str, fn) -> None:
    """Run one check, recording its result or its first error line (a failed step never stops the others)."""
    start = time.perf_counter()
    try:
        summary[name] = {"ok": True, **(fn() or {})}
    except Exception as exc:  # noqa: BLE001 - the summary reports every failure
        summary[name] = {"ok": False, "error": f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:300]}"}
    summary[name]["seconds"] = round(time.perf_counter() - start, 2)
    print(name, json.dumps(summary[name]), flush=True)


def random_replica(folder: str) -> str:
    """A copy of `folder`'s config and tokenizer with seeded random weights (when its weights cannot travel)."""
    import shutil
    import tempfile

    from transformers import AutoConfig, AutoModelForCausalLM

    out = Path(tempfile.mkdtemp(prefix="harmlens-gpu-replica-"))
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(folder)).save_pretrained(out)
    for f in Path(folder).iterdir():
        if f.name.startswith(("tokenizer", "special_tokens", "chat_template", "generation_config")):
            shutil.copy(f, out / f.name)
    return str(out)


def main() -> int:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="Hub name or HF folder (default: the embedded SmolLM2)")
    parser.add_argument(
        "--random-weights", action="store_true", help="seeded random weights with --model's config and tokenizer"
    )
    args = parser.parse_args()
    name = random_replica(args.model) if args.random_weights else args.model
    if not torch.cuda.is_available():
        print("gpu_check: no CUDA device on this machine; nothing to check")
        return 0
    import engines_perf as perf

    from harmlens.probes import extract_directions, generate, load_model, steer
    from harmlens.probes.data import builtin_prompts
    from harmlens.runtime.chat import chat_format

    summary: dict = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__, "model": name or "embedded"}
    harmful = builtin_prompts("harmful", "train", limit=64)
    harmless = builtin_prompts("harmless", "train", limit=64)
    state: dict = {}

    def load():
        state["model"] = model = load_model(name, device="cuda", dtype=torch.bfloat16)
        p = next(model.original_model.parameters())
        return {"dtype": str(p.dtype), "device": str(p.device), "fast_attention_layers": model.harmlens_fast_attention}

    def extraction():
        state["dirs"] = d = extract_directions(state["model"], harmful, harmless, batch_size=32, progress=False)
        return {"layers": len(d.layers), "refusal_norm_mid": round(float(d.refusal[len(d.layers) // 2].norm()), 3)}

    def steering():
        model, d = state["model"], state["dirs"]
        layer = model.cfg.n_layers // 2
        plain = generate(model, harmful[:8], max_new_tokens=24, progress=False)
        with steer(model, -d.refusal[d.row(layer)], layer):
            steered = generate(model, harmful[:8], max_new_tokens=24, progress=False)
        return {"changed_replies": sum(a != b for a, b in zip(plain, steered)), "of": len(plain)}

    def guarded():
        from harmlens.guards import GuardedModel, LatentGuard

        model = state["model"]
        guard = LatentGuard.fit(model, harmful[:48], harmless[:48], progress=False)
        replies = GuardedModel(model, guard).generate(
            harmful[48:56] + harmless[48:56], max_new_tokens=16, progress=False
        )
        return {
            "blocked_harmful": sum(r.blocked for r in replies[:8]),
            "blocked_harmless": sum(r.blocked for r in replies[8:]),
        }

    def split():
        n = state["model"].cfg.n_layers
        dm = {"model.embed_tokens": 0, "model.rotary_emb": 0, "model.norm": "cpu", "lm_head": 0}
        dm.update({f"model.layers.{i}": 0 if i < n // 2 else "cpu" for i in range(n)})
        model = load_model(name, device_map=dm, dtype=torch.bfloat16)
        prompts = chat_format(model).render_many(harmful[:4])
        from harmlens.runtime.activations import cache_resid, t_inst_positions

        acts = cache_resid(model, prompts, t_inst_positions, layers=[1, n - 1], progress=False)
        ref = cache_resid(state["model"], prompts, t_inst_positions, layers=[1, n - 1], progress=False)
        return {"max_rel_diff": round(float(((acts - ref).norm(dim=-1) / ref.norm(dim=-1)).max()), 5)}

    def ratios():
        model = state["model"]
        prompts = chat_format(model).render_many(harmful[:32])
        return {
            "generation": perf.generation_ratios(model, prompts, new_tokens=32, batch_size=16, repeats=2),
            "extraction": perf.extraction_ratio(model, harmful, harmless, batch_size=16, repeats=2),
        }

    def vllm():
        if importlib.util.find_spec("vllm") is None:
            return {"skipped": "vllm not installed"}
        return perf.vllm_asr_ratio(state["model"], harmful[:32], new_tokens=32, batch_size=16)

    for name, fn in (
        ("load_bf16", load),
        ("extraction", extraction),
        ("steering", steering),
        ("guarded_generation", guarded),
        ("device_map_cuda0_cpu", split),
        ("ratios", ratios),
        ("vllm", vllm),
    ):
        if name != "load_bf16" and not summary["load_bf16"]["ok"]:
            break
        step(summary, name, fn)
    if os.environ.get("OUT"):
        Path(os.environ["OUT"], "gpu_check.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":  # vLLM spawns its engine process: this guard is required
    sys.exit(main())
