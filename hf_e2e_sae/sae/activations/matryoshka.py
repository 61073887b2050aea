"""Matryoshka SAEs (Bussmann et al. 2025; Nabeshima 2024): nested prefixes of the dictionary, each trained to
reconstruct on its own.

The activation is TopK (`matryoshka_topk`, k per token) or BatchTopK (`matryoshka_batchtopk`, k per token on
average over a batch in training, a global threshold at inference, as SAELens's `matryoshka_batchtopk`); what
makes it Matryoshka is the training loss. `matryoshka_prefixes` lists the sizes of the proper prefixes (strictly
increasing, each smaller than `dict_size`; the whole dictionary is always the last level; default
`dict_size // 64, // 16, // 4`) and
`matryoshka_weights` their weights (default 1 each). For a prefix of size m, the latents outside the first m are
zeroed and the rest decoded (`prefix_reconstruction`); training adds, per prefix, its weight times the
reconstruction-side loss of that prefix (local: its MSE; e2e: the KL with it spliced in; e2e+ds: KL and
downstream MSE), beside the whole dictionary's usual terms (`hf_e2e_sae.training.matryoshka`). The encoder and
decoder are those of any SAE: latents, save/load and inference are the inner activation's.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..basis import restore_token_mean, undo_input_scale
from .batchtopk import BatchTopKActivation
from .registry import ActivationOption, register_activation
from .topk import K_OPTION, TopKActivation
from ..sparse_code import sparse_decode


def _prefix_sizes(value) -> bool:
    return value is None or (isinstance(value, (list, tuple)) and len(value) > 0
                             and all(isinstance(m, int) and not isinstance(m, bool) and m > 0 for m in value)
                             and all(a < b for a, b in zip(value, value[1:])))


def _prefix_weights(value) -> bool:
    return value is None or (isinstance(value, (list, tuple)) and all(
        isinstance(w, (int, float)) and not isinstance(w, bool) and math.isfinite(w) and w >= 0 for w in value))


MATRYOSHKA_OPTIONS = {
    "k": K_OPTION,
    "matryoshka_prefixes": ActivationOption(
        None, _prefix_sizes, "matryoshka_prefixes is the list of nested prefix sizes, positive ints, strictly "
        "increasing, each < dict_size (the whole dictionary is the last level), e.g. [128, 512, 2048]; null: "
        "dict_size // 64, // 16 and // 4"),
    "matryoshka_weights": ActivationOption(
        None, _prefix_weights, "matryoshka_weights is one weight >= 0 per entry of matryoshka_prefixes (null: 1 each)"),
}


def check_levels(prefixes, weights, dict_size: int) -> tuple:
    """`(prefixes, weights)` as tuples, checked against the dictionary; raises `ValueError` naming the option.
    `prefixes=None`: `dict_size // 64, // 16, // 4` (those that are at least 1, each 4 times the last)."""
    if prefixes is None:
        prefixes = sorted({dict_size // 4 ** j for j in (3, 2, 1)} - {0})
        if not prefixes:
            raise ValueError(f"dict_size={dict_size} is too small for the default matryoshka_prefixes; list them.")
    if prefixes[-1] >= dict_size:
        raise ValueError(f"matryoshka_prefixes={list(prefixes)} must all be < dict_size={dict_size} (the whole "
                         "dictionary is always the last level; list only the smaller prefixes).")
    weights = [1.0] * len(prefixes) if weights is None else list(weights)
    if len(weights) != len(prefixes):
        raise ValueError(f"matryoshka_weights={weights} needs one weight per entry of matryoshka_prefixes="
                         f"{list(prefixes)}.")
    return tuple(prefixes), tuple(float(w) for w in weights)


class MatryoshkaTopKActivation(TopKActivation):
    """TopK with nested prefixes: `prefixes` (sizes) and `prefix_weights` drive the training loss only."""

    def __init__(self, k: int, dict_size: int, prefixes, weights):
        super().__init__(k, dict_size)
        self.prefixes, self.prefix_weights = check_levels(prefixes, weights, dict_size)

    def extra_repr(self) -> str:
        return f"k={self.k}, prefixes={list(self.prefixes)}"


class MatryoshkaBatchTopKActivation(BatchTopKActivation):
    """BatchTopK with nested prefixes: `prefixes` (sizes) and `prefix_weights` drive the training loss only."""

    def __init__(self, k: int, dict_size: int, prefixes, weights):
        super().__init__(k, dict_size)
        self.prefixes, self.prefix_weights = check_levels(prefixes, weights, dict_size)

    def extra_repr(self) -> str:
        return f"k={self.k}, prefixes={list(self.prefixes)}"


def matryoshka_levels(sae) -> list:
    """`[(prefix size, weight), ...]` of an SAE's proper prefixes; empty for a non-Matryoshka SAE (and for a
    dictionary with no single activation, such as a cross-layer transcoder)."""
    activation = getattr(sae, "activation", None)
    return list(zip(getattr(activation, "prefixes", ()), getattr(activation, "prefix_weights", ())))


def prefix_reconstruction(sae, out, size: int) -> torch.Tensor:
    """The reconstruction `(..., d_in)` from the first `size` latents of a recorded SAE output (`SiteOutput`, dense
    latents or a sparse TopK code), in the model's basis like `out.reconstruction`; gradients flow to the code and
    the decoder."""
    config = sae.config
    weight = sae.decoder.weight[:, :size]
    if config.normalize_decoder:
        weight = F.normalize(weight, dim=0)  # column-wise: the same columns as the whole dictionary's
    if out.latents is not None:
        decoded = F.linear(out.latents[..., :size], weight, sae.decoder.bias)
    else:
        inside = out.code_indices < size
        values = torch.where(inside, out.code_values, torch.zeros_like(out.code_values))
        indices = torch.where(inside, out.code_indices, torch.zeros_like(out.code_indices))
        decoded = sparse_decode(values, indices, weight, sae.decoder.bias, normalize=False)
    source = out.source if out.source is not None else out.target
    return restore_token_mean(config, source, undo_input_scale(config, decoded))


def _builder(cls):
    return lambda config: cls(config.k, config.dict_size, config.matryoshka_prefixes, config.matryoshka_weights)


register_activation("matryoshka_topk", _builder(MatryoshkaTopKActivation), options=MATRYOSHKA_OPTIONS,
                    structural_sparsity=True, sparse_code=True)
register_activation("matryoshka_batchtopk", _builder(MatryoshkaBatchTopKActivation), options=MATRYOSHKA_OPTIONS,
                    structural_sparsity=True)
