"""Our own format (`config.json` with model_type hf_e2e_sae + `model.safetensors`), so `load_sae` takes any SAE."""
from __future__ import annotations

import json
from pathlib import Path

from ..sae.config import SAEConfig
from ..sae.model import SparseAutoencoder
from .registry import register_format


def detect(folder: Path) -> bool:
    config = folder / "config.json"
    if not config.is_file() or not (folder / "model.safetensors").is_file():
        return False
    try:
        return json.loads(config.read_text()).get("model_type") == SAEConfig.model_type
    except (json.JSONDecodeError, AttributeError):
        return False


def load(folder: Path) -> SparseAutoencoder:
    return SparseAutoencoder.from_pretrained(folder)


register_format("hf_e2e_sae", detect, load)
