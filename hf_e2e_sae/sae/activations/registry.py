"""The registry of SAE latent activations.

Each activation is a small `nn.Module` built from an `SAEConfig` that maps encoder pre-activations
`(..., dict_size)` to latents `(..., dict_size)`. Adding TopK, BatchTopK or JumpReLU is one new
small file in this folder that calls `register_activation`, imported by this package's `__init__`; nothing else in
the library branches on the activation's name.
"""
from __future__ import annotations

from typing import Callable

from torch import nn
from transformers import PretrainedConfig

# Builders take the SAE's `SAEConfig` (typed by its base class: the config module imports this registry).
ACTIVATIONS: dict[str, Callable[[PretrainedConfig], nn.Module]] = {}


def register_activation(name: str, builder: Callable[[PretrainedConfig], nn.Module]) -> None:
    """Make `activation=name` available in `SAEConfig`. `builder(config)` returns the module."""
    ACTIVATIONS[name] = builder


def build_activation(config: PretrainedConfig) -> nn.Module:
    """Instantiate the activation named by `config.activation`."""
    return ACTIVATIONS[config.activation](config)
