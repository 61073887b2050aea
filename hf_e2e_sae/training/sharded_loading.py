"""Load a frozen base model shard by shard: no process ever holds a full copy (`base_model.shard: true`).

    base = empty_base_model(where, revision, dtype)        # parameters on the meta device, buffers real
    model = SAEPatchedModel(base, saes)
    shard_base_model(model, device, checkpoint=where)       # fully_shard, then load_local_shards(...)

The model is built from its config under accelerate's `init_empty_weights` (parameters on the meta device, no
memory; buffers such as rotary frequencies stay real), sharded with FSDP2 while still empty, given storage for
this process's shards only (`to_empty`), and each of its DTensor parameters is filled from the safetensors
safetensors checkpoint: the dim-0 rows this process owns, read with plain file reads straight into the shard (a
memory map, as `safe_open` makes, would put the touched file pages in this process's RSS).
Tied weights (GPT-2's `lm_head.weight` is `transformer.wte.weight`) are one parameter and load once.
Checkpoint keys are matched as saved (`transformer.h.0...`) or without the model's `base_model_prefix`
(older Hub checkpoints: `h.0...`).
"""
from __future__ import annotations

import json
import logging
import math
import os
import struct
from typing import Optional

import torch
from accelerate import init_empty_weights
from torch import nn
from torch.distributed.tensor import DTensor
from transformers import AutoConfig, AutoModelForCausalLM

logger = logging.getLogger(__name__)

__all__ = ["empty_base_model", "is_empty", "load_local_shards", "checkpoint_files"]

_INDEX = "model.safetensors.index.json"
_SINGLE = "model.safetensors"


def empty_base_model(where: str, revision: Optional[str] = None, dtype: torch.dtype = torch.float32) -> nn.Module:
    """The causal LM `where` names, built from its config with every parameter on the meta device (no memory)."""
    config = AutoConfig.from_pretrained(where, revision=revision, trust_remote_code=False)  # never a model's own code
    with init_empty_weights(include_buffers=False):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.tie_weights()  # not done on meta parameters by from_config
    return model.eval().requires_grad_(False)


def is_empty(model: nn.Module) -> bool:
    """True when some parameter of `model` has no storage yet (meta device)."""
    return any(p.is_meta for p in model.parameters())


def checkpoint_files(where: str, revision: Optional[str] = None) -> dict:
    """`{tensor name: safetensors file}` of the checkpoint in folder or Hub repo `where`."""
    if not os.path.isdir(where):
        from huggingface_hub import snapshot_download

        where = snapshot_download(where, revision=revision, allow_patterns=["*.safetensors", "*.json"])
    index = os.path.join(where, _INDEX)
    if os.path.isfile(index):
        with open(index) as handle:
            return {name: os.path.join(where, file) for name, file in json.load(handle)["weight_map"].items()}
    single = os.path.join(where, _SINGLE)
    if not os.path.isfile(single):
        raise FileNotFoundError(f"{where} has no {_SINGLE} or {_INDEX}: sharded loading reads safetensors only "
                                "(set base_model.shard: false to load other formats)")
    reader = _SafetensorsFile(single)
    reader.close()
    return {name: single for name in reader.header if name != "__metadata__"}


def _checkpoint_key(name: str, files: dict, prefix: str) -> str:
    candidates = [name, name[len(prefix) + 1:] if prefix and name.startswith(prefix + ".") else None,
                  f"{prefix}.{name}" if prefix else None]
    for key in candidates:
        if key is not None and key in files:
            return key
    raise KeyError(f"the checkpoint has no tensor for parameter {name!r} (looked for {[c for c in candidates if c]})")


def _row_range(param: DTensor) -> tuple:
    """`(start, end)`: the dim-0 rows of the full tensor that this process's shard of `param` holds (FSDP2's
    Shard(0): torch.chunk over the mesh, the last shards possibly short or empty)."""
    rows, world = param.shape[0], param.device_mesh.size()
    per_rank = -(-rows // world)
    start = min(rows, per_rank * param.device_mesh.get_local_rank())
    return start, min(rows, start + per_rank)


def _tensors(model: nn.Module):
    yield from model.named_parameters()
    yield from model.named_buffers()


class _SafetensorsFile:
    """Reads dim-0 row ranges of the tensors of one safetensors file with plain reads, straight into the
    destination where the dtypes agree: no memory map, whose touched pages would count in this process's RSS
    (`safe_open(...).get_slice` maps the file), and no tensor larger than one shard is ever made."""

    def __init__(self, path: str):
        self.handle = open(path, "rb")
        (size,) = struct.unpack("<Q", self.handle.read(8))
        self.header = json.loads(self.handle.read(size))
        self.data_start = 8 + size

    def read_rows(self, key: str, start: int, end: int, out: torch.Tensor) -> int:
        """Rows [start, end) of tensor `key` into the contiguous `out` (cast if needed); returns bytes read."""
        info = self.header[key]
        dtype, shape = _DTYPES[info["dtype"]], info["shape"]
        if [end - start, *shape[1:]] != list(out.shape) and not (shape == [] and out.dim() == 0):
            raise RuntimeError(f"{key}: checkpoint rows {start}:{end} of {shape} do not fit a shard of {tuple(out.shape)}")
        row_bytes = math.prod(shape[1:]) * dtype.itemsize
        self.handle.seek(self.data_start + info["data_offsets"][0] + start * row_bytes)
        direct = out.dtype == dtype and out.is_contiguous() and out.device.type == "cpu"
        target = out if direct else torch.empty(out.shape, dtype=dtype)
        if target.numel():
            self.handle.readinto(memoryview(target.view(-1).view(torch.uint8).numpy()))
        if not direct:
            out.copy_(target)
        return target.numel() * dtype.itemsize

    def close(self) -> None:
        self.handle.close()


_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
           "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
           "BOOL": torch.bool}


@torch.no_grad()
def load_local_shards(model: nn.Module, where: str, device: torch.device, revision: Optional[str] = None) -> int:
    """Give the sharded, still empty parameters of `model` (a base model or `SAEPatchedModel` after `fully_shard`)
    storage for this process's shards on `device` and fill them from the checkpoint; returns the bytes read.

    Call it on the FSDP root (`to_empty` must run through FSDP's `_apply`). Parameters and buffers that were real
    (the SAEs, rotary frequencies) keep their values.
    """
    kept = {name: t.detach().clone() for name, t in _tensors(model) if not t.is_meta}
    model.to_empty(device=device)  # on the FSDP root: FSDP re-registers its shards (FSDPModule._apply)
    tensors = dict(_tensors(model))
    for name, value in kept.items():  # the SAEs and the buffers keep their values
        tensors[name].copy_(value)
    del kept
    base = getattr(model, "base_model", model)
    files = checkpoint_files(where, revision)
    prefix = getattr(base, "base_model_prefix", "")
    readers: dict = {}
    read = 0
    try:
        for name, param in base.named_parameters():  # tied parameters appear once
            key = _checkpoint_key(name, files, prefix)
            if files[key] not in readers:
                readers[files[key]] = _SafetensorsFile(files[key])
            local = param.to_local() if isinstance(param, DTensor) else param  # (no_grad: FSDP's own shard)
            start, end = _row_range(param) if isinstance(param, DTensor) else (0, param.shape[0] if param.dim() else 0)
            read += readers[files[key]].read_rows(key, start, end, local)
    finally:
        for reader in readers.values():
            reader.close()
    logger.info("Loaded this process's shards of the base model from %s: %.1f MB read", where, read / 2**20)
    return read
