"""Splicing SAEs into a causal LM: the model-family registry, hooks and `SAEPatchedModel` (names imported on
first use)."""
from ..lazy_exports import lazy_exports

_EXPORTS = {
    "ARCHITECTURES": ".architectures", "ArchitectureSpec": ".architectures", "register_architecture": ".architectures",
    "resolve_site": ".architectures", "SAEPatchedModel": ".patched_model", "SAEPatchedOutput": ".outputs",
    "SiteOutput": ".outputs", "SiteNotPatchedError": ".outputs",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, globals(), _EXPORTS)
