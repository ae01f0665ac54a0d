"""Matplotlib PNGs of directions, selection scores, belief scores and per-layer sweeps, written atomically."""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from harmlens.io import atomic_write_bytes


def subplots(nrows: int = 1, ncols: int = 1, *, figsize: tuple[float, float], **kwargs: Any) -> tuple[Figure, Any]:
    """Like pyplot.subplots, on a bare Figure: no global backend switch and no pyplot state in the user's session."""
    fig = Figure(figsize=figsize)
    return fig, fig.subplots(nrows, ncols, **kwargs)


def _save(fig, path: str | Path) -> Path:
    """Render a figure to PNG bytes and write them atomically."""
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=120)
    return atomic_write_bytes(path, buf.getvalue())


def plot_cosine(layers: Sequence[int], cosine: Sequence[float], path: str | Path, *, title: str = "") -> Path:
    """Per-layer cosine between the harmfulness (t_inst) and refusal (t_post-inst) directions."""
    fig, ax = subplots(figsize=(7, 3.5))
    ax.plot(list(layers), list(cosine), marker="o", ms=3)
    ax.axhline(0, color="grey", lw=0.5)
    ax.set(
        xlabel="layer (resid_pre; last = final residual)",
        ylabel="cos(harmfulness, refusal)",
        ylim=(-1.05, 1.05),
        title=title or "Harmfulness vs refusal direction",
    )
    ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_norms(
    layers: Sequence[int], norms: Mapping[str, Sequence[float]], path: str | Path, *, title: str = ""
) -> Path:
    """Per-layer L2 norm of each un-normalised direction."""
    fig, ax = subplots(figsize=(7, 3.5))
    for name, values in norms.items():
        ax.plot(list(layers), list(values), marker="o", ms=3, label=name)
    ax.set(xlabel="layer", ylabel="‖mean(harmful) − mean(harmless)‖", title=title or "Direction norms", yscale="log")
    ax.legend()
    ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_score_grids(
    grids: Mapping[str, np.ndarray],
    positions: Sequence[int],
    layers: Sequence[int],
    path: str | Path,
    *,
    winner: tuple[int, int] | None = None,
    discarded=None,
) -> Path:
    """Arditi selection scores (bypass, induce, KL) as heatmaps over (post-inst position, layer)."""
    fig, axes = subplots(len(grids), 1, figsize=(max(6, 0.28 * len(layers) + 2), 2.2 * len(grids) + 0.5), squeeze=False)
    for ax, (name, grid) in zip(axes[:, 0], grids.items()):
        grid = np.asarray(grid, dtype=float)
        im = ax.imshow(grid, aspect="auto", cmap="RdBu_r" if name != "kl" else "viridis")
        if name != "kl":
            lim = np.nanmax(np.abs(grid)) or 1.0
            im.set_clim(-lim, lim)
        if discarded is not None:
            ys, xs = np.nonzero(np.asarray(discarded))
            ax.scatter(xs, ys, marker="x", s=8, c="k", lw=0.6)
        if winner is not None:
            ax.scatter([winner[1]], [winner[0]], marker="*", s=120, c="gold", edgecolors="k")
        ax.set_yticks(range(len(positions)), [str(p) for p in positions])
        step = max(1, len(layers) // 15)
        ax.set_xticks(range(0, len(layers), step), [str(layers[i]) for i in range(0, len(layers), step)])
        ax.set(ylabel="position", title=name)
        fig.colorbar(im, ax=ax, fraction=0.03)
    axes[-1, 0].set_xlabel("layer  (x = discarded, * = selected)")
    return _save(fig, path)


def plot_belief_scatter(
    groups: Mapping[str, tuple[Sequence[float], Sequence[float]]], path: str | Path, *, title: str = ""
) -> Path:
    """Δharmful (t_inst) vs Δrefuse (t_post-inst) per prompt, one colour per prompt group."""
    fig, ax = subplots(figsize=(5.5, 4.5))
    for name, (dh, dr) in groups.items():
        ax.scatter(np.asarray(dh), np.asarray(dr), s=12, alpha=0.7, label=name)
    ax.axhline(0, color="grey", lw=0.5)
    ax.axvline(0, color="grey", lw=0.5)
    ax.set(xlabel="Δharmful (t_inst)", ylabel="Δrefuse (t_post-inst)", title=title or "Belief scores")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_layer_curves(
    layers: Sequence[int],
    curves: Mapping[str, Sequence[float]],
    path: str | Path,
    *,
    ylabel: str,
    title: str = "",
    ylim: tuple[float, float] | None = None,
    baseline: float | None = None,
) -> Path:
    """One line per named series over layers (NaN = gap), with an optional dashed baseline."""
    fig, ax = subplots(figsize=(7, 3.5))
    for name, values in curves.items():
        ax.plot(list(layers), np.asarray(values, dtype=float), marker="o", ms=3, label=name)
    if baseline is not None:
        ax.axhline(baseline, color="grey", ls="--", lw=1, label="no steering")
    ax.set(xlabel="layer", ylabel=ylabel, title=title, ylim=ylim)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _save(fig, path)
