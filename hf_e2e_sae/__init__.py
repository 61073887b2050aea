"""hf_e2e_sae: end-to-end sparse dictionary learning for Hugging Face causal LMs.

Importing the package registers `SAEConfig` / `SparseAutoencoder` with transformers' `AutoConfig`
and `AutoModel` under the model type "hf_e2e_sae" (no `trust_remote_code` needed).
"""

__version__ = "0.1.0"

from transformers import AutoConfig, AutoModel

from .activations import ACTIVATIONS, register_activation
from .configuration_sae import SAEConfig
from .evaluation import evaluate
from .hub import push_run_to_hub
from .losses import LossConfig, compute_losses, kl_divergence, mse_loss, sparsity_loss
from .model_card import render_model_card
from .modeling_sae import SAEOutput, SparseAutoencoder
from .patched_model import SAEPatchedModel, SAEPatchedOutput, SiteOutput
from .sites import ARCHITECTURES, ArchitectureSpec, Site, parse_site, register_architecture

AutoConfig.register(SAEConfig.model_type, SAEConfig, exist_ok=True)
AutoModel.register(SAEConfig, SparseAutoencoder, exist_ok=True)

__all__ = [
    "ACTIVATIONS", "ARCHITECTURES", "ArchitectureSpec", "LossConfig", "SAEConfig", "SAEOutput",
    "SAEPatchedModel", "SAEPatchedOutput", "Site", "SiteOutput", "SparseAutoencoder", "compute_losses",
    "evaluate", "kl_divergence", "mse_loss", "parse_site", "push_run_to_hub", "register_activation",
    "register_architecture", "render_model_card", "sparsity_loss",
]
