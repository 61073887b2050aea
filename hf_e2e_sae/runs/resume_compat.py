"""Which config fields a resumed run may change, and refusing a resume that would change what is trained.

A checkpoint records its run's config (train_config.yaml). Resuming compares it with the new config: every
field must match except those in `MAY_CHANGE_ON_RESUME` (how long, how often to log / evaluate / save, where
to publish, memory and speed knobs). A field this module does not know (a new one) must match: strict by default.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from ..config.arguments import to_dict
from .redaction import redact_secrets

MAY_CHANGE_ON_RESUME = (
    "n_samples", "n_tokens",                                  # the run's length (continue longer or shorter)
    "batch_size", "eval_batch_size", "mixed_precision",        # micro-batch size / precision: memory and speed
    "eval_every_samples", "log_every_steps", "save_every_samples", "keep_checkpoints", "alive_window_tokens",
    "tracker", "output_dir", "resume_from_checkpoint", "stop_after_steps", "overwrite_output_dir",
    "push_to_hub", "hub_repo_id", "hub_private",
    "data.num_proc", "data.map_batch_size", "data.load_kwargs",  # loading knobs (and credentials may rotate)
    "loss.kl.chunk_tokens",                                    # memory only: the KL is the same
    "base_model.shard",                                        # where the frozen weights live: same SAE updates
    "activation_cache",                                        # speed only: the same activations, from disk
    "loss.kl.compile",                                         # speed only: the same KL, compiled or eager
    "loss.kl.backend",                                         # speed only: the same KL (parity 1e-4), ours or liger
    "recompute_suffix",                                        # memory only: the same gradients
)
"""Dotted fields (or prefixes) a resumed run may set differently; everything else must match the checkpoint."""


class ResumeMismatchError(ValueError):
    """The resumed config changes what the checkpoint was trained with; lists the differing fields."""


def _flatten(tree: Any, prefix: str = "") -> dict:
    if isinstance(tree, dict) and tree:
        out = {}
        for key, value in tree.items():
            out.update(_flatten(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: tree}


def may_change(field: str) -> bool:
    return any(field == name or field.startswith(name + ".") for name in MAY_CHANGE_ON_RESUME)


def resume_differences(recorded: dict, current: dict) -> list:
    """[(field, recorded value, current value)] for the must-match fields that differ."""
    old, new = _flatten(recorded), _flatten(current)
    return [(field, old[field], new.get(field)) for field in sorted(old)
            if not may_change(field) and field in new and old[field] != new[field]]


def check_resume_compatible(checkpoint: Path, config: Any) -> None:
    """Raise `ResumeMismatchError` listing every must-match field where `config` differs from the checkpoint's."""
    recorded = yaml.safe_load((Path(checkpoint) / "train_config.yaml").read_text(encoding="utf-8")) or {}
    differences = resume_differences(recorded, redact_secrets(to_dict(config)))
    if differences:
        listed = "; ".join(f"{field}: checkpoint {old!r}, now {new!r}" for field, old, new in differences)
        raise ResumeMismatchError(
            f"Refusing to resume from {checkpoint}: the config changes what it was trained with ({listed}). Resume "
            "with the checkpoint's values, or start a new run (another output_dir, or overwrite_output_dir=true).")
