"""The aligned model organisms: the embedded SmolLM2 safety-tuned to refuse, and a LLaVA-architecture VLM on it."""

from harmlens.cache import register_model_alias
from harmlens.guards.organisms.build import (
    KINDS,
    Recipe,
    build_organism,
    built_organism_dir,
    is_built,
    load_organism,
    organism_card,
    organism_path,
)

register_model_alias("organism", built_organism_dir)  # also an entry point, so probes loads it without importing us

__all__ = [
    "KINDS",
    "Recipe",
    "build_organism",
    "built_organism_dir",
    "is_built",
    "load_organism",
    "organism_card",
    "organism_path",
]
