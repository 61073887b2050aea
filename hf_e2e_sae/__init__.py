"""hf_e2e_sae: end-to-end sparse dictionary learning for Hugging Face causal LMs.

Importing the package registers `SAEConfig` / `SparseAutoencoder` with transformers' `AutoConfig`
and `AutoModel` under the model type "hf_e2e_sae" (no `trust_remote_code` needed), and connects the
Hub layer (`hf_e2e_sae.hub`) to the models. The layers, bottom to top: `sae`, `patching`,
`evaluation`, `training`, `hub`, `interop`, `analysis`, `cli` (see docs/ARCHITECTURE.md).
"""

from .version import __version__

from transformers import AutoConfig, AutoModel

from .evaluation import evaluate
from .hub import push_run_to_hub, render_model_card
from .interop import convert, export_sae, load_sae
from .patching import ARCHITECTURES, ArchitectureSpec, SAEPatchedModel, SAEPatchedOutput, SiteOutput, register_architecture
from .sae import ACTIVATIONS, SAEConfig, SAEOutput, Site, SparseAutoencoder, parse_site, register_activation
from .patching.cross_layer import CLTPatchedModel
from .sae.cross_layer import CLTConfig, CrossLayerTranscoder
from .training.losses import LossConfig, compute_losses, kl_divergence, mse_loss, sparsity_loss

AutoConfig.register(SAEConfig.model_type, SAEConfig, exist_ok=True)
AutoModel.register(SAEConfig, SparseAutoencoder, exist_ok=True)
AutoConfig.register(CLTConfig.model_type, CLTConfig, exist_ok=True)
AutoModel.register(CLTConfig, CrossLayerTranscoder, exist_ok=True)

__all__ = [
    "ACTIVATIONS", "ARCHITECTURES", "ArchitectureSpec", "CLTConfig", "CLTPatchedModel", "CrossLayerTranscoder", "LossConfig", "SAEConfig", "SAEOutput",
    "SAEPatchedModel", "SAEPatchedOutput", "Site", "SiteOutput", "SparseAutoencoder", "compute_losses",
    "convert", "evaluate", "export_sae", "load_sae", "kl_divergence", "mse_loss", "parse_site", "push_run_to_hub", "register_activation",
    "register_architecture", "render_model_card", "sparsity_loss",
]
