"""Attack a chat model with role swap and a text jailbreak, judge it three ways, and look at the refusal projection.

Run from the repository root (CPU is fine; about a minute on the embedded SmolLM2-135M-Instruct):
    python examples/attacks_quickstart.py [--model PATH] [--n 8] [--out runs/attacks_quickstart]
For the safety-tuned text organism pass its cached folder as --model (`python -m harmlens.guards` prints it).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harmlens.attacks import evaluate_asr, perturb, projection_analysis, role_template  # noqa: E402
from harmlens.probes.data import builtin_prompts  # noqa: E402
from harmlens.probes.directions import extract_directions  # noqa: E402
from harmlens.runtime.loading import load_model  # noqa: E402


def main() -> None:
    """Show one perturbed prompt, then ASR, the ASR table and the projection ranking."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None)
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--out", type=Path, default=Path("runs/attacks_quickstart"))
    args = parser.parse_args()

    model = load_model(args.model)
    harmful = builtin_prompts("harmful", "val", limit=args.n)  # not used to train the organisms
    print(perturb(role_template(model), harmful[0], "swap").text)

    report = evaluate_asr(
        model,
        harmful,
        settings="all",
        jailbreaks=["prefix_injection"],
        judge="substring:rma",
        max_new_tokens=48,
        out=args.out,
    )  # rerun to resume; delete args.out to start over
    report.save(args.out)
    print(report.to_markdown())

    directions = extract_directions(
        model,
        builtin_prompts("harmful", "train", limit=32),
        builtin_prompts("harmless", "train", limit=32),
        progress=False,
    )
    proj = projection_analysis(model, report, directions, use="all")
    proj.save(args.out)
    for label, cos in proj.ranking():
        print(f"{label:28s} band cos(-R, attack) = {cos:+.3f}   projection shift = {proj.shift[label]:+.2f}")


if __name__ == "__main__":
    main()
