"""The dictionaries: `SAEConfig`, `SparseAutoencoder`, site names and the activation registry.

The bottom layer: it imports nothing else from hf_e2e_sae (but the package's lazy-export helper). Names are
imported on first use, so `hf_e2e_sae.sae.sites` loads without torch.
"""
from ..lazy_exports import lazy_exports

_EXPORTS = {
    "ACTIVATIONS": ".activations", "ACTIVATION_SPECS": ".activations", "ActivationOption": ".activations",
    "build_activation": ".activations", "register_activation": ".activations",
    "SAE_FORMAT_VERSION": ".config", "SAEConfig": ".config", "SAEOutput": ".model", "SparseAutoencoder": ".model",
    "SITE_KINDS": ".sites", "Site": ".sites", "parse_site": ".sites",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, globals(), _EXPORTS)
