"""harmlens.probes: model loading, chat positions, activation caching, directions, steering/ablation, plots."""

from harmlens.errors import HarmlensError
from harmlens.probes.beliefs import BeliefScores, Centroids, belief_scores, delta_scores
from harmlens.probes.data import builtin_prompts, read_prompts, read_records
from harmlens.probes.directions import Directions, extract_directions
from harmlens.probes.interventions import ablate, orthogonalize, steer
from harmlens.probes.records import PromptRecord
from harmlens.probes.selection import Selection, refusal_score, refusal_token_ids, select_refusal_direction
from harmlens.runtime import (
    ChatFormat,
    ChatPrompt,
    cache_resid,
    chat_format,
    format_instruction,
    from_hf,
    generate,
    iter_resid_batches,
    last_token_logits,
    load_model,
)

__all__ = [
    "BeliefScores",
    "Centroids",
    "ChatFormat",
    "ChatPrompt",
    "Directions",
    "HarmlensError",
    "Selection",
    "ablate",
    "belief_scores",
    "builtin_prompts",
    "cache_resid",
    "chat_format",
    "delta_scores",
    "extract_directions",
    "format_instruction",
    "from_hf",
    "generate",
    "iter_resid_batches",
    "last_token_logits",
    "load_model",
    "orthogonalize",
    "read_prompts",
    "read_records",
    "PromptRecord",
    "refusal_score",
    "refusal_token_ids",
    "select_refusal_direction",
    "steer",
]
