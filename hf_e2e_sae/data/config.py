"""`DataConfig`: where the text comes from and how it is chunked; the built-in corpora by name.

Free of `datasets` and torch, so that `hf-e2e-sae train --help` and config errors answer at once; the pipeline
that acts on it is `data.pipeline`.
"""
from __future__ import annotations

from typing import Any, Callable, Optional, Union

from pydantic import Field, model_validator

from ..config.arguments import ConfigModel


def _load_builtin_shakespeare() -> DatasetDict:
    from .corpus import load_shakespeare_splits

    return load_shakespeare_splits()


BUILTIN_DATASETS: dict[str, Callable[[], Any]] = {"builtin:shakespeare": _load_builtin_shakespeare}
"""Built-in corpora: name -> zero-argument loader of a `datasets.DatasetDict` with a text column."""
BUILTIN_EVAL_SPLITS: dict[str, str] = {"builtin:shakespeare": "test"}
"""Built-in corpora that come with their own held-out split: what `eval_split: null` evaluates on."""


class DataConfig(ConfigModel):
    """Where the training/eval text comes from and how it is turned into fixed-length token chunks."""

    path: str = Field("builtin:shakespeare", min_length=1)
    """Hub dataset name, builder ("text", "json", "parquet", "csv"), a local data file or folder, a `save_to_disk`
    directory, or "builtin:<name>"."""
    name: Optional[str] = None
    """Dataset configuration name (passed to `datasets.load_dataset`)."""
    data_files: Optional[Union[str, list[str], dict[str, Union[str, list[str]]]]] = None
    """Data files for a builder path: a path, a list of paths, or a dict split -> path(s)."""
    split: str = Field("train", min_length=1)
    """Split used for training (slices such as "train[:10%]" work for map-style data)."""
    eval_split: Optional[str] = None
    """Separate held-out split for evaluation. None: a built-in corpus's own held-out split (builtin:shakespeare:
    "test", 4 plays), otherwise the first `n_eval_samples` chunks of `split` are held out."""
    n_eval_samples: int = Field(500, ge=1)
    """Number of evaluation samples (chunks of `context_length` tokens)."""
    text_column: str = Field("text", min_length=1)
    """Column holding raw text."""
    tokenized_column: str = Field("input_ids", min_length=1)
    """Column holding token ids; if present it is used as is (one row = one sample, truncated to context_length)."""
    streaming: bool = False
    """Stream the dataset instead of preparing it on disk (training data is then an IterableDataset)."""
    context_length: int = Field(1024, ge=2)
    """Tokens per sample."""
    shuffle: bool = True
    """Shuffle the training samples (seeded, deterministic). Eval data is never shuffled."""
    shuffle_seed: Optional[int] = None
    """Seed of the data order; None uses the seed given to `build_datasets` (the run seed)."""
    shuffle_buffer_size: int = Field(10_000, ge=1)
    """Shuffle buffer size (in samples) when streaming."""
    num_proc: Optional[int] = Field(None, ge=1)
    """Processes for loading, tokenizing and packing map-style data (ignored when streaming)."""
    max_epochs: int = Field(1, ge=1)
    """Map-style data only: repeat the training chunks up to this many times (each pass in its own seeded order)
    when n_samples asks for more than one pass holds."""
    map_batch_size: int = Field(1000, ge=1)
    """Rows per `datasets.map` batch / tokenizer call (when streaming: rows per block handed to a worker)."""
    num_workers: int = Field(2, ge=0)
    """DataLoader worker processes for the training data. Streaming: they tokenize raw text off the training loop
    (0 = tokenize inline, in the training process). Map-style data is tokenized before training and read in the
    training process (workers would only collate it)."""
    load_kwargs: dict[str, Any] = Field(default_factory=dict)
    """Extra keyword arguments for `datasets.load_dataset` (e.g. {"sample_by": "document"} for "text")."""

    @model_validator(mode="after")
    def _check(self) -> "DataConfig":
        if self.path.startswith("builtin:") and self.path not in BUILTIN_DATASETS:
            raise ValueError(f"data.path={self.path!r} is unknown; choices: {sorted(BUILTIN_DATASETS)}")
        if self.text_column == self.tokenized_column:
            raise ValueError(f"data.tokenized_column={self.tokenized_column!r} must differ from text_column")
        if self.eval_split is not None and self.eval_split == self.split:
            raise ValueError(f"data.eval_split={self.eval_split!r} must be None (hold out part of split "
                             f"{self.split!r}) or a different split name")
        return self


def eval_split_of(config: Union[DataConfig, dict]) -> Optional[str]:
    """The split evaluated on: `eval_split`, else a built-in corpus's own held-out split, else None (hold out the
    first `n_eval_samples` chunks of `split`). Takes a `DataConfig` or its dict (as saved with a run)."""
    get = config.get if isinstance(config, dict) else lambda key, default=None: getattr(config, key, default)
    if get("eval_split") is not None:
        return get("eval_split")
    own = BUILTIN_EVAL_SPLITS.get(get("path"))
    return own if own != get("split", "train") else None
