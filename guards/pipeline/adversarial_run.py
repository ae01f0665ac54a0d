"""Adversarial training as a run folder: resumable training, the merged model, and an optional before/after ASR."""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from harmlens.attacks.evaluate import RESULTS_FILE, ResultsMismatch
from harmlens.errors import HarmlensError
from harmlens.guards.pipeline.adversarial_eval import (
    attack_suite,
    compare,
    held_out_answers,
    markdown,
    utility_markdown,
    utility_suite,
)
from harmlens.guards.pipeline.settings import EVAL_GENERATION
from harmlens.guards.pipeline.subjects import load_subject, vlm_processor
from harmlens.io import atomic_write_text
from harmlens.runtime import GenerationConfig, release_vllm, resolve_backend
from harmlens.validate import default_dtype

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

SUMMARY = "summary.json"


@dataclass(frozen=True)
class AdversarialRun:
    """What `python -m harmlens.guards adversarial-train` trains and evaluates (one field per CLI flag)."""

    model: str = "organism"  # organism[:vlm], base, or a model folder / Hub name
    settings: str = "all"  # every setting the model supports, or e.g. "none,swap"
    jailbreaks: tuple[str, ...] = ()  # text jailbreaks composed into the mix
    jailbreak_rate: float = 0.25
    schedule: str = "two-stage"  # or "mix"
    assign: str = "chunks"  # or "random"
    steps: int = 150
    n_harmful: int | None = None
    n_benign: int = 800
    seed: int = 0
    checkpoint_every: int = 10
    device: str | None = None
    threads: int | None = None
    evaluate: bool = False  # attack before and after
    eval_limit: int = 40
    eval_jailbreaks: tuple[str, ...] | None = None  # None: the training jailbreaks
    eval_benign: int = 40
    judge: str = "substring:rma"
    generation: GenerationConfig = EVAL_GENERATION  # how the before/after tables generate (greedy, 32 new tokens)
    progress: bool = True  # training's progress bars (the tables' are generation.progress)
    backend: str = "hf"  # generation of the before/after tables: hf, vllm, or auto (vllm when installed)
    bf16: bool | None = None  # bfloat16 autocast in training (None: where the device has native bf16, as default_dtype)
    before_results: str | None = None  # an earlier attack's results.jsonl on the same model: 'before' resumes from it

    def __post_init__(self) -> None:
        if self.steps < 2 and self.schedule == "two-stage":
            raise HarmlensError("--steps must be at least 2 for the two-stage schedule")
        if not isinstance(self.generation, GenerationConfig):
            raise HarmlensError(f"generation must be a GenerationConfig, got {type(self.generation).__name__}")


def seed_results(source: str | None, folder: Path) -> bool:
    """Start folder's attack from an earlier results.jsonl (copied when folder has none yet): evaluate_asr then
    generates only what that file lacks, and refuses it (ResultsMismatch) if it came from a different run."""
    target = folder / RESULTS_FILE
    if source is None or target.exists():
        return False
    if not Path(source).is_file():
        raise HarmlensError(f"before_results {source} is not a file: give an attack folder's {RESULTS_FILE}")
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target)
    return True


def train_run(
    model: TransformerBridge,
    out: Path,
    *,
    settings="all",
    jailbreaks=(),
    jailbreak_rate: float = 0.25,
    schedule: str = "two-stage",
    assign: str = "chunks",
    steps: int = 150,
    n_harmful: int | None = None,
    n_benign: int = 800,
    seed: int = 0,
    checkpoint_every: int = 10,
    device=None,
    threads: int | None = None,
    bf16: bool = False,
    progress: bool = True,
) -> Path:
    """Train (resuming from out/checkpoints) and save out/adapter and the merged out/model; returns out/model."""
    from harmlens.guards.organisms import datasets
    from harmlens.guards.organisms.vlm import builtin_images
    from harmlens.guards.tuning.adapter import Adapter
    from harmlens.guards.tuning.adversarial import adversarial_train, default_config

    target = out / "model"
    if (target / "card.json").is_file():
        return target
    cfg = default_config(
        model,
        max_steps=steps,
        seed=seed,
        checkpoint_every=checkpoint_every,
        checkpoint_dir=str(out / "checkpoints"),
        device=device,
        threads=threads,
        bf16=bf16,
    )
    processor = vlm_processor(model)
    start, cpu = time.perf_counter(), time.process_time()
    adapter = adversarial_train(
        model,
        datasets.harmful_train()[:n_harmful],
        datasets.harmless_train(n_benign),
        settings=None if settings == "all" else settings,
        schedule=schedule,
        config=cfg,
        jailbreaks=list(jailbreaks),
        jailbreak_rate=jailbreak_rate,
        assign=assign,
        processor=processor,
        images=builtin_images(seed=seed) if processor else None,
        progress=progress,
    )
    seconds, cpu = round(time.perf_counter() - start, 1), round(time.process_time() - cpu, 1)
    if not (out / "adapter" / "adapter.json").is_file():
        adapter.save(out / "adapter", overwrite=True)
    adapter = Adapter.load(out / "adapter")
    card = {
        "harmlens": "guards.adversarial",
        "run_seconds": seconds,
        "cpu_seconds": cpu,
        "tokens_per_second": round(adapter.meta["tokens"] / max(1e-9, adapter.meta["train_seconds"]), 1),
    }
    adapter.merge_and_save(model, target, tokenizer=processor, card=card, overwrite=True)
    return target


def run_adversarial(out: Path, run: AdversarialRun) -> dict:
    """Train (resumable), optionally attack before and after; print the tables and write out/summary.json."""
    import torch

    if run.threads:
        torch.set_num_threads(run.threads)
    out = Path(out)
    model = load_subject(run.model, run.device, dtype=torch.float32)  # float32 weights; bf16 only as autocast
    bf16 = run.bf16 if run.bf16 is not None else default_dtype(next(model.parameters()).device) == torch.bfloat16
    path = train_run(
        model,
        out,
        settings=run.settings,
        jailbreaks=run.jailbreaks,
        jailbreak_rate=run.jailbreak_rate,
        schedule=run.schedule,
        assign=run.assign,
        steps=run.steps,
        n_harmful=run.n_harmful,
        n_benign=run.n_benign,
        seed=run.seed,
        checkpoint_every=run.checkpoint_every,
        device=run.device,
        bf16=bf16,
        progress=run.progress,
    )
    card = json.loads((path / "card.json").read_text(encoding="utf-8"))
    summary = {
        "model": str(path),
        "train_seconds": card["meta"]["train_seconds"],
        "steps": card["meta"]["steps"],
        "tokens": card["meta"]["tokens"],
        "tokens_per_second": card.get("tokens_per_second"),
        "run_seconds": card.get("run_seconds"),
        "cpu_seconds": card.get("cpu_seconds"),
        "bf16": bool(_train_config(card["meta"]).get("bf16", False)),
    }
    print(
        f"adversarially trained model: {path} ({summary['steps']} steps, {summary['train_seconds']:.0f} s "
        f"training, {summary['tokens_per_second']} tokens/s; CPU seconds of the run: {summary['cpu_seconds']})"
    )
    if run.evaluate:
        from harmlens.guards.organisms.datasets import eval_prompts

        prompts = eval_prompts("harmful")[: run.eval_limit]
        jbs = run.jailbreaks if run.eval_jailbreaks is None else run.eval_jailbreaks
        benign, answers = eval_prompts("harmless")[: run.eval_benign], held_out_answers(run.n_benign)

        def measure(subject, tag: str) -> tuple:
            """The attack suite and the utility suite of one model, into out/eval/<tag>."""
            folder = out / "eval" / tag
            backend = resolve_backend(run.backend, images=vlm_processor(subject) is not None)
            seeded = tag == "before" and seed_results(run.before_results, folder)

            def attack():
                return attack_suite(
                    subject,
                    folder,
                    prompts,
                    settings=run.settings,
                    jailbreaks=jbs,
                    judge=run.judge,
                    config=run.generation,
                    backend=backend,
                )

            try:
                report = attack()
            except ResultsMismatch as exc:
                if not seeded:
                    raise
                print(f"not reusing {run.before_results}: {exc}", flush=True)
                (folder / RESULTS_FILE).unlink()
                report = attack()
            use = utility_suite(
                subject,
                folder,
                benign,
                answers,
                settings=run.settings,
                judge=run.judge,
                config=run.generation,
                backend=backend,
            )
            release_vllm(subject)
            return report, use

        del model  # the float32 training copy; both sides are measured in the loader's default dtype
        before, use_before = measure(load_subject(run.model, device=run.device), "before")
        after, use_after = measure(load_subject(str(path), device=run.device), "after")
        use = {"before": use_before, "after": use_after}
        summary["asr"], summary["utility"] = compare(before, after), use
        summary["generation"] = run.generation.to_dict()
        summary["answer_ce_rise"] = round(use["after"]["answer_ce"] / use["before"]["answer_ce"] - 1, 4)
        print(markdown(summary["asr"]), utility_markdown(use), sep="\n")
    atomic_write_text(out / SUMMARY, json.dumps(summary, indent=1))
    return summary


def _train_config(meta: dict) -> dict:
    """The TrainConfig fields a merged model's card recorded (an adversarial run keeps them with its stages)."""
    return meta.get("config") or (meta.get("adversarial") or {}).get("config") or {}
