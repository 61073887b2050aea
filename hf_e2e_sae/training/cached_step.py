"""Local training from an activation cache, the trainer's side: the cached micro-batch loader and loss.

The cache itself (building, checking, reading) is `hf_e2e_sae.data.activation_cache`; this module feeds it to the
trainer: `cached_train_loader` replaces the token loader, `cached_micro_batch_loss` replaces the fast step.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Iterator

import torch

from ..config.arguments import ConfigError
from ..data.activation_cache import (
    ActivationCache, CachedMicroBatches, only_item, build_cache, cache_identity, check_cache, sample_chunks,
)
from .loss_terms import add_loss_terms
from .losses import compute_losses

logger = logging.getLogger(__name__)


def _token_batches(train_ds, batch_size: int) -> Iterator[torch.Tensor]:
    from ..data.pipeline import create_dataloader

    for batch in create_dataloader(train_ds, batch_size):
        yield batch["input_ids"]


def cached_train_loader(run, train_ds) -> torch.utils.data.DataLoader:
    """The run's micro-batches from `config.activation_cache`, built first when missing; prepared by Accelerate.

    Builds on the main process (the others wait), then every process checks the cache, looks up the chunks of the
    samples it has not trained on yet (`run.state.samples` on resume) and reads its share of the micro-batches,
    sharded as the token loader is (micro-batch m goes to process m % num_processes).
    """
    from ..data.pipeline import skip_samples

    config, acc = run.config, run.accelerator
    raw, path = acc.unwrap_model(run.model), Path(config.activation_cache)
    if acc.is_main_process and not path.exists():
        logger.info("Building the activation cache %s (one pass of the base model over %d samples)", path,
                    config.total_samples)
        build_cache(raw, _token_batches(train_ds, config.batch_size), path, cache_identity(config, raw.config),
                    raw.sites, acc.autocast, total=config.total_samples)
    acc.wait_for_everyone()
    try:
        check_cache(path, config, raw.config)
    except ValueError as e:
        raise ConfigError(f"activation_cache: {e}") from None
    cache = ActivationCache(path)
    chunks = sample_chunks(cache, skip_samples(train_ds, run.state.samples))
    loader = torch.utils.data.DataLoader(CachedMicroBatches(cache, chunks, config.batch_size, raw.sites), batch_size=1,
                                         shuffle=False, collate_fn=only_item)
    return acc.prepare(loader)


def cached_micro_batch_loss(run, batch: dict) -> tuple:
    """`(total, terms, sae_outputs)` of one cached micro-batch `{site: (batch, seq, d_in)}`: the SAEs (through the
    prepared model, so data-parallel gradients are reduced), the local loss and the registered terms."""
    raw = run.accelerator.unwrap_model(run.model)
    with raw.sparse_records():  # TopK codes as values and indices, as in the live fast step
        out = run.model(site_inputs=batch)
    total, terms = compute_losses(run.config.loss, out.sae_outputs, run.d_in)
    total, terms = add_loss_terms(run.loss_terms, total, terms, out.sae_outputs,
                                  {site: raw.sae(site) for site in out.sae_outputs}, run.d_in)
    return total, terms, out.sae_outputs
