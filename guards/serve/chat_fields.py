"""Which chat-completions fields the server honours, which it refuses (a 400 naming the field, never silently
dropped), and the parsing of `stop`, `temperature` and `top_p`."""

from __future__ import annotations

import math
from typing import Any

from harmlens.guards.serve.errors import RequestError

HONOURED = (
    "model",
    "messages",
    "max_tokens",
    "max_completion_tokens",
    "temperature",
    "top_p",
    "seed",
    "stream",
    "stream_options",
    "stop",
    "n",
    "user",
)
# fields the server cannot honour: accepted only at their no-op value (None always is), else a 400 naming them
NO_OP: dict[str, tuple] = {
    "tools": ([],),
    "functions": ([],),
    "tool_choice": ("none",),
    "function_call": ("none",),
    "parallel_tool_calls": (),
    "logprobs": (False,),
    "top_logprobs": (0,),
    "logit_bias": ({},),
    "presence_penalty": (0, 0.0),
    "frequency_penalty": (0, 0.0),
    "response_format": ({"type": "text"},),
    "modalities": (["text"],),
    "store": (False,),
    "metadata": (),
    "audio": (),
    "prediction": (),
    "reasoning_effort": (),
    "service_tier": ("auto", "default"),
    "web_search_options": (),
    "verbosity": (),
}


def unsupported(obj: dict) -> None:
    """400 naming the first field the server cannot honour (tools, logprobs, ...) or does not know."""
    for key, value in obj.items():
        if key in HONOURED or value is None or value in NO_OP.get(key, ()):
            continue
        why = "this server cannot honour it" if key in NO_OP else "unknown field"
        raise RequestError(400, f"'{key}' is not supported: {why} (remove it or send null)", "unsupported", key)


def stop_strings(value: Any) -> tuple[str, ...]:
    """`stop`: None, one non-empty string or a list of up to 4 (duplicates dropped)."""
    stops = [value] if isinstance(value, str) else value
    if value is None:
        return ()
    if not isinstance(stops, list) or len(stops) > 4 or not all(isinstance(x, str) and x for x in stops):
        raise RequestError(400, "'stop' must be a non-empty string or a list of up to 4 of them", param="stop")
    return tuple(dict.fromkeys(stops))


def number(obj: dict, key: str, default: float, lo: float, hi: float, open_lo: bool = False) -> float:
    """A finite number field in [lo, hi] ((lo, hi] when open_lo), default when absent or null."""
    value = obj.get(key)
    if value is None:
        return default
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or not lo <= value <= hi or (open_lo and value == lo):
        span = f"{'over' if open_lo else 'from'} {lo:g} {'up ' if open_lo else ''}to {hi:g}"
        raise RequestError(400, f"'{key}' must be a number {span}, got {value!r}", param=key)
    return float(value)
