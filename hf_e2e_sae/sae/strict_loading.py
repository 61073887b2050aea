"""`SparseAutoencoder.from_pretrained` that never substitutes: a missing, unexpected or mis-shaped weight, or a
damaged safetensors file, is an error naming the file (transformers would initialise randomly and warn)."""
from __future__ import annotations

from typing import Any, Callable

from safetensors import SafetensorError

WEIGHTS_FILE = "model.safetensors"


def _weights_file(pretrained_model_name_or_path: Any, subfolder: str) -> str:
    parts = [str(pretrained_model_name_or_path).rstrip("/"), subfolder.strip("/"), WEIGHTS_FILE]
    return "/".join(p for p in parts if p)


def load_strictly(load: Callable, pretrained_model_name_or_path: Any, *args: Any, **kwargs: Any):
    """Call transformers' `from_pretrained` (`load`) and raise `ValueError` naming the weights file on any
    missing / unexpected / mismatched tensor or unreadable safetensors file."""
    want_info = kwargs.pop("output_loading_info", False)
    where = _weights_file(pretrained_model_name_or_path, kwargs.get("subfolder", "") or "")
    try:
        model, info = load(pretrained_model_name_or_path, *args, output_loading_info=True, **kwargs)
    except SafetensorError as e:
        raise ValueError(f"{where}: damaged safetensors file (its header cannot be read: {e}).") from e
    problems = []
    for kind in ("missing", "unexpected", "mismatched"):
        keys = sorted(str(k) for k in info.get(f"{kind}_keys") or ())
        if keys:
            problems.append(f"{kind} tensors {keys}")
    if info.get("error_msgs"):
        problems.append("; ".join(map(str, info["error_msgs"])))
    if problems:
        raise ValueError(f"{where}: the saved weights do not match the SAE's config: {'; '.join(problems)}. "
                         "Refusing to fill them with random values; the file is incomplete or not this SAE's.")
    return (model, info) if want_info else model
