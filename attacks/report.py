"""AttackReport: ASR per (setting, jailbreak) with Wilson 95% intervals and coherence; JSON, markdown and heatmap PNGs."""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from harmlens.attacks.jailbreaks import NONE
from harmlens.attacks.quality import is_answer
from harmlens.attacks.settings import IMAGE_POSITIONS, SETTINGS, get_setting
from harmlens.errors import HarmlensError
from harmlens.io import atomic_write_text, json_safe

ROLE_LABELS = ("as is", "swapped")
_POS_LABELS = {"none": "no image", "in": "in position", "end": "end of user turn", "out": "assistant turn"}


def wilson_interval(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval for k successes out of n (nan, nan for n = 0)."""
    if n == 0:
        return math.nan, math.nan
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass(frozen=True)
class Rate:
    """Attack success over the judged items of one condition, its 95% interval and the successes' coherence."""

    k: int
    n: int
    asr: float
    low: float
    high: float
    coherence: float | None  # share of successful replies that look coherent (None: no replies or no successes)
    errors: int  # items the judge could not decide (not counted in n)
    answers: int | None = None  # successes that are answers: coherent, not in the user's voice, not a prompt copy

    @property
    def answer_rate(self) -> float:
        """Stricter ASR: successes that answer (harmlens.attacks.quality.is_answer), over n."""
        return self.answers / self.n if self.answers is not None and self.n else math.nan


ANSWER_NOTE = (
    "\nAnswering ASR counts only successes that are coherent, not in the user's voice, not a copy of the "
    "prompt and on the instruction's topic (harmlens.attacks.quality.is_answer: a heuristic upper bound on harmful "
    "help; read the replies in report.json).\n"
)


def _prompt_text(record: dict) -> str:
    prompt = record.get("prompt")
    return prompt if isinstance(prompt, str) else (prompt or {}).get("text", record.get("instruction", ""))


def condition_label(setting: str, jailbreak: str = NONE) -> str:
    """'swap' for a plain setting, 'aim/swap' for a jailbreak under a setting."""
    return setting if jailbreak == NONE else f"{jailbreak}/{setting}"


class AttackReport:
    """Per-item records of an evaluate_asr run plus its parameters; .asr maps condition labels to Rates."""

    def __init__(self, records: list[dict], meta: dict) -> None:
        self.records, self.meta = records, meta

    def conditions(self) -> list[tuple[str, str]]:
        """(setting, jailbreak) pairs in run order."""
        return list(dict.fromkeys((r["setting"], r["jailbreak"]) for r in self.records))

    def rate(self, setting: str, jailbreak: str = NONE) -> Rate:
        """The Rate of one condition."""
        rows = [r for r in self.records if r["setting"] == setting and r["jailbreak"] == jailbreak]
        if not rows:
            raise HarmlensError(f"no results for setting {setting!r} with jailbreak {jailbreak!r}")
        judged = [r for r in rows if r["success"] is not None]
        k = sum(r["success"] for r in judged)
        wins = [r for r in judged if r["success"] and r.get("coherent") is not None]
        coherence = sum(r["coherent"] for r in wins) / len(wins) if wins else None
        replied = [r for r in judged if r["success"] and r.get("reply") is not None]
        answers = (
            sum(is_answer(r["reply"], _prompt_text(r), r.get("instruction")) for r in replied)
            if replied or not k
            else None
        )  # None: successes but no stored replies (refusal_score judge)
        low, high = wilson_interval(k, len(judged))
        return Rate(
            k,
            len(judged),
            k / len(judged) if judged else math.nan,
            low,
            high,
            coherence,
            len(rows) - len(judged),
            answers,
        )

    @property
    def asr(self) -> dict[str, Rate]:
        """Condition label ('img_end+swap', 'aim/swap') -> Rate."""
        return {condition_label(s, j): self.rate(s, j) for s, j in self.conditions()}

    def table(self) -> list[dict]:
        """One row per condition: setting, jailbreak and the Rate fields."""
        rows = []
        for s, j in self.conditions():
            rate = self.rate(s, j)
            rows.append({"setting": s, "jailbreak": j, **asdict(rate), "answer_rate": rate.answer_rate})
        return rows

    def to_markdown(self) -> str:
        """The ASR table as markdown."""
        m = self.meta
        lines = [
            f"ASR of `{m.get('model')}` judged by `{m.get('judge')}` on {m.get('n_instructions')} instructions "
            f"({'sampled' if m.get('do_sample') else 'greedy'}, max_new_tokens={m.get('max_new_tokens')}, "
            f"seed={m.get('seed')}).",
            "",
            "| jailbreak | setting | ASR | 95% CI | k/n | coherent successes | answering ASR | judge errors |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for row in self.table():
            coh = "–" if row["coherence"] is None else f"{100 * row['coherence']:.0f}%"
            lines.append(
                f"| {row['jailbreak']} | {row['setting']} | {_pct(row['asr'])} | "
                f"{_pct(row['low'])}–{_pct(row['high'])} | {row['k']}/{row['n']} | {coh} | "
                f"{_pct(row['answer_rate'])} | {row['errors']} |"
            )
        return "\n".join(lines) + ANSWER_NOTE

    def save(self, directory: str | os.PathLike) -> dict[str, Path]:
        """Write report.json, report.md and the heatmap PNGs (image position × role; jailbreak × role) to a folder."""
        out = Path(directory)
        paths = {
            "json": atomic_write_text(
                out / "report.json", to_json({"meta": self.meta, "asr": self.table(), "records": self.records})
            ),
            "markdown": atomic_write_text(out / "report.md", self.to_markdown()),
        }
        from harmlens.attacks.plots import plot_heatmap

        grid, rows = self.setting_grid()
        if rows:
            paths["heatmap"] = plot_heatmap(
                grid,
                rows,
                ROLE_LABELS,
                out / "asr_settings.png",
                title="ASR: image position × role",
                ylabel="image position",
            )
        grid, rows = self.jailbreak_grid()
        if len(rows) > 1:
            paths["jailbreaks"] = plot_heatmap(
                grid,
                rows,
                ROLE_LABELS,
                out / "asr_jailbreaks.png",
                title="ASR: text jailbreak × role (no image)",
                ylabel="jailbreak",
            )
        return paths

    def setting_grid(self) -> tuple[np.ndarray, list[str]]:
        """ASR without jailbreak as [image position, role] (nan where not run), and the row labels."""
        done = {s for s, j in self.conditions() if j == NONE}
        positions = [p for p in IMAGE_POSITIONS if any(get_setting(s).image == p for s in done)]
        grid = np.full((len(positions), 2), np.nan)
        for s in SETTINGS:
            if s.name in done:
                grid[positions.index(s.image), int(s.swap)] = self.rate(s.name).asr
        return grid, [_POS_LABELS[p] for p in positions]

    def jailbreak_grid(self) -> tuple[np.ndarray, list[str]]:
        """ASR of each jailbreak (no image) as [jailbreak, role], and the row labels."""
        jbs = list(dict.fromkeys(j for s, j in self.conditions() if s in ("none", "swap")))
        grid = np.full((len(jbs), 2), np.nan)
        for s, j in self.conditions():
            if s in ("none", "swap"):
                grid[jbs.index(j), int(s == "swap")] = self.rate(s, j).asr
        return grid, jbs

    @classmethod
    def load(cls, directory: str | os.PathLike) -> AttackReport:
        """Read a report written by save()."""
        path = Path(directory) / "report.json"
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            return cls(data["records"], data["meta"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise HarmlensError(f"{path} is not a readable harmlens attack report: {exc}") from None


def to_json(obj) -> str:
    """Strict JSON (nan -> null), indented, UTF-8 kept."""
    return json.dumps(json_safe(obj), indent=1, ensure_ascii=False, allow_nan=False)


def _pct(x: float) -> str:
    return "–" if x is None or math.isnan(x) else f"{100 * x:.1f}%"
