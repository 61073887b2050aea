"""saprmarks dictionary_learning (`ae.pt` + `config.json`).

`ae.pt` is a `torch.save`d state dict (unpickled with `weights_only=True` only), told apart by its keys:

    AutoEncoder           encoder.weight (F, D), encoder.bias, decoder.weight (D, F), bias (D)
                          latents ReLU(encoder(x - bias)), reconstruction decoder(f) + bias
    AutoEncoderTopK       encoder.*, decoder.weight (D, F), b_dec; TopK(ReLU(encoder(x - b_dec))), k in config
    JumpReluAutoEncoder   W_enc (D, F), b_enc, W_dec (F, D), b_dec, threshold; ReLU(pre * (pre > threshold))

The stored module's forward is reproduced as is (decoder not renormalised; `AutoEncoder.from_pretrained`'s
optional folding of decoder norms into the encoder is not applied). `config.json`'s `trainer.submodule_name`
(`resid_post_layer_3`) or `trainer.layer` names the site, `trainer.lm_name` the base model.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

from ..sae.model import SparseAutoencoder
from .checked import check_tensors, optional_str, positive_int, read_json
from .registry import build_sae, load_torch_weights, register_format
from .sites import site_from_hook_name

logger = logging.getLogger(__name__)


def detect(folder: Path) -> bool:
    return (folder / "ae.pt").is_file()


def _trainer_config(folder: Path) -> dict:
    trainer = read_json(folder / "config.json", required=False).get("trainer")
    return trainer if isinstance(trainer, dict) else {}


def _site(trainer: dict) -> Optional[str]:
    name = optional_str(trainer.get("submodule_name"))
    site = site_from_hook_name(name) if name else None
    layer = trainer.get("layer")
    if site is None and isinstance(layer, int) and not isinstance(layer, bool) and layer >= 0:
        site = f"blocks.{trainer['layer']}.resid_post"  # dictionary_learning's default: a block's output
    return site


def load(folder: Path) -> SparseAutoencoder:
    """Our SAE with the stored dictionary_learning module's latents and reconstructions."""
    path = folder / "ae.pt"
    state = load_torch_weights(path)
    trainer = _trainer_config(folder)
    common = {"site": _site(trainer), "normalize_decoder": False,
              "base_model_name_or_path": optional_str(trainer.get("lm_name"))}
    encoder = {"encoder.weight": ("F", "D"), "encoder.bias": ("F",), "decoder.weight": ("D", "F")}
    if "W_enc" in state:  # JumpReluAutoEncoder (does not subtract b_dec from the input)
        check_tensors(path, state, {"W_enc": ("D", "F"), "b_enc": ("F",), "W_dec": ("F", "D"), "b_dec": ("D",),
                                    "threshold": ("F",)})
        return build_sae({**common, "activation": "jumprelu"}, state["W_enc"].float().T, state["b_enc"].float(),
                         state["W_dec"].float().T, state["b_dec"].float(), threshold=state["threshold"].float())
    if "b_dec" in state:  # AutoEncoderTopK / BatchTopK-style: TopK over ReLU(encoder(x - b_dec))
        check_tensors(path, state, {**encoder, "b_dec": ("D",)})
        k = state.get("k", trainer.get("k"))
        if k is None:
            raise ValueError(f"{folder}: a TopK dictionary without k (neither in ae.pt nor in config.json trainer.k)")
        k = positive_int(k, "k", path)
        return build_sae({**common, "activation": "topk", "k": k, "apply_b_dec_to_input": True},
                         state["encoder.weight"].float(), state["encoder.bias"].float(),
                         state["decoder.weight"].float(), state["b_dec"].float())
    if "bias" in state:  # AutoEncoder
        check_tensors(path, state, {**encoder, "bias": ("D",)})
        return build_sae({**common, "activation": "relu", "apply_b_dec_to_input": True},
                         state["encoder.weight"].float(), state["encoder.bias"].float(),
                         state["decoder.weight"].float(), state["bias"].float())
    raise NotImplementedError(f"{folder}/ae.pt: unsupported dictionary class (keys {sorted(state)[:8]})")


register_format("dictionary_learning", detect, load)
