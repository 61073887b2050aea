"""SAELens's Matryoshka layouts, read and written (used by `interop/saelens.py`).

SAELens (6.15+) trains `matryoshka_batchtopk` SAEs and saves them two ways:

* for inference (`save_inference_model`, what `SAE.load_from_disk` reads and the Hub holds): architecture
  `jumprelu`, with a per-latent `threshold` (the BatchTopK threshold times each decoder row's norm, decoder rows of
  norm 1), and the Matryoshka facts only in `metadata.training_architecture` (`"matryoshka_batchtopk"`) and
  `metadata.training_architecture_details` (`k`, `matryoshka_widths` ending with `d_sae`,
  `rescale_acts_by_decoder_norm`, ...);
* as a training checkpoint (`save_model`): architecture `matryoshka_batchtopk`, the details at the top level of
  `cfg.json`, a scalar `topk_threshold` weight; with `rescale_acts_by_decoder_norm` the pre-activations are
  multiplied by the decoder rows' norms and decoded with unit-norm rows.

Both import as our `matryoshka_batchtopk` (prefixes = the widths below `d_sae`) with the same latents at
inference. Our `matryoshka_batchtopk` exports as SAELens's inference layout (so `SAE.load_from_disk` loads it as the
JumpReLU SAE it is at inference), our `matryoshka_topk` as a `topk` SAE tagged `matryoshka_topk` the same way; our
`matryoshka_weights` ride along in the details. An inference file whose thresholds are not one BatchTopK threshold
(per-latent values after fine-tuning) imports as the plain JumpReLU SAE it is, with a warning.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

logger = logging.getLogger(__name__)

# SAELens training architecture (or our tag) -> our activation
ACTIVATIONS = {"matryoshka_batchtopk": "matryoshka_batchtopk", "matryoshka_topk": "matryoshka_topk"}
TRAINING_ARCHITECTURES = {"matryoshka_batchtopk"}  # architectures only SAELens training checkpoints carry
THRESHOLD_LR = 0.01  # SAELens's topk_threshold_lr default; our BatchTopK's THRESHOLD_MOMENTUM


@dataclass
class MatryoshkaImport:
    """What `load` does differently for a Matryoshka file: our activation and options, the per-latent factor on the
    encoder rows and bias, whether to normalise the decoder, and the BatchTopK threshold (None for TopK)."""

    options: dict
    encoder_scale: torch.Tensor
    normalize_decoder: bool
    threshold: Optional[float]


def _details(cfg: dict, metadata: dict) -> dict:
    return {**cfg, **(metadata.get("training_architecture_details") or {})}


def read_matryoshka(architecture: str, cfg: dict, metadata: dict, weights: dict,
                    folder: Path) -> Optional[MatryoshkaImport]:
    """The Matryoshka reading of a SAELens file, or None when it is not one (or cannot be read as one)."""
    tag = architecture if architecture in TRAINING_ARCHITECTURES else metadata.get("training_architecture")
    if tag not in ACTIVATIONS:
        return None
    details = _details(cfg, metadata)
    prefixes = [int(w) for w in details.get("matryoshka_widths") or [] if int(w) < int(cfg["d_sae"])]
    if (not prefixes or details.get("k") is None) and architecture in TRAINING_ARCHITECTURES:
        raise NotImplementedError(f"{folder}: a {architecture} checkpoint without matryoshka_widths below d_sae or "
                                  "without k is not supported")
    if not prefixes or details.get("k") is None:
        logger.warning("%s: a %s file without proper matryoshka_widths or k; loaded as a plain %s SAE.", folder, tag,
                       architecture)
        return None
    options = {"activation": ACTIVATIONS[tag], "k": int(details["k"]), "matryoshka_prefixes": prefixes,
               "matryoshka_weights": details.get("matryoshka_weights")}
    norms = weights["W_dec"].float().norm(dim=-1)
    ones = torch.ones_like(norms)
    if architecture == "jumprelu":  # the inference layout: one threshold, in the stored decoder's units or the
        threshold = weights["threshold"].float()  # unit-norm decoder's (SAELens folds the norms into the encoder)
        for scale, normalize in ((ones, False), (norms, True)):
            if _constant(threshold * scale):
                return MatryoshkaImport(options, scale, normalize, float((threshold * scale).mean()))
        logger.warning("%s: a Matryoshka BatchTopK file with per-latent thresholds; loaded as a JumpReLU SAE "
                       "(exact at inference, without the Matryoshka prefixes).", folder)
        return None
    rescale = bool(details.get("rescale_acts_by_decoder_norm", False))
    threshold = float(weights["topk_threshold"]) if "topk_threshold" in weights else None
    if options["activation"] == "matryoshka_batchtopk" and threshold is None:
        raise NotImplementedError(f"{folder}: a {tag} file without a topk_threshold is not supported")
    return MatryoshkaImport(options, norms if rescale else ones, rescale, threshold)


def _constant(values: torch.Tensor) -> bool:
    return bool(torch.allclose(values, values[0].expand_as(values), rtol=1e-5, atol=1e-8))


def matryoshka_export(sae) -> Optional[tuple]:
    """`(SAELens architecture, cfg keys, metadata keys, extra weights)` for a Matryoshka SAE, or None."""
    c, activation = sae.config, sae.activation
    if c.activation not in ACTIVATIONS.values():
        return None
    details = {"k": c.k, "matryoshka_widths": [*activation.prefixes, c.dict_size],
               "matryoshka_weights": list(activation.prefix_weights), "rescale_acts_by_decoder_norm": False,
               "topk_threshold_lr": THRESHOLD_LR}
    metadata = {"training_architecture": c.activation, "training_architecture_details": details}
    if c.activation == "matryoshka_topk":
        return "topk", {"k": c.k, "rescale_acts_by_decoder_norm": False}, metadata, {}
    threshold = activation.threshold.detach().float().cpu().expand(c.dict_size).contiguous()
    return "jumprelu", {}, metadata, {"threshold": threshold}
