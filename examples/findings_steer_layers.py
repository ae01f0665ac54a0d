"""Finding 3 (Zhao et al. Fig. 4): refusal rate on harmless prompts when steering one layer at a time.

    python examples/findings_steer_layers.py [--out runs/findings/steer_layers] [--n 24] [--coeff 2]
        [--layers 0:30:1] [--max-new-tokens 8] [--quick]

As in Zhao's intervention.py: x_l += coeff·v_l on resid_pre of block l only, v_l the un-normalised per-layer
harmfulness (t_inst) or refusal (t_post-inst) direction of the text organism, on every prompt token during the
prefill only (generated tokens are not steered), greedy decoding. Judged two ways on held-out Alpaca prompts:
the organism's substring judge (harmlens.attacks.judges.is_refusal, JailbreakBench phrases) on a short greedy reply, and
the first-token refusal score > 0 (Arditi's log-odds of refusal openers). Also reports the share of coherent
(harmlens.attacks.judges.coherent) and empty replies, since large steering vectors break the model.
Writes steer_layers.json and refusal_by_layer.png.
"""

from __future__ import annotations

import time

import _findings_common as C

from harmlens.guards.organisms.datasets import eval_prompts
from harmlens.probes import refusal_score, refusal_token_ids, steer
from harmlens.probes.plots import plot_layer_curves
from harmlens.runtime.chat import chat_format

KINDS = ("refusal", "harmfulness")


def extra(p) -> None:
    """Script-specific options."""
    p.add_argument("--coeff", type=float, default=2.0, help="steering coefficient (Zhao: 2)")
    p.add_argument("--layers", default="0:30:1", help="layers start:stop:step")
    p.add_argument("--max-new-tokens", type=int, default=8)


def measure(model, prompts, ids, max_new_tokens: int) -> dict:
    """Substring refusal rate, first-token refusal rate / mean score, coherence, and one example reply."""
    replies, logits = C.generate_with_first(model, prompts, max_new_tokens)
    score = refusal_score(logits, ids)
    return {
        "refusal_rate": C.rate([C.refused(r) for r in replies]),
        "first_token_rate": float((score > 0).float().mean()),
        "first_token_score": float(score.mean()),
        "coherent": C.rate([C.coherent(r, min_words=3) for r in replies]),
        "empty": C.rate([not r.strip() for r in replies]),
        "example": replies[0],
        "replies": replies,
    }


def main() -> None:
    """Sweep layers x directions, write JSON + plot, print the table."""
    args = C.parse_args(__doc__, "steer_layers", 24, 4, extra)
    start = time.perf_counter()
    model = C.setup()
    d = C.directions(model, args.n_train, args.cache)
    layers = C.layer_stride(args.layers)
    prompts = chat_format(model).render_many(eval_prompts("harmless")[: args.n])
    ids = refusal_token_ids(model.tokenizer)
    base = measure(model, prompts, ids, args.max_new_tokens)
    sweep: dict[str, list[dict]] = {k: [] for k in KINDS}
    for layer in layers:
        for kind in KINDS:
            vec = d.direction(kind)[d.row(layer)]
            if not vec.norm() > 0:  # the refusal direction at layer 0: same embedding for every prompt
                sweep[kind].append(
                    {
                        "layer": layer,
                        "refusal_rate": float("nan"),
                        "first_token_rate": float("nan"),
                        "first_token_score": float("nan"),
                        "coherent": float("nan"),
                        "empty": float("nan"),
                        "norm": 0.0,
                    }
                )
                continue
            with steer(model, vec, layer, args.coeff, positions="prompt"):
                m = measure(model, prompts, ids, args.max_new_tokens)
            sweep[kind].append({"layer": layer, "norm": float(vec.norm()), **m})
        print(
            f"layer {layer:2d}: "
            + "  ".join(
                f"{k} {sweep[k][-1]['refusal_rate']:.2f}/{sweep[k][-1]['first_token_rate']:.2f}" for k in KINDS
            ),
            flush=True,
        )
    args.out.mkdir(parents=True, exist_ok=True)
    curves = {f"{k} dir, reply judge": [r["refusal_rate"] for r in sweep[k]] for k in KINDS}
    curves |= {f"{k} dir, first token": [r["first_token_rate"] for r in sweep[k]] for k in KINDS}
    plot = plot_layer_curves(
        layers,
        curves,
        args.out / "refusal_by_layer.png",
        ylabel="refusal rate (harmless)",
        ylim=(-0.02, 1.02),
        baseline=base["refusal_rate"],
        title=f"Organism: steering one layer, coeff {args.coeff:g} (Zhao Fig. 4)",
    )
    peaks = {
        k: max((r for r in sweep[k] if r["refusal_rate"] == r["refusal_rate"]), key=lambda r: r["refusal_rate"])
        for k in KINDS
    }
    out = {
        "n": len(prompts),
        "coeff": args.coeff,
        "max_new_tokens": args.max_new_tokens,
        "positions": "prompt (prefill)",
        "baseline": base,
        "sweep": sweep,
        "peaks": {k: {"layer": p["layer"], "refusal_rate": p["refusal_rate"]} for k, p in peaks.items()},
        "seconds": round(time.perf_counter() - start, 1),
    }
    C.write_json(args.out / "steer_layers.json", out)
    print(
        f"\n{len(prompts)} harmless prompts, coeff {args.coeff:g}; baseline refusal {base['refusal_rate']:.2f} "
        f"(first token {base['first_token_rate']:.2f})"
    )
    print("layer | refusal dir: reply first-tok coherent | harmfulness dir: reply first-tok coherent")
    for i, layer in enumerate(layers):
        r, h = sweep["refusal"][i], sweep["harmfulness"][i]
        print(
            f"{layer:5d} | {r['refusal_rate']:17.2f} {r['first_token_rate']:9.2f} {r['coherent']:8.2f} | "
            f"{h['refusal_rate']:21.2f} {h['first_token_rate']:9.2f} {h['coherent']:8.2f}"
        )
    for k, p in peaks.items():
        print(f"peak {k} direction: {p['refusal_rate']:.2f} at layer {p['layer']} ({p['example'][:60]!r})")
    print(f"wrote {args.out / 'steer_layers.json'}, {plot} in {C.elapsed(start)}")


if __name__ == "__main__":
    main()
