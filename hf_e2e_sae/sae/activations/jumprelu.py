"""JumpReLU (Rajamanoharan et al. 2024): `c = ReLU(pre) * (pre > threshold)` with a learned per-latent threshold.

Minimal version for imported JumpReLU SAEs (SAELens `jumprelu`, also how SAELens saves BatchTopK and
Matryoshka SAEs): the forward pass matches SAELens's; the threshold is a parameter named `threshold`
(so it is saved and loaded with the SAE) but receives no gradient here (no straight-through estimator), so
fine-tuning keeps it fixed.
"""
import torch
from torch import nn

from .registry import register_activation


class JumpReLUActivation(nn.Module):
    """`c = ReLU(pre) * (pre > threshold)`, threshold of shape `(dict_size,)` (zeros = ReLU)."""

    def __init__(self, dict_size: int):
        super().__init__()
        self.threshold = nn.Parameter(torch.zeros(dict_size))

    def forward(self, pre_activations: torch.Tensor) -> torch.Tensor:
        mask = (pre_activations > self.threshold).to(pre_activations.dtype)
        return torch.relu(pre_activations) * mask


register_activation("jumprelu", lambda config: JumpReLUActivation(config.dict_size))
