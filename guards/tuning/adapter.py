"""LoRA adapter value object: save/load as safetensors + JSON, base-model check, merge into a HF model."""

from __future__ import annotations

import copy
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from harmlens.errors import HarmlensError
from harmlens.hf import atomic_dir, unwrap_model
from harmlens.io import load_tensors, save_tensors

FORMAT = "harmlens-lora-adapter"
_ARCH_KEYS = ("model_type", "hidden_size", "num_hidden_layers", "vocab_size")


def base_name(model) -> str:
    """Name recorded for a base model: the bridge's harmlens name, else `harmlens_name` or config.name_or_path."""
    if isinstance(model, str):
        from harmlens.runtime import resolve_model_path

        return resolve_model_path(model)[1]
    if hasattr(model, "original_model"):
        from harmlens.runtime import model_name

        return model_name(model)
    return getattr(model, "harmlens_name", None) or getattr(model.config, "name_or_path", None) or "unknown"


def arch_signature(hf) -> dict:
    """Architecture fields of a HF config that an adapter must match."""
    return {k: getattr(hf.config, k, None) for k in _ARCH_KEYS}


@dataclass
class Adapter:
    """Trained LoRA weights (keys relative to the HF model) with the base model's name and the LoRA config."""

    base_model: str
    lora: dict  # r, alpha, dropout, target_modules, layers
    weights: dict[str, torch.Tensor]
    meta: dict = field(default_factory=dict)  # arch, steps, seed, losses, data fingerprint, timings

    @property
    def scale(self) -> float:
        """LoRA scaling factor alpha / r."""
        return float(self.lora["alpha"]) / float(self.lora["r"])

    def save(self, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
        """Write adapter.safetensors + adapter.json into a new folder, atomically."""
        card = {"format": FORMAT, "version": 1, "base_model": self.base_model, "lora": self.lora, "meta": self.meta}
        with atomic_dir(path, overwrite=overwrite, what="adapter") as tmp:
            save_tensors(tmp / "adapter.safetensors", self.weights, {"format": FORMAT, "base_model": self.base_model})
            (tmp / "adapter.json").write_text(json.dumps(card, indent=1), encoding="utf-8")
        return Path(path)

    @classmethod
    def load(cls, path: str | os.PathLike, base_model=None) -> Adapter:
        """Read a saved adapter; if base_model (name, bridge or HF model) is given, check it is the same base."""
        path = Path(path)
        if not (path / "adapter.json").is_file():
            raise HarmlensError(f"{path} is not a saved adapter (no adapter.json)")
        try:
            card = json.loads((path / "adapter.json").read_text(encoding="utf-8"))
            assert card.get("format") == FORMAT and {"base_model", "lora"} <= card.keys()
        except (json.JSONDecodeError, AssertionError, UnicodeDecodeError, AttributeError):
            raise HarmlensError(f"corrupt adapter {path}: adapter.json is not a harmlens adapter card") from None
        weights, _ = load_tensors(path / "adapter.safetensors")
        adapter = cls(card["base_model"], card["lora"], weights, card.get("meta", {}))
        adapter._check_weights(path)
        if base_model is not None:
            adapter.check_base(base_model)
        return adapter

    def _check_weights(self, where) -> None:
        a = {k[: -len(".lora_A.weight")] for k in self.weights if k.endswith(".lora_A.weight")}
        b = {k[: -len(".lora_B.weight")] for k in self.weights if k.endswith(".lora_B.weight")}
        if not a or a != b or len(a) * 2 != len(self.weights):
            raise HarmlensError(f"corrupt adapter {where}: LoRA A/B weights do not pair up")

    def check_base(self, base_model) -> None:
        """Raise HarmlensError unless base_model (name, bridge or HF model) is the model this adapter was trained on."""
        name = base_name(base_model)
        if name != self.base_model:
            raise HarmlensError(f"adapter was trained on base model {self.base_model!r}, not {name!r}")
        if not isinstance(base_model, str) and self.meta.get("arch"):
            have = arch_signature(getattr(base_model, "original_model", base_model))
            if have != self.meta["arch"]:
                raise HarmlensError(f"adapter was trained on a {self.meta['arch']} model, not {have}")

    def merge(self, base_model, *, inplace: bool = False):
        """A HF model with W += (alpha/r)·B·A merged in (a copy unless inplace); base_model may also be a name."""
        if isinstance(base_model, str):
            from harmlens.runtime import load_hf

            hf, _, _ = load_hf(base_model, dtype=torch.float32)  # merged weights keep full precision
            hf.harmlens_name = base_name(base_model)
            inplace = True
        else:
            hf = unwrap_model(base_model)
        self.check_base(base_model if not isinstance(base_model, str) else hf)
        if not inplace:
            hf = copy.deepcopy(hf)
        from transformers.pytorch_utils import Conv1D

        with torch.no_grad():
            for key in sorted(k for k in self.weights if k.endswith(".lora_A.weight")):
                mod_name = key[: -len(".lora_A.weight")]
                try:
                    module = hf.get_submodule(mod_name)
                except AttributeError:
                    raise HarmlensError(f"adapter does not fit the base model: it has no module {mod_name}") from None
                delta = self.weights[mod_name + ".lora_B.weight"].float() @ self.weights[key].float() * self.scale
                if isinstance(module, Conv1D):
                    delta = delta.T
                if tuple(delta.shape) != tuple(module.weight.shape):
                    raise HarmlensError(
                        f"adapter does not fit the base model: {mod_name} is "
                        f"{tuple(module.weight.shape)}, the LoRA update {tuple(delta.shape)}"
                    )
                module.weight += delta.to(module.weight.device, module.weight.dtype)
        hf.harmlens_name = self.base_model
        return hf

    def merge_and_save(
        self, base_model, path: str | os.PathLike, *, tokenizer=None, card: dict | None = None, overwrite: bool = False
    ) -> Path:
        """Merge into a copy of base_model and save it (safetensors) with the tokenizer and a card.json, atomically."""
        merged = self.merge(base_model)
        tokenizer = tokenizer if tokenizer is not None else getattr(base_model, "tokenizer", None)
        with atomic_dir(path, overwrite=overwrite, what="merged model") as tmp:
            merged.save_pretrained(tmp, safe_serialization=True)
            if tokenizer is not None:
                tokenizer.save_pretrained(tmp)
            info = {"base_model": self.base_model, "lora": self.lora, "meta": self.meta, **(card or {})}
            (tmp / "card.json").write_text(json.dumps(info, indent=1), encoding="utf-8")
        return Path(path)
