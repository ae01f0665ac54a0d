"""Adapters in PEFT's layout (adapter_config.json + adapter_model.safetensors), loadable by PeftModel.from_pretrained,
vLLM's LoRA serving and the Hub; harmlens's own adapter folders (adapter.json) still load through load_adapter."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from harmlens.errors import HarmlensError
from harmlens.guards.tuning.adapter import Adapter
from harmlens.hf import atomic_dir

PEFT_PREFIX = "base_model.model."
CONFIG, WEIGHTS = "adapter_config.json", "adapter_model.safetensors"


def _fan_in_fan_out(adapter: Adapter) -> bool:
    return (adapter.meta.get("arch") or {}).get("model_type") in ("gpt2",)  # Conv1D weights are [in, out]


def save_peft(adapter: Adapter, path: str | os.PathLike, *, overwrite: bool = False, card: str | None = None) -> Path:
    """Write the adapter as a PEFT LoRA folder (peft's own LoraConfig writes the config), optionally with README.md."""
    from peft import LoraConfig
    from safetensors.torch import save_file

    lora = adapter.lora
    config = LoraConfig(
        r=int(lora["r"]),
        lora_alpha=lora["alpha"],
        lora_dropout=float(lora.get("dropout") or 0.0),
        target_modules=list(lora["target_modules"]),
        layers_to_transform=lora.get("layers") or None,
        bias="none",
        task_type="CAUSAL_LM",
        fan_in_fan_out=_fan_in_fan_out(adapter),
        base_model_name_or_path=adapter.base_model,
        inference_mode=True,
    )
    tensors = {PEFT_PREFIX + k: v.detach().cpu().contiguous() for k, v in adapter.weights.items()}
    with atomic_dir(path, overwrite=overwrite, what="PEFT adapter") as tmp:
        config.save_pretrained(str(tmp))
        save_file(tensors, str(tmp / WEIGHTS), metadata={"format": "pt"})
        if adapter.meta:
            (tmp / "harmlens_adapter_meta.json").write_text(json.dumps(adapter.meta, indent=1), encoding="utf-8")
        if card is not None:
            (tmp / "README.md").write_text(card, encoding="utf-8")
    return Path(path)


def load_peft(path: str | os.PathLike, base_model=None) -> Adapter:
    """Read a PEFT LoRA folder as an Adapter; with base_model (name, bridge or HF model), check it is the same base."""
    from peft import LoraConfig
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    try:
        config = LoraConfig.from_pretrained(str(path))
    except (OSError, ValueError, TypeError, json.JSONDecodeError) as exc:
        raise HarmlensError(f"{path}: unreadable {CONFIG}: {' '.join(str(exc).split())[:120]}") from None
    if str(getattr(config, "peft_type", "")).split(".")[-1].upper() != "LORA":
        raise HarmlensError(f"{path} is a {config.peft_type} adapter; only LoRA adapters are supported")
    try:
        raw = load_file(str(path / WEIGHTS))
    except (SafetensorError, OSError, FileNotFoundError) as exc:
        raise HarmlensError(f"{path}: unreadable {WEIGHTS}: {' '.join(str(exc).split())[:120]}") from None
    weights = {k.removeprefix(PEFT_PREFIX).replace(".default.", "."): v for k, v in raw.items()}
    modules = config.target_modules
    lora = {
        "r": int(config.r),
        "alpha": float(config.lora_alpha),
        "dropout": float(config.lora_dropout),
        "target_modules": sorted(modules) if not isinstance(modules, str) else [modules],
        "layers": list(config.layers_to_transform) if config.layers_to_transform is not None else None,
    }
    meta_file = path / "harmlens_adapter_meta.json"
    meta = json.loads(meta_file.read_text(encoding="utf-8")) if meta_file.is_file() else {}
    adapter = Adapter(str(config.base_model_name_or_path or "unknown"), lora, weights, meta)
    adapter._check_weights(path)
    if base_model is not None:
        try:
            adapter.check_base(base_model)
        except HarmlensError as exc:
            raise HarmlensError(f"{path} was made for another base model: {exc}") from None
        _check_shapes(adapter, base_model, path)
    return adapter


def _check_shapes(adapter: Adapter, base_model, where) -> None:
    if isinstance(base_model, str):
        return
    hf = getattr(base_model, "original_model", base_model)
    for key, a in adapter.weights.items():
        if not key.endswith(".lora_A.weight"):
            continue
        name = key[: -len(".lora_A.weight")]
        module = _find(hf, name)
        w = getattr(module, "weight", None)
        if w is None or a.shape[1] not in tuple(w.shape):
            raise HarmlensError(f"{where} was made for another base model: {name} does not fit")


def _find(hf, name: str):
    for candidate in (name, name.removeprefix("model.")):
        try:
            module = hf.get_submodule(candidate)
            return getattr(module, "original_component", module)
        except AttributeError:
            continue
    return None


def load_adapter(path: str | os.PathLike, base_model=None) -> Adapter:
    """An adapter folder in either layout: PEFT (adapter_config.json) or harmlens's own (adapter.json)."""
    path = Path(path)
    if (path / CONFIG).is_file():
        return load_peft(path, base_model)
    if (path / "adapter.json").is_file():
        return Adapter.load(path, base_model)
    raise HarmlensError(f"{path} is not an adapter folder: no {CONFIG} (PEFT) and no adapter.json (harmlens)")


def adapter_card(adapter: Adapter, *, figures: dict | None = None, license: str = "apache-2.0") -> str:
    """A Hub model card for an adapter: base model, LoRA recipe, training summary and measured figures."""
    from harmlens.hub import model_card

    meta = adapter.meta
    recipe = {**adapter.lora, **{k: meta[k] for k in ("steps", "examples", "tokens", "fingerprint") if k in meta}}
    return model_card(
        title=f"LoRA adapter for {adapter.base_model}",
        base_model=adapter.base_model,
        license=license,
        recipe=recipe,
        figures=figures,
        library_name="peft",
        tags=["lora", "safety"],
    )


def same_weights(a: Adapter, b: Adapter) -> bool:
    """Whether two adapters hold identical LoRA tensors."""
    return a.weights.keys() == b.weights.keys() and all(torch.equal(a.weights[k], b.weights[k]) for k in a.weights)


__all__ = ["adapter_card", "load_adapter", "load_peft", "save_peft", "same_weights"]
