"""`SparseAutoencoder`: the dictionary, as a `PreTrainedModel`.

    latents        c     = act(W_enc x + b_enc)          (..., dict_size)
    reconstruction x_hat = D c + b_dec [+ W_skip x]      (..., d_in)   (W_skip: `skip_connection=True`)

D is the decoder weight with each dictionary element (a column of length d_in) divided by its L2
norm inside every forward pass: a reparametrisation (the stored weight is never renormalised and
gradients flow through the division), exactly as in Braun et al. (2024)'s reference code.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoConfig, AutoModel, PreTrainedModel
from transformers.utils import ModelOutput

from .activations import ACTIVATION_SPECS, build_activation
from .basis import prepare_input, undo_input_scale
from .config import SAEConfig
from .finite import check_finite_weights
from .hub_interface import hub_function
from .sparse_code import scatter_dense, sparse_decode, topk_encode


@dataclass
class SAEOutput(ModelOutput):
    """Output of [`SparseAutoencoder.forward`].

    Args:
        latents (`torch.Tensor` of shape `(..., dict_size)`): the sparse code c.
        reconstruction (`torch.Tensor` of shape `(..., d_in)`): x_hat.
        pre_activations (`torch.Tensor` of shape `(..., dict_size)`): W_enc x + b_enc, before the activation
            (what AuxK and L0 straight-through estimators need).
        code_values, code_indices (`torch.Tensor` of shape `(..., k)`): for a TopK-like activation, the code as its
            k kept values (after ReLU) and their latent indices (None otherwise). With `sparse_output=True` they
            are the only form of the code: `latents` and `pre_activations` are None.
    """

    latents: Optional[torch.Tensor] = None
    reconstruction: Optional[torch.Tensor] = None
    pre_activations: Optional[torch.Tensor] = None
    code_values: Optional[torch.Tensor] = None
    code_indices: Optional[torch.Tensor] = None


class SparseAutoencoder(PreTrainedModel):
    """A sparse autoencoder (dictionary) that reads and writes one activation site of a causal LM."""

    config_class = SAEConfig
    base_model_prefix = "sae"
    main_input_name = "hidden_states"
    _no_split_modules: list = []

    def __init__(self, config: SAEConfig):
        super().__init__(config)
        self.encoder = nn.Linear(config.d_in, config.dict_size)  # W_enc (dict_size, d_in), b_enc
        self.decoder = nn.Linear(config.dict_size, config.d_in)  # D (d_in, dict_size), b_dec
        self.activation = build_activation(config)
        if config.skip_connection:  # skip transcoder: (d_in out, d_in in), zero at init as in sparsify
            self.W_skip = nn.Parameter(torch.zeros(config.d_in, config.d_in))
        self.post_init()

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        # Encoder: PyTorch's Linear default ("Kaiming uniform"), as the reference.
        if module is self.encoder:
            module.reset_parameters()
        elif module is self.decoder:
            module.reset_parameters()
            if self.config.init_decoder_orthogonal:
                # Rows of D (d_in, dict_size) orthonormal: D D^T = I.
                nn.init.orthogonal_(module.weight)
        elif module is self and getattr(self, "W_skip", None) is not None:
            module.W_skip.zero_()

    def skip(self, hidden_states: torch.Tensor, reconstruction: torch.Tensor) -> torch.Tensor:
        """`reconstruction + W_skip x` with a skip connection (`config.skip_connection`), else `reconstruction`."""
        if getattr(self, "W_skip", None) is None:
            return reconstruction
        return reconstruction + F.linear(hidden_states, self.W_skip)

    @property
    def dictionary(self) -> torch.Tensor:
        """Unit-norm dictionary elements, shape `(dict_size, d_in)`."""
        return F.normalize(self.decoder.weight, dim=0).T

    def pre_activations(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """`(..., d_in) -> (..., dict_size)` encoder outputs, after the config's basis options (`sae.basis`)."""
        return self.encoder(prepare_input(self.config, hidden_states, self.decoder.bias))

    def encode(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """`(..., d_in) -> (..., dict_size)` latents."""
        return self.activation(self.pre_activations(hidden_states))

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """`(..., dict_size) -> (..., d_in)` reconstruction in the SAE's basis (unit-norm dictionary elements
        unless `normalize_decoder=False`; no token mean added)."""
        weight = F.normalize(self.decoder.weight, dim=0) if self.config.normalize_decoder else self.decoder.weight
        return undo_input_scale(self.config, F.linear(latents, weight, self.decoder.bias))

    def forward(self, hidden_states: torch.Tensor, return_dict: bool = True, sparse_output: bool = False) -> SAEOutput:
        """Encode and decode `hidden_states` `(..., d_in)`.

        Args:
            sparse_output: for a TopK-like activation, return the code as `code_values` / `code_indices` and leave
                the dense `(..., dict_size)` `latents` and `pre_activations` unmade (the trainer's fast step).
        """
        if ACTIVATION_SPECS[self.config.activation].sparse_code:
            return self._sparse_forward(hidden_states, return_dict, sparse_output)
        pre_activations = self.pre_activations(hidden_states)
        latents = self.activation(pre_activations)
        reconstruction = self.skip(hidden_states, self.decode(latents))
        if not return_dict:
            return (latents, reconstruction)
        return SAEOutput(latents=latents, reconstruction=reconstruction, pre_activations=pre_activations)

    def _sparse_forward(self, hidden_states: torch.Tensor, return_dict: bool, sparse_output: bool):
        """`forward` for a TopK-like code: the same outputs as `encode` / `decode`, with k-sparse decoding and
        gradients (`sae/sparse_code.py`)."""
        x = prepare_input(self.config, hidden_states, self.decoder.bias)
        pre, values, indices = topk_encode(x, self.encoder.weight, self.encoder.bias, self.activation.k,
                                           keep_pre=not sparse_output)
        reconstruction = undo_input_scale(self.config, sparse_decode(
            values, indices, self.decoder.weight, self.decoder.bias, normalize=self.config.normalize_decoder))
        reconstruction = self.skip(hidden_states, reconstruction)
        if sparse_output:
            return SAEOutput(reconstruction=reconstruction, code_values=values, code_indices=indices)
        latents = scatter_dense(values, indices, self.config.dict_size)
        if not return_dict:
            return (latents, reconstruction)
        return SAEOutput(latents=latents, reconstruction=reconstruction, pre_activations=pre,
                         code_values=values, code_indices=indices)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        """`PreTrainedModel.from_pretrained`, but a missing, unexpected or mis-shaped weight or a damaged
        safetensors file raises `ValueError` naming the file instead of loading random values."""
        from .strict_loading import load_strictly

        return load_strictly(super().from_pretrained, pretrained_model_name_or_path, *args, **kwargs)

    def save_pretrained(self, save_directory, *args, **kwargs):
        """`PreTrainedModel.save_pretrained`, refusing (before writing anything) weights that hold NaN or inf."""
        state = kwargs.get("state_dict")
        check_finite_weights(state if state is not None else self.state_dict(), str(save_directory))
        return super().save_pretrained(save_directory, *args, **kwargs)

    def push_to_hub(self, repo_id: str, **kwargs):
        """Upload this SAE (safetensors + config + manifest) and a README.md model card in one commit.

        Replaces transformers' `PushToHubMixin.push_to_hub`, which would overwrite the card. See
        [`hf_e2e_sae.hub.push.push_to_hub`] for the arguments (`private`, `token`, `revision`, `commit_message`,
        `card_data`, `metrics`, `train_config`, ...). Returns the `huggingface_hub.CommitInfo`.
        """
        return hub_function("push_to_hub")(self, repo_id, **kwargs)


# The Auto classes learn our model type as soon as the class exists (also done by `hf_e2e_sae.auto_registration`
# when transformers is imported outside our own modules), so `AutoModel.from_pretrained(saved_sae)` just works.
AutoConfig.register(SAEConfig.model_type, SAEConfig, exist_ok=True)
AutoModel.register(SAEConfig, SparseAutoencoder, exist_ok=True)
