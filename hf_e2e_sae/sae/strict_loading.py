"""`SparseAutoencoder.from_pretrained` that never substitutes: a missing, unexpected or mis-shaped weight, or a
damaged safetensors file, is an error naming the file (transformers would initialise randomly and warn). The
weights file's header is checked against the config's sizes before the SAE is built (`header_check`)."""
from __future__ import annotations

from typing import Any, Callable

from safetensors import SafetensorError

WEIGHTS_FILE = "model.safetensors"


def _weights_file(pretrained_model_name_or_path: Any, subfolder: str) -> str:
    parts = [str(pretrained_model_name_or_path).rstrip("/"), subfolder.strip("/"), WEIGHTS_FILE]
    return "/".join(p for p in parts if p)


_HUB_KWARGS = ("subfolder", "revision", "token", "cache_dir", "local_files_only")


def _check_sizes_first(pretrained_model_name_or_path: Any, kwargs: dict) -> None:
    """Compare the weights file's header with the config's sizes before anything of those sizes is allocated."""
    from transformers.utils import cached_file

    from .config import SAEConfig
    from .header_check import check_weights_header

    hub = {k: kwargs[k] for k in _HUB_KWARGS if kwargs.get(k) is not None}
    path = cached_file(str(pretrained_model_name_or_path), WEIGHTS_FILE, _raise_exceptions_for_missing_entries=False,
                       **hub)
    if path is None:
        return  # no single weights file (sharded, or missing): transformers reports it
    config = kwargs.get("config")
    if not isinstance(config, SAEConfig):
        config = SAEConfig.from_pretrained(str(pretrained_model_name_or_path), **hub)
        config_name = "/".join(p for p in (str(pretrained_model_name_or_path), hub.get("subfolder", ""), "config.json") if p)
    else:
        config_name = "the given config"
    check_weights_header(config, path, config_name)


def load_strictly(load: Callable, pretrained_model_name_or_path: Any, *args: Any, check_sizes: bool = True,
                  **kwargs: Any):
    """Call transformers' `from_pretrained` (`load`) and raise `ValueError` naming the weights file on any
    missing / unexpected / mismatched tensor or unreadable safetensors file; with `check_sizes` (an SAE's layout),
    the sizes are checked before the SAE is built."""
    want_info = kwargs.pop("output_loading_info", False)
    where = _weights_file(pretrained_model_name_or_path, kwargs.get("subfolder", "") or "")
    if check_sizes:
        _check_sizes_first(pretrained_model_name_or_path, kwargs)
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
