"""Streamed training data tokenized off the training loop, sharded over processes and workers, resumable.

`StreamedChunks` is the training data `build_datasets` returns when `data.streaming` is on. Stages:

    source rows (datasets IterableDataset)  ->  blocks of `map_batch_size` rows
      -> tokenized in `data.num_workers` DataLoader worker processes (block b of process p goes to its worker
         (b // world) % num_workers; every worker reads the rows, only the owner tokenizes them)
      -> packed, in block order, into chunks of `context_length` tokens (main process: a numpy concatenation)
      -> shuffled in windows of `shuffle_buffer_size` chunks (window w permuted with the seeded generator
         [seed, rank, w]), cut to this process's share of the samples.

Sharding: block b belongs to process b % world (the rule of `datasets.distributed.split_dataset_by_node` for a
stream whose shards do not divide among the nodes, applied to blocks): the processes' shares are disjoint, their
union is the whole stream, and each share's order is fixed by (seed, rank, world). Workers only tokenize; their
results are taken round-robin in block order, so the order does not depend on `num_workers`.

Resume: when window w is about to be read, the packer records where its first token lies: the source's
`IterableDataset.state_dict()` at the start of that token's block, the block's index and the token's offset in the
block. `state_dict(k)` (k samples consumed by this process) returns the record of window k // S plus k;
`load_state_dict` restarts the source there (`IterableDataset.load_state_dict`: Arrow-backed data skips whole
tables, nothing is tokenized) and re-tokenizes at most one window plus one block, whatever k is.
"""
from __future__ import annotations

import copy
import logging
from typing import Any, Iterator, Optional

import numpy as np
import torch
from torch.utils.data import DataLoader, get_worker_info

from .tokens import short_row_error, tokenize_texts

logger = logging.getLogger(__name__)

STATE_FORMAT = 1
_MAX_RECORDS = 4096  # window records kept for `state_dict` (the consumer lags the packer by about one step)


def _keep(item: Any) -> Any:
    return item


class _TokenizedBlocks(torch.utils.data.IterableDataset):
    """Worker side: reads the source from a position and tokenizes the blocks this worker owns.

    Yields {"block": b, "state": source state at the start of block b (None: the very start), "tokens": int32
    array of the block's documents, each followed by EOS} for the blocks b of process `rank`, in order.
    """

    def __init__(self, stream: "StreamedChunks", start: Optional[dict]):
        self.stream, self.start = stream, start

    def _read(self) -> Iterator[tuple]:
        """(block, source state at its start or None for the very start, rows) from the start position.

        Read with `iter(batch_size=map_batch_size)`: the source's state then counts whole blocks (a state is only
        valid for the batch size it was taken with; `StreamedChunks.load_state_dict` checks it)."""
        source, block, state = copy.deepcopy(self.stream.source), 0, None  # copies share no iteration state
        if self.start is not None and self.start["source"] is not None:
            block, state = self.start["block"], copy.deepcopy(self.start["source"])
            source.load_state_dict(copy.deepcopy(state))
        for rows in source.iter(batch_size=self.stream.config.map_batch_size):
            yield block, state, rows
            block, state = block + 1, source.state_dict()

    def __iter__(self) -> Iterator[dict]:
        s, info = self.stream, get_worker_info()
        worker, n_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        first_own = None
        for block, state, rows in self._read():
            n = len(next(iter(rows.values())))
            if s.counter is not None:
                s.counter["read"] += n
            if block % s.world != s.rank:
                continue
            first_own = block if first_own is None else first_own
            if ((block - first_own) // s.world) % n_workers != worker:
                continue
            keep = max(0, s.drop_rows - block * s.config.map_batch_size)  # rows held out for evaluation
            if s.counter is not None:
                s.counter["tokenized"] += max(0, n - keep)
            yield {"block": block, "state": state, "tokens": s.tokenize_rows(rows, block, keep)}


class StreamedChunks(torch.utils.data.IterableDataset):
    """Streamed training samples {"input_ids": LongTensor[context_length]}; see the module docstring.

    Args:
        source (`datasets.IterableDataset`): the raw rows (text or token ids).
        tokenizer: the base model's tokenizer (needs an EOS token for text).
        config (`DataConfig`): context_length, map_batch_size (rows per block), shuffle, shuffle_buffer_size,
            num_workers, text_column / tokenized_column.
        pretokenized (`bool`): rows hold token ids (one row = one sample).
        drop_rows (`int`): leading rows held out for evaluation (read, never tokenized for training).
        n_samples (`int`, *optional*): samples over all processes; None = until the stream ends.
        seed (`int`): seed of the window shuffle.
    """

    def __init__(self, source: Any, tokenizer: Any, config: Any, pretokenized: bool, drop_rows: int,
                 n_samples: Optional[int], seed: int):
        self.source, self.tokenizer, self.config = source, tokenizer, config
        self.pretokenized, self.drop_rows, self.n_samples, self.seed = pretokenized, drop_rows, n_samples, seed
        self.rank, self.world, self.num_workers = 0, 1, config.num_workers
        self.resume: Optional[dict] = None  # a `state_dict`, or {"samples": k} (read and drop k samples)
        self.counter: Optional[dict] = None  # tests: {"read": rows read, "tokenized": rows tokenized}; workers=0
        self._records: dict = {}

    # ------------------------------------------------------------------ derived datasets

    def _copy(self, **changes: Any) -> "StreamedChunks":
        new = copy.copy(self)
        new.__dict__.update(changes)
        new._records = {}
        return new

    def shard(self, rank: int, world: int) -> "StreamedChunks":
        """This process's share (rank of world): blocks b with b % world == rank, and its part of n_samples."""
        if not 0 <= rank < world:
            raise ValueError(f"rank must be in [0, {world}), got {rank}")
        return self._copy(rank=rank, world=world, resume=None)

    def with_workers(self, num_workers: int) -> "StreamedChunks":
        return self._copy(num_workers=num_workers)

    def skip(self, k: int) -> "StreamedChunks":
        """Without the first k samples of this share, by reading them again (prefer `load_state_dict`)."""
        return self._copy(resume={"samples": k})

    def load_state_dict(self, state: dict) -> None:
        """Continue from a `state_dict` of the same data, config, seed, rank and world."""
        ours = (STATE_FORMAT, self.rank, self.world, self.config.map_batch_size, self.config.shuffle_buffer_size)
        theirs = tuple(state.get(k) for k in ("format", "rank", "world", "rows_per_block", "window_size"))
        if theirs != ours:
            raise ValueError("data state of (format, rank, world, map_batch_size, shuffle_buffer_size) = "
                             f"{theirs} cannot resume {ours}")
        self.resume, self._records = dict(state), {}

    def state_dict(self, samples: int) -> dict:
        """JSON-able position after `samples` samples of this share were consumed (see the module docstring)."""
        window = samples // self.config.shuffle_buffer_size
        for w in (window, window - 1):  # window - 1: the stream ended exactly at a window boundary
            if w in self._records:
                for old in [x for x in self._records if x < w]:
                    del self._records[old]
                return {"format": STATE_FORMAT, "rank": self.rank, "world": self.world, "samples": samples,
                        "rows_per_block": self.config.map_batch_size, "window_size": self.config.shuffle_buffer_size,
                        **self._records[w]}
        raise ValueError(f"no record of the data position after {samples} samples (iterate the data first)")

    @property
    def share(self) -> Optional[int]:
        """Samples this process yields (n_samples split over the processes, the first ones taking the rest)."""
        if self.n_samples is None:
            return None
        return self.n_samples // self.world + (1 if self.rank < self.n_samples % self.world else 0)

    # ------------------------------------------------------------------ tokenizing (in the workers)

    def tokenize_rows(self, rows: dict, block: int, first: int = 0) -> np.ndarray:
        """Tokens of a block's rows from index `first` on: each document's ids + EOS (text), or each row's first
        L ids (pre-tokenized)."""
        L, cfg = self.config.context_length, self.config
        if self.pretokenized:
            out = []
            for i, ids in enumerate(rows[cfg.tokenized_column][first:], start=first):
                if len(ids) < L:
                    raise short_row_error(block * cfg.map_batch_size + i, len(ids), L)
                out.append(np.asarray(ids[:L], dtype=np.int32))
        else:
            out = [np.asarray(x, dtype=np.int32) for x in tokenize_texts(rows[cfg.text_column][first:],
                                                                         self.tokenizer)]
        return np.concatenate(out) if out else np.empty(0, dtype=np.int32)

    def _blocks(self, start: Optional[dict]) -> Iterator[dict]:
        blocks = _TokenizedBlocks(self, start)
        if self.num_workers == 0:
            yield from blocks
            return
        loader = DataLoader(blocks, batch_size=None, num_workers=self.num_workers, collate_fn=_keep)
        yield from loader

    # ------------------------------------------------------------------ packing and shuffling (main process)

    def _chunks(self, start: Optional[dict]) -> Iterator[tuple]:
        """(chunk, position of its first token) in order from `start`; a position is {"source", "block",
        "offset"}, enough to restart the packer there."""
        L = self.config.context_length
        buf, buf_pos = np.empty(0, dtype=np.int32), None
        skip = start["offset"] if start is not None else 0
        for item in self._blocks(start):
            tokens = np.asarray(item["tokens"])
            pos = {"source": item["state"], "block": int(item["block"])}
            if skip:
                tokens, base, skip = tokens[skip:], skip, 0
            else:
                base = 0
            if not len(tokens):
                continue
            if not len(buf):
                buf_pos = {**pos, "offset": base}
            old, buf = len(buf), np.concatenate([buf, tokens])
            for i in range(len(buf) // L):
                at = buf_pos if i == 0 else {**pos, "offset": base + i * L - old}
                yield buf[i * L:(i + 1) * L], at
            full = len(buf) // L * L
            if full:
                buf, buf_pos = buf[full:], {**pos, "offset": base + full - old}

    def _record(self, window: int, first: Optional[tuple]) -> None:
        if first is not None:
            self._records[window] = {"window": window, **first[1]}
            if len(self._records) > _MAX_RECORDS:
                del self._records[min(self._records)]

    def __iter__(self) -> Iterator[dict]:
        S, resume = self.config.shuffle_buffer_size, self.resume
        share, exact = self.share, resume is not None and "block" in resume
        window = resume["window"] if exact else 0
        drop = resume["samples"] - window * S if resume is not None else 0  # samples of `window` to pass over
        done = resume["samples"] if resume is not None else 0  # samples of this share already consumed
        if share is not None and done >= share:
            return
        chunks = self._chunks(resume if exact else None)
        pending = next(chunks, None)
        self._records = {}
        self._record(window, pending)
        while pending is not None:
            rows = [pending[0]]
            for chunk, _ in chunks:
                rows.append(chunk)
                if len(rows) == S:
                    break
            pending = next(chunks, None)  # the next window's first chunk: recorded before this window is read
            self._record(window + 1, pending)
            order = np.random.default_rng([self.seed, self.rank, window]).permutation(len(rows)) \
                if self.config.shuffle else np.arange(len(rows))
            for j in order[drop:]:
                done += 1
                yield {"input_ids": torch.from_numpy(rows[j].astype(np.int64))}
                if share is not None and done >= share:
                    return
            drop, window = max(0, drop - len(rows)), window + 1
        if share is not None and done < share:
            raise ValueError(f"not enough data: the stream gave only {done} samples of {self.config.context_length} "
                             f"tokens after holding out {self.drop_rows} rows, {share} needed")
