"""The main job: organism → directions → attacks → Latent Guard → adversarial training, resumable step by step.

Each step writes into out/<step>/ and, when it finishes, out/<step>/step.json (its seconds and markdown table); a step
whose step.json exists is skipped, so an interrupted job resumes where it stopped. The tables are printed last.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from harmlens.guards.pipeline.settings import STEPS, MainJobSettings
from harmlens.guards.pipeline.steps import RUNNERS, Subject
from harmlens.io import atomic_write_text

MARKER = "step.json"


def run_main_job(out: str | Path, settings: MainJobSettings | None = None) -> dict[str, dict]:
    """Run the chosen steps in order, skipping finished ones; print and return every step's record."""
    settings = settings or MainJobSettings()
    root = Path(out)
    subject = Subject(settings.model, settings.device)
    done: dict[str, dict] = {}
    for name in settings.selected():
        folder, marker = root / name, root / name / MARKER
        if marker.is_file():
            print(f"== {name}: done earlier ({marker}); delete that folder to rerun", flush=True)
            done[name] = json.loads(marker.read_text(encoding="utf-8"))
            continue
        folder.mkdir(parents=True, exist_ok=True)
        print(f"\n== {name}: {(RUNNERS[name].__doc__ or name).splitlines()[0]}", flush=True)
        start = time.perf_counter()
        done[name] = RUNNERS[name](folder, settings, subject) | {"seconds": round(time.perf_counter() - start, 1)}
        atomic_write_text(marker, json.dumps(done[name]))
    print_tables(root, done, "the text organism" if settings.model == "organism" else f"`{settings.model}`")
    return done


def print_tables(root: Path, done: dict[str, dict], subject: str = "the text organism") -> None:
    """Every finished step's markdown table, in the job's order, then the output folder."""
    print(f"\n# harmlens main job: results on {subject}\n")
    for name in STEPS:
        if name not in done:
            continue
        print(f"## {name} ({done[name]['seconds']:.0f} s)\n")
        print(done[name].get("markdown", ""))
    print(f"files: {root}/")
