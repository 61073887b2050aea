"""JumpReLU (Rajamanoharan et al. 2024, as in Gemma Scope): `c = pre * H(pre - theta)`.

Each latent has a learned threshold theta > 0, stored as the parameter `log_threshold` (theta =
exp(log_threshold)). The step H has no useful gradient with respect to theta, so both the activation and
its L0 use straight-through estimators with a rectangle kernel K(u) = 1[|u| < 1/2] of width
`jumprelu_bandwidth` (epsilon):

    d c / d theta  = -(theta / epsilon) K((pre - theta) / epsilon)
    d H / d theta  = -(1 / epsilon)     K((pre - theta) / epsilon)
    d c / d pre    = H(pre - theta)          (the step itself passes no gradient to pre)

The L0 (`loss.sparsity.p: 0`) is the count of H over latents, via `JumpReLUActivation.l0`.
"""
import math

import torch
from torch import nn

from .registry import ActivationOption, register_activation


def _positive_float(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0


def _rectangle(pre: torch.Tensor, threshold: torch.Tensor, bandwidth: float) -> torch.Tensor:
    return ((pre - threshold).abs() < bandwidth / 2).to(pre.dtype)


class _JumpReLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, pre, threshold, bandwidth):
        ctx.save_for_backward(pre, threshold)
        ctx.bandwidth = bandwidth
        return pre * (pre > threshold)

    @staticmethod
    def backward(ctx, grad_output):
        pre, threshold = ctx.saved_tensors
        grad_pre = grad_output * (pre > threshold)
        kernel = _rectangle(pre, threshold, ctx.bandwidth)
        grad_threshold = -(threshold / ctx.bandwidth) * kernel * grad_output
        return grad_pre, grad_threshold.reshape(-1, threshold.shape[-1]).sum(0), None


class _Step(torch.autograd.Function):
    @staticmethod
    def forward(ctx, pre, threshold, bandwidth):
        ctx.save_for_backward(pre, threshold)
        ctx.bandwidth = bandwidth
        return (pre > threshold).to(pre.dtype)

    @staticmethod
    def backward(ctx, grad_output):
        pre, threshold = ctx.saved_tensors
        grad_threshold = -(1.0 / ctx.bandwidth) * _rectangle(pre, threshold, ctx.bandwidth) * grad_output
        return None, grad_threshold.reshape(-1, threshold.shape[-1]).sum(0), None


class JumpReLUActivation(nn.Module):
    """JumpReLU with a learned per-latent threshold (`log_threshold`) and straight-through gradients."""

    def __init__(self, dict_size: int, init_threshold: float, bandwidth: float):
        super().__init__()
        self.bandwidth = float(bandwidth)
        self.log_threshold = nn.Parameter(torch.full((dict_size,), math.log(init_threshold)))

    @property
    def threshold(self) -> torch.Tensor:
        """theta, shape `(dict_size,)`."""
        return self.log_threshold.exp()

    def forward(self, pre_activations: torch.Tensor) -> torch.Tensor:
        return _JumpReLU.apply(pre_activations, self.threshold.to(pre_activations.dtype), self.bandwidth)

    def l0(self, pre_activations: torch.Tensor) -> torch.Tensor:
        """Per-token number of active latents `(...,)`; its gradient reaches the threshold only."""
        step = _Step.apply(pre_activations, self.threshold.to(pre_activations.dtype), self.bandwidth)
        return step.sum(-1)

    def extra_repr(self) -> str:
        return f"bandwidth={self.bandwidth:g}"


register_activation(
    "jumprelu",
    lambda config: JumpReLUActivation(config.dict_size, config.jumprelu_init_threshold, config.jumprelu_bandwidth),
    options={
        "jumprelu_init_threshold": ActivationOption(
            0.001, _positive_float, "the initial threshold theta of every latent, a float > 0"),
        "jumprelu_bandwidth": ActivationOption(
            0.001, _positive_float, "the width epsilon of the straight-through rectangle kernel, a float > 0"),
    },
    differentiable_l0=True,
)
