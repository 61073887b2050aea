"""The narrow interface through which lower layers reach the Hub layer without importing it.

`hf_e2e_sae.hub` (and `hf_e2e_sae.interop`, for foreign formats) register their functions here when they are
imported; the first call of an unregistered name imports them (by name, at run time: the plugin's layer is above).
So `SparseAutoencoder.push_to_hub`, `SAEPatchedModel.save_pretrained` / `from_pretrained` / `push_to_hub`
and the trainer's final push all work, while no module below `hub/` imports it: the layers stay acyclic.
"""
from __future__ import annotations

from importlib import import_module
from typing import Callable

_FUNCTIONS: dict[str, Callable] = {}
_PROVIDERS = ("hf_e2e_sae.hub", "hf_e2e_sae.interop")  # the modules that register here


def register_hub_functions(**functions: Callable) -> None:
    """Called by `hf_e2e_sae.hub`: `save_patched_model`, `load_patched_model`, `push_to_hub`, ..."""
    _FUNCTIONS.update(functions)


def hub_function(name: str) -> Callable:
    """The Hub layer's implementation of `name`."""
    if name not in _FUNCTIONS:
        for provider in _PROVIDERS:
            import_module(provider)  # registers its functions
    try:
        return _FUNCTIONS[name]
    except KeyError:
        raise RuntimeError(f"neither of {_PROVIDERS} registers {name!r}") from None
