"""harmlens: harmfulness and refusal directions, structural jailbreaks and latent guards for chat LLMs.

Subpackages build on each other in one direction: `harmlens.probes` <- `harmlens.attacks` <- `harmlens.guards`;
the modules at this root (errors, io, cache, cli, compat, batching) are the shared core all three use.
"""

from harmlens.errors import HarmlensError

__version__ = "0.2.0"
__all__ = ["HarmlensError", "__version__"]
