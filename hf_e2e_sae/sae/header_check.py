"""The sizes a saved SAE's `config.json` claims, checked against its weights file's header before anything is built.

`SparseAutoencoder.from_pretrained` would otherwise allocate what the config says (`dict_size` x `d_in` floats,
twice) and only then find that the tensors disagree: 4.3 GB for a config that claims 2M latents over a 1 MB file.
The safetensors header (a few hundred bytes) lists every tensor's shape and dtype; comparing them first bounds every
allocation by the size of the file that was actually saved.
"""
from __future__ import annotations

import json
import struct
from typing import Optional

from .config import SAEConfig

MAX_HEADER_BYTES = 100 * 2**20
"""safetensors' own limit on the JSON header."""
FLOAT_DTYPES = {"F64", "F32", "F16", "BF16"}


def read_header(path: str) -> dict:
    """`{tensor name: {"dtype": ..., "shape": [...], ...}}` from a safetensors file's header (nothing else read)."""
    with open(path, "rb") as handle:
        prefix = handle.read(8)
        if len(prefix) < 8:
            raise ValueError(f"{path}: damaged safetensors file (shorter than its 8-byte header length)")
        (length,) = struct.unpack("<Q", prefix)
        if length > MAX_HEADER_BYTES:
            raise ValueError(f"{path}: damaged safetensors file (claims a {length}-byte header)")
        raw = handle.read(length)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, ValueError) as e:
        raise ValueError(f"{path}: damaged safetensors file (its header is not JSON: {e})") from None
    if not isinstance(header, dict):
        raise ValueError(f"{path}: damaged safetensors file (its header is not a mapping)")
    tensors = {name: info for name, info in header.items() if name != "__metadata__"}
    for name, info in tensors.items():
        shape = info.get("shape") if isinstance(info, dict) else None
        if not (isinstance(shape, list) and all(isinstance(d, int) and d >= 0 for d in shape)):
            raise ValueError(f"{path}: damaged safetensors file (tensor {name!r} has no valid shape)")
    return tensors


def expected_shapes(config: SAEConfig) -> dict:
    """The shapes of the weights an SAE with `config` holds, as its config alone says."""
    return {"encoder.weight": (config.dict_size, config.d_in), "encoder.bias": (config.dict_size,),
            "decoder.weight": (config.d_in, config.dict_size), "decoder.bias": (config.d_in,)}


def check_weights_header(config: SAEConfig, path: str, config_name: Optional[str] = None) -> None:
    """Raise `ValueError` naming `path` unless its header holds the encoder and decoder tensors, as floats, of the
    shapes `config` implies (run before the SAE is built, so no allocation is sized by an unchecked value)."""
    header = read_header(path)
    claimed = f"{config_name or 'its config'} says d_in={config.d_in}, dict_size={config.dict_size}"
    for name, shape in expected_shapes(config).items():
        if name not in header:
            raise ValueError(f"{path}: the saved weights do not match the SAE's config: missing tensor {name!r} "
                             f"({claimed}); refusing to fill it with random values")
        found = tuple(header[name]["shape"])
        if found != shape:
            raise ValueError(f"{path}: holds {name} of shape {found}, but {claimed} (expected {shape}); refusing to "
                             "build an SAE of the claimed size: the config or the weights are not this SAE's")
        if header[name].get("dtype") not in FLOAT_DTYPES:
            raise ValueError(f"{path}: {name} has dtype {header[name].get('dtype')!r}; SAE weights are floats")
