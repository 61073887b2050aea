"""EleutherAI sparsify (`<hookpoint>/cfg.json` + `sae.safetensors`).

sparsify encodes `TopK(ReLU(encoder(x - b_dec)))` and decodes `top_acts @ W_dec + b_dec` with `W_dec`
`(num_latents, d_in)` used as stored (its trainer renormalises the rows between steps, not in the forward
pass). The hookpoint is an HF module name: `layers.6` is the output of block 6 (`blocks.6.resid_post`). A run
folder holds one subfolder per hookpoint (load it with `subfolder="layers.6"`) and its `config.json`, which may
name the base model.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Optional

from ..sae.model import SparseAutoencoder
from .checked import check_tensors, positive_int, read_json, read_safetensors
from .registry import build_sae, register_format
from .sites import site_from_hook_name

logger = logging.getLogger(__name__)


def detect(folder: Path) -> bool:
    return (folder / "cfg.json").is_file() and (folder / "sae.safetensors").is_file()


def _run_model_name(folder: Path) -> Optional[str]:
    """The base model the run's `config.json` (one folder up) names, if any."""
    run_config = folder.parent / "config.json"
    if not run_config.is_file():
        return None
    try:
        model = json.loads(run_config.read_text()).get("model")
    except (ValueError, AttributeError):
        return None
    return model if isinstance(model, str) else None


def load(folder: Path) -> SparseAutoencoder:
    """Our SAE with sparsify's latents and reconstructions."""
    cfg = read_json(folder / "cfg.json")
    for flag in ("transcode", "skip_connection"):
        if cfg.get(flag):
            raise NotImplementedError(f"{folder}: sparsify {flag}=true is not supported (SAEs only)")
    if cfg.get("activation", "topk") is not None and cfg.get("activation", "topk") != "topk":
        raise NotImplementedError(f"{folder}: sparsify activation {cfg.get('activation')!r} is not supported; supported: topk")
    weights_file = folder / "sae.safetensors"
    weights = read_safetensors(weights_file)
    check_tensors(weights_file, weights, {"encoder.weight": ("num_latents", "d_in"), "encoder.bias": ("num_latents",),
                                          "W_dec": ("num_latents", "d_in"), "b_dec": ("d_in",)})
    site = site_from_hook_name(folder.name)
    if site is None:
        logger.warning("%s: hookpoint %r has no hf_e2e_sae site; the SAE loads without one.", folder, folder.name)
    config = {"activation": "topk", "k": positive_int(cfg.get("k", 32), "k", folder / "cfg.json"), "site": site, "apply_b_dec_to_input": True,
              "normalize_decoder": False, "base_model_name_or_path": _run_model_name(folder)}
    return build_sae(config, weights["encoder.weight"].float(), weights["encoder.bias"].float(),
                     weights["W_dec"].float().T, weights["b_dec"].float())


register_format("sparsify", detect, load)
