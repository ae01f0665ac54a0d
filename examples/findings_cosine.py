"""Finding 1 (Zhao et al.): per-layer cosine between the harmfulness (t_inst) and refusal (t_post-inst) directions.

    python examples/findings_cosine.py [--out runs/findings/cosine] [--n-train 128] [--no-base] [--quick]

Directions on the text organism come from its own harmful training prompts and built-in Alpaca train prompts
(Arditi filter: harmful prompts it refuses, harmless ones it accepts, by first-token refusal score). The base model
(SmolLM2-135M-Instruct, which refuses nothing) gets the same unfiltered prompts, as in the README. Writes
cosine.json and cosine_per_layer.png. --quick uses 32 prompts per class and skips nothing else.
"""

from __future__ import annotations

import time

import _findings_common as C
import torch

from harmlens.probes.plots import plot_layer_curves


def cross_cosine(a: torch.Tensor, b: torch.Tensor) -> list[float]:
    """Row-wise cosine of two [layers, d] tensors (NaN where a row is zero)."""
    cos = torch.nn.functional.cosine_similarity(a.double(), b.double(), dim=-1)
    zero = (a.norm(dim=-1) == 0) | (b.norm(dim=-1) == 0)
    return torch.where(zero, torch.full_like(cos, float("nan")), cos).tolist()


def main() -> None:
    """Extract (or load) the directions, compare organism and base, write JSON + plot, print a summary."""
    args = C.parse_args(__doc__, "cosine", 0, 0, lambda p: p.add_argument("--no-base", action="store_true"))
    n_train = 32 if args.quick else args.n_train
    start = time.perf_counter()
    model = C.setup()
    org = C.directions(model, n_train, args.cache)
    layers = org.layers
    result = {
        "model": org.metadata["model"],
        "n_harmful": org.metadata["n_harmful"],
        "n_harmless": org.metadata["n_harmless"],
        "layers": layers,
        "organism": org.cosine_table(),
    }
    curves = {"organism (safety-tuned)": org.cosine().tolist()}
    if not args.no_base:
        del model
        base_model = C.setup("base")
        base = C.directions(base_model, n_train, args.cache, filtered=False, tag="base")
        result["base"] = base.cosine_table()
        result["organism_vs_base"] = {
            "harmfulness": cross_cosine(org.harmfulness, base.harmfulness),
            "refusal": cross_cosine(org.refusal, base.refusal),
        }
        curves["base SmolLM2-135M-Instruct"] = base.cosine().tolist()
    args.out.mkdir(parents=True, exist_ok=True)
    plot = plot_layer_curves(
        layers,
        curves,
        args.out / "cosine_per_layer.png",
        ylabel="cos(harmfulness, refusal)",
        ylim=(-1.05, 1.05),
        title="Harmfulness (t_inst) vs refusal (t_post-inst) direction",
    )
    result["seconds"] = round(time.perf_counter() - start, 1)
    C.write_json(args.out / "cosine.json", result)
    cos = org.cosine()
    best = int(cos[1:].argmax()) + 1
    print(
        f"\norganism: {result['n_harmful']} harmful / {result['n_harmless']} harmless prompts; "
        f"max cosine {float(cos[best]):+.2f} at layer {layers[best]}, "
        f"mean over layers 1-30 {float(cos[1:].mean()):+.2f}"
    )
    header = "  cos_base  cos(org,base)_harmful  cos(org,base)_refusal" if "base" in result else ""
    print("layer  cos_organism" + header)
    for i, layer in enumerate(layers):
        row = f"{layer:5d}  {float(cos[i]):+12.3f}"
        if "base" in result:
            ob = result["organism_vs_base"]
            row += f"  {result['base'][i]['cosine']:+8.3f}  {ob['harmfulness'][i]:+21.3f}  {ob['refusal'][i]:+21.3f}"
        print(row)
    print(f"wrote {args.out / 'cosine.json'}, {plot} in {C.elapsed(start)}")


if __name__ == "__main__":
    main()
