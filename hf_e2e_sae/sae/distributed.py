"""Statistics reduced over the processes of a data-parallel run (torch.distributed), no-ops in one process.

Training statistics that are not gradients (which latents fired, BatchTopK's threshold estimate, AuxK's residual
variance) are not averaged by DDP. Each process would keep its own, estimated from its share of the batch, and the
processes' SAEs would drift apart. The helpers here reduce such a statistic over every process of the default
group when `torch.distributed` is initialised with more than one process, so that every process holds the value of
the whole global batch (the value a single process with the global batch would compute). Every process must call
them in the same order: they are collectives.
"""
from __future__ import annotations

import torch
import torch.distributed as dist


def world_size() -> int:
    """Processes in the default group; 1 when torch.distributed is not initialised."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _all_reduce(tensor: torch.Tensor, op) -> torch.Tensor:
    """`tensor` reduced with `op` over every process (a new tensor; `tensor` itself in one process)."""
    if world_size() == 1:
        return tensor
    reduced = tensor.detach().clone()
    dist.all_reduce(reduced, op=op)
    return reduced


def reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """The sum of `tensor` over every process (a new tensor; `tensor` itself in one process)."""
    return _all_reduce(tensor, dist.ReduceOp.SUM)


def reduce_min(tensor: torch.Tensor) -> torch.Tensor:
    """The elementwise minimum of `tensor` over every process (a new tensor; `tensor` itself in one process)."""
    return _all_reduce(tensor, dist.ReduceOp.MIN)
