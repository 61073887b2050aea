"""Naming base models portably: built-in names, what a saved SAE records, and a base model's identity.

    builtin:tiny-shakespeare-gpt2   the tiny GPT-2 that ships in hf_e2e_sae/assets/tiny_lm (offline demo)

A saved SAE names its base model so that `SAEPatchedModel.from_pretrained` can load it anywhere: a Hub id
or built-in name as given; a local folder as `local:<folder name>` (an absolute path means nothing on
another machine: such SAEs load with `base_model=`), together with `base_model_config_hash`, a hash of
the base model's config that tells whether a model passed as `base_model=` is the one they were trained on.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Optional

ASSETS_DIR: Path = Path(__file__).resolve().parents[1] / "assets"
TINY_LM_DIR: Path = ASSETS_DIR / "tiny_lm"
BUILTIN_PREFIX = "builtin:"
LOCAL_PREFIX = "local:"
BUILTIN_BASE_MODELS: dict[str, Path] = {"tiny-shakespeare-gpt2": TINY_LM_DIR}

# Config keys that say nothing about the weights' identity (paths, versions, runtime choices).
_VOLATILE_CONFIG_KEYS = {"_name_or_path", "transformers_version", "_commit_hash", "_attn_implementation",
                         "_attn_implementation_autoset", "torch_dtype", "dtype", "use_cache", "architectures"}


def resolve_base_model(name_or_path: str) -> str:
    """What `from_pretrained` should load for a base-model name: built-in names become their folder."""
    if name_or_path.startswith(BUILTIN_PREFIX):
        key = name_or_path[len(BUILTIN_PREFIX):]
        if key not in BUILTIN_BASE_MODELS:
            raise ValueError(f"Unknown built-in base model {name_or_path!r}; valid choices: "
                             f"{[BUILTIN_PREFIX + k for k in BUILTIN_BASE_MODELS]}")
        return str(BUILTIN_BASE_MODELS[key])
    if name_or_path.startswith(LOCAL_PREFIX):
        raise ValueError(f"The SAEs were trained on a local model ({name_or_path!r}) that only exists on the machine "
                         "that trained them: load it yourself and pass `base_model=`.")
    return name_or_path


def portable_base_name(name_or_path: str) -> str:
    """The base-model name to record in saved SAEs: never a machine-local absolute path."""
    if name_or_path.startswith(BUILTIN_PREFIX) or not os.path.isdir(name_or_path):
        return name_or_path  # a built-in name or a Hub id
    resolved = Path(name_or_path).resolve()
    for key, folder in BUILTIN_BASE_MODELS.items():
        if resolved == folder.resolve():
            return BUILTIN_PREFIX + key
    return LOCAL_PREFIX + resolved.name


def is_local_only(name: Optional[str]) -> bool:
    """True when a recorded base-model name cannot be loaded on another machine."""
    return not name or name.startswith(LOCAL_PREFIX) or os.path.isabs(name)


def config_hash(config) -> str:
    """A short, stable hash of a base model's config (`PretrainedConfig` or dict), ignoring paths and versions."""
    data = config if isinstance(config, dict) else config.to_dict()
    kept = {k: v for k, v in data.items() if k not in _VOLATILE_CONFIG_KEYS}
    return hashlib.sha256(json.dumps(kept, sort_keys=True, default=str).encode()).hexdigest()[:16]
