"""`LoRAConfig`: LoRA adapters on the base model around frozen SAEs (Chen, Engels & Tegmark 2025, arXiv 2501.19406).

    lora: {r: 8, alpha: 16, target_modules: [c_attn, c_proj, c_fc], objective: kl, train_sae: false}

The adapters are trained with the SAEs spliced in, so that the adapted model with the SAEs reproduces the
original model: `objective: kl` minimises KL(P_orig || P_sae+lora), where P_orig is the base model without
adapters and without SAEs; `objective: ce` minimises the next-token cross-entropy of the SAE+LoRA model.
`train_sae: true` trains the SAEs as well, with the run's `loss` config ("both" in the paper's comparison).
Free of torch, like the rest of the config: errors answer before anything heavy loads.
"""
from __future__ import annotations

import importlib.util
from typing import Literal, Optional

from pydantic import Field, model_validator

from ..config.arguments import ConfigModel


class LoRAConfig(ConfigModel):
    r: int = Field(8, ge=1)
    """Rank of each LoRA adapter."""
    alpha: float = Field(16.0, gt=0)
    """LoRA scaling numerator: the update is (alpha / r) B A."""
    target_modules: Optional[list[str]] = None
    """Module names (or suffixes) to adapt, e.g. [c_attn, c_proj, c_fc] for GPT-2; null: PEFT's default for the
    model family."""
    layers: Optional[list[int]] = None
    """Only adapt these block indices (PEFT's layers_to_transform); null: every block."""
    objective: Literal["kl", "ce"] = "kl"
    """kl: KL(P_orig || P_sae+lora) to the original model; ce: next-token cross-entropy of the SAE+LoRA model."""
    train_sae: bool = False
    """Also train the SAEs (with the run's loss config); false: the SAEs stay frozen and only the adapters learn."""

    @model_validator(mode="after")
    def _check(self) -> "LoRAConfig":
        if self.target_modules is not None and (not self.target_modules or not all(m.strip() for m in self.target_modules)):
            raise ValueError(f"lora.target_modules must name at least one module (or be null), got {self.target_modules}")
        if self.layers is not None and (not self.layers or min(self.layers) < 0):
            raise ValueError(f"lora.layers must list block indices >= 0 (or be null), got {self.layers}")
        return self


def check_lora_train_config(config) -> None:
    """Cross-field checks of a `TrainConfig` with a `lora` section (no model, no data needed)."""
    lora = config.lora
    if lora is None:
        return
    if importlib.util.find_spec("peft") is None:
        raise ValueError("lora needs the peft package: pip install 'hf_e2e_sae[lora]' (or pip install peft)")
    if not lora.train_sae and config.init_from is None:
        raise ValueError("lora.train_sae is false (the SAE stays frozen) but init_from is not set: name the trained "
                         "SAE to adapt around (init_from: PATH), or set lora.train_sae: true")
    if config.activation_cache is not None:
        raise ValueError("lora cannot train from an activation_cache: the adapters change the activations; "
                         "remove activation_cache")
    if config.base_model.shard:
        raise ValueError("lora does not support base_model.shard: set base_model.shard: false")
    if config.save_every_samples is not None or config.resume_from_checkpoint is not None:
        raise ValueError("lora runs do not write resumable checkpoints yet: set save_every_samples: null and "
                         "resume_from_checkpoint: null")
