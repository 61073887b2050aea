"""SAE latent activations: a registry (`registry.py`) and one small file per activation.

A new activation is a new file here that calls `register_activation`, plus one import line below.
"""
from .registry import (ACTIVATION_SPECS, ACTIVATIONS, ActivationOption, ActivationSpec, activation_option_owners,
                       build_activation, register_activation, resolve_activation_options)
from . import relu  # noqa: F401  (registers "relu")
from . import topk  # noqa: F401  (registers "topk")
from . import batchtopk  # noqa: F401  (registers "batchtopk")
from . import jumprelu  # noqa: F401  (registers "jumprelu")
from . import matryoshka  # noqa: F401  (registers "matryoshka_topk", "matryoshka_batchtopk")

__all__ = ["ACTIVATIONS", "ACTIVATION_SPECS", "ActivationOption", "ActivationSpec", "activation_option_owners",
           "build_activation", "register_activation", "resolve_activation_options"]
