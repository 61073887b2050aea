"""`CLTPatchedModel`: a causal LM whose MLP outputs a `CrossLayerTranscoder` replaces.

For each layer l of the CLT, two hooks:

* at `blocks.l.mlp_in` (read only): layer l's encoder reads the MLP input *of this run* and keeps its latents;
* at `blocks.l.mlp_out`: the output is replaced by `b_dec[l] + sum_{i <= l} W_dec[i -> l] c_i`, and a
  `SiteOutput` is recorded under `blocks.l.mlp_in` (target: the real MLP output of this run, source: the MLP
  input, latents / pre-activations: layer l's own), so L0, alive counts, MSE and explained variance are per layer.

Encoders read patched inputs. Once layer 0's output is replaced, layer 1's MLP input differs from the clean
model's; the encoders see what the replacement model actually computes (the natural choice for e2e training,
where the KL is of this run, and what today's chained transcoders do). In a local run the targets are then each
MLP's output on the input it really received, so every term is consistent within one pass. Training each
encoder on clean inputs (as circuit-tracer's CLTs are trained, from cached activations) would need a second,
clean pass per step; not offered. One forward does everything, so the trainer's fast step (shared prefix,
early stop, fused KL) runs a CLT unchanged and equals its reference step.
"""
from __future__ import annotations

import logging
from typing import Optional

import torch
from torch import nn

from ..sae.cross_layer import CLTLayer, CrossLayerTranscoder
from ..sae.hub_interface import hub_function
from ..sae.sites import parse_site
from .architectures import check_site, hidden_size, resolve_site
from .hooks import add_hook
from .patch_marker import mark_patched
from .patched_model import SAEPatchedModel, SiteOutput

logger = logging.getLogger(__name__)


def validate_clt_config(base_config, config) -> None:
    """Every layer's MLP sites exist in the base model, and the CLT's width is its hidden size."""
    if config.d_in != hidden_size(base_config):
        raise ValueError(f"CrossLayerTranscoder has d_in={config.d_in}, but the base model's hidden size is "
                         f"{hidden_size(base_config)}.")
    for site in [*config.sites, *config.output_sites]:
        check_site(base_config, site)


def add_clt_hooks(model: "CLTPatchedModel", clt: CrossLayerTranscoder) -> list:
    """Hooks that splice `clt` into `model`'s base model; returns their handles."""
    base, sites, output_sites = model.base_model, clt.config.sites, clt.config.output_sites
    kept: dict = {}  # per layer: (source, pre, latents, decoder weights) of the current forward pass

    def reader(i: int):
        def read(x: torch.Tensor) -> None:
            if not model._saes_enabled:
                return
            if i == 0:
                kept.clear()  # a new forward pass (or one interrupted earlier): nothing stale survives
            pre, latents = clt.encode_layer(i, x.to(clt.dtype))
            kept[i] = (x, pre, latents, clt.decoder_weights(i))  # normalised once per pass
        return read

    def writer(j: int):
        def write(y: torch.Tensor) -> Optional[torch.Tensor]:
            if not model._saes_enabled:
                return None
            reconstruction = clt.decode_layer(j, [kept[i][2] for i in range(j + 1)], [kept[i][3] for i in range(j + 1)])
            x, pre, latents, _ = kept[j]
            if j == len(sites) - 1:
                kept.clear()  # no activation outlives its forward pass
            if model._records is not None:
                model._records[sites[j]] = SiteOutput(target=y, latents=latents, reconstruction=reconstruction,
                                                      pre_activations=pre, source=x)
            return reconstruction.to(y.dtype)
        return write

    handles = []
    for i, (site, output_site) in enumerate(zip(sites, output_sites)):
        read_at, write_at = resolve_site(base, site), resolve_site(base, output_site)
        handles += [add_hook(read_at.module, read_at.rewrite, reader(i)),
                    add_hook(write_at.module, write_at.rewrite, writer(i))]
    return handles


class CLTPatchedModel(SAEPatchedModel):
    """A frozen causal LM with a [`CrossLayerTranscoder`] in place of the MLP outputs of its layers.

    It behaves as an [`SAEPatchedModel`] whose dictionaries are the CLT's layers: `sites` are the layers' `mlp_in`,
    `output_sites` their `mlp_out`, `sae(site)` is a per-layer view (`CLTLayer`), records are per layer, and the
    trainer's steps, `evaluate`, `saes_disabled`, `save_pretrained` / `from_pretrained` / `push_to_hub` work.
    The CLT's parameters are `saes.clt` (what `sae_parameters()` yields). Not supported: `steer` / `ablate` and
    `site_inputs` (an activation cache): every layer needs the full forward pass.

    Args:
        base_model (`PreTrainedModel`): any `AutoModelForCausalLM` of a registered family.
        clt ([`CrossLayerTranscoder`]): its `config.layers` name blocks of `base_model`.
    """

    def __init__(self, base_model: nn.Module, clt: CrossLayerTranscoder):
        nn.Module.__init__(self)
        if not isinstance(clt, CrossLayerTranscoder):
            raise TypeError(f"CLTPatchedModel needs a CrossLayerTranscoder, got {type(clt).__name__}")
        validate_clt_config(base_model.config, clt.config)
        self.base_model = base_model
        self.saes = nn.ModuleDict({"clt": clt})
        self.sites: list = list(clt.config.sites)
        self.output_sites: list = list(clt.config.output_sites)
        mark_patched(base_model, self)  # one wrapper per model, as for SAEs (patch_marker.py)
        self._freeze_base(base_model)
        self._handles = add_clt_hooks(self, clt)

    @property
    def clt(self) -> CrossLayerTranscoder:
        """The cross-layer transcoder."""
        return self.saes["clt"]

    def sae(self, site: str) -> CLTLayer:
        """The CLT layer whose encoder reads `site` (`blocks.<l>.mlp_in`, any accepted spelling)."""
        name = str(parse_site(site))
        if name not in self.sites:
            raise KeyError(f"no CLT layer reads {name!r}; its sites are {self.sites}")
        return self.clt.layer(self.sites.index(name))

    def _forward_site_inputs(self, site_inputs):
        raise ValueError("site_inputs: a cross-layer transcoder needs a full forward pass (its layers feed each other)")

    def _push(self, requests, kind: str):
        raise NotImplementedError(f"{kind} is not supported for a cross-layer transcoder")

    def save_pretrained(self, save_directory, **kwargs) -> None:
        """Write the CLT (config.json + model.safetensors) and the manifest; no base weights."""
        hub_function("save_clt_patched_model")(self, save_directory, **kwargs)
