"""Data mistakes found before any model loads: a split that does not exist, a missing text column, and too little
data for `n_eval_samples`, for the data that can be opened cheaply (built-in corpora, `save_to_disk` folders, local
files given as `data.path` or as `data_files` of a builder). Hub datasets are not opened here.

The size check is an upper bound, so it never refuses data that would have sufficed: every token of the tokenized
text covers at least one byte of it (true of byte-level BPE, WordPiece, SentencePiece with byte fallback) and each
non-empty document adds one EOS, so a source of B bytes of text in R documents holds at most (B + R) //
context_length chunks. Data that passes this bound but is still short is reported when the data is built.

    check_data_source(config.data)     # raises ConfigError naming the field
"""
from __future__ import annotations

import logging
import os
from typing import Optional

from ..config.arguments import ConfigError
from .local_files import is_saved_dataset, local_source


def _dataset_bound(ds, config) -> Optional[int]:
    """Upper bound on the chunks a `datasets.Dataset` yields (None: not computable cheaply)."""
    import pyarrow.compute as pc

    table = ds.data.table
    if config.tokenized_column in table.column_names:
        return table.num_rows  # one row = one sample
    if config.text_column not in table.column_names:
        return None  # reported by the column check
    column = table.column(config.text_column)
    try:
        text_bytes = pc.sum(pc.binary_length(column)).as_py() or 0
    except Exception:  # noqa: BLE001  (a column of another type: leave the check to the data build)
        return None
    return (int(text_bytes) + table.num_rows) // config.context_length


def _open_splits(config) -> Optional[tuple]:
    """`({split: Dataset or None}, {split: chunk bound or None})` for the sources opened cheaply, else None."""
    path = config.path
    local = local_source(path)
    if local is not None:
        files = {"train": local[1]}
    elif path in ("text", "json", "csv", "parquet") and config.data_files is not None:
        data_files = config.data_files
        files = data_files if isinstance(data_files, dict) else {"train": data_files}
        files = {split: [f] if isinstance(f, str) else list(f) for split, f in files.items()}
        if not all(os.path.isfile(f) for group in files.values() for f in group):
            return None
    else:
        files = None
    if files is not None:
        bound = {split: (sum(os.path.getsize(f) for f in group) + len(group)) // config.context_length
                 for split, group in files.items()}
        return {split: None for split in files}, bound
    if path.startswith("builtin:"):
        from .pipeline import BUILTIN_DATASETS

        quiet = logging.getLogger("hf_e2e_sae.data")  # the corpus logs its size when the run builds its data
        level = quiet.level
        quiet.setLevel(logging.WARNING)
        try:
            splits = dict(BUILTIN_DATASETS[path]())
        finally:
            quiet.setLevel(level)
    elif is_saved_dataset(path):
        import datasets

        loaded = datasets.load_from_disk(path)
        splits = {"train": loaded} if isinstance(loaded, datasets.Dataset) else dict(loaded)
    else:
        return None
    return splits, {name: _dataset_bound(ds, config) for name, ds in splits.items()}


def check_data_source(config) -> None:
    """Raise `ConfigError` if `config` (a `DataConfig`) names a split or column its data lacks, or asks for more
    held-out samples than the data can hold (see the module docstring for the bound)."""
    opened = _open_splits(config)
    if opened is None:
        return
    splits, bounds = opened
    for field, split in (("data.split", config.split), ("data.eval_split", config.eval_split)):
        if split is not None and split not in splits:
            raise ConfigError(f"{field}={split!r}: {config.path} has no such split; its splits: {sorted(splits)}")
    for split, ds in splits.items():
        if ds is not None and split in (config.split, config.eval_split):
            columns = ds.column_names
            if config.text_column not in columns and config.tokenized_column not in columns:
                raise ConfigError(f"data.text_column={config.text_column!r}: split {split!r} of {config.path} has "
                                  f"no such column (nor data.tokenized_column={config.tokenized_column!r}); its "
                                  f"columns: {columns}")
    held_out = config.eval_split is None
    needed = config.n_eval_samples + (1 if held_out else 0)
    bound = bounds.get(config.split if held_out else config.eval_split)
    if bound is not None and bound < needed:
        where = f"split {config.split if held_out else config.eval_split!r} of {config.path}"
        raise ConfigError(f"data.n_eval_samples={config.n_eval_samples}: {where} holds at most {bound} chunks of "
                          f"{config.context_length} tokens, fewer than the {needed} needed"
                          + (" (the held-out samples plus one to train on)" if held_out else ""))
