"""Held-out evaluation of patched models: fidelity (CE loss increase, KL, ...) and per-site metrics (names
imported on first use)."""
from ..lazy_exports import lazy_exports

_EXPORTS = {"evaluate": ".metrics"}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, globals(), _EXPORTS)
