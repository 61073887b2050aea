"""The narrow interface through which lower layers reach the Hub layer without importing it.

`hf_e2e_sae.hub` registers its functions here when it is imported (the package's `__init__` imports it).
So `SparseAutoencoder.push_to_hub`, `SAEPatchedModel.save_pretrained` / `from_pretrained` / `push_to_hub`
and the trainer's final push all work, while no module below `hub/` imports it: the layers stay acyclic.
"""
from __future__ import annotations

from typing import Callable

_FUNCTIONS: dict[str, Callable] = {}


def register_hub_functions(**functions: Callable) -> None:
    """Called by `hf_e2e_sae.hub`: `save_patched_model`, `load_patched_model`, `push_to_hub`, ..."""
    _FUNCTIONS.update(functions)


def hub_function(name: str) -> Callable:
    """The Hub layer's implementation of `name`."""
    try:
        return _FUNCTIONS[name]
    except KeyError:
        raise RuntimeError(f"hf_e2e_sae.hub has not registered {name!r}: `import hf_e2e_sae` first.") from None
