"""Open a saved run (a local folder or a Hub repo) for analysis: its patched model, tokenizer, training config
and held-out data.

The held-out data is what the run itself held out: its `data.eval_split` when it had one (any number of
chunks of it), otherwise the first `data.n_eval_samples` chunks of its training split (never more: beyond
them lies training data).
"""
from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Optional

import yaml
from huggingface_hub import hf_hub_download
from transformers import AutoTokenizer

from ..patching.base_models import resolve_base_model
from ..patching.patched_model import SAEPatchedModel
from ..data.pipeline import DataConfig, build_datasets, create_dataloader

logger = logging.getLogger(__name__)

TRAIN_CONFIG_FILE = "train_config.yaml"


def read_train_config(run: str) -> dict:
    """The run's `train_config.yaml` as a plain dict (`{}` when it has none)."""
    if os.path.isdir(run):
        path = Path(run) / TRAIN_CONFIG_FILE
        return yaml.safe_load(path.read_text()) or {} if path.is_file() else {}
    try:
        return yaml.safe_load(Path(hf_hub_download(run, TRAIN_CONFIG_FILE)).read_text()) or {}
    except Exception as error:  # no such file in the repo, or offline: the caller must then name the data
        logger.info("%s: no %s (%s)", run, TRAIN_CONFIG_FILE, type(error).__name__)
        return {}


def load_run(run: str, **kwargs) -> tuple:
    """`(SAEPatchedModel, tokenizer, train_config dict)` for a saved run; `kwargs` go to `from_pretrained`."""
    model = SAEPatchedModel.from_pretrained(run, **kwargs)
    name = model.sae(model.sites[0]).config.base_model_name_or_path
    if not name:
        raise ValueError(f"{run}: the SAEs do not name their base model, so its tokenizer cannot be found")
    tokenizer = AutoTokenizer.from_pretrained(resolve_base_model(name), trust_remote_code=False)  # a name the files give
    return model.eval(), tokenizer, read_train_config(run)


def held_out_config(train_config: dict, n_tokens: int, data_path: Optional[str] = None,
                    split: Optional[str] = None, context_length: Optional[int] = None) -> DataConfig:
    """A `DataConfig` whose eval set is `n_tokens` (rounded up to whole chunks) of the run's held-out data."""
    data = dict(train_config.get("data") or {})
    if data_path:
        data = {"path": data_path, "split": split or "test", "eval_split": None}
    elif not data:
        raise ValueError("The run has no train_config.yaml naming its data: pass --data PATH [--split SPLIT].")
    data["context_length"] = context_length or data.get("context_length", 1024)
    data["streaming"] = False
    n_chunks = max(1, math.ceil(n_tokens / data["context_length"]))
    if data.get("eval_split"):
        # Its first n_chunks become the eval set (the rest, unused, must hold at least one chunk).
        data["split"], data["eval_split"] = data["eval_split"], None
    elif n_chunks > data.get("n_eval_samples", 500):
        logger.warning("Only the first %d chunks were held out from training; using those, not %d",
                       data.get("n_eval_samples", 500), n_chunks)
        n_chunks = data.get("n_eval_samples", 500)
    data["n_eval_samples"] = n_chunks
    return DataConfig(**data)


def held_out_batches(data: DataConfig, tokenizer, batch_size: int):
    """A DataLoader over the held-out chunks of `data`."""
    _, eval_ds = build_datasets(data, tokenizer)
    return create_dataloader(eval_ds, batch_size=batch_size)
