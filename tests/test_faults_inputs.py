"""Fault injection on inputs (issue 21, part B): sizes checked before they are allocated, tampering detected, and
every user mistake one line.

Each test reproduces what an adversarial user found: a saved SAE whose config claims more latents than its
tensors hold, a YAML "billion laughs" or a 50,000-deep nesting, a checkpoint file swapped for another of the same
size, an activation cache whose manifest lies about its dtype or width, a SAELens `b_enc` of shape (1,), and the
tracebacks where one line and exit 2 are promised (convert, browse --from-stats, YAML overrides, data mistakes found
after the model loads, a huge dict_size, an edited trainer_state.json).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch  # a README-installed dependency: missing fails, never skips
import yaml
from safetensors.torch import load_file, save_file

from train_fixtures import (  # noqa: F401  (fixtures are used by name)
    CONTEXT, VOCAB_SIZE, fresh_accelerate, make_config, reset_accelerate_state, subprocess_env, tiny_assets,
    train_config_dict,
)

import hf_e2e_sae.training.trainer as trainer
from hf_e2e_sae import SAEConfig, SparseAutoencoder
from hf_e2e_sae.config.arguments import ConfigError
from hf_e2e_sae.interop import load_sae
from hf_e2e_sae.runs.checkpoint_files import CheckpointError
from hf_e2e_sae.training.config import load_train_config

REPO = Path(__file__).resolve().parents[1]
STEP2, STEP4 = "step_00000002", "step_00000004"


@pytest.fixture(autouse=True)
def _clean_accelerate(fresh_accelerate):
    yield


def _one_line(error: BaseException) -> str:
    message = str(error)
    assert "\n" not in message, message
    return message


def _no_model_load(monkeypatch) -> None:
    monkeypatch.setattr(trainer, "build_patched_model", lambda *a: pytest.fail("the model was loaded"))


# ---------------------------------------------------------------- 4. sizes checked before allocation


def _spy_sae_sizes(monkeypatch) -> list:
    """Record the dict_size of every SparseAutoencoder built (an allocation of 2 * dict_size * d_in floats)."""
    sizes, real_init = [], SparseAutoencoder.__init__

    def init(self, config, *args, **kwargs):
        sizes.append(config.dict_size)
        if config.dict_size > 10_000:
            pytest.fail(f"allocated an SAE of {config.dict_size} latents before checking the tensors")
        real_init(self, config, *args, **kwargs)

    monkeypatch.setattr(SparseAutoencoder, "__init__", init)
    return sizes


@pytest.mark.parametrize("claimed", [2_000_000, 10**12])
def test_config_claiming_more_latents_than_the_tensors_is_refused_before_allocation(tmp_path, monkeypatch, claimed):
    sae = SparseAutoencoder(SAEConfig(d_in=16, dict_size=32, site="blocks.1.resid_pre"))
    sae.save_pretrained(tmp_path / "sae")
    config = json.loads((tmp_path / "sae" / "config.json").read_text())
    (tmp_path / "sae" / "config.json").write_text(json.dumps({**config, "dict_size": claimed}))
    _spy_sae_sizes(monkeypatch)
    with pytest.raises(ValueError) as info:
        SparseAutoencoder.from_pretrained(tmp_path / "sae")
    message = _one_line(info.value)
    assert "model.safetensors" in message and "dict_size" in message and str(claimed) in message, message


def _write_yaml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


def test_yaml_billion_laughs_is_refused_in_one_line(tmp_path):
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [*a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, "
              f"*a{i - 1}, *a{i - 1}, *a{i - 1}]" for i in range(1, 9)]
    text = "data:\n  load_kwargs:\n" + "".join(f"    {line}\n" for line in lines)
    assert len(text) < 1024
    with pytest.raises(ConfigError) as info:
        load_train_config(_write_yaml(tmp_path, text), [])
    message = _one_line(info.value)
    assert "config.yaml" in message and "alias" in message, message


def test_yaml_deep_nesting_is_refused_in_one_line(tmp_path):
    text = "data:\n  load_kwargs:\n    deep: " + "[" * 50_000 + "]" * 50_000 + "\n"
    with pytest.raises(ConfigError) as info:
        load_train_config(_write_yaml(tmp_path, text), [])
    message = _one_line(info.value)
    assert "config.yaml" in message and "deep" in message, message


@pytest.mark.parametrize("override", [["--data.load_kwargs", "{a: [1"], ["data.load_kwargs={a: *b}"]])
def test_malformed_yaml_override_is_a_config_error(override):
    with pytest.raises(ConfigError) as info:
        load_train_config(None, override)
    message = _one_line(info.value)
    assert "data.load_kwargs" in message, message


def _saelens_folder(folder: Path, **edits) -> Path:
    d_in, d_sae = 8, 16
    weights = {"W_enc": torch.randn(d_in, d_sae), "b_enc": torch.randn(d_sae), "W_dec": torch.randn(d_sae, d_in),
               "b_dec": torch.randn(d_in)}
    for name, value in edits.items():
        if value is None:
            weights.pop(name)
        else:
            weights[name] = value
    folder.mkdir(parents=True)
    save_file(weights, str(folder / "sae_weights.safetensors"))
    cfg = {"architecture": "standard", "d_in": d_in, "d_sae": d_sae, "apply_b_dec_to_input": True,
           "metadata": {"sae_lens_version": "6.0.0", "hook_name": "blocks.1.hook_resid_pre", "model_name": "gpt2"}}
    (folder / "cfg.json").write_text(json.dumps(cfg))
    return folder


@pytest.mark.parametrize("name, value", [("b_enc", torch.randn(1)), ("b_dec", torch.randn(1)),
                                          ("W_enc", torch.randn(8, 16, 1)), ("b_enc", torch.randn(16, 1))],
                         ids=["b_enc_1", "b_dec_1", "W_enc_3d", "b_enc_2d"])
def test_foreign_shapes_are_checked_not_broadcast(tmp_path, name, value):
    folder = _saelens_folder(tmp_path / "sl", **{name: value})
    with pytest.raises(ValueError) as info:
        load_sae(folder)
    message = _one_line(info.value)
    assert name in message and "sae_weights.safetensors" in message, message


# ---------------------------------------------------------------- 5. tampering detected


def _interrupted_run(make_config, name: str, stop_after: int = 5):
    path, out = make_config(name, save_every_samples=16)
    assert trainer.train(load_train_config(path, ["--stop_after_steps", str(stop_after)])) == {}
    reset_accelerate_state()
    return path, out


def test_checkpoint_file_swapped_for_one_of_the_same_size_is_refused(make_config):
    path, out = _interrupted_run(make_config, "swapped")
    older, newest = out / "checkpoints" / STEP2, out / "checkpoints" / STEP4
    swapped = newest / "model.safetensors"
    assert swapped.stat().st_size == (older / "model.safetensors").stat().st_size
    shutil.copyfile(older / "model.safetensors", swapped)
    with pytest.raises(CheckpointError) as info:
        trainer.train(load_train_config(path, ["--resume_from_checkpoint", str(newest)]))
    message = _one_line(info.value)
    assert str(swapped) in message and "sha256" in message, message


@pytest.mark.parametrize("edit", [
    lambda s: s.update(step="four"), lambda s: s.pop("samples"), lambda s: s.update(samples="8"),
    lambda s: s.update(window_tokens=-5),
], ids=["step_a_string", "no_samples", "samples_a_string", "negative_window"])
def test_edited_trainer_state_names_the_file(make_config, edit):
    path, out = _interrupted_run(make_config, "edited_state", 3)
    state_file = out / "checkpoints" / STEP2 / "trainer_state.json"
    state = json.loads(state_file.read_text())
    edit(state)
    state_file.write_text(json.dumps(state))
    with pytest.raises(CheckpointError) as info:
        trainer.train(load_train_config(path, ["--resume_from_checkpoint", str(state_file.parent)]))
    message = _one_line(info.value)
    assert "trainer_state.json" in message, message


@pytest.fixture
def cached_run(tiny_assets, tmp_path):
    """`(make(name, **overrides) -> TrainConfig, cache path)`: local runs from an activation cache built once."""
    generator = torch.Generator().manual_seed(0)
    rows = torch.randint(0, VOCAB_SIZE, (16, CONTEXT), generator=generator)
    rows_file = tmp_path / "rows.jsonl"
    rows_file.write_text("".join(json.dumps({"input_ids": r.tolist()}) + "\n" for r in rows))
    cache = tmp_path / "cache"

    def make(name: str):
        cfg = train_config_dict(tiny_assets, tmp_path / name, activation_cache=str(cache), n_samples=8,
                                save_every_samples=None)
        cfg["data"] = {"path": str(rows_file), "context_length": CONTEXT, "n_eval_samples": 8}
        cfg["loss"] = {"preset": "local", "sparsity": {"coeff": 1.0}}
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        return load_train_config(path, [])

    trainer.train(make("build"))
    reset_accelerate_state()
    return make, cache


def _edit_manifest(cache: Path, **changes) -> None:
    manifest = json.loads((cache / "manifest.json").read_text())
    (cache / "manifest.json").write_text(json.dumps({**manifest, **changes}))


@pytest.mark.parametrize("damage, expected", [
    (lambda c: _edit_manifest(c, dtype="float16"), "dtype"),
    (lambda c: _edit_manifest(c, d_in=64), "d_in"),
    (lambda c: next((c / "activations").rglob("*.arrow")).write_bytes(
        next((c / "activations").rglob("*.arrow")).read_bytes()[:-8] + b"\x00" * 8), "sha256"),
], ids=["dtype", "width", "shard_bytes"])
def test_tampered_activation_cache_is_refused_before_the_model_loads(cached_run, monkeypatch, damage, expected):
    make, cache = cached_run
    damage(cache)
    _no_model_load(monkeypatch)
    with pytest.raises(ConfigError) as info:
        trainer.train(make("again"))
    message = _one_line(info.value)
    assert message.startswith("activation_cache: ") and expected in message and str(cache) in message, message


# ---------------------------------------------------------------- 8. data mistakes and sizes found in preflight


@pytest.mark.parametrize("overrides, expected", [
    ({"data": {"path": "builtin:shakespeare", "eval_split": "validation"}}, "data.eval_split"),
    ({"data": {"path": "builtin:shakespeare", "n_eval_samples": 1_000_000}}, "data.n_eval_samples"),
    ({"data": {"path": "builtin:shakespeare", "text_column": "body"}}, "data.text_column"),
    ({"data": {"eval_split": "validation"}}, "data.eval_split"),
    ({"data": {"n_eval_samples": 100_000}}, "data.n_eval_samples"),
    ({"dict_size": 10**12}, "dict_size"),
    ({"dict_size_ratio": 1e10}, "dict_size"),
], ids=["builtin_no_split", "builtin_too_small", "builtin_no_column", "local_no_split", "local_too_small",
        "dict_size", "dict_size_ratio"])
def test_data_and_size_mistakes_are_found_before_the_model_loads(make_config, monkeypatch, overrides, expected):
    path, _ = make_config("preflight", **overrides)
    _no_model_load(monkeypatch)
    with pytest.raises(ConfigError) as info:
        trainer.train(load_train_config(path, []))
    message = _one_line(info.value)
    assert expected in message, message


# ---------------------------------------------------------------- 8. the command line: one line, exit 2


def _cli_cases(root: Path) -> dict:
    """name -> (argv, text the single stderr line must contain)."""
    cli = [sys.executable, "-m", "hf_e2e_sae.cli"]
    _saelens_folder(root / "no_W_dec", W_dec=None)
    topk = _saelens_folder(root / "topk_no_k")
    cfg = json.loads((topk / "cfg.json").read_text())
    (topk / "cfg.json").write_text(json.dumps({**cfg, "architecture": "topk"}))
    header = _saelens_folder(root / "header")
    raw = (header / "sae_weights.safetensors").read_bytes()
    (header / "sae_weights.safetensors").write_bytes(raw[:8] + b"{garbage" + raw[16:])
    (root / "e2e").mkdir()
    torch.save({"blocks-1-hook_resid_pre.encoder.0.weight": torch.randn(16, 8),
                "blocks-1-hook_resid_pre.encoder.0.bias": torch.randn(16),
                "blocks-1-hook_resid_pre.decoder.weight": torch.randn(8, 16),
                "blocks-1-hook_resid_pre.decoder.bias": torch.randn(8)}, root / "e2e" / "samples_10.pt")
    stats = root / "stats" / "sae0"
    stats.mkdir(parents=True)
    (stats / "blocks.1.resid_pre.json").write_text("{not json")
    (stats / "blocks.1.resid_pre.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{garbage")
    return {
        "convert missing tensor": (cli + ["convert", str(root / "no_W_dec"), str(root / "o1")], "W_dec"),
        "convert missing key": (cli + ["convert", str(topk), str(root / "o2")], "k"),
        "convert damaged header": (cli + ["convert", str(header), str(root / "o3")], "sae_weights.safetensors"),
        "convert missing site": (cli + ["convert", str(root / "e2e"), str(root / "o4"), "--site",
                                        "blocks.3.resid_pre"], "blocks.3.resid_pre"),
        "browse damaged stats": (cli + ["browse", "--from-stats", str(root / "stats"), "--out", str(root / "o5")],
                                 "stats"),
        "malformed override": (cli + ["train", "output_dir=o6", "--data.load_kwargs", "{a: [1"], "data.load_kwargs"),
        "huge dict_size": (cli + ["train", "output_dir=o7", "dict_size=1000000000000"], "dict_size"),
        "no eval split": (cli + ["train", "output_dir=o8", "data.eval_split=validation"], "data.eval_split"),
        "too little eval data": (cli + ["train", "output_dir=o9", "data.n_eval_samples=1000000"], "data.n_eval_samples"),
        "no text column": (cli + ["train", "output_dir=o10", "data.text_column=body"], "data.text_column"),
    }


@pytest.fixture(scope="module")
def cli_results(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli_inputs")
    env = {**subprocess_env(), "HF_HOME": str(root / "hf_home")}
    procs = {name: (subprocess.Popen(argv, cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True), expected) for name, (argv, expected) in _cli_cases(root).items()}
    return {name: (*proc.communicate(timeout=600)[1:], proc.returncode, expected)
            for name, (proc, expected) in procs.items()}


@pytest.mark.parametrize("case", ["convert missing tensor", "convert missing key", "convert damaged header",
                                  "convert missing site", "browse damaged stats", "malformed override",
                                  "huge dict_size", "no eval split", "too little eval data", "no text column"])
def test_cli_input_mistake_is_one_line_and_exit_2(cli_results, case):
    stderr, code, expected = cli_results[case]
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert code == 2, stderr[-3000:]
    assert "Traceback" not in stderr, stderr[-3000:]
    assert len(lines) == 1, stderr[-3000:]
    assert expected in lines[0], lines[0]
