"""Train a whole sweep in one run: N SAE variants over one data stream, one base model and one clean pass per batch.

    config = load_train_config("examples/configs/tiny-e2e.yaml", ["--sweep.loss.sparsity.coeff", "1,4"])
    metrics = train_sweep(config)          # {variant name: final held-out metrics}
    hf-e2e-sae train examples/configs/tiny-e2e.yaml --sweep.loss.sparsity.coeff 1,4

Each variant (`training.sweep_config.expand_sweep`) is a `trainer._Run` of its own: its SAEs (seeded as a separate
run with its config), optimizer, schedule, clipping, non-finite stop, alive-latent window, held-out metrics,
checkpoints (`output_dir/variants/<name>/checkpoints/`, all saved at the same step) and `final/`. They share the
Accelerator, the base model, the tokenizer, the data loaders and the per-batch base-model work
(`training.sweep_step`). At the end `output_dir` gets the sweep table and the Pareto plot
(`training.sweep_report`). A variant's weights equal those of a separate run with its config (tests/test_sweep.py).
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

import torch
from accelerate import PartialState
from tqdm.auto import tqdm

from ..config.arguments import ConfigError, to_dict
from ..data.pipeline import build_datasets, create_dataloader, skip_samples
from ..patching.patch_marker import wrappers_share
from ..patching.patched_model import SAEPatchedModel
from ..runs.checkpointing import list_checkpoints, load_checkpoint, resolve_resume, sae_state, save_checkpoint
from ..runs.output_dir import prepare_output_dir
from ..runs.redaction import redact_secrets
from ..runs.resume_compat import check_resume_compatible
from ..runs.safety import NonFiniteTrainingError
from .cached_step import cached_train_loader
from .config import TrainConfig
from .preflight import base_model_config, check_memory, preflight
from .sweep_config import expand_sweep
from .sweep_report import write_sweep_report
from .sweep_step import only_enabled, plan_shared, shared_pass, variant_loss
from .trainer import (
    _check_tracker, _flat, _micro_batch_groups, _Run, _use_cpu_backend, build_saes, finish_step, load_base_model,
    make_accelerator, make_optimizer, lr_lambda, run_evaluation, train, train_micro_batch, write_final)

logger = logging.getLogger(__name__)

__all__ = ["train_sweep", "train_any"]


class _Sweep:
    """The variants (`_Run`s, each with `.name` and `.raw`) and what they share."""

    def __init__(self, config: TrainConfig, variants: list, accelerator, locks: list):
        self.config, self.variants, self.accelerator, self.locks = config, variants, accelerator, locks
        self.plan = plan_shared(variants)

    def release(self) -> None:
        for lock in self.locks:
            lock.release()


def train_any(config: TrainConfig) -> dict:
    """`train_sweep` for a config with a sweep, else the plain `trainer.train`."""
    return train_sweep(config) if config.sweep else train(config)


def train_sweep(config: TrainConfig) -> dict:
    """Train every variant of `config.sweep`; returns {variant name: final held-out metrics} ({} if stopped early)."""
    if not config.sweep:
        raise ConfigError("train_sweep: the config has no sweep (set sweep: {field: [values]})")
    sweep = setup_sweep(config)
    try:
        return _sweep_loop(sweep)
    finally:
        sweep.release()


def setup_sweep(config: TrainConfig) -> _Sweep:
    """Accelerator, base model, one `_Run` per variant, data; restores the newest checkpoint all variants have."""
    _check_tracker(config.tracker)
    if config.resume_from_checkpoint not in (None, "latest"):
        raise ConfigError("resume_from_checkpoint: a sweep resumes with 'latest' (the newest step every variant "
                          f"saved), got {config.resume_from_checkpoint!r}")
    named = expand_sweep(config)
    cpu = _use_cpu_backend()
    world = PartialState(cpu=cpu).num_processes
    for _, variant in named:
        preflight(variant, world)
    check_memory(config, base_model_config(config), world)  # each variant fits alone; now all of them together
    locks = []
    try:
        if PartialState().is_main_process:
            locks.append(prepare_output_dir(config.output_dir, config.resume_from_checkpoint,
                                            config.overwrite_output_dir))
            for _, variant in named:
                locks.append(prepare_output_dir(variant.output_dir, config.resume_from_checkpoint,
                                                config.overwrite_output_dir))
        return _setup_variants(config, named, cpu, world, locks)
    except BaseException:
        for lock in locks:
            lock.release()
        raise


def _setup_variants(config: TrainConfig, named: list, cpu: bool, world: int, locks: list) -> _Sweep:
    accelerator = make_accelerator(config, cpu, world)
    base, tokenizer = load_base_model(config)
    runs = []
    for name, variant_config in named:
        with wrappers_share(base):  # explicit: the sweep enables one variant's SAEs at a time (only_enabled)
            model = SAEPatchedModel(base, build_saes(variant_config, base))
        run = _Run(variant_config, accelerator, model)
        run.name, run.tokenizer, run.output_dir_lock = name, tokenizer, None
        run.optimizer = make_optimizer(run.model.sae_parameters(), variant_config.lr)
        run.scheduler = torch.optim.lr_scheduler.LambdaLR(run.optimizer, lr_lambda(variant_config))
        run.sae_parameters = list(run.model.sae_parameters())
        run.model, run.optimizer = accelerator.prepare(run.model, run.optimizer)
        run.raw = accelerator.unwrap_model(run.model)
        runs.append(run)
    sweep = _Sweep(config, runs, accelerator, locks)
    _resume(sweep)
    first = runs[0]
    train_ds, eval_ds = build_datasets(config.data, tokenizer, first.config.total_samples, config.seed)
    if config.activation_cache:
        with only_enabled(runs):  # built from the base model alone: no variant's SAE may rewrite the site
            first.train_loader = cached_train_loader(first, train_ds)
    else:
        first.train_loader = accelerator.prepare(
            create_dataloader(skip_samples(train_ds, first.state.samples), config.batch_size))
    eval_loader = create_dataloader(eval_ds, config.eval_batch_size or config.batch_size)
    for run in runs:
        run.eval_loader = eval_loader
    if config.tracker != "none":
        accelerator.init_trackers("hf_e2e_sae", config=_flat(redact_secrets(to_dict(config))))
    return sweep


def _resume(sweep: _Sweep) -> None:
    """With resume 'latest': every variant continues from the newest step all of them checkpointed."""
    if sweep.config.resume_from_checkpoint is None:
        return
    steps = [{p.name: p for p in list_checkpoints(run.config.output_dir)} for run in sweep.variants]
    common = sorted(set.intersection(*(set(s) for s in steps)))
    if not common:
        logger.warning("resume_from_checkpoint=latest: no step checkpointed by every variant; starting fresh")
        return
    for run, found in zip(sweep.variants, steps):
        expected = {k: v.shape for k, v in sae_state(run.raw).items()}
        folder = resolve_resume(str(found[common[-1]]), run.config.output_dir, expected,
                                check_config=lambda checkpoint, c=run.config: check_resume_compatible(checkpoint, c))
        load_checkpoint(run, folder)
    logger.info("Resumed the sweep's %d variants from %s", len(sweep.variants), common[-1])


def sweep_step(sweep: _Sweep, batches: list) -> list:
    """One optimizer step of every variant over this process's micro-batches; returns each variant's logs."""
    acc, variants = sweep.accelerator, sweep.variants
    sums = [{} for _ in variants]
    logs = [{} for _ in variants]
    cached = sweep.config.activation_cache is not None
    for batch in batches:
        with acc.accumulate(*[run.model for run in variants]):  # one accumulation count for all variants
            with acc.autocast():
                shared = None if cached else shared_pass(sweep.plan, variants, batch["input_ids"])
            for run, run_sums, run_logs in zip(variants, sums, logs):
                train_micro_batch(run, lambda r=run: variant_loss(variants, r, batch, shared), run_sums, run_logs,
                                  len(batches), accumulate=False)
    out = []
    for run, run_sums, run_logs in zip(variants, sums, logs):
        try:
            out.append(finish_step(run, run_sums, run_logs))
        except NonFiniteTrainingError as error:
            raise NonFiniteTrainingError(f"sweep variant {run.name}: {error}") from None
    return out


def _sweep_loop(sweep: _Sweep) -> dict:
    config, acc, first = sweep.config, sweep.accelerator, sweep.variants[0]
    total_steps = first.config.total_steps
    bar = tqdm(total=total_steps, initial=first.state.step, desc=f"sweep x{len(sweep.variants)}",
               disable=not acc.is_local_main_process)
    step_start = time.time()
    for batches in _micro_batch_groups(first):
        logs = sweep_step(sweep, batches)
        elapsed, step_start = time.time() - step_start, time.time()
        step, samples = first.state.step, first.state.samples
        bar.update(1)
        bar.set_postfix({"loss": "/".join(f"{v['train/loss']:.3g}" for v in logs)})
        if step % config.log_every_steps == 0 or step == total_steps:
            tokens_per_s = config.effective_batch_size * config.data.context_length / max(elapsed, 1e-9)
            acc.log({"train/tokens_per_s": tokens_per_s, **{f"{run.name}/{k}": v for run, run_logs in
                                                            zip(sweep.variants, logs) for k, v in run_logs.items()}},
                    step=step)
        if config.eval_every_samples and samples % config.eval_every_samples == 0 and step < total_steps:
            acc.log({f"{run.name}/eval/{k}": v for run in sweep.variants for k, v in _evaluate(sweep, run).items()},
                    step=step)
        done = step >= total_steps
        if config.save_every_samples and samples % config.save_every_samples == 0 and not done:
            for run in sweep.variants:
                save_checkpoint(run)
        if config.stop_after_steps is not None and step >= config.stop_after_steps and not done:
            logger.warning("Stopping the sweep after %d steps (stop_after_steps)", step)
            acc.end_training()
            return {}
        if done:
            break
    bar.close()
    metrics = {}
    for run in sweep.variants:
        metrics[run.name] = _evaluate(sweep, run)
        acc.log({f"{run.name}/eval/{k}": v for k, v in metrics[run.name].items()}, step=run.state.step)
        write_final(run, metrics[run.name])
    if acc.is_main_process:
        table = write_sweep_report(config, [(run.name, run.config) for run in sweep.variants], metrics)
        logger.info("Sweep of %d variants done; table and Pareto plot in %s", len(sweep.variants), table.parent)
    acc.wait_for_everyone()
    acc.end_training()
    return metrics


def _evaluate(sweep: _Sweep, run) -> dict:
    """A variant's held-out metrics, with the other variants' SAEs (on the same base model) disabled."""
    with only_enabled(sweep.variants, run):
        return run_evaluation(run)


def sweep_outputs(config: TrainConfig) -> dict:
    """{variant name: its final/ folder} of a sweep config (whether trained yet or not)."""
    return {name: Path(variant.output_dir) / "final" for name, variant in expand_sweep(config)}
