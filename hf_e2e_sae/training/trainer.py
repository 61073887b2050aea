"""The e2e trainer: Accelerate-powered, one process or many.

    accelerate launch examples/train.py examples/configs/tiny-e2e.yaml --loss.sparsity.coeff 3
    hf-e2e-sae train examples/configs/tiny-e2e.yaml

Per micro-batch (batch, seq):
    e2e / e2e+ds: clean pass under no_grad with SAEs disabled -> target logits (+ downstream acts)
    SAE pass -> logits, latents, reconstructions -> compute_losses -> backward (SAE params only)
    local: the SAE pass stops after the last SAE site; no clean pass.
"""
from __future__ import annotations

import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Optional

import torch
from accelerate import Accelerator, DistributedDataParallelKwargs, PartialState
from accelerate.utils import GradientAccumulationPlugin, parse_flag_from_env, set_seed
from tqdm.auto import tqdm
from transformers import AutoModelForCausalLM, AutoTokenizer

from .checkpointing import TrainerState, keep_only_sae_weights, resolve_resume, save_checkpoint, union_fired
from .arguments import save_yaml, to_dict
from ..sae.config import SAEConfig
from ..sae.hub_interface import hub_function
from .data import build_datasets, create_dataloader, skip_samples
from ..evaluation.metrics import evaluate
from .losses import compute_losses, default_downstream_sites
from .architecture_config import activation_options
from .loss_terms import add_loss_terms, build_loss_terms
from ..sae.model import SparseAutoencoder
from ..patching.base_models import ASSETS_DIR, portable_base_name, resolve_base_model
from ..patching.patched_model import SAEPatchedModel
from ..patching.architectures import check_site, hidden_size, num_blocks
from .config import TrainConfig

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


def build_patched_model(config: TrainConfig) -> tuple:
    """Load the frozen base model and tokenizer; create seeded SAEs at the configured sites."""
    base_cfg = config.base_model
    where = resolve_base_model(base_cfg.name_or_path)
    tokenizer = AutoTokenizer.from_pretrained(where, revision=base_cfg.revision)
    base = AutoModelForCausalLM.from_pretrained(where, revision=base_cfg.revision, dtype=getattr(torch, base_cfg.dtype))
    for site in config.sites:
        check_site(base.config, site)  # a clear error before any SAE is built
    for site in config.loss.downstream.sites:
        check_site(base.config, site)
    saes = {}
    for i, site in enumerate(config.sites):
        set_seed(config.seed + i)  # identical on every process
        saes[site] = SparseAutoencoder(SAEConfig(
            d_in=hidden_size(base.config), dict_size=config.dict_size, dict_size_ratio=config.dict_size_ratio,
            activation=config.activation, site=site, base_model_name_or_path=portable_base_name(base_cfg.name_or_path),
            base_model_revision=base_cfg.revision, init_decoder_orthogonal=config.init_decoder_orthogonal,
            output_site=config.output_sites[i] if config.output_sites else None, **activation_options(config)))
    return SAEPatchedModel(base, saes), tokenizer


class _Run:
    """Everything one training run holds; built by `setup_run`, advanced by `train_step`."""

    def __init__(self, config: TrainConfig, accelerator: Accelerator):
        self.config = config
        self.accelerator = accelerator
        self.model, self.tokenizer = build_patched_model(config)
        self.d_in = hidden_size(self.model.config)
        loss = config.loss
        self.downstream_sites = (loss.downstream.sites or default_downstream_sites(
            self.model.sites, num_blocks(self.model.config))) if loss.downstream.coeff > 0 else []
        self.state = TrainerState(self.model.sites)
        self.loss_terms = build_loss_terms(loss)  # AuxK, L0 straight-through, ... (training/loss_terms.py)
        self.start_time = time.time()


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
    if config.effective_batch_size % (config.batch_size * world):
        raise ValueError(f"effective_batch_size={config.effective_batch_size} is not a multiple of "
                         f"batch_size={config.batch_size} x {world} processes")
    # sync_with_dataloader=False: `_micro_batch_groups` reads a whole group before training on it, so the
    # prepared loader already reports end_of_dataloader during the last group; with the default (True) every
    # micro-batch of that group became its own optimizer step. Groups are always full, so counting suffices.
    accumulation = GradientAccumulationPlugin(
        num_steps=config.effective_batch_size // (config.batch_size * world), sync_with_dataloader=False)
    accelerator = Accelerator(
        cpu=cpu,
        gradient_accumulation_plugin=accumulation,
        mixed_precision=config.mixed_precision,
        log_with=None if config.tracker == "none" else config.tracker,
        project_dir=config.output_dir,
        kwargs_handlers=[DistributedDataParallelKwargs(broadcast_buffers=False)],
    )
    if config.push_to_hub:
        hub_function("require_token")(None)  # fail now, not after hours of training
    run = _Run(config, accelerator)
    run.optimizer = torch.optim.Adam(run.model.sae_parameters(), lr=config.lr)
    run.scheduler = torch.optim.lr_scheduler.LambdaLR(run.optimizer, lr_lambda(config))
    train_ds, eval_ds = build_datasets(config.data, run.tokenizer, config.total_samples, config.seed)
    run.sae_parameters = list(run.model.sae_parameters())
    run.model, run.optimizer = accelerator.prepare(run.model, run.optimizer)
    # The scheduler counts our optimizer steps (not prepared: accelerate would step it per process).
    accelerator.register_for_checkpointing(run.scheduler, run.state)
    accelerator.register_save_state_pre_hook(keep_only_sae_weights)
    resume = resolve_resume(config.resume_from_checkpoint, config.output_dir)
    if resume is not None:
        accelerator.load_state(str(resume), strict=False)
        logger.info("Resumed from %s at step %d", resume, run.state.step)
    run.train_loader = accelerator.prepare(create_dataloader(skip_samples(train_ds, run.state.samples), config.batch_size))
    run.eval_loader = create_dataloader(eval_ds, config.eval_batch_size or config.batch_size)
    if config.tracker != "none":
        accelerator.init_trackers("hf_e2e_sae", config=_flat(to_dict(config)))
    return run


def _flat(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value if isinstance(value, (int, float, str, bool)) else str(value)
    return out


def micro_batch_loss(run: _Run, input_ids: torch.Tensor) -> tuple:
    """Loss of one micro-batch (batch, seq) and its terms; e2e runs need a clean pass first."""
    loss_config = run.config.loss
    raw = run.accelerator.unwrap_model(run.model)
    orig_logits = orig_downstream = None
    if loss_config.needs_logits:
        with torch.no_grad(), raw.saes_disabled():
            clean = raw(input_ids, cache_sites=run.downstream_sites)
        orig_logits, orig_downstream = clean.logits, clean.cached_activations
    out = run.model(input_ids=input_ids, cache_sites=run.downstream_sites, stop_early=not loss_config.needs_logits)
    total, terms = compute_losses(loss_config, out.sae_outputs, run.d_in, out.logits, orig_logits,
                                  out.cached_activations, orig_downstream)
    total, terms = add_loss_terms(run.loss_terms, total, terms, out.sae_outputs,
                                  {site: raw.sae(site) for site in out.sae_outputs}, run.d_in)
    return total, terms, out.sae_outputs


def _track_alive(run: _Run, sae_outputs: dict, n_tokens: int) -> dict:
    """OR the fired elements into the current window; report and reset when it is full."""
    state, logs = run.state, {}
    for site, out in sae_outputs.items():
        fired = (out.latents.detach() > 0).reshape(-1, out.latents.shape[-1]).any(0)
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
    acc, config = run.accelerator, run.config
    sums: dict = {}  # device tensors: one host sync per step, not one per term and micro-batch
    logs: dict = {}
    for batch in batches:
        input_ids = batch["input_ids"]
        with acc.accumulate(run.model), acc.autocast():
            total, terms, sae_outputs = micro_batch_loss(run, input_ids)
            acc.backward(total)
            if acc.sync_gradients and config.max_grad_norm is not None:
                sums["grad_norm"] = acc.clip_grad_norm_(run.sae_parameters, config.max_grad_norm)
            run.optimizer.step()
            run.optimizer.zero_grad()
        step_terms = {"loss": total.detach(), **terms}
        step_terms.update({f"l0/{site}": (out.latents.detach() > 0).sum(-1).float().mean()
                           for site, out in sae_outputs.items()})
        for name, value in step_terms.items():
            sums[name] = sums.get(name, 0.0) + value.float() / len(batches)
        logs.update(_track_alive(run, sae_outputs, input_ids.numel()))
    run.scheduler.step()
    run.state.step += 1
    run.state.samples += config.effective_batch_size
    values = torch.stack([torch.as_tensor(v, dtype=torch.float32) for v in sums.values()]).tolist()
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
    """Held-out metrics on the main process (others wait)."""
    metrics = {}
    if run.accelerator.is_main_process:
        metrics = evaluate(run.accelerator.unwrap_model(run.model), run.eval_loader, progress=True)
    run.accelerator.wait_for_everyone()
    return metrics


def train(config: TrainConfig) -> dict:
    """Train SAEs as `config` says; returns the final held-out metrics ({} if stopped early)."""
    run = setup_run(config)
    acc, state = run.accelerator, run.state
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
            save_checkpoint(acc, state, config.output_dir, config.keep_checkpoints, lambda p: save_yaml(config, p))
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
        run.accelerator.unwrap_model(run.model).save_pretrained(final)
        (final / "eval_metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        save_yaml(run.config, final / "train_config.yaml")
        summary = {"train_samples": run.state.samples, "train_tokens": run.state.samples * run.config.data.context_length,
                   "optimizer_steps": run.state.step, "seconds": round(time.time() - run.start_time, 1),
                   "num_processes": run.accelerator.num_processes}
        (final / "train_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        if run.config.push_to_hub:
            hub_function("push_run_to_hub")(final, run.config.hub_repo_id, private=run.config.hub_private)
    run.accelerator.wait_for_everyone()
    return final


def config_from_argv(argv: list, prog: str = "hf-e2e-sae train") -> Optional[TrainConfig]:
    """`[CONFIG.yaml] [overrides]` -> TrainConfig; prints the field help and returns None for --help.

    Without CONFIG, the offline tiny-Shakespeare e2e run (examples/configs/tiny-e2e.yaml) is used.
    """
    import sys

    from .arguments import format_help, is_help_requested
    from .config import load_train_config

    argv = list(argv)
    if is_help_requested(argv):
        sys.stdout.write(format_help(TrainConfig, f"{prog} [CONFIG.yaml]") + "\n")
        return None
    path = argv.pop(0) if argv and not argv[0].startswith("-") and "=" not in argv[0] else default_config_path()
    return load_train_config(path, argv)


def final_report(config: TrainConfig, metrics: dict) -> str:
    """Where the outputs went and the final held-out metrics, for the terminal."""
    lines = [f"\nSAEs, metrics and config written to {(Path(config.output_dir) / 'final').resolve()}",
             "Final held-out metrics:"]
    for key, value in metrics.items():
        lines.append(f"  {key:<45} {value:.6g}" if isinstance(value, float) else f"  {key:<45} {value}")
    return "\n".join(lines) + "\n"


def train_main(argv: Optional[list] = None) -> int:
    """`hf-e2e-sae train [CONFIG.yaml] [overrides]`."""
    import sys

    from .arguments import ConfigError

    try:
        config = config_from_argv(sys.argv[1:] if argv is None else argv)
    except (ConfigError, FileNotFoundError) as error:
        sys.stderr.write(f"hf-e2e-sae train: {error}\n")
        return 2
    if config is None:
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    metrics = train(config)
    if metrics and PartialState().is_main_process:
        sys.stdout.write(final_report(config, metrics))
    return 0


def default_config_path() -> Path:
    """The no-argument run: the offline demo config that ships in the package (= examples/configs/tiny-e2e.yaml)."""
    return ASSETS_DIR / "tiny-e2e.yaml"
