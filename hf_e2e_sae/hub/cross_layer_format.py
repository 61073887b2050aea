"""Saving and loading a `CLTPatchedModel`: the cross-layer transcoder plus the manifest, no base weights.

Layout (a folder or a Hub repo):

    hf_e2e_sae.json       the manifest, with "family": "cross_layer_transcoder" and "saes": {blocks.<l>.mlp_in: ""}
    config.json           CLTConfig (model_type "hf_e2e_sae_clt": `AutoModel.from_pretrained` loads the CLT alone)
    model.safetensors     encoders.<i>.weight / .bias, decoders.<i> (n - i, dict_size, d_in), b_dec (n, d_in)

`SAEPatchedModel.from_pretrained` on such a folder returns a `CLTPatchedModel` (`format.load_patched_model` reads
the manifest's family from `FAMILY_LOADERS`).
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Optional

from torch import nn
from transformers import AutoModelForCausalLM

from ..patching.remote_code import load_base_config, trusts_remote_code, with_trust
from ..patching.base_models import resolve_base_model
from ..patching.cross_layer import CLTPatchedModel, validate_clt_config
from ..sae.cross_layer import CLTConfig, CrossLayerTranscoder
from ..sae.finite import check_finite_weights

logger = logging.getLogger(__name__)

FAMILY = "cross_layer_transcoder"


def save_clt_patched_model(model: CLTPatchedModel, save_directory, **kwargs: Any) -> None:
    """Write `model.clt` and the manifest into `save_directory`."""
    from .format import MANIFEST_NAME, build_manifest

    save_directory = Path(save_directory)
    check_finite_weights(model.clt.state_dict(), f"{save_directory} (cross-layer transcoder)")
    save_directory.mkdir(parents=True, exist_ok=True)
    model.clt.save_pretrained(save_directory, **kwargs)
    manifest = {**build_manifest(model), "family": FAMILY, "saes": {site: "" for site in model.sites}}
    (save_directory / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n")
    logger.info("Saved a cross-layer transcoder (%d layers) to %s", len(model.sites), save_directory)


def site_configs(path: str, **hub_kwargs: Any) -> dict:
    """`{site: SAEConfig}` of the saved CLT's layers (what a model card describes per site)."""
    config = CLTConfig.from_pretrained(path, **hub_kwargs)
    return {site: config.layer_config(i) for i, site in enumerate(config.sites)}


def load_clt_patched_model(cls, path: str, manifest: dict, base_model: Optional[nn.Module], subfolder: str,
                           hub_kwargs: dict, dtype: Any = None, base_model_kwargs: Optional[dict] = None):
    """The `CLTPatchedModel` saved at `path` (`format.load_patched_model`'s arguments, manifest already read)."""
    config = CLTConfig.from_pretrained(path, subfolder=subfolder, **hub_kwargs)
    if base_model is None or isinstance(base_model, (str, os.PathLike)):
        name = str(base_model) if base_model is not None else manifest.get("base_model_name_or_path")
        if not name:
            raise ValueError(f"{path}: the cross-layer transcoder does not name its base model; pass `base_model=`.")
        name = resolve_base_model(name)
        revision = manifest.get("base_model_revision") if base_model is None else None
        base_hub = {**hub_kwargs, "revision": revision}
        trust = trusts_remote_code(base_model, base_model_kwargs)  # never for the name the manifest gives
        base_config = load_base_config(name, trust_remote_code=trust, where=path, **base_hub)
        validate_clt_config(base_config, config)  # before any weight loads
        extra = {**with_trust(base_model_kwargs, trust), **({"dtype": dtype} if dtype is not None else {})}
        base_model = AutoModelForCausalLM.from_pretrained(name, config=base_config, **base_hub, **extra)
    else:
        validate_clt_config(base_model.config, config)
    clt = CrossLayerTranscoder.from_pretrained(path, subfolder=subfolder, config=config, **hub_kwargs)
    device = next(base_model.parameters()).device
    return CLTPatchedModel(base_model, clt.to(device))
