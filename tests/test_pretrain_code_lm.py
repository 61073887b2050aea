"""The stand-in model's pretraining script: a resumed run ends with the weights of an uninterrupted one, and the
n-gram baselines are right on a stream whose statistics are known."""
import importlib.util
import json
from pathlib import Path

import numpy as np
import torch

from hf_e2e_sae.data.corpus import train_bpe_tokenizer
from hf_e2e_sae.pretraining.token_store import tokenize_to_file, unigram_bigram_cross_entropy

SCRIPT = Path(__file__).resolve().parents[1] / "examples" / "pretrain_code_lm.py"


def _script():
    spec = importlib.util.spec_from_file_location("pretrain_code_lm", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _corpus(root: Path) -> Path:
    texts = [f"def f{i}(x):\n    return x * {i} + {i % 7}\n" for i in range(300)]
    for split, part in (("train", texts[:270]), ("heldout", texts[270:])):
        with open(root / f"{split}.jsonl", "w") as f:
            f.writelines(json.dumps({"text": t, "package": "p"}) + "\n" for t in part)
    train_bpe_tokenizer(texts[:270], vocab_size=300).save_pretrained(root / "tokenizer")
    return root


def test_resume_equals_uninterrupted(tmp_path):
    script, corpus = _script(), _corpus(tmp_path)
    common = ["--corpus", str(corpus), "--n-layer", "1", "--n-embd", "32", "--n-head", "2", "--context", "16",
              "--batch-size", "4", "--steps", "6", "--warmup-steps", "2", "--eval-windows", "8", "--quiet"]
    whole = script.train(script.parse_args(common + ["--out", str(tmp_path / "whole")]))
    first = script.parse_args(common + ["--out", str(tmp_path / "parts"), "--checkpoint-every", "3"])
    first.steps = 3  # interrupted after the checkpoint at step 3
    script.train(first)
    resumed = script.train(script.parse_args(common + ["--out", str(tmp_path / "parts"), "--resume"]))
    a = script.load_file(tmp_path / "whole" / "checkpoint" / "model.safetensors")
    b = script.load_file(tmp_path / "parts" / "checkpoint" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert resumed["held_out_ce"] == whole["held_out_ce"] < whole["uniform_ce"]


def test_baselines_on_a_known_stream(tmp_path):
    stream = np.tile(np.array([0, 1, 2, 3], dtype=np.uint16), 5000)  # each token fixes the next
    ce = unigram_bigram_cross_entropy(stream, stream[:400], vocab_size=4, interpolation=1.0 - 1e-9)
    assert abs(ce["unigram_ce"] - np.log(4)) < 1e-3 and ce["bigram_ce"] < 1e-6


def test_tokenize_to_file_round_trips(tmp_path):
    tokenizer = train_bpe_tokenizer(["hello world", "import numpy as np"], vocab_size=280)
    n = tokenize_to_file(tokenizer, ["hello world", "import numpy"], tmp_path / "t.u16")
    tokens = np.fromfile(tmp_path / "t.u16", dtype=np.uint16)
    assert len(tokens) == n and (tokens == tokenizer.eos_token_id).sum() == 2
    assert tokenizer.decode(tokens[: list(tokens).index(tokenizer.eos_token_id)]) == "hello world"
