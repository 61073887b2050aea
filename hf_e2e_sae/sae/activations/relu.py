"""ReLU: the activation of the paper and of its reference implementation."""
import torch
from torch import nn

from .registry import register_activation


class ReLUActivation(nn.Module):
    """`c = ReLU(pre)`: the activation of the paper and of the reference implementation."""

    def forward(self, pre_activations: torch.Tensor) -> torch.Tensor:
        return torch.relu(pre_activations)


register_activation("relu", lambda config: ReLUActivation())
