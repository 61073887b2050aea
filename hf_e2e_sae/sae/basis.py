"""The basis an SAE works in: options that foreign SAEs need to reproduce their own library's numbers.

Every option is an `SAEConfig` field, applied inside `SparseAutoencoder.encode` / `decode` and saved with
the SAE; the defaults are the paper's SAE (none of them applied):

    center_input            x <- x - mean_j x_j per token: the residual basis of TransformerLens models loaded
                            with `center_writing_weights` (the e2e_sae reference, most SAELens GPT-2 SAEs).
    input_scale             x <- s * x before encoding, reconstruction / s after decoding (SAELens
                            `normalize_activations` with a known constant).
    apply_b_dec_to_input    encode(x - b_dec) (SAELens `apply_b_dec_to_input`, sparsify).
    normalize_decoder       False: decode with the stored decoder as is (SAELens, sparsify and
                            dictionary_learning do not renormalise in the forward pass).

`encode` / `decode` work in the SAE's own basis: `decode(c) = (D c + b_dec) / s`, without the token mean.
Where the reconstruction replaces a model activation, `restore_token_mean` adds the mean back, so the
model's residual stream keeps its own basis.
"""
from __future__ import annotations

import torch
from transformers import PretrainedConfig


def check_basis_options(config: PretrainedConfig) -> None:
    """Raise `ValueError` naming the field when a basis option is invalid."""
    scale = config.input_scale
    if not isinstance(scale, (int, float)) or not (scale > 0 and scale < float("inf")):
        raise ValueError(f"SAEConfig.input_scale must be a finite number > 0, got {scale!r}")
    for name in ("center_input", "apply_b_dec_to_input", "normalize_decoder"):
        if not isinstance(getattr(config, name), bool):
            raise ValueError(f"SAEConfig.{name} must be true or false, got {getattr(config, name)!r}")


def prepare_input(config: PretrainedConfig, hidden_states: torch.Tensor, b_dec: torch.Tensor) -> torch.Tensor:
    """What the encoder's linear map reads: centred, scaled and minus `b_dec` as the config says."""
    x = hidden_states
    if config.center_input:
        x = x - x.mean(dim=-1, keepdim=True)
    if config.input_scale != 1.0:
        x = x * config.input_scale
    if config.apply_b_dec_to_input:
        x = x - b_dec
    return x


def undo_input_scale(config: PretrainedConfig, reconstruction: torch.Tensor) -> torch.Tensor:
    """Bring a reconstruction from the scaled basis back to the input's scale."""
    return reconstruction / config.input_scale if config.input_scale != 1.0 else reconstruction


def restore_token_mean(config: PretrainedConfig, hidden_states: torch.Tensor,
                       reconstruction: torch.Tensor) -> torch.Tensor:
    """The reconstruction in the model's basis: add back the per-token mean that `center_input` removed."""
    if not config.center_input:
        return reconstruction
    return reconstruction + hidden_states.to(reconstruction.dtype).mean(dim=-1, keepdim=True)

