"""An attack run as files: ASR of settings × jailbreaks saved to a folder, plus the refusal-projection analysis."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from harmlens.attacks.evaluate import evaluate_asr
from harmlens.attacks.projection import ProjectionResult, projection_analysis
from harmlens.attacks.report import AttackReport
from harmlens.io import output_set
from harmlens.runtime import Backend, GenerationConfig

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge


def is_vlm(model: TransformerBridge) -> bool:
    """A LLaVA-style model (an image token in its config): image settings then need its processor."""
    config = getattr(getattr(model, "original_model", None), "config", None) or getattr(model, "config", None)
    return getattr(config, "image_token_index", getattr(config, "image_token_id", None)) is not None


def model_processor(model: TransformerBridge, name: str | None):
    """The model's processor: its own, or for a VLM loaded without one, the one saved with `name`; else None."""
    processor = getattr(model, "processor", None)
    if processor is None and is_vlm(model):  # the processor expands the image token and makes pixel_values
        from transformers import AutoProcessor

        from harmlens.runtime import resolve_model_path

        processor = AutoProcessor.from_pretrained(resolve_model_path(name)[0])
    return processor


def attack_to_folder(
    model: TransformerBridge,
    prompts: list[str],
    out: Path,
    *,
    settings="all",
    jailbreaks=(),
    judge: str = "substring:rma",
    images=None,
    config: GenerationConfig | Mapping | None = None,
    system: str | None = None,
    strip_system: bool = False,
    processor=None,
    backend: str | Backend = "hf",
    ablation=None,
) -> AttackReport:
    """evaluate_asr (`config`: how replies are generated; on `backend`: hf or vllm; `ablation`: a direction ablated)
    streaming to out/results.jsonl (so a rerun resumes), then report.json, report.md and heatmaps."""
    report = evaluate_asr(
        model,
        prompts,
        settings=settings,
        jailbreaks=list(jailbreaks),
        judge=judge,
        images=images,
        out=out,
        config=config,
        system=system,
        strip_system=strip_system,
        processor=processor,
        backend=backend,
        ablation=ablation,
    )
    with output_set(out) as tmp:  # report.json, report.md and heatmaps replace the old ones together
        report.save(tmp)
    return report


def projection_to_folder(
    model: TransformerBridge,
    report: AttackReport,
    directions,
    out: Path,
    *,
    band: list[int] | None = None,
    batch_size: int = 16,
    progress: bool = True,
) -> ProjectionResult:
    """The refusal-projection analysis of a report's conditions, saved next to the report."""
    proj = projection_analysis(model, report, directions, band=band, batch_size=batch_size, progress=progress)
    with output_set(out) as tmp:
        proj.save(tmp)
    return proj
