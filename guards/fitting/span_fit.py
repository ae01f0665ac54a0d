"""Fitting a span LatentGuard: token-level probes read at every token up to t_inst (top score), plus a t_inst probe.

Why: a jailbreak wrapper that ends in constant text moves t_inst off the request, so the t_inst rule misses it, but
the request's own last token still carries the model's harmfulness belief. The probes learn it from prompts wrapped
in a few jailbreaks (the fit wrappers): positive at the request's last token (and at t_inst of plain harmful prompts),
negative at every token of harmless prompts, plain or wrapped, and at the wrapper's own tokens before a harmful
request. Evaluate on wrappers outside the fit (`held_out_gptfuzzer_ids`, the other named jailbreaks).
The token probe is a small MLP over all read layers by default (harmlens.guards.latent.mlp_probe); token_probe='linear' fits one
logistic probe per layer instead. A linear token probe misses some plain requests (the max over many harmless tokens
needs a high threshold), so it comes with a second part by default: a probe fitted at t_inst of the plain prompts only,
each part scaled on held-out harmless prompts (fit_scales), the larger one speaking.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import torch

from harmlens.attacks.jailbreaks import Jailbreak, get_jailbreak, gptfuzzer_templates
from harmlens.errors import HarmlensError
from harmlens.guards.fitting.fit import balanced_variants
from harmlens.guards.fitting.probe_training import train_mlp_probe, train_probes
from harmlens.guards.fitting.scales import fit_scales
from harmlens.guards.fitting.splits import calibration_split, check_set, hold_out, prompt_roles
from harmlens.guards.latent.calibration import auroc, calibration_record, threshold_for_fpr
from harmlens.guards.latent.config_base import SpanConfig
from harmlens.guards.latent.guard_file import FORMAT, MLP_VERSION, VERSION
from harmlens.guards.latent.mlp_probe import MLPProbeConfig
from harmlens.guards.latent.variants.span_mlp import SpanMLPConfig
from harmlens.io import model_signature
from harmlens.probes.directions import data_hash
from harmlens.runtime import ChatPrompt, chat_format, check_layers, read_positions

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

FIT_NAMED = ("aim", "refusal_suppression", "evil_confidant", "payload_splitting")
TOKEN_PROBES = ("mlp", "linear")
NEGATIVES_PER_PROMPT = 32


def fit_gptfuzzer_ids(seed: int = 0) -> list[str]:
    """Half of the 77 GPTFuzzer templates (seeded), the fit side; the rest are held out for evaluation."""
    ids = sorted(gptfuzzer_templates(), key=int)
    return sorted(random.Random(seed).sample(ids, len(ids) // 2), key=int)


def held_out_gptfuzzer_ids(seed: int = 0) -> list[str]:
    """The GPTFuzzer templates a default span guard never saw."""
    fit = set(fit_gptfuzzer_ids(seed))
    return [i for i in sorted(gptfuzzer_templates(), key=int) if i not in fit]


def default_wrappers(seed: int = 0) -> list[list[str]]:
    """Two wrapper groups: four named jailbreaks, and the fit half of GPTFuzzer's templates."""
    return [list(FIT_NAMED), [f"gptfuzzer:{i}" for i in fit_gptfuzzer_ids(seed)]]


def span_layers(model: TransformerBridge) -> list[int]:
    """Default layers: every other layer from a third of the depth to the final residual."""
    n = int(model.cfg.n_layers)
    return list(range(n // 3, n + 1, 2)) if n >= 3 else list(range(n + 1))


def request_tokens(prompt: ChatPrompt, request: str, tokenizer) -> tuple[int, int] | None:
    """(first, last) token of the request's last occurrence inside the rendered prompt, or None if it is not there."""
    request = request.strip()
    start = prompt.text.rfind(request) if request else -1
    if start < 0:
        return None
    end = start + len(request)
    offsets = tokenizer(prompt.text, add_special_tokens=False, return_offsets_mapping=True).get("offset_mapping")
    if offsets is None:
        return None
    inside = [i for i, (a, b) in enumerate(offsets) if a < end and b > start and b > a]
    return (inside[0], inside[-1]) if inside and inside[-1] <= prompt.t_inst else None


def _groups(wrappers) -> list[list[Jailbreak]]:
    if wrappers is None:
        return []
    if isinstance(wrappers, (str, Jailbreak)):
        wrappers = [wrappers]
    single = lambda w: isinstance(w, (str, Jailbreak))  # noqa: E731
    if all(map(single, wrappers)):  # a flat list of names is one group
        wrappers = [wrappers]
    groups = [[w] if single(w) else list(w) for w in wrappers]
    if any(not g for g in groups):
        raise HarmlensError("an empty wrapper group")
    return [[get_jailbreak(w) for w in g] for g in groups]


def wrapper_groups(wrappers) -> list[list[Jailbreak]]:
    """Jailbreak groups from names: one name, a flat list (one group) or a list of groups (the fits' wrappers)."""
    return _groups(wrappers)


def _sample(positions: Sequence[int], k: int | None, rng: random.Random) -> list[int]:
    positions = list(positions)
    return positions if k is None or len(positions) <= k else sorted(rng.sample(positions, k))


def _examples(fmt, tokenizer, harmful, harmless, groups, k: int | None, rng, balance: bool) -> list[tuple]:
    """(prompt, positive positions, negative positions, plain label or None when wrapped) per fit prompt.

    A harmless request inside a wrapper is always negative at every one of its tokens: the contrast that teaches the
    probe the request, not the wrapper, is what counts.
    """
    variants = (lambda p: balanced_variants(p)) if balance else (lambda p: [p])  # noqa: E731
    out: list[tuple[ChatPrompt, list[int], list[int], bool | None]]
    out = [(r, [r.t_inst], [], True) for p in harmful for r in map(fmt.render, variants(p))]
    out += [(r, [], list(range(r.t_inst + 1)), False) for p in harmless for r in map(fmt.render, variants(p))]
    for group in groups:
        for i, p in enumerate(harmful):
            r = fmt.render(group[i % len(group)](p, seed=i))
            where = request_tokens(r, p, tokenizer)
            negatives = _sample(range(where[0]) if where else [], k, rng)
            out.append((r, [where[1] if where else r.t_inst], negatives, None))
        for i, p in enumerate(harmless):
            r = fmt.render(group[i % len(group)](p, seed=i))
            where = request_tokens(r, p, tokenizer)
            request = set(range(where[0], where[1] + 1)) if where else set()
            others = _sample([j for j in range(r.t_inst + 1) if j not in request], k, rng)
            out.append((r, [], sorted(request.union(others)), None))
    return out


def _gather(model, examples, layers, batch_size: int, progress: bool) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """Activations [n, n_layers, d] at the positive and negative positions, and {harmful?: [(t_inst, t_post_inst)
    activations]} of the plain prompts (their centroids; t_post_inst ones give the Δrefuse baseline). Prompts wrapped
    in the same template run their shared prefix once (harmlens.runtime.prefix_reads)."""
    pos: list = []
    neg: list = []
    post: dict[bool, list] = {True: [], False: []}
    plain_ends = lambda e: (e[0].t_inst, e[0].t_post_inst) if e[3] is not None else ()  # noqa: E731
    wanted = [sorted({*e[1], *e[2], *plain_ends(e)}) for e in examples]
    desc = "span guard: caching" if progress else False
    acts = read_positions(model, [e[0] for e in examples], wanted, layers=layers, batch_size=batch_size, progress=desc)
    for (prompt, p_pos, n_pos, plain), want, read in zip(examples, wanted, acts):
        at = dict(zip(want, read.unbind(1)))
        pos += [at[j] for j in p_pos]
        neg += [at[j] for j in n_pos]
        if plain is not None:
            post[plain].append((at[prompt.t_inst], at[prompt.t_post_inst]))
    return torch.stack(pos), torch.stack(neg), post


def fit_span_guard(
    make_guard: Callable[[dict, dict], Any],
    model: TransformerBridge,
    harmful: Sequence[str],
    harmless: Sequence[str],
    config: SpanConfig,
    *,
    val_harmful: Sequence[str] | None = None,
    val_harmless: Sequence[str] | None = None,
    progress: bool = False,
):
    """A span guard (see LatentGuard.fit and the configs' fields); `make_guard(tensors, metadata)` builds it. Each
    wrapper group wraps every fit prompt once, cycling through its jailbreaks; a two-part guard also fits a logistic
    probe at t_inst of the plain prompts, each part scaled on held-out harmless prompts (see fit_scales)."""
    if not isinstance(config, SpanConfig):
        raise HarmlensError(f"fit_span_guard fits span variants, not {config.variant!r}")
    token_probe, two_part, seed, target_fpr = config.token_probe, config.two_part, config.seed, config.target_fpr
    batch_size, layers, wrappers = config.batch_size, config.layers, config.wrappers
    harmful, harmless = check_set("harmful", harmful), check_set("harmless", harmless)
    if any(not isinstance(p, str) for p in harmful + harmless):
        raise HarmlensError("a span guard is fitted on plain-text prompts (it wraps them itself)")
    rng, given = random.Random(seed), val_harmful is not None or val_harmless is not None
    harmful, harmless, val_harmful, val_harmless = hold_out(
        harmful, harmless, val_harmful, val_harmless, val_fraction=config.val_fraction, rng=rng, target_fpr=target_fpr
    )
    selects = two_part and bool(val_harmful and val_harmless)  # the part scales are chosen on held-out prompts
    cal = val_harmless
    if target_fpr is not None and selects:  # α on prompts used for nothing else
        harmless, val_harmless, cal = calibration_split(harmless, val_harmless, given, config.val_fraction, rng)
    fmt = chat_format(model, system=config.system)
    rows = check_layers(model, span_layers(model) if layers is None else list(layers))
    groups = _groups(default_wrappers(seed) if wrappers == "default" else wrappers)
    examples = _examples(
        fmt, model.tokenizer, harmful, harmless, groups, config.negatives_per_prompt, rng, config.balance
    )
    pos, neg, post = _gather(model, examples, rows, batch_size, progress)
    if not torch.isfinite(pos).all() or not torch.isfinite(neg).all():
        raise HarmlensError("non-finite activations (nan/inf) while fitting: check the model's weights/dtype")
    plain = lambda label, k: torch.stack([a[k] for a in post[label]])  # noqa: E731
    at_harmful, at_harmless = plain(True, 0), plain(False, 0)  # t_inst of the plain prompts
    tinst = {f"tinst_{k}": v for k, v in train_probes(at_harmful, at_harmless).items()} if two_part else {}
    mlp = (config.mlp if isinstance(config, SpanMLPConfig) else None) or MLPProbeConfig(seed=seed)
    tokens = train_mlp_probe(pos, neg, mlp, progress) if token_probe == "mlp" else train_probes(pos, neg)
    tensors = {
        "harmful": at_harmful.mean(0),
        "harmless": at_harmless.mean(0),
        **tokens,
        **tinst,
        "refuse": plain(True, 1).mean(0),
        "accept": plain(False, 1).mean(0),
    }
    fit = {
        "n_harmful": len(harmful),
        "n_harmless": len(harmless),
        "n_positive_tokens": len(pos),
        "n_negative_tokens": len(neg),
        "wrappers": [[w.name for w in g] for g in groups],
        "data_sha256": data_hash(harmful, harmless),
    }
    version = MLP_VERSION if token_probe == "mlp" else VERSION
    meta = {
        "format": FORMAT,
        "version": version,
        **model_signature(model),
        "method": "probe",
        "position": "span",
        "token_probe": token_probe,
        "layers": rows,
        "alpha": 0.0,
        "alpha_refuse": 0.0,
        "target_fpr": target_fpr,
        "system": config.system,
        "config": config.to_dict(),
        "fit": fit,
    }
    if token_probe == "mlp":
        meta["mlp"] = mlp.to_dict()
    guard = make_guard(tensors, meta)
    if two_part:
        scaled = fit_scales(guard, val_harmless or harmless, batch_size)  # = the validation harmless scores
        guard.metadata["fit"]["scales_on"] = "validation harmless" if val_harmless else "fit harmless"
    if val_harmful and val_harmless:
        sp = torch.tensor([v.score for v in guard.check(val_harmful)])
        sn = scaled if two_part else torch.tensor([v.score for v in guard.check(val_harmless)])
        guard.metadata["fit"].update(
            n_val_harmful=len(val_harmful), n_val_harmless=len(val_harmless), val_auroc=auroc(sp, sn)
        )
        if target_fpr is not None:
            sc = sn if cal is val_harmless else torch.tensor([v.score for v in guard.check(cal)])
            guard.alpha = threshold_for_fpr(sc, target_fpr)
            refuse = torch.tensor([v.score for v in guard.refusal_guard().check(cal)])
            guard.metadata["alpha_refuse"] = threshold_for_fpr(refuse, target_fpr)
            guard.metadata["fit"]["calibration"] = calibration_record(len(sc), target_fpr)
    selection = (val_harmful, val_harmless) if selects else None
    calibrated = cal if target_fpr is not None and val_harmful and val_harmless else None
    guard.metadata["fit"]["prompt_roles"] = prompt_roles((harmful, harmless), selection, calibrated)
    return guard
