"""Data pipeline: load a corpus, tokenize, pack into fixed-length chunks, hold out evaluation data.

Text documents are tokenized with the base model's tokenizer, each followed by the EOS token, concatenated
and cut into chunks of `context_length` tokens (the paper's format; the final partial chunk is dropped).
Pre-tokenized data (the `tokenized_column` is present) is used row by row: one row is one sample, longer
rows are truncated, shorter rows raise an error (we cannot know where their documents end).

Held-out evaluation without `eval_split`: the first `n_eval_samples` chunks of the unshuffled packed stream
are the eval set and training only uses what follows. For text the training stream restarts at the first
document that *starts* after the eval chunks, so the document straddling the boundary is dropped from
training: eval and train share no token and no document. Pre-tokenized data is split by row (rows cut from
one document may fall on both sides; that cannot be told from the ids). The same rule holds when streaming.

Resuming mid-run: the training order is fixed by the seed (map-style: a seeded permutation; streaming: seeded
permutations of consecutive windows of `shuffle_buffer_size` chunks, `streaming.StreamedChunks`), so
`skip_samples(train, k)`, with k the samples consumed so far, yields exactly the remaining tail. Iterate it in order
(`create_dataloader` never shuffles). A stream also resumes from a saved position without re-reading the first k
(`StreamedChunks.state_dict` / `load_state_dict`, saved in checkpoints).
"""

from __future__ import annotations

import logging
from itertools import islice
from typing import Any, Iterator, Optional, Union

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from datasets import Dataset, DatasetDict, Features, IterableDataset, Sequence, Value
from datasets.fingerprint import Hasher
from torch.utils.data import DataLoader

from .config import BUILTIN_DATASETS, DataConfig, eval_split_of  # noqa: F401  (re-exported: their old home)
from .local_files import is_saved_dataset, local_source
from .streaming import StreamedChunks
from .tokens import short_row_error as _short_row_error
from .tokens import tokenize_texts

logger = logging.getLogger(__name__)

TrainData = Union[Dataset, IterableDataset, StreamedChunks]


def chunk_features(context_length: int) -> Features:
    """Features of packed data: one fixed-length `input_ids` column (int32 on disk, int64 as tensors)."""
    return Features({"input_ids": Sequence(Value("int32"), length=context_length)})


def _load_splits(config: DataConfig) -> tuple[TrainData, Optional[TrainData]]:
    eval_split = eval_split_of(config)
    names = [config.split] + ([eval_split] if eval_split else [])
    path, data_files = config.path, config.data_files
    local = local_source(path)  # a local .txt/.json(l)/.parquet/.csv file or folder -> its builder and files
    if local is not None:
        path, data_files = local
    if path.startswith("builtin:") or is_saved_dataset(path):
        if path.startswith("builtin:") and path not in BUILTIN_DATASETS:
            raise ValueError(f"unknown builtin dataset {path!r}; choices: {sorted(BUILTIN_DATASETS)}")
        obj = BUILTIN_DATASETS[path]() if path.startswith("builtin:") else datasets.load_from_disk(path)
        if isinstance(obj, Dataset):  # a saved Dataset has no splits: it is the training data
            if eval_split:
                raise ValueError(f"{path!r} holds a single Dataset without splits; eval_split must be None")
            splits = [obj]
        else:
            if missing := [s for s in names if s not in obj]:
                raise ValueError(f"split(s) {missing} not found in {path!r}; available splits: {list(obj)}")
            splits = [obj[s] for s in names]
        splits = [s.to_iterable_dataset() for s in splits] if config.streaming else splits
    else:
        extra = dict(config.load_kwargs) if config.streaming else {"num_proc": config.num_proc, **config.load_kwargs}
        splits = [datasets.load_dataset(path, config.name, data_files=data_files, split=s,
                                        streaming=config.streaming, **extra) for s in names]
    return splits[0], (splits[1] if len(splits) > 1 else None)


def _is_pretokenized(ds: TrainData, config: DataConfig, where: str) -> bool:
    """Whether `ds` holds token ids (used as is) rather than text; raises if it has neither column."""
    cols = ds.column_names if ds.column_names is not None else list(next(iter(ds), {}))  # streaming: peek
    if config.tokenized_column not in cols and config.text_column not in cols:
        raise ValueError(f"text column {config.text_column!r} (DataConfig.text_column) not found in {where}; "
                         f"available columns: {cols}. Set text_column, or tokenized_column for pre-tokenized data.")
    return config.tokenized_column in cols


def _tokenize_batch(batch: dict[str, list], tokenizer: Any, text_column: str) -> dict[str, list]:
    return {"input_ids": tokenize_texts(batch[text_column], tokenizer)}


def _fit_batch(batch: pa.Table, indices: list[int], column: str, context_length: int) -> pa.Table:
    ids = batch.column(column)
    lengths = pc.fill_null(pc.list_value_length(ids), 0).to_numpy()
    if len(short := np.flatnonzero(lengths < context_length)):
        raise _short_row_error(indices[short[0]], int(lengths[short[0]]), context_length)
    return pa.table({"input_ids": pc.list_slice(ids, 0, context_length)})


def _prepare(ds: Dataset, config: DataConfig, tokenizer: Any, pretokenized: bool) -> Dataset:
    """Map-style: pre-tokenized -> checked, truncated rows; text -> one row of token ids (+EOS) per document."""
    L, common = config.context_length, {"batched": True, "remove_columns": ds.column_names,
                                        "batch_size": config.map_batch_size, "num_proc": config.num_proc}
    if pretokenized:
        return ds.with_format("arrow").map(_fit_batch, with_indices=True, features=chunk_features(L), **common,
                                           fn_kwargs={"column": config.tokenized_column, "context_length": L},
                                           desc="Checking pre-tokenized rows").with_format(None)
    return ds.map(_tokenize_batch, fn_kwargs={"tokenizer": tokenizer, "text_column": config.text_column},
                  features=Features({"input_ids": Sequence(Value("int32"))}), desc="Tokenizing", **common)


def _pack(docs: Dataset, starts: np.ndarray, start: int, n_chunks: int, config: DataConfig) -> Dataset:
    """Chunks i < n_chunks covering tokens [start + i*L, start + (i+1)*L) of the concatenated documents.

    A stateless batched map over documents: each batch emits the chunks that *begin* inside it, reading ahead
    into later documents as needed, so packing is exact across batch and process boundaries.
    """
    L = config.context_length

    def pack(_batch: Any, indices: list[int]) -> dict[str, list]:
        lo, hi = int(starts[indices[0]]), int(starts[indices[-1] + 1])
        first, last = max(0, -(-(lo - start) // L)), min(n_chunks, -(-(hi - start) // L))
        if last <= first:
            return {"input_ids": []}
        a, b = start + first * L, start + last * L
        d0, d1 = int(np.searchsorted(starts, a, side="right")) - 1, int(np.searchsorted(starts, b, side="left"))
        flat = pc.list_flatten(docs.data.table.slice(d0, d1 - d0).column("input_ids")).to_numpy()
        return {"input_ids": list(flat[a - int(starts[d0]):][: b - a].reshape(-1, L))}

    fingerprint = Hasher.hash([docs._fingerprint, L, start, n_chunks, "hf_e2e_sae.pack.v1"])
    return docs.with_format("arrow").map(
        pack, batched=True, with_indices=True, remove_columns=["input_ids"], features=chunk_features(L),
        batch_size=config.map_batch_size, num_proc=config.num_proc, new_fingerprint=fingerprint, desc="Packing",
    ).with_format(None)


def _slice(prepared: Dataset, pretokenized: bool, config: DataConfig, first: int, n: Optional[int],
           what: str) -> Dataset:
    """Samples after the first `first` (n of them, or all). For text, the result restarts at the first
    document beginning after the first `first` chunks (see the module docstring)."""
    L = config.context_length
    if pretokenized:
        if (total := len(prepared)) < first + (n or 1):
            raise ValueError(f"{what}: not enough data: {total} rows, {first} held out, {n or 'at least 1'} needed")
        return prepared.select(range(first, total if n is None else first + n))
    lengths = pc.list_value_length(prepared.data.table.column("input_ids")).to_numpy(zero_copy_only=False)
    starts = np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)])
    total = int(starts[-1])
    start = int(starts[np.searchsorted(starts, first * L)]) if first * L <= total else total
    available = (total - start) // L
    if first * L > total or available < (n or 1):
        held = f"; {available} remain after holding out {first} (and any document straddling them)" if first else ""
        raise ValueError(f"{what}: not enough data: {total} tokens = {total // L} chunks of {L} tokens{held}; "
                         f"{n or 'at least 1'} needed")
    if first:
        logger.info("Held out %d chunks; training starts at token %d (%d tokens of a straddling document dropped)",
                    first, start, start - first * L)
    return _pack(prepared, starts, start, available if n is None else n, config)


def _generate_chunks(source: IterableDataset, tokenizer: Any, config: DataConfig, pretokenized: bool, skip: int,
                     required: Optional[int]) -> Iterator[dict[str, np.ndarray]]:
    """Streaming twin of `_prepare` + `_slice`: yields the samples after the first `skip` (same hold-out
    rule); raises at the end of the stream if fewer than `required` came out."""
    L, n = config.context_length, 0
    if pretokenized:
        for i, row in enumerate(source):
            if len(ids := row[config.tokenized_column]) < L:
                raise _short_row_error(i, len(ids), L)
            if i >= skip:
                n += 1
                yield {"input_ids": np.asarray(ids[:L], dtype=np.int32)}
    else:
        pos, buf = 0, np.empty(0, dtype=np.int32)
        for batch in source.iter(batch_size=config.map_batch_size):
            for ids in tokenize_texts(batch[config.text_column], tokenizer):
                doc_start, pos = pos, pos + len(ids)
                if doc_start < skip * L:  # a held-out document, or the one straddling the boundary
                    continue
                buf = np.concatenate([buf, np.asarray(ids, dtype=np.int32)])
                full = len(buf) // L * L
                for chunk in buf[:full].reshape(-1, L):
                    n += 1
                    yield {"input_ids": chunk}
                buf = buf[full:]
    if required is not None and n < required:
        raise ValueError(f"not enough data: the stream gave only {n} samples of {L} tokens after holding out "
                         f"{skip}, {required} needed")


def _held_out_rows(source: IterableDataset, tokenizer: Any, config: DataConfig, pretokenized: bool,
                   n_chunks: int) -> int:
    """Leading rows of a stream not used for training: those of the first `n_chunks` chunks, with the document
    straddling their end (the hold-out rule of the module docstring)."""
    if pretokenized or n_chunks == 0:
        return n_chunks
    rows, pos, limit = 0, 0, n_chunks * config.context_length
    for batch in source.iter(batch_size=config.map_batch_size):
        texts = batch[config.text_column]
        lengths = iter([len(ids) for ids in tokenize_texts(texts, tokenizer)])  # empty documents have none
        for text in texts:
            if pos >= limit:
                return rows
            rows, pos = rows + 1, pos + (next(lengths) if text else 0)
    return rows


def build_datasets(config: DataConfig, tokenizer: Any, n_train_samples: Optional[int] = None,
                   seed: int = 0) -> tuple[TrainData, Dataset]:
    """Builds the training data and the held-out evaluation data.

    Args:
        config (`DataConfig`): where the data comes from and how it is chunked.
        tokenizer (`PreTrainedTokenizerBase`): the base model's tokenizer (needs an EOS token for text data).
        n_train_samples (`int`, *optional*): number of training samples; None = every available chunk.
        seed (`int`, defaults to 0): seed of the training order (`config.shuffle_seed` overrides it).

    Returns:
        `tuple`: (train, eval). train is a map-style `datasets.Dataset` (`__len__`/`__getitem__`) or, when
        streaming, a `StreamedChunks` (a torch IterableDataset tokenized by `data.num_workers` worker
        processes, see `data/streaming.py`); eval is a finite `datasets.Dataset`
        of exactly `n_eval_samples` rows, unshuffled. Both yield `{"input_ids": LongTensor[context_length]}`.

    Raises:
        ValueError: missing text column, unknown split, or too little data (the message gives the chunk count).
            When streaming, too little data for `n_train_samples` is only found, and raised, at the end of the stream.
    """
    if n_train_samples is not None and n_train_samples < 1:
        raise ValueError(f"n_train_samples must be None or >= 1, got {n_train_samples}")
    seed = config.shuffle_seed if config.shuffle_seed is not None else seed
    L, n_eval = config.context_length, config.n_eval_samples
    train_raw, eval_raw = _load_splits(config)
    held_out = eval_raw is None
    eval_src, skip = (train_raw, n_eval) if held_out else (eval_raw, 0)
    where_train = f"split {config.split!r} of {config.path!r}"
    where_eval = f"split {eval_split_of(config) or config.split!r} of {config.path!r}"
    pre_train = _is_pretokenized(train_raw, config, where_train)
    pre_eval = pre_train if held_out else _is_pretokenized(eval_src, config, where_eval)

    if config.streaming:
        rows = list(islice(_generate_chunks(eval_src, tokenizer, config, pre_eval, 0, n_eval), n_eval))
        eval_ds = Dataset.from_dict({"input_ids": [r["input_ids"] for r in rows]}, features=chunk_features(L))
        drop = _held_out_rows(train_raw, tokenizer, config, pre_train, skip)
        train: TrainData = StreamedChunks(train_raw, tokenizer, config, pre_train, drop, n_train_samples, seed)
        logger.info("Training data: streamed, tokenized by %d worker(s)", config.num_workers)
        return train, eval_ds.with_format("torch")
    else:
        prepared_train = _prepare(train_raw, config, tokenizer, pre_train)
        prepared_eval = prepared_train if held_out else _prepare(eval_src, config, tokenizer, pre_eval)
        eval_ds = _slice(prepared_eval, pre_eval, config, 0, n_eval, f"eval data ({where_eval}, n_eval_samples)")
        train = _slice(prepared_train, pre_train, config, skip, None, f"training data ({where_train})")
        if n_train_samples is not None and n_train_samples > len(train) * config.max_epochs:
            raise ValueError(f"n_train_samples={n_train_samples} but the training data ({where_train}) has only "
                             f"{len(train)} chunks of {L} tokens after the held-out eval set (x data.max_epochs="
                             f"{config.max_epochs} passes)")
        train = _epochs(train, n_train_samples, seed, config.shuffle)
        train = train.select(range(n_train_samples)) if n_train_samples is not None else train
        logger.info("Training data: %d chunks of %d tokens", len(train), L)
    logger.info("Eval data: %d chunks (%s)", len(eval_ds), f"held out from {where_train}" if held_out else where_eval)
    return train.with_format("torch"), eval_ds.with_format("torch")


def _epochs(train: Dataset, n_samples: Optional[int], seed: int, shuffle: bool) -> Dataset:
    """As many passes over `train` as `n_samples` needs, pass e shuffled with seed + e (pass 0 as one epoch)."""
    n_passes = 1 if n_samples is None else max(1, -(-n_samples // len(train)))
    passes = [train.shuffle(seed=seed + e) if shuffle else train for e in range(n_passes)]
    return passes[0] if n_passes == 1 else datasets.concatenate_datasets(passes)


AnyData = Union[TrainData, torch.utils.data.Dataset]


def skip_samples(train: AnyData, k: int) -> AnyData:
    """Drops the first `k` samples of the fixed-order training data (resume after k consumed samples).

    Map-style data: a cheap index selection. Streaming data: `.skip(k)`, which re-reads the first k samples
    (a checkpoint's saved position, `StreamedChunks.load_state_dict`, does not).
    """
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    if k == 0:
        return train
    if isinstance(train, (IterableDataset, StreamedChunks)):
        return train.skip(k)
    if k > (n := len(train)):
        raise ValueError(f"cannot skip {k} samples: the training data has only {n}")
    return train.select(range(k, n)) if isinstance(train, Dataset) else torch.utils.data.Subset(train, range(k, n))


def create_dataloader(dataset: AnyData, batch_size: int, *, num_workers: int = 0,
                      drop_last: bool = False, pin_memory: bool = False) -> DataLoader:
    """A DataLoader that keeps the dataset's order (never shuffles: the order is fixed by `build_datasets`)."""
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers, drop_last=drop_last,
                      pin_memory=pin_memory)
