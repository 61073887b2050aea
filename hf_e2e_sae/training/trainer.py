"""The e2e trainer: Accelerate-powered, one process or many.

    accelerate launch examples/train.py examples/configs/tiny-e2e.yaml --loss.sparsity.coeff 3
    hf-e2e-sae train examples/configs/tiny-e2e.yaml

Per micro-batch (batch, seq), the fast step of `training.step`:
    e2e / e2e+ds: clean pass under no_grad with SAEs disabled, recording the output of the blocks before the
        first SAE and the final hidden states -> SAE pass replaying those blocks -> KL fused with the
        unembedding (+ downstream MSE) + the registered extra terms -> backward (SAE params only)
    local: the SAE pass stops after the last SAE site; no clean pass.
    local with `activation_cache`: the SAE reads the base model's cached activations (`training.activation_cache`).
    `lora:` runs: LoRA adapters on the base around the SAEs, the plain step of `training.lora` (clean pass with the
        SAEs and the adapters off); final/ holds the adapter in lora/ beside the SAEs.
"""
from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from pathlib import Path

import torch
from accelerate import Accelerator, DistributedDataParallelKwargs, PartialState
from accelerate.utils import GradientAccumulationPlugin, parse_flag_from_env
from tqdm.auto import tqdm

from ..evaluation.metrics import evaluate
from ..patching.architectures import hidden_size, num_blocks
from ..patching.base_models import resolve_base_model
from ..sae.hub_interface import hub_function
from ..sae.sparse_code import firing
from .cached_step import cached_micro_batch_loss, cached_train_loader
from ..config.arguments import ConfigError, to_dict
from ..runs.checkpointing import TrainerState, load_checkpoint, resolve_resume, sae_state, save_checkpoint, union_fired
from .config import TrainConfig
from ..data.pipeline import build_datasets, create_dataloader
from ..data.train_loader import train_loader
from .lora import lora_micro_batch_loss, setup_lora
from .loss_terms import add_loss_terms, build_loss_terms
from .losses import default_downstream_sites
from ..runs.output_dir import prepare_output_dir, staged_dir
from .preflight import preflight
from ..runs.redaction import config_yaml, redact_secrets, redacted_argv
from ..runs.resume_compat import check_resume_compatible
from ..runs.safety import check_step_finite, json_text
from .sharding import shard_base_model
from .model_setup import build_patched_model, build_saes, load_base_model  # noqa: F401  (re-exported)
from .step import micro_batch_loss as fast_micro_batch_loss

logger = logging.getLogger(__name__)


def lr_lambda(config: TrainConfig):
    """Linear warmup, then cosine decay from 1 to min_lr_factor, in optimizer steps."""
    warmup = config.warmup_samples // config.effective_batch_size
    total = config.total_steps

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return config.min_lr_factor + (1 - config.min_lr_factor) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


class _Run:
    """Everything one training run holds; built by `setup_run`, advanced by `train_step`."""

    def __init__(self, config: TrainConfig, accelerator: Accelerator, model=None):
        self.config = config
        self.accelerator = accelerator
        self.model, self.tokenizer = (model, None) if model is not None else build_patched_model(config)
        self.d_in = hidden_size(self.model.config)
        loss = config.loss
        self.downstream_sites = (loss.downstream.sites or default_downstream_sites(
            self.model.sites, num_blocks(self.model.config))) if loss.downstream.coeff > 0 else []
        self.state = TrainerState(self.model.sites)
        self.data_state = None  # a streamed run's saved data position (runs/checkpointing.load_checkpoint)
        self.loss_terms = build_loss_terms(loss)  # AuxK, L0 straight-through, ... (training/loss_terms.py)
        self.start_time = time.time()


def make_optimizer(parameters, lr: float) -> torch.optim.Optimizer:
    """Adam (default betas, no weight decay), fused into one kernel where the device supports it: the default
    per-parameter loop cost 0.29 s/step against 0.05 s fused for a 60x SAE at d_model 512 on 2 CPU cores."""
    parameters = list(parameters)
    try:
        return torch.optim.Adam(parameters, lr=lr, fused=True)
    except (RuntimeError, ValueError):  # a device or dtype without a fused kernel
        return torch.optim.Adam(parameters, lr=lr)


def _use_cpu_backend() -> bool:
    """Whether Accelerate must be told `cpu=True` for this process.

    A distributed launch (`accelerate launch --multi_gpu`, `torchrun`: WORLD_SIZE > 1) on a machine without
    GPUs otherwise gives every process `DistributedType.NO` (accelerate 1.x only picks gloo/MULTI_CPU when
    asked for the CPU): N independent single-process runs that each train on all data and race on output_dir.
    """
    if parse_flag_from_env("ACCELERATE_USE_CPU"):
        return True
    has_accelerator = torch.accelerator.is_available() if hasattr(torch, "accelerator") else torch.cuda.is_available()
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and not has_accelerator


def _check_tracker(tracker: str) -> None:
    """Accelerate silently drops a tracker whose package is missing; say so instead."""
    from accelerate.utils import is_tensorboard_available, is_wandb_available

    available = {"none": True, "tensorboard": is_tensorboard_available(), "wandb": is_wandb_available()}
    if not available[tracker]:
        raise ValueError(f"tracker={tracker!r} needs the {tracker} package: pip install {tracker}")


def setup_run(config: TrainConfig) -> _Run:
    """Accelerator, model, data, optimizer and schedule; restores a checkpoint when asked."""
    _check_tracker(config.tracker)
    cpu = _use_cpu_backend()
    world = PartialState(cpu=cpu).num_processes
    preflight(config, world)  # base model config, sites, data files, batch sizes: before any weights load
    # Before the model loads: a usable output_dir, locked for this run (see runs/output_dir.py).
    lock = prepare_output_dir(config.output_dir, config.resume_from_checkpoint, config.overwrite_output_dir) \
        if PartialState().is_main_process else None
    try:
        return _setup_locked_run(config, cpu, world, lock)
    except BaseException:
        if lock is not None:
            lock.release()  # a run that failed to start leaves output_dir free at once
        raise


def _setup_locked_run(config: TrainConfig, cpu: bool, world: int, lock) -> _Run:
    """`setup_run` once output_dir is checked and locked."""
    accelerator = make_accelerator(config, cpu, world)
    if config.push_to_hub:
        hub_function("require_token")(None)  # fail now, not after hours of training
    run = _Run(config, accelerator)
    if config.base_model.shard:  # before prepare: DDP then averages the SAEs' gradients only (training/sharding.py)
        shard_base_model(run.model, accelerator.device, resolve_base_model(config.base_model.name_or_path),
                         config.base_model.revision)
    run.output_dir_lock = lock
    # LoRA runs (training/lora.py) optimise the adapters (+ the SAEs with lora.train_sae); others the SAEs.
    run.sae_parameters = setup_lora(run.model, config.lora) if config.lora else list(run.model.sae_parameters())
    run.optimizer = make_optimizer(run.sae_parameters, config.lr)
    run.scheduler = torch.optim.lr_scheduler.LambdaLR(run.optimizer, lr_lambda(config))
    try:
        train_ds, eval_ds = build_datasets(config.data, run.tokenizer, config.total_samples, config.seed)
    except ValueError as e:  # too little data, ... (what preflight could not know): one line, exit 2
        raise ConfigError(f"data: {' '.join(str(e).split())}") from None
    run.model, run.optimizer = accelerator.prepare(run.model, run.optimizer)
    # The scheduler counts our optimizer steps (not prepared: accelerate would step it per process).
    expected = {k: v.shape for k, v in sae_state(accelerator.unwrap_model(run.model)).items()}
    resume = resolve_resume(config.resume_from_checkpoint, config.output_dir, expected,
                            check_config=lambda checkpoint: check_resume_compatible(checkpoint, config))
    if resume is not None:
        load_checkpoint(run, resume)
        logger.info("Resumed from %s at step %d", resume, run.state.step)
    run.train_loader = cached_train_loader(run, train_ds) if config.activation_cache else train_loader(
        train_ds, config.batch_size, config.data.num_workers, accelerator, run.state.samples, run.data_state)
    run.eval_loader = create_dataloader(eval_ds, config.eval_batch_size or config.batch_size)
    if config.tracker != "none":
        with redacted_argv():  # wandb records sys.argv: overrides may carry tokens
            accelerator.init_trackers("hf_e2e_sae", config=_flat(redact_secrets(to_dict(config))))
    return run


def make_accelerator(config: TrainConfig, cpu: bool, world: int) -> Accelerator:
    """The run's Accelerator: gradient accumulation, mixed precision, tracker, DDP settings."""
    # sync_with_dataloader=False: `_micro_batch_groups` reads a whole group before training on it, so the
    # prepared loader already reports end_of_dataloader during the last group; with the default (True) every
    # micro-batch of that group became its own optimizer step. Groups are always full, so counting suffices.
    accumulation = GradientAccumulationPlugin(
        num_steps=config.effective_batch_size // (config.batch_size * world), sync_with_dataloader=False)
    return Accelerator(
        cpu=cpu,
        gradient_accumulation_plugin=accumulation,
        mixed_precision=config.mixed_precision,
        log_with=None if config.tracker == "none" else config.tracker,
        project_dir=config.output_dir,
        kwargs_handlers=[DistributedDataParallelKwargs(broadcast_buffers=False)],
    )


def _flat(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value if isinstance(value, (int, float, str, bool)) else str(value)
    return out


def micro_batch_loss(run: _Run, input_ids: torch.Tensor) -> tuple:
    """Loss of one micro-batch (batch, seq), its terms and the SAE outputs (the fast path, `training.step`)."""
    raw = run.accelerator.unwrap_model(run.model)
    if run.config.lora is not None:  # the plain path with the adapter off in the clean pass (training/lora.py)
        total, terms, sae_outputs = lora_micro_batch_loss(run.model, raw, input_ids, run.config, run.downstream_sites,
                                                          run.d_in)
        if not run.config.lora.train_sae:
            return total, terms, sae_outputs
    else:
        total, terms, sae_outputs = fast_micro_batch_loss(run.model, raw, input_ids, run.config.loss,
                                                          run.downstream_sites, run.d_in,
                                                          recompute_suffix=run.config.recompute_suffix)
    total, terms = add_loss_terms(run.loss_terms, total, terms, sae_outputs,  # AuxK, the L0 estimator, ...
                                  {site: raw.sae(site) for site in sae_outputs}, run.d_in)
    return total, terms, sae_outputs


def _track_alive(run: _Run, fired_now: dict, n_tokens: int) -> dict:
    """OR the fired elements (`fired_now`: {site: (dict_size,) bool}) into the current window; report and reset
    when it is full."""
    state, logs = run.state, {}
    for site, fired in fired_now.items():
        state.fired[site] = fired if state.fired[site] is None else state.fired[site].to(fired.device) | fired
    state.window_tokens += n_tokens * run.accelerator.num_processes
    if state.window_tokens >= run.config.alive_window_tokens:
        for site in state.fired:
            logs[f"train/alive/{site}"] = int(union_fired(run.accelerator, state.fired[site]).sum())
            state.fired[site] = None
        state.window_tokens = 0
    return logs


def train_step(run: _Run, batches: list) -> dict:
    """One optimizer step over this process's micro-batches; returns step metrics."""
    sums: dict = {}  # device tensors: one host sync per step, not one per term and micro-batch
    logs: dict = {}
    for batch in batches:  # a cached batch holds activations, not token ids
        train_micro_batch(run, lambda: cached_micro_batch_loss(run, batch) if run.config.activation_cache
                          else micro_batch_loss(run, batch["input_ids"]), sums, logs, len(batches))
    return finish_step(run, sums, logs)


def train_micro_batch(run: _Run, loss_fn, sums: dict, logs: dict, n_micro: int, accumulate: bool = True) -> None:
    """Forward (`loss_fn() -> (total, terms, sae_outputs)`), backward and, at the end of an accumulation group, the
    clipped optimizer step of one micro-batch; its metrics are added to `sums` (mean over `n_micro`) and `logs`.
    `accumulate=False`: the caller holds `accelerator.accumulate(...)` (a sweep: one for all its models)."""
    acc, config = run.accelerator, run.config
    with acc.accumulate(run.model) if accumulate else contextlib.nullcontext(), acc.autocast():
        total, terms, sae_outputs = loss_fn()
        acc.backward(total)
        if acc.sync_gradients and config.max_grad_norm is not None:
            sums["grad_norm"] = acc.clip_grad_norm_(run.sae_parameters, config.max_grad_norm)
        run.optimizer.step()
        run.optimizer.zero_grad()
    raw = acc.unwrap_model(run.model)
    firings = {site: firing(out, raw.sae(site).config.dict_size) for site, out in sae_outputs.items()}
    step_terms = {"loss": total.detach(), **terms}
    step_terms.update({f"l0/{site}": l0.float().mean() for site, (l0, _) in firings.items()})
    for name, value in step_terms.items():
        sums[name] = sums.get(name, 0.0) + value.float() / n_micro
    n_tokens = next(iter(firings.values()))[0].numel()  # l0 has one entry per token
    logs.update(_track_alive(run, {site: fired for site, (_, fired) in firings.items()}, n_tokens))


def finish_step(run: _Run, sums: dict, logs: dict) -> dict:
    """Advance the schedule and counters after an optimizer step; stop on non-finite metrics; the step's logs."""
    run.scheduler.step()
    run.state.step += 1
    run.state.samples += run.config.effective_batch_size
    values = torch.stack([torch.as_tensor(v, dtype=torch.float32) for v in sums.values()]).tolist()
    check_step_finite(run.state.step, dict(zip(sums, values)), run.config.loss)  # host values: no extra sync
    logs.update({f"train/{k}": v for k, v in zip(sums, values)})
    logs["train/lr"] = run.scheduler.get_last_lr()[0]
    return logs


def _micro_batch_groups(run: _Run):
    """Group this process's micro-batches into optimizer steps."""
    group = []
    for batch in run.train_loader:
        group.append(batch)
        if len(group) == run.accelerator.gradient_accumulation_steps:
            yield group
            group = []


def run_evaluation(run: _Run) -> dict:
    """Held-out metrics on the main process (others wait; with a sharded base, all take part in every forward)."""
    metrics = {}
    if run.accelerator.is_main_process or run.config.base_model.shard:
        metrics = evaluate(run.accelerator.unwrap_model(run.model), run.eval_loader,
                           progress=run.accelerator.is_main_process)
    run.accelerator.wait_for_everyone()
    return metrics


def train(config: TrainConfig) -> dict:
    """Train SAEs as `config` says; returns the final held-out metrics ({} if stopped early)."""
    if config.sweep:
        raise ValueError("this config holds a sweep: train it with hf_e2e_sae.training.sweep.train_sweep "
                         "(or hf-e2e-sae train)")
    run = setup_run(config)
    try:
        return _train_loop(run)
    finally:
        if run.output_dir_lock is not None:
            run.output_dir_lock.release()


def _train_loop(run: _Run) -> dict:
    config, acc, state = run.config, run.accelerator, run.state
    bar = tqdm(total=config.total_steps, initial=state.step, desc="train", disable=not acc.is_local_main_process)
    tokens_per_step = config.effective_batch_size * config.data.context_length
    step_start = time.time()
    for batches in _micro_batch_groups(run):
        logs = train_step(run, batches)
        elapsed, step_start = time.time() - step_start, time.time()
        logs["train/tokens_per_s"] = tokens_per_step / max(elapsed, 1e-9)
        bar.update(1)
        bar.set_postfix(_postfix(logs))
        if state.step % config.log_every_steps == 0 or state.step == config.total_steps:
            acc.log(logs, step=state.step)
        if config.eval_every_samples and state.samples % config.eval_every_samples == 0 and state.step < config.total_steps:
            acc.log({f"eval/{k}": v for k, v in run_evaluation(run).items()}, step=state.step)
        done = state.step >= config.total_steps
        if config.save_every_samples and state.samples % config.save_every_samples == 0 and not done:
            save_checkpoint(run)
        if config.stop_after_steps is not None and state.step >= config.stop_after_steps and not done:
            logger.warning("Stopping after %d steps (stop_after_steps)", state.step)
            acc.end_training()
            return {}
        if done:
            break
    bar.close()
    metrics = run_evaluation(run)
    acc.log({f"eval/{k}": v for k, v in metrics.items()}, step=state.step)
    final_dir = write_final(run, metrics)
    acc.end_training()
    if acc.is_main_process:
        logger.info("Final SAEs and metrics written to %s", final_dir)
    return metrics


def _postfix(logs: dict) -> dict:
    post = {"loss": f"{logs['train/loss']:.4g}", "tok/s": f"{logs['train/tokens_per_s']:.0f}"}
    if "train/kl" in logs:
        post["kl"] = f"{logs['train/kl']:.4g}"
    l0 = [v for k, v in logs.items() if k.startswith("train/l0/")]
    post["L0"] = f"{sum(l0) / len(l0):.1f}"
    return post


def write_final(run: _Run, metrics: dict) -> Path:
    """output_dir/final/: the SAEs (save_pretrained), eval_metrics.json, train_config.yaml, train_summary.json."""
    final = Path(run.config.output_dir) / "final"
    if run.accelerator.is_main_process:
        with staged_dir(final) as stage:  # final/ appears complete or not at all
            run.accelerator.unwrap_model(run.model).save_pretrained(stage)  # refuses non-finite weights
            (stage / "eval_metrics.json").write_text(json_text(metrics))
            (stage / "train_config.yaml").write_text(config_yaml(run.config))  # credentials redacted
            summary = {"train_samples": run.state.samples, "train_tokens": run.state.samples * run.config.data.context_length,
                       "optimizer_steps": run.state.step, "seconds": round(time.time() - run.start_time, 1),
                       "num_processes": run.accelerator.num_processes}
            (stage / "train_summary.json").write_text(json_text(summary))
        if run.config.push_to_hub:
            hub_function("push_run_to_hub")(final, run.config.hub_repo_id, private=run.config.hub_private)
    run.accelerator.wait_for_everyone()
    return final
