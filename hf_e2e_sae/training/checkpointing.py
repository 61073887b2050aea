"""Resumable checkpoints for the trainer: atomic, rotated, SAE weights only.

    output_dir/checkpoints/step_00000120/   accelerator.save_state: SAE weights, optimizer, RNG,
                                           custom objects (scheduler, TrainerState), train_config.yaml
    output_dir/checkpoints/.tmp-step_.../   written first, renamed when complete

A run killed at any moment leaves every `step_*` directory complete: only finished ones are renamed.
"""
from __future__ import annotations

import logging
import re
import shutil
from pathlib import Path
from typing import Optional

import torch

logger = logging.getLogger(__name__)

_STEP_DIR = re.compile(r"^step_(\d+)$")
_SAE_KEY = re.compile(r"^(module\.)?saes\.")


class TrainerState:
    """Progress counters and the alive-feature window, saved with every checkpoint."""

    def __init__(self, sites: list):
        self.step = 0
        self.samples = 0
        self.window_tokens = 0
        self.fired = {site: None for site in sites}  # bool (dict_size,) per site, this window

    def state_dict(self) -> dict:
        return {"step": self.step, "samples": self.samples, "window_tokens": self.window_tokens,
                "fired": {k: (None if v is None else v.cpu()) for k, v in self.fired.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.step, self.samples, self.window_tokens = state["step"], state["samples"], state["window_tokens"]
        self.fired = dict(state["fired"])


def keep_only_sae_weights(models: list, weights: list, output_dir: str) -> None:
    """`register_save_state_pre_hook` hook: never write the frozen base model's weights."""
    for i, state in enumerate(weights):
        weights[i] = {k: v for k, v in state.items() if _SAE_KEY.match(k)}


def checkpoint_root(output_dir) -> Path:
    return Path(output_dir) / "checkpoints"


def list_checkpoints(output_dir) -> list:
    """Complete checkpoints, oldest first."""
    root = checkpoint_root(output_dir)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _STEP_DIR.match(p.name)) and p.is_dir()]
    return [p for _, p in sorted(found)]


def resolve_resume(resume: Optional[str], output_dir) -> Optional[Path]:
    """'latest' -> newest complete checkpoint (None if there is none yet); a path -> that path."""
    if resume is None:
        return None
    if resume == "latest":
        checkpoints = list_checkpoints(output_dir)
        if not checkpoints:
            logger.warning("resume_from_checkpoint=latest: no checkpoint in %s, starting fresh", output_dir)
            return None
        return checkpoints[-1]
    path = Path(resume)
    if not (path / "custom_checkpoint_1.pkl").exists():
        raise ValueError(f"resume_from_checkpoint={resume!r} is not a complete checkpoint directory")
    return path


def save_checkpoint(accelerator, state: TrainerState, output_dir, keep: int, write_config) -> Path:
    """Save to a temporary directory, rename it into place, delete the oldest beyond `keep`."""
    root = checkpoint_root(output_dir)
    final = root / f"step_{state.step:08d}"
    tmp = root / f".tmp-{final.name}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        write_config(tmp / "train_config.yaml")
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        for old in list_checkpoints(output_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
        logger.info("Saved checkpoint %s", final)
    accelerator.wait_for_everyone()
    return final


def union_fired(accelerator, fired: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """Elements that fired on any process."""
    if fired is None or accelerator.num_processes == 1:
        return fired
    return accelerator.reduce(fired.float(), reduction="sum") > 0
