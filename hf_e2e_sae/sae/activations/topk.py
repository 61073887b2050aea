"""TopK: keep the k largest pre-activations of each token (after ReLU), zero the rest (Gao et al. 2024).

L0 is exactly k per token, fewer only where fewer than k pre-activations are positive. Sparsity is
structural, so no sparsity penalty is needed (its coefficient defaults to 0 in training configs).
"""
import torch
from torch import nn

from .registry import ActivationOption, register_activation


def _positive_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


K_OPTION = ActivationOption(32, _positive_int, "k is the number of latents kept per token, a positive int")


def check_k(k: int, dict_size: int) -> int:
    """`k` must not exceed the dictionary (shared by TopK and BatchTopK)."""
    if k > dict_size:
        raise ValueError(f"k={k} exceeds dict_size={dict_size}; choose k <= dict_size.")
    return k


class TopKActivation(nn.Module):
    """`c = scatter(topk(ReLU(pre), k))`: gradients flow through the kept values only."""

    def __init__(self, k: int, dict_size: int):
        super().__init__()
        self.k = check_k(k, dict_size)

    def forward(self, pre_activations: torch.Tensor) -> torch.Tensor:
        values, indices = torch.relu(pre_activations).topk(self.k, dim=-1, sorted=False)
        return torch.zeros_like(pre_activations).scatter(-1, indices, values)

    def extra_repr(self) -> str:
        return f"k={self.k}"


register_activation("topk", lambda config: TopKActivation(config.k, config.dict_size), options={"k": K_OPTION},
                    structural_sparsity=True, sparse_code=True)
