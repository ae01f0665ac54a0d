"""Directions as files: extract both directions, save them, plot per layer and score validation prompts."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING

from harmlens.io import atomic_write_text, output_set
from harmlens.probes.beliefs import Centroids, belief_scores
from harmlens.probes.directions import extract_directions

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

FILES = ["directions.safetensors", "cosine_per_layer.png", "norms_per_layer.png", "beliefs_scatter.png"]


def extract_to_folder(
    model: TransformerBridge,
    out: Path,
    harmful: list[str],
    harmless: list[str],
    val_harmful: list[str],
    val_harmless: list[str],
    *,
    batch_size: int = 16,
    layers: list[int] | None = None,
    system: str | None = None,
    progress: bool = True,
) -> dict:
    """Write directions.safetensors, the PNG plots and summary.json into `out` as one set; returns the summary."""
    from harmlens.probes.plots import plot_belief_scatter, plot_cosine, plot_norms  # matplotlib only here

    start = time.perf_counter()
    d = extract_directions(
        model, harmful, harmless, batch_size=batch_size, layers=layers, system=system, progress=progress
    )
    elapsed = time.perf_counter() - start
    with output_set(Path(out)) as out:  # the whole set replaces the old one, or nothing does
        d.save(out / "directions.safetensors")
        table = d.cosine_table()
        layer_ids = [row["layer"] for row in table]
        plot_cosine(
            layer_ids,
            [row["cosine"] for row in table],
            out / "cosine_per_layer.png",
            title=f"{d.metadata['model']}: cos(harmfulness, refusal)",
        )
        plot_norms(
            layer_ids,
            {
                "harmfulness (t_inst)": [r["norm_harmfulness"] for r in table],
                "refusal (t_post-inst)": [r["norm_refusal"] for r in table],
            },
            out / "norms_per_layer.png",
        )
        centroids = Centroids.from_directions(d)
        groups = {}
        for name, prompts in (("harmful (val)", val_harmful), ("harmless (val)", val_harmless)):
            s = belief_scores(model, prompts, centroids, batch_size=batch_size)
            groups[name] = (s.delta_harmful.tolist(), s.delta_refuse.tolist())
        plot_belief_scatter(groups, out / "beliefs_scatter.png", title=f"{d.metadata['model']}")
        summary = {
            "model": d.metadata["model"],
            "n_harmful": len(harmful),
            "n_harmless": len(harmless),
            "extraction_seconds": round(elapsed, 2),
            "cosine_per_layer": table,
            "belief_means": {
                k: {"delta_harmful": sum(v[0]) / len(v[0]), "delta_refuse": sum(v[1]) / len(v[1])}
                for k, v in groups.items()
            },
            "files": list(FILES),
        }
        atomic_write_text(out / "summary.json", json.dumps(summary, indent=2))
    return summary
