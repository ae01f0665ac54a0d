"""The main job's steps: each writes its files into its folder and returns {"markdown": its table, ...}."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from harmlens.errors import HarmlensError
from harmlens.guards.pipeline.settings import TRAIN_JAILBREAKS, MainJobSettings
from harmlens.guards.pipeline.subjects import load_subject


class Subject:
    """The model the steps read, loaded once on first use and shared by the directions, attacks and guard steps."""

    def __init__(self, spec: str, device: str | None = None) -> None:
        self.spec, self.device, self._model = spec, device, None

    @property
    def model(self):
        """The loaded model (the organism is built on first use)."""
        if self._model is None:
            self._model = load_subject(self.spec, self.device)
        return self._model


def step_organism(out: Path, settings: MainJobSettings, subject: Subject) -> dict:
    """Build (first time, ~10 min on 2 cores) or load the safety-tuned text organism."""
    from harmlens.guards.organisms.build import build_organism

    path = build_organism("text", evaluate=False, device=settings.device)
    card = json.loads((path / "card.json").read_text(encoding="utf-8"))
    sets = (card.get("eval") or {}).get("sets") or {}
    rows = "".join(f"| {k} | {v['n']} | {v['refusal_rate']:.2f} |\n" for k, v in sets.items())
    md = (
        f"organism `{path}`: {card['training']['steps']} LoRA steps in {card['training']['train_seconds']:.0f} s\n\n"
        + (
            "| held-out set | n | refusal rate |\n|---|---|---|\n" + rows
            if rows
            else "(built without evaluation: `python -m harmlens.guards build-organism text --force` evaluates it)\n"
        )
    )
    return {"path": str(path), "markdown": md}


def step_directions(out: Path, settings: MainJobSettings, subject: Subject) -> dict:
    """Harmfulness and refusal directions, their per-layer cosine and belief scatter."""
    from harmlens.probes.data import builtin_prompts
    from harmlens.probes.extraction import extract_to_folder

    summary = extract_to_folder(
        subject.model,
        out,
        builtin_prompts("harmful", "train", limit=settings.n_directions),
        builtin_prompts("harmless", "train", limit=settings.n_directions),
        builtin_prompts("harmful", "val", limit=64),
        builtin_prompts("harmless", "val", limit=64),
        progress=False,
    )
    cells = [f"{r['layer']}:{r['cosine']:+.2f}" for r in summary["cosine_per_layer"]]
    lines = "\n".join(" ".join(cells[i : i + 11]) for i in range(0, len(cells), 11))
    return {"markdown": f"cos(harmfulness at t_inst, refusal at t_post-inst) per layer:\n```\n{lines}\n```\n"}


def step_attacks(out: Path, settings: MainJobSettings, subject: Subject) -> dict:
    """ASR of the text RMA settings × text jailbreaks on held-out harmful prompts, with the projection analysis."""
    from harmlens.attacks.runs import attack_to_folder, model_processor, projection_to_folder
    from harmlens.guards.organisms.datasets import DATA_DIR
    from harmlens.probes.data import read_prompts
    from harmlens.probes.directions import Directions

    directions = out.parent / "directions" / "directions.safetensors"
    if not directions.is_file():
        raise HarmlensError(f"the attacks step needs the directions step's {directions}: run the directions step")
    from harmlens.runtime import release_vllm

    model = subject.model
    processor = model_processor(model, str(subject.spec))
    report = attack_to_folder(
        model,
        read_prompts(DATA_DIR / "harmful_eval.json", limit=settings.n),
        out,
        settings="all",
        jailbreaks=settings.jailbreaks,
        judge="substring:rma",
        images="builtin",
        config=settings.generation,
        processor=processor,
        backend=settings.generation_backend(images=processor is not None),
    )
    release_vllm(model)
    projection_to_folder(model, report, Directions.load(directions, model=model), out, progress=False)
    return {"markdown": report.to_markdown()}


def step_guard(out: Path, settings: MainJobSettings, subject: Subject) -> dict:
    """Fit the default Latent Guard (the dual variant: t_inst centroid + span MLP, calibrated at 5% FPR on plain and
    jailbreak-wrapped harmless prompts) and evaluate it against baselines on jailbreak sets (its fit wrappers are
    left out of them)."""
    from harmlens.guards.latent.guard import LatentGuard
    from harmlens.guards.pipeline.guard_runs import evaluate_with_baselines, fit_summary
    from harmlens.probes.data import builtin_prompts

    model = subject.model
    harmful, harmless = builtin_prompts("harmful", "train"), builtin_prompts("harmless", "train")
    path = out / "guard.safetensors"
    guard = LatentGuard.fit(model, harmful, harmless, progress=True)  # the default variant and calibration
    print(json.dumps(fit_summary(guard, guard.save(path))), flush=True)
    report = evaluate_with_baselines(
        LatentGuard.load(path, model), out, baselines=("keyword", "delta_refuse"), limit=settings.n
    )
    return {"markdown": report.to_markdown()}


def step_adversarial(out: Path, settings: MainJobSettings, subject: Subject) -> dict:
    """Adversarially train on RMA-perturbed prompts (with four text jailbreaks) and attack before and after with
    the main job's jailbreaks, which training never saw."""
    from harmlens.attacks.evaluate import RESULTS_FILE
    from harmlens.guards.pipeline.adversarial_eval import markdown, utility_markdown
    from harmlens.guards.pipeline.adversarial_run import AdversarialRun, run_adversarial

    attacks = out.parent / "attacks" / RESULTS_FILE
    run = AdversarialRun(
        model=settings.model,
        jailbreaks=TRAIN_JAILBREAKS,
        steps=150,
        device=settings.device,
        evaluate=True,
        eval_limit=settings.n,
        eval_jailbreaks=settings.jailbreaks,
        eval_benign=100,
        progress=False,
        backend=settings.backend,
        generation=settings.generation,
        before_results=str(attacks) if attacks.is_file() else None,  # the attack step's table is the 'before' one
    )
    summary = run_adversarial(out, run)
    return {
        "markdown": f"{summary['steps']} LoRA steps{' (bfloat16 autocast)' if summary.get('bf16') else ''} in "
        f"{summary['train_seconds']:.0f} s; attacked with "
        f"jailbreaks not used in training ({','.join(settings.jailbreaks)}):\n\n"
        + markdown(summary["asr"])
        + "\n"
        + utility_markdown(summary["utility"])
    }


RUNNERS: dict[str, Callable[[Path, MainJobSettings, Subject], dict]] = {
    "organism": step_organism,
    "directions": step_directions,
    "attacks": step_attacks,
    "guard": step_guard,
    "adversarial": step_adversarial,
}
