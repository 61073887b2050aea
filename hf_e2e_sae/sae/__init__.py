"""The dictionaries: `SAEConfig`, `SparseAutoencoder`, site names and the activation registry.

The bottom layer: it imports nothing else from hf_e2e_sae.
"""
from .activations import ACTIVATION_SPECS, ACTIVATIONS, ActivationOption, build_activation, register_activation
from .config import SAE_FORMAT_VERSION, SAEConfig
from .model import SAEOutput, SparseAutoencoder
from .sites import SITE_KINDS, Site, parse_site

__all__ = ["ACTIVATIONS", "ACTIVATION_SPECS", "ActivationOption", "SAE_FORMAT_VERSION", "SITE_KINDS", "SAEConfig", "SAEOutput", "Site", "SparseAutoencoder",
           "build_activation", "parse_site", "register_activation"]
