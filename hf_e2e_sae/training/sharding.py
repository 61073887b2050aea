"""Shard the frozen base model over the processes with FSDP2; the SAEs stay whole on every process.

    shard_base_model(patched_model, accelerator.device, checkpoint=where)   # before accelerator.prepare(...)

With `base_model.shard: true` the trainer builds the base model empty (`sharded_loading.empty_base_model`: meta
device) and `shard_base_model` loads each process's own shards from the checkpoint after sharding: no process
ever holds a full copy.

For base models larger than one device's memory. With N processes:

* every transformer block is its own FSDP2 unit (`torch.distributed.fsdp.fully_shard`, `reshard_after_forward=True`):
  a process keeps 1/N of each of its weights (dim-0 shards, as DTensors) and all-gathers the block just before it
  runs (forward, and again in the backward that carries the SAE gradients through the later blocks), freeing the
  gathered copy after;
* the `SAEPatchedModel` is the root unit: it holds the other base weights (embeddings, final norm, LM head, tied or
  not) sharded the same way, and its SAE parameters are `ignored_params` (neither sharded nor reduced by FSDP). The
  root stays gathered from its forward to the end of the backward (`reshard_after_forward=False`): the fused KL of
  `training.step` reads `lm_head.weight` after the forward, and the final norm's backward needs its weight;
* the SAEs stay whole on every process and DDP (Accelerate's `prepare`, as in an unsharded run) averages their
  gradients; DDP is told to ignore the base parameters and buffers, which it would otherwise broadcast from
  rank 0 at start-up (rank 0's shards over everyone else's).

Every hook keeps working on the sharded modules: FSDP's pre-forward hook is registered first-in-line, so a block is
gathered before the SAE, cache, stop or replay hooks read or replace its input. `StopForward` (the LM-head capture,
local runs stopping at the last SAE site) leaves the base model but is caught inside the root's forward, so the
root's FSDP bookkeeping always completes; a block left early is resharded by FSDP's end-of-backward callback.
Cost: the blocks replayed by the shared prefix (`patching.shared_prefix`) are still gathered in the SAE pass.

Why not `accelerate launch --use_fsdp` / an accelerate FSDP config: on CPU (gloo) accelerate 1.15 ignores it (its
`AcceleratorState` switches to FSDP only for GPU-like backends and the model gets plain DDP: no sharding); on GPUs
it shards the whole prepared model, SAEs included, and does not average the gradients of `ignored_modules`.
`check_sharding` refuses such a launch and names `base_model.shard` instead.
"""
from __future__ import annotations

import logging
import warnings
from typing import Optional

import torch
import torch.distributed as dist
from accelerate.utils import parse_flag_from_env
from torch import nn
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor
from torch.nn.parallel import DistributedDataParallel

from ..patching.architectures import architecture_for
from ..config.arguments import ConfigError
from .sharded_loading import is_empty, load_local_shards

logger = logging.getLogger(__name__)

__all__ = ["check_sharding", "full_tensor", "shard_base_model", "shard_report"]


def check_sharding(shard: bool, world_size: int) -> None:
    """Refuse, before any weights load, a sharding request this launch cannot honour.

    Args:
        shard: the config's `base_model.shard`.
        world_size: the number of processes of this run.

    Raises:
        `ConfigError` (one line, naming `base_model.shard`): accelerate's own FSDP was asked for, or sharding was
        asked for with a single process (nothing to shard over: the whole model would have to fit anyway).
    """
    if parse_flag_from_env("ACCELERATE_USE_FSDP"):
        raise ConfigError("base_model.shard: launch without accelerate's FSDP (--use_fsdp, distributed_type: FSDP), "
                          "which would shard the trainable SAEs too and is ignored on CPU; launch with --multi_gpu "
                          "and set base_model.shard: true to shard the frozen base model")
    if shard and world_size < 2:
        raise ConfigError(f"base_model.shard: sharding needs 2 or more processes, this run has {world_size}: launch "
                          "with `accelerate launch --multi_gpu --num_processes N` or set base_model.shard: false")


def _blocks(model) -> nn.ModuleList:
    base = model.base_model
    return base.get_submodule(architecture_for(base.config).layers)


def _ignore_base_in_ddp(model) -> None:
    """Have a later DDP wrap of `model` (Accelerate's `prepare`) handle the SAE parameters only."""
    names = [name for name, _ in model.named_parameters() if not name.startswith("saes.")]
    names += [name for name, _ in model.named_buffers() if not name.startswith("saes.")]
    DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(model, names)


def shard_base_model(model, device: torch.device, checkpoint: Optional[str] = None,
                     revision: Optional[str] = None) -> dict:
    """Shard the frozen base model of `model` (an `SAEPatchedModel`) over all processes; the SAEs stay whole.

    Call it after the process group is up and before `accelerator.prepare(model)`. The shards are moved to
    `device` (the SAEs are moved by `prepare`, as usual).

    Args:
        model: the `SAEPatchedModel`; it becomes an FSDP2 module in place (its class gains FSDP's methods).
        device: this process's device (`accelerator.device`); its type picks the device mesh (cpu: gloo).
        checkpoint, revision: where the weights of an empty base model (`sharded_loading.empty_base_model`, on the
            meta device) are read from: each process then loads only its own shards, never a full copy.

    Returns:
        `shard_report(model)`, also logged by every process.
    """
    if not dist.is_available() or not dist.is_initialized():
        raise RuntimeError("shard_base_model needs an initialised process group (run under accelerate launch)")
    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    for block in _blocks(model):
        fully_shard(block, mesh=mesh, reshard_after_forward=True)
    fully_shard(model, mesh=mesh, reshard_after_forward=False, ignored_params=set(model.sae_parameters()))
    if is_empty(model.base_model):
        if checkpoint is None:
            raise ValueError("shard_base_model: the base model is empty (meta device); pass checkpoint=")
        load_local_shards(model, checkpoint, device, revision)
    _ignore_base_in_ddp(model)
    # The root's outputs include views (activations the SAEs read); FSDP warns that an in-place op on them would
    # drop its pre-backward hook. Nothing modifies them in place, and the blocks' own hooks do the gathering.
    warnings.filterwarnings("ignore", message=r"FSDP2-wrapped module \(FSDP\w*SAEPatchedModel\) returned a view")
    report = shard_report(model)
    logger.info("Sharded the base model over %d processes: process %d holds %d of its %d weights (%.1f%%); %d of "
                "%d tensors sharded, each %.1f%%-%.1f%% here", report["processes"], report["process"],
                report["local_elements"], report["elements"], 100 * report["local_elements"] / report["elements"],
                report["sharded_tensors"], report["tensors"], 100 * report["min_fraction"],
                100 * report["max_fraction"])
    return report


def shard_report(model) -> dict:
    """What this process holds of the base model of `model` (an `SAEPatchedModel`, sharded or not).

    Returns:
        `{"process", "processes", "tensors", "sharded_tensors", "elements", "local_elements", "min_fraction",
        "max_fraction"}`: base parameter tensors (tied ones once) and how many are DTensors; their elements in
        all and held here; the smallest and largest share of one sharded tensor held here (1.0 when none is).
    """
    params = [p for _, p in model.base_model.named_parameters()]
    sharded = [p for p in params if isinstance(p, DTensor)]
    fractions = [p.to_local().numel() / p.numel() for p in sharded if p.numel()] or [1.0]
    local = sum(p.to_local().numel() if isinstance(p, DTensor) else p.numel() for p in params)
    return {"process": dist.get_rank() if dist.is_initialized() else 0,
            "processes": dist.get_world_size() if dist.is_initialized() else 1,
            "tensors": len(params), "sharded_tensors": len(sharded), "elements": sum(p.numel() for p in params),
            "local_elements": local, "min_fraction": min(fractions), "max_fraction": max(fractions)}


def full_tensor(tensor: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """`tensor` whole: a DTensor (a sharded weight read outside FSDP's gathering) is all-gathered, which every
    process must do at the same point; a plain tensor or None comes back as is."""
    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor
