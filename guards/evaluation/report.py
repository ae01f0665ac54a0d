"""evaluate_guard: accuracy, TPR, FPR and AUROC of a guard and its baselines per prompt set; JSON, markdown, ROC."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from harmlens.errors import HarmlensError
from harmlens.guards.evaluation.baselines import LatentDetector, Prompt
from harmlens.guards.evaluation.shared_read import can_share, shared_check
from harmlens.guards.latent.calibration import auroc
from harmlens.guards.latent.guard import LatentGuard
from harmlens.io import atomic_write_text, json_safe


@dataclass
class GuardReport:
    """Per (set, detector) metrics, the raw scores behind them, and what was evaluated."""

    rows: list[dict]
    scores: dict[str, dict[str, list[float]]]  # detector -> set -> scores
    flags: dict[str, dict[str, list[bool]]]  # detector -> set -> flagged
    labels: dict[str, bool]  # set -> harmful?
    meta: dict = field(default_factory=dict)

    def add_subset(self, name: str, source: str, indices: Sequence[int]) -> None:
        """Metrics of a subset of one set's prompts (e.g. the XSTest prompts the model refuses), from stored scores."""
        if source not in self.labels or not indices:
            raise HarmlensError(f"cannot take a subset {name!r} of {source!r}: unknown set or no prompts")
        for det in self.detectors:
            self.scores[det][name] = [self.scores[det][source][i] for i in indices]
            self.flags[det][name] = [self.flags[det][source][i] for i in indices]
        self.labels[name] = self.labels[source]
        self.rows += [_metrics(self, det, name) for det in self.detectors]

    @property
    def detectors(self) -> list[str]:
        """Detector names in evaluation order."""
        return list(self.scores)

    def get(self, set_name: str, detector: str) -> dict:
        """The metrics row of one set and detector."""
        for row in self.rows:
            if row["set"] == set_name and row["detector"] == detector:
                return row
        raise HarmlensError(f"no result for set {set_name!r} and detector {detector!r}")

    def to_json(self) -> str:
        """The report as JSON (NaN -> null)."""
        return json.dumps(
            json_safe(
                {
                    "meta": self.meta,
                    "labels": self.labels,
                    "rows": self.rows,
                    "scores": self.scores,
                    "flags": self.flags,
                }
            ),
            indent=1,
        )

    def to_markdown(self) -> str:
        """Accuracy table (sets × detectors) plus AUROC, with n and the set's label."""
        names = self.detectors
        head = "| set | label | n | " + " | ".join(names) + " |\n|---|---|---|" + "---|" * len(names) + "\n"
        acc = "".join(
            f"| {s} | {'harmful' if h else 'harmless'} | {self.get(s, names[0])['n']} | "
            + " | ".join(_pct(self.get(s, d)["accuracy"]) for d in names)
            + " |\n"
            for s, h in self.labels.items()
        )
        auc = "".join(
            f"| {s} | {'harmful' if h else 'harmless'} | {self.get(s, names[0])['n']} | "
            + " | ".join(_num(self.get(s, d)["auroc"]) for d in names)
            + " |\n"
            for s, h in self.labels.items()
        )
        ref = self.meta.get("reference", {})
        return (
            f"# Guard evaluation: {self.meta.get('model', '?')}\n\n{self.meta.get('guard', '')}\n\n"
            f"## Accuracy (harmful sets: TPR; harmless sets: 1 − FPR)\n\n{head}{acc}\n"
            f"## AUROC (harmful sets vs {ref.get('harmless')}; harmless sets vs {ref.get('harmful')})\n\n"
            f"{head}{auc}"
        )

    def save(self, out: str | Path, *, plot: bool = True) -> dict[str, Path]:
        """Write report.json, report.md and roc.png into `out`."""
        out = Path(out)
        paths = {
            "json": atomic_write_text(out / "report.json", self.to_json()),
            "markdown": atomic_write_text(out / "report.md", self.to_markdown()),
        }
        if plot:
            paths["roc"] = plot_roc(self, out / "roc.png")
        return paths


def _pct(x) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f}"


def _num(x) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.3f}"


def _ranked(scores: list[float], flags: list[bool]) -> torch.Tensor:
    """Scores for ranking: an unscored (NaN) prompt ranks as its flag says (+inf flagged, −inf passed)."""
    return torch.tensor(
        [s if not math.isnan(s) else (math.inf if f else -math.inf) for s, f in zip(scores, flags)], dtype=torch.float64
    )


def evaluate_guard(
    guard,
    sets: Mapping[str, tuple[Sequence[Prompt], bool]],
    *,
    baselines: Sequence = (),
    reference: tuple[str, str] | None = None,
    progress: bool = True,
) -> GuardReport:
    """Run the guard and each baseline on every set {name: (prompts, harmful?)}; metrics per set and detector.

    AUROC of a harmful set is against the reference harmless set's scores (and vice versa); reference defaults to
    the first harmful and the first harmless set.
    """
    if not sets:
        raise HarmlensError("no evaluation sets")
    for name, value in sets.items():
        if not (isinstance(value, tuple) and len(value) == 2 and isinstance(value[1], bool)) or not value[0]:
            raise HarmlensError(f"set {name!r} must be (non-empty prompt list, harmful: bool)")
    labels = {name: value[1] for name, value in sets.items()}
    ref_h = reference[0] if reference else next((s for s, h in labels.items() if h), None)
    ref_l = reference[1] if reference else next((s for s, h in labels.items() if not h), None)
    detectors = [LatentDetector(guard) if isinstance(guard, LatentGuard) else guard, *baselines]
    names = [d.name for d in detectors]
    if len(set(names)) != len(names):
        raise HarmlensError(f"detector names must be unique, got {names}")
    scores: dict[str, dict[str, list[float]]] = {d.name: {} for d in detectors}
    flags: dict[str, dict[str, list[bool]]] = {d.name: {} for d in detectors}
    timing: dict[str, float] = {}
    latent = [d for d in detectors if isinstance(d, LatentDetector)]
    shared = latent if len(latent) > 1 and can_share([d.guard for d in latent]) else []  # one forward serves them all
    groups = ([shared] if shared else []) + [[d] for d in detectors if d not in shared]
    for group in groups:
        label, start = "+".join(d.name for d in group), time.perf_counter()
        for set_name, (prompts, _) in sets.items():
            if progress:
                print(f"  {label} on {set_name} ({len(prompts)} prompts)", flush=True)
            if group is shared:
                verdicts = shared_check([d.guard for d in group], list(prompts))
                preds = {d.name: [(v.score, v.harmful) for v in vs] for d, vs in zip(group, verdicts)}
            else:
                preds = {group[0].name: group[0].predict(list(prompts))}
            for name, pred in preds.items():
                scores[name][set_name] = [float(s) for s, _ in pred]
                flags[name][set_name] = [bool(f) for _, f in pred]
        timing[label] = round(time.perf_counter() - start, 2)
    report = GuardReport(
        [],
        scores,
        flags,
        labels,
        {"guard": repr(guard), "seconds": timing, "reference": {"harmful": ref_h, "harmless": ref_l}},
    )
    report.rows = [_metrics(report, det, s) for det in names for s in labels]
    if isinstance(guard, LatentGuard):
        report.meta.update(
            model=guard.metadata.get("model"), layers=guard.layers, alpha=guard.alpha, method=guard.method
        )
    return report


def _metrics(report: GuardReport, det: str, set_name: str) -> dict:
    """Accuracy/TPR/FPR of one detector on one set, and AUROC against the reference set of the other label."""
    harmful, ref = report.labels[set_name], report.meta["reference"]
    f, s = report.flags[det][set_name], report.scores[det][set_name]
    rate = sum(f) / len(f)
    other = ref["harmless"] if harmful else ref["harmful"]
    auc = float("nan")
    if other is not None and other != set_name:
        mine, theirs = _ranked(s, f), _ranked(report.scores[det][other], report.flags[det][other])
        auc = auroc(mine, theirs) if harmful else auroc(theirs, mine)
    return {
        "set": set_name,
        "detector": det,
        "label": "harmful" if harmful else "harmless",
        "n": len(f),
        "accuracy": rate if harmful else 1 - rate,
        "tpr": rate if harmful else None,
        "fpr": None if harmful else rate,
        "auroc": auc,
        "unscored": sum(math.isnan(x) for x in s),
    }


def plot_roc(report: GuardReport, path: str | Path) -> Path:
    """One panel per harmful set: ROC of each detector against the reference harmless set."""
    from harmlens.probes.plots import _save, subplots  # matplotlib only when plotting

    ref = report.meta.get("reference", {}).get("harmless")
    harmful = [s for s, h in report.labels.items() if h]
    if ref is None or not harmful:
        raise HarmlensError("an ROC plot needs a harmful and a harmless set")
    cols = min(4, len(harmful))
    rows = math.ceil(len(harmful) / cols)
    fig, axes = subplots(rows, cols, figsize=(3.3 * cols, 3.1 * rows), squeeze=False)
    for ax, set_name in zip(axes.flat, harmful):
        for det in report.detectors:
            pos, neg = torch.tensor(report.scores[det][set_name]), torch.tensor(report.scores[det][ref])
            fpr, tpr = roc_curve(pos.nan_to_num(math.inf), neg.nan_to_num(math.inf))
            ax.plot(fpr, tpr, label=f"{det} ({report.get(set_name, det)['auroc']:.2f})", lw=1.2)
        ax.plot([0, 1], [0, 1], color="0.7", lw=0.8, ls=":")
        ax.set_title(f"{set_name} vs {ref}", fontsize=8)
        ax.set_xlabel("FPR", fontsize=7)
        ax.set_ylabel("TPR", fontsize=7)
        ax.legend(fontsize=6, loc="lower right")
    for ax in list(axes.flat)[len(harmful) :]:
        ax.axis("off")
    return _save(fig, path)


def roc_curve(pos: torch.Tensor, neg: torch.Tensor) -> tuple[list[float], list[float]]:
    """(FPR, TPR) points over every threshold (flag ⇔ score ≥ threshold)."""
    thresholds = torch.unique(torch.cat([pos, neg])).flip(0)
    fpr = [0.0] + [float((neg >= t).double().mean()) for t in thresholds]
    tpr = [0.0] + [float((pos >= t).double().mean()) for t in thresholds]
    return fpr, tpr
