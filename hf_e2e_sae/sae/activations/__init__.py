"""SAE latent activations: a registry (`registry.py`) and one small file per activation.

A new activation is a new file here that calls `register_activation`, plus one import line below.
"""
from .registry import ACTIVATIONS, build_activation, register_activation
from . import relu  # noqa: F401  (registers "relu")
from . import jumprelu, topk  # noqa: F401  (register "jumprelu", "topk": minimal, for imported SAEs)

__all__ = ["ACTIVATIONS", "build_activation", "register_activation"]
