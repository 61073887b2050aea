"""Splicing SAEs into a causal LM: the model-family registry, hooks and `SAEPatchedModel`."""
from .architectures import ARCHITECTURES, ArchitectureSpec, register_architecture, resolve_site
from .patched_model import SAEPatchedModel, SAEPatchedOutput, SiteOutput

__all__ = ["ARCHITECTURES", "ArchitectureSpec", "SAEPatchedModel", "SAEPatchedOutput", "SiteOutput",
           "register_architecture", "resolve_site"]
