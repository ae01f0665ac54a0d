"""RMA §4: per-layer cos(−R_l, attack_l) of each attack, averaged over a layer band, and per-prompt refusal projections."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from harmlens.attacks.jailbreaks import NONE
from harmlens.attacks.report import AttackReport, condition_label, to_json
from harmlens.attacks.settings import get_setting, perturb
from harmlens.errors import HarmlensError
from harmlens.io import atomic_write_text
from harmlens.probes.directions import Directions
from harmlens.runtime import ChatPrompt, cache_resid, role_template, t_post_inst_positions

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

USES = ("successful", "all")


def default_band(n_layers: int) -> list[int]:
    """RMA's band (block outputs 11–14 of 28 = resid_pre 12..15) scaled to a model with n_layers blocks."""
    return list(range(round(12 * n_layers / 28), round(15 * n_layers / 28) + 1))


@dataclass
class ProjectionResult:
    """cos(−R_l, attack_l) per layer and condition, its band mean, and each prompt's band-mean refusal projection."""

    layers: list[int]
    band: list[int]
    use: str  # which perturbed prompts build the attack vector: 'successful' (RMA) or 'all'
    cos: dict[str, list[float]]
    band_cos: dict[str, float]
    n_used: dict[str, int]
    projections: dict[str, list[float]]  # includes 'baseline' (the unperturbed instructions)
    success: dict[str, list[bool]]
    shift: dict[str, float]  # mean projection of the condition minus that of the baseline

    def ranking(self) -> list[tuple[str, float]]:
        """Conditions by band-mean cos(−R, attack), highest first (nan last)."""
        return sorted(self.band_cos.items(), key=lambda kv: -kv[1] if not math.isnan(kv[1]) else math.inf)

    def save(self, directory: str | os.PathLike) -> dict[str, Path]:
        """Write projection.json and two PNGs (cos curves; per-prompt projections) to a folder."""
        from harmlens.attacks.plots import plot_cos_curves, plot_projections

        out = Path(directory)
        paths = {"json": atomic_write_text(out / "projection.json", to_json(asdict(self)))}
        paths["cos"] = plot_cos_curves(self.layers, self.cos, self.band, out / "projection_cos.png")
        groups = {k: (v, self.success[k]) for k, v in self.projections.items()}
        paths["prompts"] = plot_projections(groups, out / "projection_prompts.png")
        return paths


def _prompt_from_text(tokenizer, instruction: str, text: str) -> ChatPrompt:
    ids = tuple(tokenizer(text, add_special_tokens=False)["input_ids"])
    return ChatPrompt(instruction, text, ids, len(ids) - 2, (len(ids) - 1,))


def projection_analysis(
    model: TransformerBridge,
    report: AttackReport,
    directions: Directions,
    *,
    band: Sequence[int] | None = None,
    use: str = "successful",
    batch_size: int = 16,
    progress: bool = False,
) -> ProjectionResult:
    """Attack vector = mean(perturbed) − mean(same instructions unperturbed) at the last token, vs −R per layer."""
    if use not in USES:
        raise HarmlensError(f"use must be one of {', '.join(USES)}, got {use!r}")
    layers = directions.layers
    band = [int(x) for x in (band if band is not None else default_band(int(model.cfg.n_layers)))]
    missing = [x for x in band if x not in layers]
    if not band or missing:
        raise HarmlensError(
            f"band layers {missing or band} are not in the directions (layers {layers[0]}..{layers[-1]})"
        )
    if any(get_setting(s).needs_image for s, _ in report.conditions()):
        raise HarmlensError(
            "projection analysis of image settings needs pixel_values in the forward pass, which is "
            "not implemented yet; pass a report of text settings"
        )
    tok, meta = model.tokenizer, report.meta
    by_key = {(r["setting"], r["jailbreak"], r["index"]): r for r in report.records}
    indices = sorted({r["index"] for r in report.records})
    template = None
    base_prompts = []
    for i in indices:
        rec = by_key.get(("none", NONE, i))
        if rec is None:
            template = template or role_template(
                model, system=meta.get("system"), strip_system=bool(meta.get("strip_system"))
            )
            instruction = next(r["instruction"] for r in report.records if r["index"] == i)
            base_prompts.append(perturb(template, instruction, "none"))
        else:
            base_prompts.append(_prompt_from_text(tok, rec["instruction"], rec["prompt"]))

    def acts(prompts: list[ChatPrompt]) -> torch.Tensor:  # [n, n_layers_sel, d]
        return cache_resid(
            model, prompts, t_post_inst_positions, layers=layers, batch_size=batch_size, progress=progress
        )[:, :, 0].double()

    R = directions.refusal.double()
    unit = R / R.norm(dim=-1, keepdim=True)
    rows = [layers.index(x) for x in band]
    base = acts(base_prompts)
    base_proj = (base * unit).sum(-1)[:, rows].mean(-1)
    base_success = [bool((by_key.get(("none", NONE, i)) or {}).get("success")) for i in indices]
    res = ProjectionResult(
        layers, band, use, {}, {}, {}, {"baseline": base_proj.tolist()}, {"baseline": base_success}, {}
    )
    for setting, jb in report.conditions():
        if (setting, jb) == ("none", NONE):
            continue
        label = condition_label(setting, jb)
        recs = [by_key[(setting, jb, i)] for i in indices if (setting, jb, i) in by_key]
        pert = acts([_prompt_from_text(tok, r["instruction"], r["prompt"]) for r in recs])
        pos = [indices.index(r["index"]) for r in recs]
        sel = [j for j, r in enumerate(recs) if use == "all" or r["success"]]
        proj = (pert * unit).sum(-1)[:, rows].mean(-1)
        res.projections[label], res.success[label] = proj.tolist(), [bool(r["success"]) for r in recs]
        res.shift[label] = float(proj.mean() - base_proj[pos].mean())
        res.n_used[label] = len(sel)
        if sel:
            attack = pert[sel].mean(0) - base[[pos[j] for j in sel]].mean(0)
            cos = torch.nn.functional.cosine_similarity(-R, attack, dim=-1)
            res.cos[label] = cos.tolist()
            res.band_cos[label] = float(cos[rows].mean())
        else:
            res.cos[label], res.band_cos[label] = [math.nan] * len(layers), math.nan
    return res
