"""TopK (Gao et al. 2024): keep the k largest pre-activations per token, ReLU them, zero the rest.

Minimal version for imported TopK SAEs (SAELens `topk`, sparsify): selection as SAELens and sparsify
do it, gradients flow to the kept latents only. `SAEConfig.k` is the number kept.
"""
import torch
from torch import nn

from .registry import register_activation


class TopKActivation(nn.Module):
    """`c = scatter(topk(pre, k) -> ReLU)`: exactly k candidates per token, negative ones become 0."""

    def __init__(self, k: int):
        super().__init__()
        self.k = k

    def forward(self, pre_activations: torch.Tensor) -> torch.Tensor:
        values, indices = torch.topk(pre_activations, k=self.k, dim=-1, sorted=False)
        return torch.zeros_like(pre_activations).scatter(-1, indices, values.relu())


def _build(config) -> TopKActivation:
    k = getattr(config, "k", None)
    if not isinstance(k, int) or not 0 < k <= config.dict_size:
        raise ValueError(f"SAEConfig.k must be an int in [1, dict_size={config.dict_size}] for activation='topk', got {k!r}")
    return TopKActivation(k)


register_activation("topk", _build)
