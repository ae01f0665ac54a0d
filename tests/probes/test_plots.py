"""harmlens.probes.plots: per-layer curve plots are written atomically as PNG files."""

from __future__ import annotations

import math

from harmlens.probes.plots import plot_layer_curves


def test_plot_layer_curves_writes_png(tmp_path):
    path = plot_layer_curves(
        [0, 1, 2],
        {"a": [0.1, math.nan, 0.3], "b": [1, 2, 3]},
        tmp_path / "sub" / "c.png",
        ylabel="rate",
        title="t",
        ylim=(0, 1),
        baseline=0.05,
    )
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in path.parent.iterdir()] == ["c.png"]  # no temp file left behind
