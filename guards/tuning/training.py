"""LoRA supervised fine-tuning on (instruction, response) pairs rendered through the model's chat template."""

from __future__ import annotations

import hashlib
import inspect
import json
import math
import random
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from harmlens import validate
from harmlens.errors import HarmlensError
from harmlens.guards.tuning import checkpoints as ckpt
from harmlens.guards.tuning.adapter import Adapter, arch_signature, base_name, unwrap_model
from harmlens.guards.tuning.encoding import (
    IGNORE,
    Encoded,
    Example,
    as_examples,
    batch_plan,
    collate,
    encode,
    end_of_turn,
)

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

__all__ = [
    "IGNORE",
    "Encoded",
    "Example",
    "TrainConfig",
    "as_examples",
    "batch_plan",
    "collate",
    "encode",
    "end_of_turn",
    "response_loss",
    "train",
]

_SCALED_LOGITS = ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_multiplier_scale")


@dataclass
class TrainConfig:
    """Hyper-parameters of a LoRA run; everything but the runtime fields enters the run fingerprint."""

    lora_r: int = 16  # LoRA rank
    lora_alpha: float = 32.0  # LoRA scale numerator: the update is (alpha / r) * B @ A
    lora_dropout: float = 0.05  # dropout on the LoRA branch input (0 = none)
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    layers: tuple[int, ...] | None = None  # decoder layers that get LoRA (None = all); fewer low layers = faster
    lr: float = 3e-4  # peak AdamW learning rate
    schedule: str = "cosine"  # after warmup: "cosine" (to 10% of lr), "linear" (to 0) or "constant"
    warmup: int = 10  # linear warmup steps
    weight_decay: float = 0.0  # AdamW decoupled weight decay
    max_grad_norm: float = 1.0  # gradient clipping (0 = off)
    batch_size: int = 8  # examples per optimizer step
    max_steps: int = 150  # optimizer steps (epochs over the data repeat as needed)
    max_response_tokens: int | None = None  # cut longer answers to this many tokens (no end-of-turn then); None = keep
    max_length: int = 160  # tokens per example (prompt + response); longer responses are truncated, with a warning
    first_token_weight: float = 1.0  # loss weight of each answer's first token (where it refuses or complies)
    share_prefix: bool = True  # run the batch's common prompt prefix once (same maths, ~30-40% less compute)
    bucket: int = 16  # sort each window of bucket*batch_size shuffled examples by length (less padding); 1 = off
    bf16: bool = False  # bfloat16 autocast for the forward pass (LoRA weights, gradients and optimizer stay float32)
    seed: int = 0  # seeds LoRA init, data order and dropout
    checkpoint_every: int = 0  # runtime: save a resumable checkpoint every N steps (0 = never)
    checkpoint_dir: str | None = None  # runtime: where checkpoints go; a run resumes from the newest one there
    device: str | None = None  # runtime: training device (None = where the model is; the model is moved there)
    threads: int | None = None  # runtime: torch CPU threads during training (None = torch's default)

    def __post_init__(self) -> None:
        """Refuse values that would train nothing or NaN (checked before any compute)."""
        for name in ("lora_r", "batch_size", "max_steps", "max_length", "bucket"):
            validate.count(getattr(self, name), f"TrainConfig.{name}")
        for name in ("warmup", "checkpoint_every", "seed"):
            validate.count(getattr(self, name), f"TrainConfig.{name}", minimum=0)
        validate.finite(self.lr, "TrainConfig.lr", minimum=0.0, open_min=True)
        validate.finite(self.lora_alpha, "TrainConfig.lora_alpha", minimum=0.0, open_min=True)
        validate.finite(self.lora_dropout, "TrainConfig.lora_dropout", minimum=0.0, maximum=0.99)
        for name in ("weight_decay", "max_grad_norm", "first_token_weight"):
            validate.finite(getattr(self, name), f"TrainConfig.{name}", minimum=0.0)
        if self.max_response_tokens is not None:
            validate.count(self.max_response_tokens, "TrainConfig.max_response_tokens")
        if self.threads is not None:
            validate.count(self.threads, "TrainConfig.threads")
        if self.layers is not None:
            if not self.layers:
                raise HarmlensError("TrainConfig.layers is empty: give layer indices, or None for all")
            self.layers = tuple(validate.layer_index(x, "TrainConfig.layers entry") for x in self.layers)
        if not isinstance(self.bf16, bool):
            raise HarmlensError(f"TrainConfig.bf16 must be true or false, got {self.bf16!r}")
        if self.schedule not in ("cosine", "linear", "constant"):
            raise HarmlensError(f"TrainConfig.schedule must be cosine, linear or constant, got {self.schedule!r}")
        validate.device(self.device)

    def fingerprint_fields(self) -> dict:
        """The fields that define the result (not where or how fast it runs)."""
        runtime = {"checkpoint_every", "checkpoint_dir", "device", "threads"}
        fields = {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items() if k not in runtime}
        if not self.bf16:  # float32 runs keep the fingerprints (and cached organisms) they had before bf16 existed
            del fields["bf16"]
        return fields


def shared_prefix(ids: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor, minimum: int = 4) -> int:
    """Length of the loss-free token prefix every row shares (e.g. the template's system prompt); 0 if short."""
    same = ((ids == ids[:1]) & (mask == 1)).all(0).long().cumprod(0).sum()
    first_label = int((labels != IGNORE).long().argmax(1).min())
    n = min(int(same), first_label - 1)
    return n if n >= minimum and ids.shape[0] > 1 else 0


def _expand_cache(cache, batch: int) -> None:
    """Broadcast a batch-1 KV cache to `batch` rows in place (views: gradients flow back to the one prefix)."""
    if hasattr(cache, "layers"):
        for layer in cache.layers:
            layer.keys, layer.values = (t.expand(batch, *t.shape[1:]) for t in (layer.keys, layer.values))
    else:  # older transformers
        cache.key_cache = [k.expand(batch, *k.shape[1:]) for k in cache.key_cache]
        cache.value_cache = [v.expand(batch, *v.shape[1:]) for v in cache.value_cache]


def response_loss(
    hf,
    ids: torch.Tensor,
    mask: torch.Tensor,
    labels: torch.Tensor,
    *,
    share_prefix: bool = True,
    first_token_weight: float = 1.0,
    extra: dict | None = None,
) -> torch.Tensor:
    """Weighted mean next-token cross-entropy over response tokens (each answer's first token weighs
    first_token_weight). Logits are computed only where a label is, and a prefix shared by the whole batch is run
    once (batch 1) and broadcast as a KV cache: same result, less work. `extra` (e.g. pixel_values) goes to one
    full forward of the whole model."""
    target, keep = labels[:, 1:], labels[:, 1:] != IGNORE
    weight = torch.ones(target.shape, dtype=torch.float32, device=target.device)
    if first_token_weight != 1.0:
        weight[torch.arange(len(target)), keep.long().argmax(1)] = first_token_weight
    if extra:
        cols = keep.any(0).nonzero().squeeze(1)  # positions whose next token is a label
        if "logits_to_keep" in inspect.signature(hf.forward).parameters:
            logits = hf(input_ids=ids, attention_mask=mask, use_cache=False, logits_to_keep=cols, **extra).logits
        else:
            logits = hf(input_ids=ids, attention_mask=mask, use_cache=False, **extra).logits[:, cols]
        sel = keep[:, cols]
        return _weighted_ce(logits[sel], target[:, cols][sel], weight[:, cols][sel])
    decoder = hf.get_decoder() if hasattr(hf, "get_decoder") else None
    head = hf.get_output_embeddings()
    if decoder is None or decoder is hf or head is None or any(getattr(hf.config, k, None) for k in _SCALED_LOGITS):
        logits = hf(input_ids=ids, attention_mask=mask, use_cache=False).logits[:, :-1][keep]  # full forward
        return _weighted_ce(logits, target[keep], weight[keep])
    start = shared_prefix(ids, mask, labels) if share_prefix else 0
    if start:
        kw = "cache" if "cache" in inspect.signature(decoder.forward).parameters else "past_key_values"
        first = decoder(input_ids=ids[:1, :start], use_cache=True)
        cache = getattr(first, "past_key_values", None) or getattr(first, "cache", None)
        _expand_cache(cache, ids.shape[0])
        hidden = decoder(input_ids=ids[:, start:], attention_mask=mask, use_cache=True, **{kw: cache})
    else:
        hidden = decoder(input_ids=ids, attention_mask=mask, use_cache=False)
    keep, target, weight = keep[:, start:], target[:, start:], weight[:, start:]
    logits = head(hidden.last_hidden_state[:, :-1][keep])
    return _weighted_ce(logits, target[keep], weight[keep])


def _weighted_ce(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    losses = F.cross_entropy(logits.float(), target, reduction="none")
    return (losses * weight).sum() / weight.sum()


def _lr_lambda(config: TrainConfig) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if step < config.warmup:
            return (step + 1) / (config.warmup + 1)
        frac = (step - config.warmup) / max(1, config.max_steps - config.warmup)
        if config.schedule == "linear":
            return max(0.0, 1.0 - frac)
        if config.schedule == "cosine":
            return 0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * min(1.0, frac)))
        return 1.0

    if config.schedule not in ("cosine", "linear", "constant"):
        raise HarmlensError(f"unknown lr schedule {config.schedule!r}; choose cosine, linear or constant")
    return factor


def _lora_weights(peft_model) -> dict[str, torch.Tensor]:
    """LoRA tensors (CPU copies) keyed by their module path in the plain HF model."""
    from peft import get_peft_model_state_dict

    sd = get_peft_model_state_dict(peft_model, save_embedding_layers=False)
    return {k.removeprefix("base_model.model."): v.detach().cpu().clone() for k, v in sd.items()}


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def train(
    model: TransformerBridge,
    examples: Sequence[tuple[str, str]] | Sequence[Example],
    *,
    config: TrainConfig,
    prompt_transform: Callable[[str, int], str] | None = None,
    progress: bool = True,
    tokenizer=None,
    batch_inputs: Callable[[list[int]], dict] | None = None,
) -> Adapter:
    """Train a LoRA adapter (loss on response tokens only); resumes from config.checkpoint_dir; model left unchanged.
    batch_inputs(example indices) -> extra forward tensors of a batch, e.g. {'pixel_values': ...} for a VLM."""
    from peft import LoraConfig, get_peft_model, set_peft_model_state_dict

    hf = unwrap_model(model)
    tokenizer = tokenizer if tokenizer is not None else getattr(model, "tokenizer", None)
    if tokenizer is None:
        raise HarmlensError("train() needs the tokenizer: pass a TransformerBridge or tokenizer=...")
    if config.max_steps < 1 or config.batch_size < 1:
        raise HarmlensError("max_steps and batch_size must be at least 1")
    n_layers = int(getattr(hf.config, "num_hidden_layers", 0) or 0) or None
    if config.layers is not None and n_layers is not None and max(config.layers) >= n_layers:
        raise HarmlensError(
            f"TrainConfig.layers {list(config.layers)} is out of range: the model has {n_layers} layers"
        )
    encoded = encode(
        examples,
        tokenizer,
        max_length=config.max_length,
        max_response_tokens=config.max_response_tokens,
        prompt_transform=prompt_transform,
    )
    base = base_name(model)
    fingerprint = hashlib.sha256(
        json.dumps(
            [config.fingerprint_fields(), base, [e.input_ids for e in encoded], [e.labels for e in encoded]]
        ).encode()
    ).hexdigest()[:16]
    device = torch.device(config.device) if config.device else next(hf.parameters()).device
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    plan = batch_plan([len(e.input_ids) for e in encoded], config)
    lora: dict[str, Any] = {
        "r": config.lora_r,
        "alpha": config.lora_alpha,
        "dropout": config.lora_dropout,
        "target_modules": list(config.target_modules),
        "layers": list(config.layers) if config.layers else None,
    }
    threads = torch.get_num_threads()
    grad_flags = {n: p.requires_grad for n, p in hf.named_parameters()}
    was_training = hf.training
    hf.to(device)
    seed_everything(config.seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        peft_model = get_peft_model(
            hf,
            LoraConfig(
                r=config.lora_r,
                lora_alpha=config.lora_alpha,  # type: ignore[arg-type]  # peft annotates int, accepts float
                lora_dropout=config.lora_dropout,
                bias="none",
                target_modules=list(config.target_modules),
                layers_to_transform=lora["layers"],
            ),
        )
    prefix = "base_model.model."
    try:
        if config.threads:
            torch.set_num_threads(config.threads)
        params = [p for p in peft_model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(config))
        step, losses, tokens, seconds = 0, [], 0, 0.0
        found = ckpt.list_checkpoints(config.checkpoint_dir)
        if found:
            state, weights, opt_tensors = ckpt.load_checkpoint(found[-1], base_model=base, fingerprint=fingerprint)
            result = set_peft_model_state_dict(peft_model, {prefix + k: v for k, v in weights.items()})
            if getattr(result, "unexpected_keys", None):
                raise HarmlensError(f"corrupt checkpoint {found[-1]}: adapter weights do not fit this LoRA config")
            ckpt.restore_training_state(state, opt_tensors, opt, sched)
            step, losses, tokens, seconds = state["step"], state["losses"], state["tokens"], state["seconds"]
        hf.train()
        bar = tqdm(total=config.max_steps, initial=step, disable=not progress, desc="LoRA", unit="step")
        while step < config.max_steps:
            start = time.perf_counter()
            ids, mask, labels = collate(encoded, plan[step], pad_id, device)
            extra = {k: v.to(device) for k, v in batch_inputs(plan[step]).items()} if batch_inputs else None
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=config.bf16):
                loss = response_loss(
                    hf,
                    ids,
                    mask,
                    labels,
                    share_prefix=config.share_prefix,
                    first_token_weight=config.first_token_weight,
                    extra=extra,
                )
            loss.backward()
            if config.max_grad_norm:
                torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            step, tokens = step + 1, tokens + int(mask.sum())
            losses.append(round(loss.item(), 5))
            seconds += time.perf_counter() - start
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
            bar.update()
            if (
                config.checkpoint_every
                and config.checkpoint_dir
                and (step % config.checkpoint_every == 0 or step == config.max_steps)
            ):
                ckpt.save_checkpoint(
                    config.checkpoint_dir,
                    step,
                    _lora_weights(peft_model),
                    opt,
                    sched,
                    {
                        "base_model": base,
                        "fingerprint": fingerprint,
                        "losses": losses,
                        "tokens": tokens,
                        "seconds": seconds,
                    },
                )
        bar.close()
        weights = _lora_weights(peft_model)
    finally:
        peft_model.unload()
        for n, p in hf.named_parameters():
            p.requires_grad_(grad_flags.get(n, p.requires_grad))
        hf.train(was_training)
        torch.set_num_threads(threads)
    meta = {
        "arch": arch_signature(hf),
        "config": config.fingerprint_fields(),
        "fingerprint": fingerprint,
        "steps": step,
        "examples": len(encoded),
        "tokens": tokens,
        "train_seconds": round(seconds, 2),
        "losses": losses,
    }
    return Adapter(base, lora, weights, meta)
