"""hf_e2e_sae: end-to-end sparse dictionary learning for Hugging Face causal LMs.

Importing the package is cheap: the names below are imported on first use (PEP 562), and `SAEConfig` /
`SparseAutoencoder` are registered with transformers' `AutoConfig` / `AutoModel` under the model type
"hf_e2e_sae" (no `trust_remote_code` needed) as soon as transformers is imported (`auto_registration.py`). The
layers, bottom to top: `sae`, `patching`, `evaluation`, `config`, `runs`, `data`, `pretraining`, `training`,
`bench`, `hub`, `interop`, `analysis`, `cli` (see docs/ARCHITECTURE.md).
"""
from .auto_registration import register_when_transformers_loads
from .lazy_exports import lazy_exports
from .version import __version__

_EXPORTS = {
    "evaluate": ".evaluation",
    "push_run_to_hub": ".hub", "render_model_card": ".hub",
    "convert": ".interop", "export_sae": ".interop", "load_sae": ".interop",
    "ARCHITECTURES": ".patching", "ArchitectureSpec": ".patching", "SAEPatchedModel": ".patching",
    "SAEPatchedOutput": ".patching", "SiteOutput": ".patching", "register_architecture": ".patching",
    "ACTIVATIONS": ".sae", "SAEConfig": ".sae", "SAEOutput": ".sae", "Site": ".sae", "SparseAutoencoder": ".sae",
    "parse_site": ".sae", "register_activation": ".sae",
    "LossConfig": ".training.losses", "compute_losses": ".training.losses", "kl_divergence": ".training.losses",
    "mse_loss": ".training.losses", "sparsity_loss": ".training.losses",
    "CLTPatchedModel": ".patching.cross_layer", "CLTConfig": ".sae.cross_layer", "CrossLayerTranscoder": ".sae.cross_layer",
}
__all__ = sorted(_EXPORTS) + ["__version__"]
__getattr__, __dir__ = lazy_exports(__name__, globals(), _EXPORTS)

register_when_transformers_loads()
