"""Training a cross-layer transcoder: the `TrainConfig.cross_layer` checks and the model the trainer builds.

`cross_layer: true` turns `sites` (each `blocks.<l>.mlp_in`, l increasing) into one `CrossLayerTranscoder`
whose layer l replaces `blocks.<l>.mlp_out`; the losses are the trainer's usual ones over its per-layer records
(local: the sum over layers of each MLP output's MSE; e2e: KL, plus that sum with `loss.reconstruction.coeff`).
"""
from __future__ import annotations

from transformers import set_seed

from ..patching.architectures import hidden_size
from ..patching.base_models import portable_base_name
from ..patching.cross_layer import CLTPatchedModel
from ..sae.config import DEFAULT_DICT_SIZE_RATIO
from ..sae.cross_layer import CLTConfig, CrossLayerTranscoder
from ..sae.sites import Site, parse_site
from .architecture_config import activation_options


def check_cross_layer(config) -> None:
    """`cross_layer: true` fits the rest of the config; raises `ValueError` naming the field."""
    parsed = [parse_site(site) for site in config.sites]
    if any(p.kind != "mlp_in" for p in parsed) or [p.block for p in parsed] != sorted({p.block for p in parsed}):
        raise ValueError(f"cross_layer: sites must be blocks.<l>.mlp_in with l increasing, got {config.sites}")
    expected = [str(Site(p.block, "mlp_out")) for p in parsed]
    if config.output_sites and list(config.output_sites) != expected:
        raise ValueError(f"cross_layer: output_sites must be empty or {expected}, got {config.output_sites}")
    for field, unsupported in (("loss.auxk.coeff", config.loss.auxk.coeff > 0), ("init_from", config.init_from),
                               ("activation_cache", config.activation_cache),
                               ("skip_connection", config.skip_connection)):
        if unsupported:
            raise ValueError(f"cross_layer: {field} is not supported for a cross-layer transcoder")


def build_clt_patched_model(config, base) -> CLTPatchedModel:
    """A seeded `CrossLayerTranscoder` over `config.sites`, patched into `base`."""
    d_in = hidden_size(base.config)
    ratio = config.dict_size_ratio if config.dict_size_ratio is not None else DEFAULT_DICT_SIZE_RATIO
    set_seed(config.seed)  # identical on every process
    clt = CrossLayerTranscoder(CLTConfig(
        d_in=d_in, dict_size=config.dict_size or max(1, round(ratio * d_in)),
        layers=[parse_site(site).block for site in config.sites], activation=config.activation,
        base_model_name_or_path=portable_base_name(config.base_model.name_or_path),
        base_model_revision=config.base_model.revision, **activation_options(config)))
    return CLTPatchedModel(base, clt)
