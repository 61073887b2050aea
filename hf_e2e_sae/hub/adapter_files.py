"""The PEFT adapter of a patched model in our save format: `lora/adapter_config.json` + `lora/adapter_model.safetensors`
beside the SAEs, named by the manifest (`"adapter": "lora"`, format version 2).

    final/hf_e2e_sae.json           {"format_version": 2, "saes": {...}, "adapter": "lora", ...}
    final/config.json, model.safetensors
    final/lora/adapter_config.json, final/lora/adapter_model.safetensors

Loading applies the adapter with `PeftModel.from_pretrained` to the base model before the SAEs are patched in;
an adapter never runs remote code (PEFT loads only a config and tensors).
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Optional

from ..patching.adapters import ADAPTER_FOLDER, lora_adapter
from ..patching.base_models import portable_base_name
from ..sae.finite import check_finite_weights

logger = logging.getLogger(__name__)

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
# A manifest naming an adapter is version 2: an older hf_e2e_sae refuses it instead of loading the SAEs without it.
ADAPTER_MANIFEST_VERSION = 2


def save_adapter(model, directory: Path, manifest: dict) -> None:
    """Write the patched model's adapter (if any) into `directory/lora` and name it in `manifest`."""
    peft_model = lora_adapter(model)
    if peft_model is None:
        return
    state = {k: v for k, v in model.base_model.state_dict().items() if "lora_" in k}
    check_finite_weights(state, f"{directory} (LoRA adapter)")
    config = peft_model.peft_config["default"]
    recorded = config.base_model_name_or_path
    base = manifest.get("base_model_name_or_path")
    config.base_model_name_or_path = base or (portable_base_name(recorded) if recorded else None)
    try:
        peft_model.save_pretrained(directory / ADAPTER_FOLDER)  # adapter weights + config only
    finally:
        config.base_model_name_or_path = recorded
    (directory / ADAPTER_FOLDER / "README.md").unlink(missing_ok=True)  # PEFT's generic card: ours is the card
    manifest["adapter"] = ADAPTER_FOLDER
    manifest["format_version"] = ADAPTER_MANIFEST_VERSION


def load_adapter(base_model, path: str, manifest: dict, subfolder: str, hub_kwargs: dict) -> Optional[Any]:
    """`PeftModel` of the manifest's adapter applied to `base_model` (in place), or None when it names none."""
    folder = manifest.get("adapter")
    if not folder:
        return None
    from peft import PeftModel

    where = "/".join(p.strip("/") for p in (subfolder, folder) if p and p.strip("/"))
    hub = {k: v for k, v in hub_kwargs.items() if v is not None and k != "local_files_only"}
    if Path(path).is_dir():
        return PeftModel.from_pretrained(base_model, str(Path(path) / where), is_trainable=False)
    return PeftModel.from_pretrained(base_model, path, subfolder=where, is_trainable=False, **hub)


def adapter_summary(folder: Path, manifest: dict, train_config: Optional[dict] = None) -> Optional[dict]:
    """What the model card says about the adapter of a saved folder: type, r, alpha, target modules, objective."""
    sub = manifest.get("adapter")
    if not sub:
        return None
    config = json.loads((Path(folder) / sub / "adapter_config.json").read_text())
    lora = (train_config or {}).get("lora") if isinstance((train_config or {}).get("lora"), dict) else {}
    modules = config.get("target_modules")
    modules = sorted(modules) if isinstance(modules, (list, set, tuple)) else modules
    objective = {"kl": "KL(P_orig ‖ P_sae+lora) to the original model", "ce": "next-token cross-entropy"}
    return {"folder": sub, "type": config.get("peft_type", "LORA"), "r": config.get("r"),
            "alpha": config.get("lora_alpha"), "target_modules": modules,
            "layers": config.get("layers_to_transform"),
            "objective": objective.get(lora.get("objective")) if lora else None,
            "train_sae": lora.get("train_sae") if lora else None}
