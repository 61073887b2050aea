"""The trainer's token loader: this process's share of the training data, positioned after the samples consumed.

Map-style data: a DataLoader over the tail (`skip_samples`, an index selection), in this process (its rows are
tokenized and packed already: workers would only collate them, for the cost of forking), prepared by Accelerate (micro-batch m goes to process m % num_processes). Streamed data (`StreamedChunks`): this
process's shard (`StreamedChunks.shard`), tokenized by its own workers, restored from the position saved in the
checkpoint (`data_state`) or, for a checkpoint without one, by reading the consumed samples again; batches are moved
to the process's device here, since Accelerate must not shard or dispatch an already sharded stream.
"""
from __future__ import annotations

import logging
from typing import Any, Iterator, Optional

import torch

from .pipeline import create_dataloader, skip_samples
from .streaming import StreamedChunks

logger = logging.getLogger(__name__)


class StreamLoader:
    """Batches of a process's `StreamedChunks` share on `device`; `data_state(samples)` is its saved position."""

    def __init__(self, shard: StreamedChunks, batch_size: int, device: Any, num_processes: int):
        self.shard, self.device, self.num_processes = shard, device, num_processes
        self.loader = create_dataloader(shard, batch_size)  # no workers here: the shard's own workers tokenize

    def __iter__(self) -> Iterator[dict]:
        for batch in self.loader:
            yield {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}

    def data_state(self, samples: int) -> dict:
        """JSON-able position of this process after `samples` samples over all processes."""
        return self.shard.state_dict(samples // self.num_processes)


def train_loader(train_ds: Any, batch_size: int, num_workers: int, accelerator: Any, samples: int = 0,
                 data_state: Optional[dict] = None) -> Any:
    """The training loader of this process, after `samples` samples consumed over all processes.

    Args:
        train_ds: `build_datasets`'s training data.
        batch_size (`int`): micro-batch size per process.
        num_workers (`int`): worker processes that tokenize a stream (`data.num_workers`; unused for map-style data).
        accelerator (`accelerate.Accelerator`): gives the process index, count and device.
        samples (`int`): samples consumed so far over all processes (the checkpoint's `samples`).
        data_state (`dict`, *optional*): this process's saved stream position (`StreamLoader.data_state`).
    """
    if not isinstance(train_ds, StreamedChunks):
        loader = create_dataloader(skip_samples(train_ds, samples), batch_size)
        return accelerator.prepare(loader)
    world = accelerator.num_processes
    shard = train_ds.shard(accelerator.process_index, world).with_workers(num_workers)
    if data_state is not None:
        if data_state.get("samples") != samples // world:
            raise ValueError(f"the saved data position is after {data_state.get('samples')} samples of this "
                             f"process, the checkpoint after {samples // world}")
        shard.load_state_dict(data_state)
    elif samples:
        logger.warning("The checkpoint has no data position: reading the %d consumed samples again", samples)
        shard = shard.skip(samples // world)
    return StreamLoader(shard, batch_size, accelerator.device, world)
