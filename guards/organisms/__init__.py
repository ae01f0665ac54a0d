"""The aligned model organisms: the embedded SmolLM2 safety-tuned to refuse, and a LLaVA-architecture VLM on it."""

from harmlens.cache import register_model_alias
from harmlens.guards.organisms.build import build_organism, load_organism
from harmlens.guards.organisms.recipes import KINDS, TEXT_RECIPE, VLM_RECIPE, Recipe, organism_id, organism_path
from harmlens.guards.organisms.store import CARD, REPLIES, built_organism_dir, is_built, organism_card

register_model_alias("organism", built_organism_dir)  # also an entry point, so probes loads it without importing us

__all__ = [
    "CARD",
    "KINDS",
    "REPLIES",
    "TEXT_RECIPE",
    "VLM_RECIPE",
    "Recipe",
    "build_organism",
    "built_organism_dir",
    "is_built",
    "load_organism",
    "organism_card",
    "organism_id",
    "organism_path",
]
