"""Local data a user would type as `data.path`: a .txt, .json, .jsonl, .parquet or .csv file, or a folder of them.

`local_source(path)` says which `datasets` builder reads it and which files; `check_local_files` finds, before
any model loads, the problems that would otherwise surface deep inside `datasets` (an empty file, a missing
text column, a text file that is not UTF-8) and names the file in one line.
"""
from __future__ import annotations

import codecs
import csv
import json
import os
from pathlib import Path
from typing import Optional

from ..config.arguments import ConfigError

BUILDERS = {".txt": "text", ".text": "text", ".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv"}
_SAVED_DATASET_FILES = ("dataset_dict.json", "dataset_info.json", "state.json")


def looks_local(path: str) -> bool:
    """A path the user clearly meant as a file or folder on this machine (not a Hub dataset id)."""
    return (path.startswith(("./", "../", "/", "~", ".\\")) or Path(path).suffix.lower() in BUILDERS
            or os.path.exists(os.path.expanduser(path)))


def is_saved_dataset(path: str) -> bool:
    """A `save_to_disk` folder (read with `datasets.load_from_disk`)."""
    return os.path.isdir(path) and any(os.path.isfile(os.path.join(path, f)) for f in _SAVED_DATASET_FILES)


def local_source(path: str) -> Optional[tuple]:
    """`(builder, [files])` for a local data file or folder; None for anything else (Hub id, builder name,
    saved dataset, builtin). A local-looking path that does not exist is a `ConfigError` naming it."""
    if path.startswith("builtin:") or path in BUILDERS.values() or not looks_local(path):
        return None
    where = Path(os.path.expanduser(path))
    if not where.exists():
        raise ConfigError(f"data.path: {path} does not exist")
    if where.is_file():
        builder = BUILDERS.get(where.suffix.lower())
        if builder is None:
            raise ConfigError(f"data.path: {path} is not a .txt, .json, .jsonl, .parquet or .csv file")
        return builder, [str(where)]
    if is_saved_dataset(str(where)):
        return None
    files = sorted(str(f) for f in where.rglob("*") if f.is_file() and f.suffix.lower() in BUILDERS)
    builders = {BUILDERS[Path(f).suffix.lower()] for f in files}
    if not files:
        raise ConfigError(f"data.path: folder {path} holds no .txt, .json, .jsonl, .parquet or .csv files")
    if len(builders) > 1:
        raise ConfigError(f"data.path: folder {path} mixes file types ({sorted(builders)}); keep one kind per folder")
    return builders.pop(), files


def _check_utf8(file: str) -> None:
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset = 0
    with open(file, "rb") as handle:
        while chunk := handle.read(1 << 20):
            try:
                decoder.decode(chunk)
            except UnicodeDecodeError as e:
                raise ConfigError(f"data.path: {file} is not UTF-8 text (invalid byte at offset {offset + e.start})")
            offset += len(chunk)
        try:
            decoder.decode(b"", final=True)
        except UnicodeDecodeError:
            raise ConfigError(f"data.path: {file} is not UTF-8 text (truncated character at the end)") from None


def _columns(file: str, builder: str) -> list:
    """Column names of the first record of a json/jsonl, csv or parquet file."""
    if builder == "parquet":
        import pyarrow.parquet as pq

        return list(pq.read_schema(file).names)
    with open(file, encoding="utf-8") as handle:
        if builder == "csv":
            return next(csv.reader(handle), [])
        text = handle.read(1 << 16).lstrip()
    if text.startswith("["):  # a JSON array of records
        with open(file, encoding="utf-8") as handle:
            records = json.load(handle)
        return list(records[0]) if records and isinstance(records[0], dict) else []
    first = json.loads(text.splitlines()[0]) if text else {}
    return list(first) if isinstance(first, dict) else []


def check_local_files(builder: str, files: list, text_column: str, tokenized_column: str) -> None:
    """One-line errors naming the file: empty, not UTF-8, or without the text (or token-id) column."""
    for file in files:
        if os.path.getsize(file) == 0:
            raise ConfigError(f"data.path: {file} is empty")
        if builder == "text":
            _check_utf8(file)
            continue
        try:
            columns = _columns(file, builder)
        except (ValueError, UnicodeDecodeError, OSError) as e:
            raise ConfigError(f"data.path: {file} cannot be read as {builder}: {' '.join(str(e).split())}") from None
        if text_column not in columns and tokenized_column not in columns:
            raise ConfigError(f"data.path: {file} has no {text_column!r} column (data.text_column) and no "
                              f"{tokenized_column!r} column; its columns: {columns}")
