"""SAELens v6 (`cfg.json` + `sae_weights.safetensors`): import and export.

SAELens encodes `act(process(x) @ W_enc + b_enc)` with `process(x) = x - b_dec * apply_b_dec_to_input` and
decodes `acts @ W_dec + b_dec`, with no decoder normalisation in the forward pass; `topk` keeps the k largest
pre-activations and ReLUs them, `jumprelu` is `ReLU(pre) * (pre > threshold)` (BatchTopK and Matryoshka SAEs
are saved as `jumprelu`; `saelens_matryoshka.py` reads and writes the Matryoshka layouts). The hook name is TransformerLens's. SAELens trains on
`HookedTransformer.from_pretrained_no_processing` models (raw residuals) unless the SAE's
`metadata.model_from_pretrained_kwargs` asks for `center_writing_weights`, in which case the SAE reads
centred residuals: the import then sets `center_input`, and the export records it the same way.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Optional, Union

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from ..sae.model import SparseAutoencoder
from ..sae.sites import parse_site
from .checked import check_tensors, mapping, optional_str, positive_int, read_json, read_safetensors
from .registry import build_sae, register_format
from .saelens_matryoshka import TRAINING_ARCHITECTURES, matryoshka_export, read_matryoshka
from .sites import hub_model_name, site_from_hook_name, transformer_lens_hook_name, transformer_lens_model_name

logger = logging.getLogger(__name__)

CFG_NAME = "cfg.json"
WEIGHTS_NAME = "sae_weights.safetensors"
EXPORT_SAE_LENS_VERSION = "6.0.0"  # the format version written; >= 6 so SAELens does not read a legacy config
_ACTIVATIONS = {"standard": "relu", "topk": "topk", "jumprelu": "jumprelu"}


def detect(folder: Path) -> bool:
    return (folder / CFG_NAME).is_file() and (folder / WEIGHTS_NAME).is_file()


def _flat_metadata(cfg: dict, where: Path) -> dict:
    """v6 keeps model facts under `metadata`; older configs keep them at the top level."""
    metadata = dict(mapping(cfg.get("metadata"), "metadata", where))
    for key in ("hook_name", "model_name", "hook_head_index", "model_from_pretrained_kwargs", "model_class_name"):
        metadata.setdefault(key, cfg.get(key))
    if metadata.get("hook_name") is None and cfg.get("hook_point"):
        metadata["hook_name"] = cfg["hook_point"]
    return metadata


def _legacy_architecture(cfg: dict) -> str:
    """Pre-6 flat configs name TopK through `activation_fn` (as SAELens's own `handle_pre_6_0_config` reads them)."""
    activation = cfg.get("activation_fn", cfg.get("activation_fn_str"))
    if activation == "topk" and isinstance(cfg.get("activation_fn_kwargs"), dict) and \
            cfg["activation_fn_kwargs"].get("k") is not None:
        cfg["k"] = cfg["activation_fn_kwargs"]["k"]
        return "topk"
    return "standard"


def _check_supported(cfg: dict, metadata: dict, weights: dict, folder: Path) -> str:
    architecture = cfg.get("architecture") or _legacy_architecture(cfg)
    if not isinstance(architecture, str) or (architecture not in _ACTIVATIONS
                                             and architecture not in TRAINING_ARCHITECTURES):
        raise NotImplementedError(f"{folder}: SAELens architecture {architecture!r} is not supported; "
                                  f"supported: {sorted([*_ACTIVATIONS, *TRAINING_ARCHITECTURES])}")
    if cfg.get("normalize_activations", "none") not in (None, False, True, "none", "expected_average_only_in"):
        raise NotImplementedError(f"{folder}: normalize_activations={cfg['normalize_activations']!r} (per-token "
                                  "rescaling) is not supported; supported: none, expected_average_only_in")
    if cfg.get("reshape_activations", "none") != "none" or metadata.get("hook_head_index") is not None:
        raise NotImplementedError(f"{folder}: attention-head SAEs (hook_z / hook_head_index) are not supported")
    scaling = weights.get("scaling_factor")
    if scaling is not None and not (scaling.dtype.is_floating_point and torch.equal(scaling, torch.ones_like(scaling))):
        raise NotImplementedError(f"{folder}: a per-latent finetuning scaling_factor is not supported")
    return architecture


def load(folder: Path, center_input: Optional[bool] = None, input_scale: float = 1.0) -> SparseAutoencoder:
    """Our SAE with SAELens's latents and reconstructions.

    `center_input` overrides the metadata's rule; `input_scale` is the constant of an
    `expected_average_only_in` SAE (SAELens's `norm_scaling_factor`), which its files do not hold.
    """
    cfg = read_json(folder / CFG_NAME)
    metadata = _flat_metadata(cfg, folder / CFG_NAME)
    weights_file = folder / WEIGHTS_NAME
    weights = read_safetensors(weights_file)
    architecture = _check_supported(cfg, metadata, weights, folder)
    spec = {"W_enc": ("d_in", "d_sae"), "b_enc": ("d_sae",), "W_dec": ("d_sae", "d_in"), "b_dec": ("d_in",)}
    check_tensors(weights_file, weights, {**spec, "threshold": ("d_sae",)} if architecture == "jumprelu" else spec)
    if cfg.get("normalize_activations") in ("expected_average_only_in", True) and input_scale == 1.0:
        logger.warning("%s: normalize_activations='expected_average_only_in': like SAE.load_from_disk, no scaling "
                       "is applied; scale the inputs yourself or set config.input_scale.", folder)
    pretrained_kwargs = mapping(metadata.get("model_from_pretrained_kwargs"), "model_from_pretrained_kwargs", folder)
    if center_input is None:
        center_input = pretrained_kwargs.get("center_writing_weights") is True
    hook_name = optional_str(metadata.get("hook_name"))
    site = site_from_hook_name(hook_name) if hook_name else None
    if site is None:
        logger.warning("%s: hook %r has no hf_e2e_sae site; the SAE loads without one.", folder, metadata.get("hook_name"))
    W_enc, b_enc, W_dec = weights["W_enc"].float(), weights["b_enc"].float(), weights["W_dec"].float()
    normalize_decoder = False
    matryoshka = read_matryoshka(architecture, cfg, metadata, weights, folder)
    if matryoshka is not None:
        scale = matryoshka.encoder_scale
        W_enc, b_enc, normalize_decoder = W_enc * scale, b_enc * scale, matryoshka.normalize_decoder
    elif architecture == "topk" and cfg.get("rescale_acts_by_decoder_norm"):
        # SAELens multiplies pre-activations by the decoder norms and decodes with unit-norm rows: the same SAE.
        norms = W_dec.norm(dim=-1)
        W_enc, b_enc, normalize_decoder = W_enc * norms, b_enc * norms, True
    config = {"activation": _ACTIVATIONS.get(architecture), "site": site, "center_input": center_input,
              "input_scale": input_scale, "apply_b_dec_to_input": bool(cfg.get("apply_b_dec_to_input", True)),
              "normalize_decoder": normalize_decoder,
              "base_model_name_or_path": hub_model_name(optional_str(metadata.get("model_name")))}
    if matryoshka is not None:
        config.update(matryoshka.options)
    elif architecture == "topk":
        config["k"] = positive_int(cfg.get("k"), "k", folder / CFG_NAME)
    threshold = weights["threshold"].float() if architecture == "jumprelu" and matryoshka is None else None
    sae = build_sae(config, W_enc.T, b_enc, W_dec.T, weights["b_dec"].float(), threshold)
    if matryoshka is not None and matryoshka.threshold is not None:
        with torch.no_grad():
            sae.activation.threshold.fill_(matryoshka.threshold)
    return sae


@torch.no_grad()
def _export_weights(sae: SparseAutoencoder) -> tuple[dict, bool]:
    """SAELens tensors computing exactly our encode / decode (in the SAE's basis); returns (weights, apply_b_dec)."""
    c = sae.config
    W_enc, b_enc, b_dec = sae.encoder.weight.float(), sae.encoder.bias.float(), sae.decoder.bias.float()
    D = F.normalize(sae.decoder.weight, dim=0) if c.normalize_decoder else sae.decoder.weight
    apply_b_dec = c.apply_b_dec_to_input
    W_enc_out = W_enc * c.input_scale
    if c.center_input:
        # centring is linear: fold it into the encoder, and b_dec's subtraction into b_enc (exact, no runtime op)
        W_enc_out = W_enc_out - W_enc_out.mean(dim=1, keepdim=True)
        if apply_b_dec:
            b_enc = b_enc - W_enc @ b_dec
        apply_b_dec = False
    weights = {"W_enc": W_enc_out.T, "b_enc": b_enc, "W_dec": (D.float() / c.input_scale).T,
               "b_dec": b_dec / c.input_scale}
    if c.activation == "jumprelu":
        weights["threshold"] = sae.activation.threshold.float()
    return {name: t.detach().contiguous().cpu() for name, t in weights.items()}, apply_b_dec


def export(sae: SparseAutoencoder, directory: Union[str, Path], model_name: Optional[str] = None) -> Path:
    """Write `cfg.json` + `sae_weights.safetensors` that `sae_lens.SAE.load_from_disk` loads into an SAE whose
    `encode` / `decode` equal ours. `model_name` defaults to the SAE's base model (TransformerLens spelling)."""
    c = sae.config
    if c.output_site is not None or getattr(c, "skip_connection", False):
        raise NotImplementedError("SAELens export writes SAEs only, not transcoders or skip transcoders (their "
                                  "output site and W_skip would be lost); use format='sparsify' for a TopK one")
    matryoshka = matryoshka_export(sae)
    architecture = matryoshka[0] if matryoshka else {v: k for k, v in _ACTIVATIONS.items()}.get(c.activation)
    if architecture is None:
        raise NotImplementedError(f"activation {c.activation!r} has no SAELens architecture; exportable: "
                                  f"{sorted([*_ACTIVATIONS.values(), 'matryoshka_batchtopk', 'matryoshka_topk'])}")
    if c.site is None:
        raise ValueError("the SAE has no config.site: SAELens needs a hook_name; set sae.config.site first")
    weights, apply_b_dec = _export_weights(sae)
    cfg = {"architecture": architecture, "d_in": c.d_in, "d_sae": c.dict_size, "dtype": "float32", "device": "cpu",
           "apply_b_dec_to_input": apply_b_dec, "normalize_activations": "none", "reshape_activations": "none",
           "metadata": {
               "sae_lens_version": EXPORT_SAE_LENS_VERSION, "sae_lens_training_version": None,
               "model_name": model_name or transformer_lens_model_name(c.base_model_name_or_path),
               "hook_name": transformer_lens_hook_name(c.site), "hook_layer": parse_site(c.site).block,
               "hook_head_index": None,
               "model_class_name": "HookedTransformer", "prepend_bos": True,
               "model_from_pretrained_kwargs": {"center_writing_weights": bool(c.center_input)},
               "hf_base_model": c.base_model_name_or_path, "hf_base_model_revision": c.base_model_revision,
               "exported_by": "hf_e2e_sae"}}
    if matryoshka:
        cfg.update(matryoshka[1])
        cfg["metadata"].update(matryoshka[2])
        weights.update(matryoshka[3])
    elif architecture == "topk":
        cfg.update(k=c.k, rescale_acts_by_decoder_norm=False)
    for name, tensor in weights.items():
        if not torch.isfinite(tensor).all():
            raise ValueError(f"refusing to export non-finite values in {name}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_file(weights, str(directory / WEIGHTS_NAME))
    (directory / CFG_NAME).write_text(json.dumps(cfg, indent=2) + "\n")
    return directory


register_format("saelens", detect, load)
