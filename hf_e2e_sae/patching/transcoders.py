"""Transcoders in a patched model: read one site, replace another (e.g. the MLP's input -> its output).

A transcoder is a `SparseAutoencoder` whose config has an `output_site`. Two hooks splice it in:

* at `site` (e.g. `blocks.3.mlp_in`, the input of the MLP module) a read-only hook keeps the activation;
* at `output_site` (e.g. `blocks.3.mlp_out`) a hook encodes the kept activation, records a `SiteOutput`
  whose `input` is the real output it replaces (the target of the local loss and of the explained variance),
  and returns the reconstruction in place of that output.

So the MLP still runs (its output is the local target), but nothing after it sees that output. The record is
keyed by the transcoder's `site` (its input), like any SAE's.
"""
from __future__ import annotations

from typing import Mapping

import torch
from transformers import PretrainedConfig

from ..sae.model import SparseAutoencoder
from ..sae.sites import parse_site
from .architectures import check_site, resolve_site
from .hooks import add_hook


def is_transcoder(sae: SparseAutoencoder) -> bool:
    """True if `sae` replaces an activation other than the one it reads."""
    return getattr(sae.config, "output_site", None) is not None


def check_transcoder_config(base_config: PretrainedConfig, site: str, config, sae_configs: Mapping) -> None:
    """The output site exists, comes after the input site and is no other dictionary's site or output site."""
    output_site = getattr(config, "output_site", None)
    if output_site is None:
        return
    check_site(base_config, output_site)
    if not parse_site(output_site).is_after(parse_site(site)):
        raise ValueError(f"Transcoder at {site!r}: output_site {output_site!r} is not computed after it.")
    for other_site, other in sae_configs.items():
        if other_site == site:
            continue
        if output_site in (other_site, getattr(other, "output_site", None)):
            raise ValueError(f"Transcoder at {site!r} writes {output_site!r}, which the dictionary at "
                             f"{other_site!r} also reads or writes; each site takes at most one dictionary.")


def add_transcoder_hooks(model, site: str, sae: SparseAutoencoder, record_type: type) -> list:
    """Hooks that splice transcoder `sae` (reading `site`) into `model` (an `SAEPatchedModel`); returns handles.

    Reads `model._saes_enabled` and `model._records` at call time, as the SAE hooks of `SAEPatchedModel` do;
    records are `record_type(target=..., source=..., latents=..., reconstruction=..., ...)` (`SiteOutput`).
    """
    base = model.base_model
    read_at, write_at = resolve_site(base, site), resolve_site(base, sae.config.output_site)
    kept: dict = {}

    def read(x: torch.Tensor) -> None:
        if model._saes_enabled:
            kept["x"] = x

    def write(y: torch.Tensor) -> torch.Tensor:
        if not model._saes_enabled:
            return None
        x = kept.pop("x")  # popped: no activation outlives its forward pass
        out = sae(x.to(sae.dtype))
        if model._records is not None:
            model._records[site] = record_type(target=y, latents=out.latents, reconstruction=out.reconstruction,
                                               pre_activations=out.pre_activations, code_values=out.code_values,
                                               code_indices=out.code_indices, source=x)
        return out.reconstruction.to(y.dtype)

    return [add_hook(read_at.module, read_at.rewrite, read), add_hook(write_at.module, write_at.rewrite, write)]

