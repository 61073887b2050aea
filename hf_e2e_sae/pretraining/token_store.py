"""Token streams on disk for pretraining the built-in base models, and the n-gram baselines they are judged by.

    store = tokenize_to_file(tokenizer, texts, "train.u16")   # documents joined with EOS, uint16 (vocab <= 65,536)
    tokens = np.memmap("train.u16", dtype=np.uint16, mode="r")
    unigram_bigram_cross_entropy(train_tokens, eval_tokens, vocab_size)   # the baselines in the model's README
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Iterable

import numpy as np


def tokenize_to_file(tokenizer, texts: Iterable[str], path, batch_size: int = 256) -> int:
    """Append every text's tokens + EOS to `path` as uint16; returns the token count. Written to a temporary
    name and renamed, so a half-written file is never taken for a finished one."""
    if len(tokenizer) > 65536:
        raise ValueError(f"a vocabulary of {len(tokenizer)} tokens does not fit uint16")
    path, total, batch = Path(path), 0, []
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        def flush() -> int:
            ids = tokenizer(batch)["input_ids"]
            flat = np.fromiter((t for doc in ids for t in (*doc, tokenizer.eos_token_id)), dtype=np.uint16)
            flat.tofile(f)
            return len(flat)

        for text in texts:
            batch.append(text)
            if len(batch) == batch_size:
                total, batch = total + flush(), []
        if batch:
            total += flush()
    tmp.replace(path)
    return total


def unigram_bigram_cross_entropy(train: np.ndarray, evaluation: np.ndarray, vocab_size: int,
                                 max_train_tokens: int = 50_000_000, interpolation: float = 0.7) -> dict:
    """Held-out cross-entropy (nats/token) of an add-one unigram model and of a bigram model interpolated with it
    (Jelinek-Mercer: p = l * count(a,b)/count(a) + (1-l) * p_uni(b)), both counted on `train` (its first
    `max_train_tokens`)."""
    train = np.asarray(train[:max_train_tokens], dtype=np.int64)
    evaluation = np.asarray(evaluation, dtype=np.int64)
    unigram = (np.bincount(train, minlength=vocab_size) + 1.0) / (len(train) + vocab_size)
    pair_codes, pair_counts = np.unique(train[:-1] * vocab_size + train[1:], return_counts=True)
    first_counts = np.bincount(train[:-1], minlength=vocab_size).astype(np.float64)
    eval_codes = evaluation[:-1] * vocab_size + evaluation[1:]
    found = np.searchsorted(pair_codes, eval_codes)
    found = np.minimum(found, len(pair_codes) - 1)
    counts = np.where(pair_codes[found] == eval_codes, pair_counts[found], 0).astype(np.float64)
    previous = first_counts[evaluation[:-1]]
    p_bigram = np.where(previous > 0, counts / np.maximum(previous, 1), 0.0)
    p = interpolation * p_bigram + (1 - interpolation) * unigram[evaluation[1:]]
    return {"unigram_ce": float(-np.log(unigram[evaluation[1:]]).mean()), "bigram_ce": float(-np.log(p).mean()),
            "uniform_ce": math.log(vocab_size)}
