"""harmlens.probes: model loading, chat positions, activation caching, directions, steering/ablation, plots."""

from probes.activations import cache_resid, iter_resid_batches
from probes.chat import ChatFormat, ChatPrompt, chat_format, format_instruction
from probes.errors import HarmlensError
from probes.loading import load_model

__all__ = [
    "ChatFormat", "ChatPrompt", "HarmlensError", "cache_resid", "chat_format", "format_instruction",
    "iter_resid_batches", "load_model",
]
