"""EleutherAI sparsify (`<hookpoint>/cfg.json` + `sae.safetensors`): SAEs, transcoders and skip transcoders.

sparsify encodes `TopK(ReLU(encoder(x - b_dec)))` and decodes `top_acts @ W_dec + b_dec` with `W_dec`
`(num_latents, d_in)` used as stored (its trainer renormalises the rows between steps, not in the forward
pass). The hookpoint is an HF module name: `layers.6` is the output of block 6 (`blocks.6.resid_post`). A run
folder holds one subfolder per hookpoint (load it with `subfolder="layers.6"`) and its `config.json`, which may
name the base model.

Transcoders (`transcode: true`) read the hooked module's input and replace its output, and subtract nothing
before encoding: hookpoint `layers.3.mlp` becomes `site="blocks.3.mlp_in"`, `output_site="blocks.3.mlp_out"`.
`skip_connection: true` adds `W_skip` `(d_in, d_in)`: the output gains `x @ W_skip.T` (our `W_skip`, same layout).
`export` writes the same layout (TopK only), so sparsify's `SparseCoder.load_from_disk` reads our SAEs back.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Optional, Union

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from ..sae.model import SparseAutoencoder
from ..sae.sites import Site, parse_site
from .checked import check_tensors, positive_int, read_json, read_safetensors
from .registry import build_sae, register_format
from .sites import site_from_hook_name

logger = logging.getLogger(__name__)

_HF_KIND = {"mlp_out": "mlp", "attn_out": "self_attn"}


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


def _sites(folder: Path, transcode: bool) -> dict:
    """`site` (and `output_site` for a transcoder) for the hookpoint the folder is named after."""
    site = site_from_hook_name(folder.name)
    if site is None:
        logger.warning("%s: hookpoint %r has no hf_e2e_sae site; the SAE loads without one.", folder, folder.name)
        return {"site": None}
    if not transcode:
        return {"site": site}
    parsed = parse_site(site)
    if parsed.kind != "mlp_out":
        logger.warning("%s: a transcoder at hookpoint %r (not an MLP) loads without a site.", folder, folder.name)
        return {"site": None}
    return {"site": str(Site(parsed.block, "mlp_in")), "output_site": site}


def load(folder: Path) -> SparseAutoencoder:
    """Our SAE (or skip transcoder) with sparsify's latents and reconstructions."""
    cfg = read_json(folder / "cfg.json")
    if cfg.get("activation", "topk") is not None and cfg.get("activation", "topk") != "topk":
        raise NotImplementedError(f"{folder}: sparsify activation {cfg.get('activation')!r} is not supported; supported: topk")
    weights_file = folder / "sae.safetensors"
    weights = read_safetensors(weights_file)
    transcode = bool(cfg.get("transcode"))
    if cfg.get("skip_connection") and "W_skip" not in weights:
        raise ValueError(f"{folder}: cfg.json sets skip_connection but sae.safetensors holds no W_skip")
    spec = {"encoder.weight": ("num_latents", "d_in"), "encoder.bias": ("num_latents",),
            "W_dec": ("num_latents", "d_in"), "b_dec": ("d_in",)}
    check_tensors(weights_file, weights, {**spec, "W_skip": ("d_in", "d_in")} if cfg.get("skip_connection") else spec)
    config = {"activation": "topk", "k": positive_int(cfg.get("k", 32), "k", folder / "cfg.json"),
              "apply_b_dec_to_input": not transcode,
              "normalize_decoder": False, "base_model_name_or_path": _run_model_name(folder), **_sites(folder, transcode)}
    skip = weights["W_skip"].float() if cfg.get("skip_connection") else None
    return build_sae(config, weights["encoder.weight"].float(), weights["encoder.bias"].float(),
                     weights["W_dec"].float().T, weights["b_dec"].float(), skip=skip)


def hookpoint(sae: SparseAutoencoder) -> str:
    """The sparsify hookpoint (HF module name, `layers.N[.mlp]`) of `sae`'s site, or its transcoder's output."""
    c = sae.config
    written = parse_site(c.output_site or c.site)
    if written.kind == "resid_post":
        return f"layers.{written.block}"
    if written.kind not in _HF_KIND:
        raise NotImplementedError(f"site {written} has no sparsify hookpoint; exportable: resid_post, mlp_out, attn_out")
    return f"layers.{written.block}.{_HF_KIND[written.kind]}"


def export(sae: SparseAutoencoder, directory: Union[str, Path]) -> Path:
    """Write `directory/<hookpoint>/cfg.json + sae.safetensors` (plus the run's `config.json` naming the base model)
    that `sparsify.SparseCoder.load_from_disk` loads into a coder whose outputs equal ours; returns the
    hookpoint folder. TopK only; a transcoder must read `mlp_in` and write `mlp_out`."""
    c = sae.config
    if c.activation != "topk":
        raise NotImplementedError(f"activation {c.activation!r} has no sparsify form; exportable: topk")
    if c.site is None:
        raise ValueError("the SAE has no config.site: sparsify needs a hookpoint; set sae.config.site first")
    transcode = c.output_site is not None
    if transcode and parse_site(c.site).kind != "mlp_in":
        raise NotImplementedError(f"transcoder reading {c.site}: sparsify transcoders read the MLP's input (mlp_in)")
    if c.apply_b_dec_to_input == transcode or c.input_scale != 1.0 or c.center_input:
        raise NotImplementedError("sparsify subtracts b_dec before encoding an SAE (not a transcoder) and has no "
                                  "input scale or centring; this SAE's basis options differ")
    with torch.no_grad():
        decoder = F.normalize(sae.decoder.weight, dim=0) if c.normalize_decoder else sae.decoder.weight
        weights = {"encoder.weight": sae.encoder.weight, "encoder.bias": sae.encoder.bias, "W_dec": decoder.T,
                   "b_dec": sae.decoder.bias}
        if c.skip_connection:
            weights["W_skip"] = sae.W_skip
        weights = {name: t.detach().float().contiguous().cpu() for name, t in weights.items()}
    cfg = {"activation": "topk", "expansion_factor": max(1, c.dict_size // c.d_in), "normalize_decoder": False,
           "num_latents": c.dict_size, "k": c.k, "multi_topk": False, "skip_connection": c.skip_connection,
           "transcode": transcode, "d_in": c.d_in}
    folder = Path(directory) / hookpoint(sae)
    folder.mkdir(parents=True, exist_ok=True)
    save_file(weights, str(folder / "sae.safetensors"))
    (folder / "cfg.json").write_text(json.dumps(cfg, indent=2) + "\n")
    if c.base_model_name_or_path:
        (Path(directory) / "config.json").write_text(json.dumps({"model": c.base_model_name_or_path}, indent=2) + "\n")
    return folder


register_format("sparsify", detect, load)
