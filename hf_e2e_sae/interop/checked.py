"""Reading foreign files defensively: every tensor's presence, type, dtype and shape, and every config value, is
checked against what the format says before anything is copied, and every failure is a one-line `ValueError`
naming the file and the tensor or key (never a KeyError, a broadcast, or an allocation sized by a config value).

    weights = read_safetensors(path)                                  # damaged header -> ValueError naming path
    dims = check_tensors(path, weights, {"W_enc": ("d_in", "d_sae"), "b_enc": ("d_sae",), ...})
    k = positive_int(cfg.get("k"), "k", path)
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file


def read_safetensors(path: Path) -> dict:
    """All tensors of a safetensors file (safetensors checks the header against the file's length, so nothing
    larger than the file is allocated); a damaged file is a `ValueError` naming it."""
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        if isinstance(e, FileNotFoundError):
            raise
        raise ValueError(f"{path}: damaged safetensors file ({' '.join(str(e).split())})") from None


def read_json(path: Path, required: bool = True) -> dict:
    """A JSON object from `path` (`{}` when it is missing and not `required`); anything else names the file."""
    if not path.is_file():
        if required:
            raise FileNotFoundError(f"{path} is missing")
        return {}
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise ValueError(f"{path}: not valid JSON ({' '.join(str(e).split())})") from None
    if not isinstance(value, dict):
        raise ValueError(f"{path}: expected a JSON object, found {type(value).__name__}")
    return value


def mapping(value: Any, key: str, where: Any) -> dict:
    """`value` if it is a mapping (None -> {}), else a `ValueError` naming `key`."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ValueError(f"{where}: {key!r} must be a mapping, found {type(value).__name__}")
    return value


def optional_str(value: Any) -> Optional[str]:
    """A name read from a foreign config: kept when it is a string, dropped otherwise."""
    return value if isinstance(value, str) and value else None


def positive_int(value: Any, key: str, where: Any) -> int:
    """A positive int (a one-element integer tensor counts), else a `ValueError` naming `key`."""
    if isinstance(value, torch.Tensor) and value.numel() == 1 and not value.dtype.is_floating_point \
            and value.dtype != torch.bool:
        value = int(value.item())
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{where}: {key!r} must be a positive int, found {value!r}"[:300])
    return value


def check_tensors(where: Any, tensors: dict, spec: dict) -> dict:
    """Check that `tensors` holds every name of `spec` as a floating tensor of the shape `spec` gives in named
    dimensions (`("d_in", "d_sae")`); the first tensor that names a dimension fixes it. Returns the dimensions."""
    missing = [name for name in spec if name not in tensors]
    if missing:
        found = sorted(map(str, tensors))[:12]
        raise ValueError(f"{where}: missing tensor(s) {missing} (found {found})")
    dims: dict = {}
    for name, symbols in spec.items():
        tensor = tensors[name]
        if not isinstance(tensor, torch.Tensor):
            raise ValueError(f"{where}: {name} is a {type(tensor).__name__}, not a tensor")
        if not tensor.dtype.is_floating_point:
            raise ValueError(f"{where}: {name} has dtype {tensor.dtype}; SAE weights are floats")
        shape = tuple(tensor.shape)
        if len(shape) != len(symbols):
            raise ValueError(f"{where}: {name} has shape {shape}, expected {len(symbols)} dimension(s) "
                             f"({', '.join(symbols)})")
        for size, symbol in zip(shape, symbols):
            if size == 0:
                raise ValueError(f"{where}: {name} has shape {shape}: an empty dimension ({symbol})")
            if dims.setdefault(symbol, size) != size:
                expected = tuple(dims.get(s, "?") for s in symbols)
                raise ValueError(f"{where}: {name} has shape {shape}, expected {expected} ({', '.join(symbols)}, "
                                 f"as the other tensors say); refusing to broadcast it")
    return dims
