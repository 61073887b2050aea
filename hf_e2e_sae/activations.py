"""Registry of SAE latent activations.

Each activation is a small `nn.Module` built from an `SAEConfig` that maps encoder pre-activations
`(..., dict_size)` to latents `(..., dict_size)`. Adding TopK, BatchTopK or JumpReLU is one new
class here plus one `register_activation` call (or one small file that calls it); nothing else in
the library branches on the activation's name.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import torch
from torch import nn

if TYPE_CHECKING:
    from .configuration_sae import SAEConfig

ACTIVATIONS: dict[str, Callable[["SAEConfig"], nn.Module]] = {}


def register_activation(name: str, builder: Callable[["SAEConfig"], nn.Module]) -> None:
    """Make `activation=name` available in `SAEConfig`. `builder(config)` returns the module."""
    ACTIVATIONS[name] = builder


def build_activation(config: "SAEConfig") -> nn.Module:
    """Instantiate the activation named by `config.activation`."""
    return ACTIVATIONS[config.activation](config)


class ReLUActivation(nn.Module):
    """`c = ReLU(pre)`: the activation of the paper and of the reference implementation."""

    def forward(self, pre_activations: torch.Tensor) -> torch.Tensor:
        return torch.relu(pre_activations)


register_activation("relu", lambda config: ReLUActivation())
