"""BatchTopK (Bussmann et al. 2024): TopK over a whole batch in training, a global threshold at inference.

Training mode: of all `n_tokens x dict_size` ReLU'd pre-activations of one call, keep the `k * n_tokens`
largest (so L0 is k on average over the call's tokens, not per token) and update a running estimate of the
smallest kept value. Eval mode: keep every pre-activation above that threshold, so a token's code does not
depend on the other tokens of its batch. The threshold is a saved buffer (`threshold`), not a trainable
parameter; it is 0 until the first training call.

In a data-parallel run each process selects over its own share of the batch, but the threshold statistic (the
smallest kept value) is reduced over all processes (`sae/distributed.py`): every process holds the same threshold,
estimated from the whole global batch. A training call is then a collective: every process must make it.
"""
import torch
from torch import nn

from ..distributed import reduce_min
from .registry import register_activation
from .topk import K_OPTION, check_k

# Weight of each training call's smallest kept value in the running threshold (an exponential moving average).
THRESHOLD_MOMENTUM = 0.01


class BatchTopKActivation(nn.Module):
    """Batch-level TopK with a running global threshold for inference."""

    def __init__(self, k: int, dict_size: int):
        super().__init__()
        self.k = check_k(k, dict_size)
        self.register_buffer("threshold", torch.zeros(()))
        self.track_statistics = True  # False: training calls leave the threshold as it is (extra passes of a step)

    def forward(self, pre_activations: torch.Tensor) -> torch.Tensor:
        values = torch.relu(pre_activations)
        if not self.training:
            return values * (values > self.threshold)
        flat = values.reshape(-1)
        n_tokens = flat.numel() // values.shape[-1]
        kept, indices = flat.topk(self.k * n_tokens, sorted=False)
        if self.track_statistics:
            self._update_threshold(kept)
        return torch.zeros_like(flat).scatter(0, indices, kept).reshape(values.shape)

    @torch.no_grad()
    def _update_threshold(self, kept: torch.Tensor) -> None:
        # Without host syncs: the smallest positive kept value (inf if none), and the first update (the
        # threshold still 0) takes that value itself rather than averaging it with 0.
        smallest = torch.where(kept > 0, kept, torch.full_like(kept, float("inf"))).min().float()
        smallest = reduce_min(smallest)  # the smallest kept value of the global batch, the same on every process
        averaged = (1 - THRESHOLD_MOMENTUM) * self.threshold + THRESHOLD_MOMENTUM * smallest
        updated = torch.where(self.threshold > 0, averaged, smallest)
        self.threshold.copy_(torch.where(torch.isfinite(smallest), updated, self.threshold))

    def extra_repr(self) -> str:
        return f"k={self.k}"


register_activation("batchtopk", lambda config: BatchTopKActivation(config.k, config.dict_size),
                    options={"k": K_OPTION}, structural_sparsity=True)
