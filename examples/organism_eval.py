"""Print the held-out evaluation of the text organism (builds it first if it is not cached, ~10 min on 2 cores).

python examples/organism_eval.py [--examples 3]
"""

from __future__ import annotations

import argparse
import json

from harmlens.guards.organisms import REPLIES, build_organism, organism_card, organism_path


def main() -> None:
    """Print refusal rates per held-out set, the fluency check and a few replies."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=3, help="replies to show per set")
    args = parser.parse_args()
    build_organism("text")
    card = organism_card("text")
    ev = card["eval"]
    print(f"organism {card['id']} (base {card['base_model']}, seed {card['seed']}, data {card['data']['hash']})")
    print(
        f"built in {card['build_seconds']['total']:.0f} s: {card['training']['steps']} LoRA steps, "
        f"{card['training']['tokens']} tokens, {card['training']['train_seconds']:.0f} s training "
        f"on {card['environment']['device']} ({card['environment']['threads']} threads)"
    )
    print(f"\nrefusal rate, greedy, {ev['max_new_tokens']} new tokens, judge: {ev['judge']}")
    for name, s in ev["sets"].items():
        print(f"  {name:10s} n={s['n']:4d}  {s['refusal_rate']:.3f}")
        for src, sub in s.get("by_source", {}).items():
            print(f"    {src:18s} n={sub['n']:4d}  {sub['refusal_rate']:.3f}")
    ppl = ev["perplexity"]
    print(
        f"\nfluency ({ppl['scorer']} perplexity of harmless replies): organism {ppl['organism_replies']:.2f}, "
        f"base model's own {ppl['base_replies']:.2f}"
    )
    replies = json.loads((organism_path("text") / REPLIES).read_text(encoding="utf-8"))
    for name, rows in replies.items():
        print(f"\n--- {name}")
        for prompt, reply in rows[: args.examples]:
            print(f"  > {prompt[:100]}\n    {reply[:200]!r}")


if __name__ == "__main__":
    main()
