"""Adversarial training against role-modality attacks (RMA §5): every example is rendered under an RMA setting."""

from __future__ import annotations

import hashlib
import inspect
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from harmlens.attacks.jailbreaks import Jailbreak, get_jailbreak, jailbreak_name
from harmlens.attacks.settings import Setting, check_special_tokens, get_setting, perturb_text, resolve_settings
from harmlens.errors import HarmlensError
from harmlens.guards.tuning.adapter import Adapter
from harmlens.guards.tuning.encoding import Example, as_examples
from harmlens.guards.tuning.refusals import refusal_for
from harmlens.guards.tuning.training import TrainConfig, train
from harmlens.runtime import RoleTemplate, role_template

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

ASSIGNMENTS = ("chunks", "random")
SCHEDULES = ("two-stage", "mix")
# A modest LoRA run for the text organism (~150 steps of 8 on one CPU thread); see default_config for the layers.
DEFAULT_CONFIG = TrainConfig(
    lora_r=8,
    lora_alpha=16.0,
    lora_dropout=0.0,
    lr=5e-4,
    schedule="cosine",
    warmup=5,
    batch_size=8,
    max_steps=150,
    max_response_tokens=32,
    max_length=320,
    first_token_weight=5.0,
    seed=0,
)


def default_config(model: TransformerBridge, **changes) -> TrainConfig:
    """DEFAULT_CONFIG with LoRA on the top 80% of the decoder layers (as the text organism's recipe: 6-29 of 30)."""
    cfg = getattr(getattr(model, "original_model", model), "config", None)
    n = getattr(cfg, "num_hidden_layers", None) or getattr(getattr(cfg, "text_config", None), "num_hidden_layers", 0)
    layers = tuple(range(n // 5, n)) if n and n >= 5 else None
    return replace(DEFAULT_CONFIG, layers=layers, **changes)


@dataclass(frozen=True)
class Stage:
    """One training stage: the settings its examples are rendered under, its steps and its jailbreaks."""

    settings: tuple[str, ...]
    steps: int
    jailbreaks: tuple[str, ...] = ()

    def to_dict(self) -> dict:
        """JSON-ready dict (lists, not tuples)."""
        return {"settings": list(self.settings), "steps": self.steps, "jailbreaks": list(self.jailbreaks)}


@dataclass(frozen=True)
class Rendered:
    """One training example after perturbation: the prompt text, its answer, and how it was made."""

    instruction: str
    response: str
    harmful: bool
    setting: str
    jailbreak: str
    text: str


def assign_settings(n: int, settings: Sequence[Setting], mode: str = "chunks", seed: int = 0) -> list[Setting]:
    """Setting of each of n examples: seeded shuffle then contiguous equal chunks (the paper), or uniform random."""
    if mode not in ASSIGNMENTS:
        raise HarmlensError(f"unknown assignment {mode!r}; choose chunks or random")
    if not settings or n < 1:
        raise HarmlensError("need at least one setting and one example")
    rng = np.random.default_rng([seed, 42])
    if mode == "random":
        return [settings[i] for i in rng.integers(len(settings), size=n)]
    order, out = rng.permutation(n), [settings[0]] * n
    for k, chunk in enumerate(np.array_split(order, len(settings))):
        for i in chunk:
            out[int(i)] = settings[k]
    return out


def make_schedule(
    schedule: str | Sequence[Stage],
    settings: Sequence[str],
    steps: int,
    jailbreaks: Sequence[str] = (),
    *,
    first_fraction: float = 1 / 3,
) -> list[Stage]:
    """Stages: 'two-stage' = swap only for first_fraction of the steps, then the full mix; 'mix' = one stage."""
    if not isinstance(schedule, str):
        stages = list(schedule)
        if not stages or not all(isinstance(s, Stage) and s.steps >= 1 and s.settings for s in stages):
            raise HarmlensError("a custom schedule is a non-empty list of Stage(settings, steps>=1, jailbreaks)")
        return stages
    if schedule not in SCHEDULES:
        raise HarmlensError(f"unknown schedule {schedule!r}; choose {' or '.join(SCHEDULES)} or pass Stage objects")
    if steps < 1 or (schedule == "two-stage" and steps < 2):
        raise HarmlensError(f"max_steps={steps} is too few for the {schedule} schedule")
    full = Stage(tuple(settings), steps, tuple(jailbreaks))
    if schedule == "mix":
        return [full]
    first = min(steps - 1, max(1, round(steps * first_fraction)))
    return [Stage(("swap",), first), replace(full, steps=steps - first)]


def render_examples(
    template: RoleTemplate,
    harmful: Sequence[str],
    benign_pairs: Sequence,
    stage: Stage,
    *,
    assign: str = "chunks",
    jailbreak_rate: float = 0.25,
    seed: int = 0,
) -> list[Rendered]:
    """Harmful prompts (-> a refusal) and benign pairs (-> their answer), each under its assigned setting and,
    for a jailbreak_rate share (seeded), rewritten by one of the stage's jailbreaks first."""
    if not 0.0 <= jailbreak_rate <= 1.0:
        raise HarmlensError(f"jailbreak_rate must be in [0, 1], got {jailbreak_rate}")
    settings = resolve_settings(list(stage.settings), supports_images=template.supports_images)
    pairs = [(h, refusal_for(h), True) for h in harmful] + [
        (e.instruction, e.response, False) for e in as_examples(list(benign_pairs))
    ]
    if not pairs:
        raise HarmlensError("no training examples: pass harmful prompts and/or benign pairs")
    jbs: list[Jailbreak] = [get_jailbreak(j) for j in stage.jailbreaks]
    chosen = assign_settings(len(pairs), settings, assign, seed)
    rng = np.random.default_rng([seed, 7])
    wrap = rng.random(len(pairs)) < (jailbreak_rate if jbs else 0.0)
    picks = rng.integers(max(1, len(jbs)), size=len(pairs))
    out = []
    for i, ((inst, resp, bad), setting) in enumerate(zip(pairs, chosen)):
        jb = jbs[picks[i]] if wrap[i] else None
        query = jb(inst.strip(), seed=seed + i) if jb is not None else inst.strip()
        try:
            check_special_tokens(template, query)
            text = perturb_text(template, query, setting)
        except HarmlensError as exc:
            raise HarmlensError(f"training example {i} ({setting.name}): {exc}") from None
        out.append(Rendered(query, resp, bad, setting.name, jailbreak_name(jb), text))
    return out


def combine(adapters: Sequence[Adapter]) -> Adapter:
    """One adapter equal to merging the given ones in turn: A stacked, B scaled and stacked (rank = sum of ranks)."""
    if not adapters:
        raise HarmlensError("no adapters to combine")
    if len(adapters) == 1:
        return adapters[0]
    names = sorted({k[: -len(".lora_A.weight")] for a in adapters for k in a.weights if k.endswith(".lora_A.weight")})
    weights = {}
    for name in names:
        parts = [
            (a.weights[name + ".lora_A.weight"].float(), a.weights[name + ".lora_B.weight"].float() * a.scale)
            for a in adapters
            if name + ".lora_A.weight" in a.weights
        ]
        weights[name + ".lora_A.weight"] = torch.cat([p[0] for p in parts], 0)
        weights[name + ".lora_B.weight"] = torch.cat([p[1] for p in parts], 1)
    rank = max(w.shape[0] for k, w in weights.items() if k.endswith("lora_A.weight"))
    for name in names:  # pad modules some stages did not train to the common rank
        a, b = weights[name + ".lora_A.weight"], weights[name + ".lora_B.weight"]
        weights[name + ".lora_A.weight"] = torch.cat([a, a.new_zeros(rank - a.shape[0], a.shape[1])], 0)
        weights[name + ".lora_B.weight"] = torch.cat([b, b.new_zeros(b.shape[0], rank - b.shape[1])], 1)
    first = adapters[0]
    lora = {
        **first.lora,
        "r": rank,
        "alpha": float(rank),
        "target_modules": sorted({m for a in adapters for m in a.lora["target_modules"]}),
        "layers": None
        if any(a.lora.get("layers") is None for a in adapters)
        else sorted({x for a in adapters for x in a.lora["layers"]}),
    }
    meta = {
        "arch": first.meta.get("arch"),
        "combined_from": len(adapters),
        "steps": sum(a.meta.get("steps", 0) for a in adapters),
        "tokens": sum(a.meta.get("tokens", 0) for a in adapters),
        "train_seconds": round(sum(a.meta.get("train_seconds", 0.0) for a in adapters), 2),
        "losses": [x for a in adapters for x in a.meta.get("losses", [])],
    }
    return Adapter(first.base_model, lora, weights, meta)


def image_inputs(
    template: RoleTemplate, processor, images: Sequence, rendered: Sequence[Rendered], *, seed: int = 0
) -> tuple[list[str], Callable[[Sequence[int]], dict]]:
    """(texts with each image placeholder expanded to the processor's image tokens, a train() batch_inputs giving
    pixel_values for the rows that hold an image): per-image pixel tensors, e.g. LLaVA."""
    token = getattr(processor, "image_token", None)
    if token is None or not template.image_text or token not in template.image_text or not images:
        raise HarmlensError("image settings need images and a processor whose image token is in the template")
    pix = processor.image_processor(list(images), return_tensors="pt")["pixel_values"]
    enc = processor(text=[template.image_text], images=[images[0]], return_tensors="pt")
    n = int((enc["input_ids"] == processor.tokenizer.convert_tokens_to_ids(token)).sum())
    expanded = template.image_text.replace(token, token * max(1, n))
    has = [get_setting(r.setting).needs_image for r in rendered]
    choice = np.random.default_rng([seed, 11]).integers(len(pix), size=len(rendered))
    texts = [r.text.replace(template.image_text, expanded) if h else r.text for r, h in zip(rendered, has)]

    def batch_inputs(idx: Sequence[int]) -> dict:
        rows = [int(choice[i]) for i in idx if has[i]]
        return {"pixel_values": pix[rows]} if rows else {}

    return texts, batch_inputs


def _template(model, tokenizer) -> RoleTemplate:
    if hasattr(model, "original_model"):
        return role_template(model)
    if tokenizer is None:
        raise HarmlensError("adversarial_train() needs the tokenizer: pass a TransformerBridge or tokenizer=...")
    return RoleTemplate.from_tokenizer(tokenizer, config=getattr(model, "config", None), roles=True)


def adversarial_train(
    model: TransformerBridge,
    harmful: Sequence[str],
    benign_pairs: Sequence,
    *,
    settings: Sequence[str] | str | None = None,
    schedule: str | Sequence[Stage] = "two-stage",
    config: TrainConfig | None = None,
    jailbreaks: Sequence[str] = (),
    jailbreak_rate: float = 0.25,
    assign: str = "chunks",
    tokenizer=None,
    template: RoleTemplate | None = None,
    processor=None,
    images: Sequence | None = None,
    progress: bool = True,
) -> Adapter:
    """LoRA-train on RMA-perturbed harmful (-> refusal) and benign (-> answer) examples, stage by stage; returns one
    adapter (the stages combined). settings=None: every setting the model supports (none+swap text-only, all 8 for
    a VLM, whose image settings need `images` and its processor, default model.processor). With
    config.checkpoint_dir each stage checkpoints to stage-<k>/ and a rerun resumes."""
    config = config or default_config(model)
    processor = processor if processor is not None else getattr(model, "processor", None)
    tokenizer = (
        tokenizer
        if tokenizer is not None
        else getattr(model, "tokenizer", None) or getattr(processor, "tokenizer", None)
    )
    template = template or _template(model, tokenizer)
    names = [s.name for s in resolve_settings(settings, supports_images=template.supports_images)]
    stages = make_schedule(schedule, names, config.max_steps, jailbreaks)
    for stage in stages:
        chosen = resolve_settings(list(stage.settings), supports_images=template.supports_images)
        if any(s.needs_image for s in chosen) and (processor is None or not images):
            raise HarmlensError("image settings need images=... and the model's processor (pixel_values in training)")
        if any(s.needs_image for s in chosen) and "batch_inputs" not in inspect.signature(train).parameters:
            raise HarmlensError(
                "image settings need harmlens.guards.tuning.training.train(batch_inputs=...), missing here"
            )
        for name in stage.jailbreaks:
            get_jailbreak(name)  # unknown names fail before any training
    current, adapters, start = model, [], time.perf_counter()
    for k, stage in enumerate(stages, 1):
        rendered = render_examples(
            template, harmful, benign_pairs, stage, assign=assign, jailbreak_rate=jailbreak_rate, seed=config.seed + k
        )
        ckpt = Path(config.checkpoint_dir) / f"stage-{k}" if config.checkpoint_dir else None
        cfg = replace(config, max_steps=stage.steps, checkpoint_dir=str(ckpt) if ckpt else None)
        key = hashlib.sha256(
            json.dumps(
                [stage.to_dict(), cfg.fingerprint_fields(), [r.text for r in rendered], [r.response for r in rendered]]
            ).encode()
        ).hexdigest()[:16]
        done = ckpt / "adapter" if ckpt else None
        if done is not None and (done / "adapter.json").is_file():
            adapter = Adapter.load(done)
            if adapter.meta.get("stage_key") != key:
                raise HarmlensError(
                    f"{done} is from another adversarial run (stage {k} differs); use another "
                    f"checkpoint_dir or delete it"
                )
        else:
            if progress:
                print(
                    f"adversarial stage {k}/{len(stages)}: settings {','.join(stage.settings)}, "
                    f"jailbreaks {','.join(stage.jailbreaks) or '-'}, {stage.steps} steps",
                    flush=True,
                )
            texts, extra = [r.text for r in rendered], {}
            if images is not None and any(get_setting(r.setting).needs_image for r in rendered):
                texts, batch_inputs = image_inputs(template, processor, images, rendered, seed=config.seed + k)
                extra["batch_inputs"] = batch_inputs
            adapter = train(
                current,
                [Example(r.instruction, r.response) for r in rendered],
                config=cfg,
                tokenizer=tokenizer,
                progress=progress,
                prompt_transform=lambda _p, i: texts[i],  # noqa: B023 (called within this iteration)
                **extra,
            )
            adapter.meta.update(stage_key=key, stage=stage.to_dict(), mix=_mix(rendered))
            if done is not None:
                adapter.save(done, overwrite=True)
        adapters.append(adapter)
        if k < len(stages):
            current = adapter.merge(current)  # the next stage starts from this one's result
    result = combine(adapters)
    result.meta.update(
        adversarial={
            "stages": [s.to_dict() for s in stages],
            "assign": assign,
            "jailbreak_rate": jailbreak_rate,
            "n_harmful": len(harmful),
            "n_benign": len(benign_pairs),
            "config": config.fingerprint_fields(),
            "mix": [a.meta.get("mix") for a in adapters],
            "wall_seconds": round(time.perf_counter() - start, 1),
        }
    )
    return result


def _mix(rendered: Sequence[Rendered]) -> dict:
    """How many examples of each kind, setting and jailbreak a stage trained on."""
    count = lambda f: {k: sum(f(r) == k for r in rendered) for k in dict.fromkeys(map(f, rendered))}  # noqa: E731
    return {
        "harmful": sum(r.harmful for r in rendered),
        "benign": sum(not r.harmful for r in rendered),
        "settings": count(lambda r: r.setting),
        "jailbreaks": count(lambda r: r.jailbreak),
    }
