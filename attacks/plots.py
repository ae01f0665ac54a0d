"""Matplotlib PNGs for attacks: ASR heatmaps, per-layer cos(-R, attack) curves and per-prompt projections."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib import colormaps

from harmlens.probes.plots import _save, subplots


def plot_heatmap(
    grid: np.ndarray, rows: Sequence[str], cols: Sequence[str], path: str | Path, *, title: str = "", ylabel: str = ""
) -> Path:
    """ASR values in [0, 1] as an annotated heatmap (blank where nan)."""
    grid = np.asarray(grid, dtype=float)
    fig, ax = subplots(figsize=(4.5, 0.5 * len(rows) + 1.6))
    im = ax.imshow(np.ma.masked_invalid(grid), cmap="Reds", vmin=0, vmax=1, aspect="auto")
    for (i, j), v in np.ndenumerate(grid):
        if not np.isnan(v):
            ax.text(j, i, f"{100 * v:.0f}%", ha="center", va="center", color="white" if v > 0.6 else "black")
    ax.set_xticks(range(len(cols)), list(cols))
    ax.set_yticks(range(len(rows)), list(rows))
    ax.set(xlabel="role", ylabel=ylabel, title=title)
    fig.colorbar(im, ax=ax, fraction=0.05, label="ASR")
    return _save(fig, path)


def plot_cos_curves(
    layers: Sequence[int],
    curves: Mapping[str, Sequence[float]],
    band: Sequence[int],
    path: str | Path,
    *,
    title: str = "",
) -> Path:
    """cos(-R_l, attack_l) per layer for each condition, the averaging band shaded."""
    fig, ax = subplots(figsize=(7, 4))
    for i, (name, values) in enumerate(curves.items()):
        ax.plot(
            list(layers),
            list(values),
            marker="o",
            ms=2.5,
            label=name,
            color=colormaps["tab20"](i % 20),
            ls="-" if i < 20 else "--",
        )
    ax.axvspan(min(band) - 0.5, max(band) + 0.5, color="grey", alpha=0.15, label="band")
    ax.axhline(0, color="grey", lw=0.5)
    ax.set(
        xlabel="layer (resid_pre)",
        ylabel="cos(−R, attack)",
        ylim=(-1.05, 1.05),
        title=title or "Attack vectors vs the negative refusal direction",
    )
    ax.legend(fontsize=7, ncol=2)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_projections(
    groups: Mapping[str, tuple[Sequence[float], Sequence[bool]]], path: str | Path, *, title: str = ""
) -> Path:
    """Each prompt's projection on the unit refusal direction, one column per condition (filled = attack succeeded)."""
    fig, ax = subplots(figsize=(max(5, 0.8 * len(groups) + 2), 4))
    rng = np.random.default_rng(0)
    for x, (raw_values, raw_success) in enumerate(groups.values()):
        values, success = np.asarray(raw_values, dtype=float), np.asarray(raw_success, dtype=bool)
        jitter = x + rng.uniform(-0.18, 0.18, size=len(values))
        ax.scatter(jitter[success], values[success], s=12, c="C3")
        ax.scatter(jitter[~success], values[~success], s=12, facecolors="none", edgecolors="C0")
        if len(values):
            ax.hlines(values.mean(), x - 0.3, x + 0.3, color="k", lw=1.5)
    ax.scatter([], [], s=12, c="C3", label="attack succeeded")
    ax.scatter([], [], s=12, facecolors="none", edgecolors="C0", label="refused (or not judged)")
    ax.set_xticks(range(len(groups)), list(groups), rotation=30, ha="right")
    ax.set(ylabel="projection on refusal direction (band mean)", title=title or "Per-prompt refusal projection")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3, axis="y")
    return _save(fig, path)
