"""Resumable checkpoints for the trainer: atomic, fsynced, rotated, SAE weights only, no pickle.

    output_dir/checkpoints/step_00000120/   see `checkpoint_files` for what it holds
    output_dir/checkpoints/.tmp-step_.../   written first, fsynced, renamed when complete

A run killed at any moment leaves every `step_*` directory complete: only finished ones are renamed, and
`.tmp-*` leftovers are deleted when the next run starts. `resume_from_checkpoint: latest` takes the newest
complete checkpoint (warning about any newer incomplete one); an explicit path that is incomplete is an error.
"""
from __future__ import annotations

import logging
import re
import shutil
from pathlib import Path
from typing import Callable, Optional

import torch

from . import checkpoint_files as files
from ..sae.finite import check_finite_weights
from .checkpoint_files import CheckpointError, checkpoint_problem
from .output_dir import TMP_PREFIX, disk_error, publish_dir
from .redaction import config_yaml

logger = logging.getLogger(__name__)

_STEP_DIR = re.compile(r"^step_(\d+)$")
_SAE_KEY = re.compile(r"^(module\.)?saes\.")

__all__ = ["CheckpointError", "TrainerState", "list_checkpoints", "load_checkpoint", "resolve_resume",
           "save_checkpoint", "union_fired"]


class TrainerState:
    """Progress counters and the alive-feature window, saved with every checkpoint."""

    def __init__(self, sites: list):
        self.step = 0
        self.samples = 0
        self.window_tokens = 0
        self.fired = {site: None for site in sites}  # bool (dict_size,) per site, this window

    def counters(self) -> dict:
        return {"step": self.step, "samples": self.samples, "window_tokens": self.window_tokens}


def sae_state(model) -> dict:
    """{"saes.<site>.<param>": tensor} of an (unwrapped) SAEPatchedModel: never the frozen base weights."""
    return {k: v.detach() for k, v in model.state_dict().items() if _SAE_KEY.match(k)}


def checkpoint_root(output_dir) -> Path:
    return Path(output_dir) / "checkpoints"


def list_checkpoints(output_dir) -> list:
    """Checkpoint folders (renamed into place, so finished writing), oldest first."""
    root = checkpoint_root(output_dir)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _STEP_DIR.match(p.name)) and p.is_dir()]
    return [p for _, p in sorted(found)]


def resolve_resume(resume: Optional[str], output_dir, expected: Optional[dict] = None,
                   check_config: Optional[Callable] = None) -> Optional[Path]:
    """'latest' -> the newest complete checkpoint (None if there is none yet); a path -> that path if complete.

    Args:
        expected: {tensor name: shape} the checkpoint's model.safetensors must hold (None: not checked).
        check_config: called with a checkpoint whose files are complete, before its tensors are checked; raises
            when the run's config may not resume it (`resume_compat.check_resume_compatible`).
    """
    if resume is None:
        return None
    if resume != "latest":
        problem = checkpoint_problem(Path(resume), expected, check_config)
        if problem:
            raise CheckpointError(f"resume_from_checkpoint={resume!r} is not a complete checkpoint: {problem}")
        return Path(resume)
    checkpoints = list_checkpoints(output_dir)
    if not checkpoints:
        logger.warning("resume_from_checkpoint=latest: no checkpoint in %s, starting fresh", output_dir)
        return None
    skipped = []
    for checkpoint in reversed(checkpoints):
        problem = checkpoint_problem(checkpoint, expected, check_config)
        if problem is None:
            if skipped:
                logger.warning("resume_from_checkpoint=latest: skipping incomplete %s; resuming from %s instead",
                               "; ".join(skipped), checkpoint.name)
            return checkpoint
        skipped.append(f"{checkpoint.name} ({problem})")
    raise CheckpointError(f"resume_from_checkpoint=latest: no complete checkpoint in {checkpoint_root(output_dir)}: "
                          + "; ".join(skipped))


def save_checkpoint(run) -> Path:
    """Save to a temporary directory, fsync, rename it into place, delete the oldest beyond keep_checkpoints."""
    acc, config, state = run.accelerator, run.config, run.state
    root = checkpoint_root(config.output_dir)
    final = root / f"step_{state.step:08d}"
    tmp = root / f"{TMP_PREFIX}{final.name}"
    saes = sae_state(acc.unwrap_model(run.model))
    check_finite_weights(saes, str(final))  # never checkpoint a diverged SAE
    if acc.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    acc.wait_for_everyone()
    try:
        files.write_rng_state(tmp, acc.process_index)
        if (data_state := getattr(getattr(run, "train_loader", None), "data_state", None)) is not None:  # streamed
            files.write_data_state(tmp, acc.process_index, data_state(state.samples))
        if acc.is_main_process:
            window = {site: fired for site, fired in state.fired.items() if fired is not None}
            files.write_main_files(tmp, {k: v.contiguous().cpu() for k, v in saes.items()}, run.optimizer,
                                   run.scheduler, acc.scaler, window, config_yaml(config), state.counters())
        acc.wait_for_everyone()
        if acc.is_main_process:
            files.write_state_file(tmp, state.counters())
            publish_dir(tmp, final)
    except (OSError, RuntimeError) as e:
        shutil.rmtree(tmp, ignore_errors=True)  # earlier checkpoints stay untouched
        mapped = disk_error(e, tmp)
        raise mapped if mapped is e else mapped from e
    if acc.is_main_process:
        for old in list_checkpoints(config.output_dir)[:-config.keep_checkpoints]:
            shutil.rmtree(old, ignore_errors=True)
        logger.info("Saved checkpoint %s", final)
    acc.wait_for_everyone()
    return final


def load_checkpoint(run, folder: Path) -> None:
    """Restore SAE weights, optimizer, schedule, scaler, progress and RNG from a complete checkpoint; the saved
    streamed-data position, if any, goes to `run.data_state`."""
    acc, state = run.accelerator, run.state
    counters = files.read_state(folder)
    raw = acc.unwrap_model(run.model)
    saes = files.read_saes(folder)
    raw.saes.load_state_dict({k[len("saes."):]: v for k, v in saes.items()}, strict=True)
    run.optimizer.load_state_dict(files.read_optimizer(folder))
    run.scheduler.load_state_dict(files.read_json(folder, files.SCHEDULER_FILE))
    if acc.scaler is not None:
        acc.scaler.load_state_dict(files.read_json(folder, files.SCALER_FILE))
    state.step, state.samples, state.window_tokens = counters["step"], counters["samples"], counters["window_tokens"]
    run.data_state = files.read_data_state(folder, acc.process_index)  # for the loader built after this
    device = next(raw.saes.parameters()).device
    window = files.read_window(folder)
    state.fired = {site: (window[site].to(device) if site in window else None) for site in state.fired}
    if not files.restore_rng_state(folder, acc.process_index):
        logger.warning("%s has no RNG state for process %d; continuing with the current one", folder,
                       acc.process_index)


def union_fired(accelerator, fired: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """Elements that fired on any process."""
    if fired is None or accelerator.num_processes == 1:
        return fired
    return accelerator.reduce(fired.float(), reduction="sum") > 0
