"""Local training from an activation cache (`hf_e2e_sae.data.activation_cache`), offline on the tiny GPT-2.

The data is a pre-tokenized JSONL of 24 rows of CONTEXT tokens: 8 held out for evaluation, 16 training rows (two
of them identical), repeated over 4 epochs (64 samples, 8 optimizer steps). A cached run must reach the same SAE as
the live run, reuse an existing cache, refuse a cache built for something else in one line, and never leave a
complete-looking cache behind an interrupted build.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch  # a README-installed dependency: missing fails, never skips
import yaml

from train_fixtures import (  # noqa: F401  (fixtures are used by name)
    CONTEXT, SITE, VOCAB_SIZE, fresh_accelerate, load_sae_state, reset_accelerate_state, subprocess_env,
    tiny_assets, train_config_dict,
)

from test_trainer_multiprocess import _launch_command

import hf_e2e_sae.data.activation_cache as ac
import hf_e2e_sae.training.trainer as trainer
from hf_e2e_sae.config.arguments import ConfigError
from hf_e2e_sae.training.config import load_train_config

REPO = Path(__file__).resolve().parents[1]
N_ROWS = 24


@pytest.fixture(autouse=True)
def _clean_accelerate(fresh_accelerate):
    yield


@pytest.fixture
def rows_file(tmp_path) -> Path:
    """24 pre-tokenized rows; training rows 10 and 11 (file rows 18 and 19) are the same sample."""
    generator = torch.Generator().manual_seed(0)
    rows = torch.randint(0, VOCAB_SIZE, (N_ROWS, CONTEXT), generator=generator)
    rows[19] = rows[18]
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps({"input_ids": r.tolist()}) + "\n" for r in rows))
    return path


@pytest.fixture
def local_config(tiny_assets, tmp_path, rows_file):
    """`local_config(name, **overrides) -> TrainConfig`: a local run over 4 epochs of the 16 training rows."""

    def make(name: str, cli: tuple = (), **overrides):
        cfg = train_config_dict(tiny_assets, tmp_path / name, **overrides)
        cfg["data"] = {"path": str(rows_file), "context_length": CONTEXT, "n_eval_samples": 8, "max_epochs": 4,
                       **overrides.get("data", {})}
        cfg["loss"] = {"preset": "local", "sparsity": {"coeff": 1.0}, **overrides.get("loss", {})}
        cfg.setdefault("save_every_samples", None)
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        return load_train_config(path, list(cli))

    return make


def _train(config, monkeypatch=None) -> tuple:
    """Train in-process; returns (metrics, per-step logs, base-model block calls made inside optimizer steps)."""
    seen = {"logs": [], "block_calls": 0}
    real_train_step = trainer.train_step

    def spy(run, batches):
        block = run.accelerator.unwrap_model(run.model).base_model.transformer.h[0]
        handle = block.register_forward_hook(lambda *a: seen.__setitem__("block_calls", seen["block_calls"] + 1))
        try:
            logs = real_train_step(run, batches)
        finally:
            handle.remove()
        seen["logs"].append(logs)
        return logs

    patch = monkeypatch or pytest.MonkeyPatch()
    patch.setattr(trainer, "train_step", spy)
    try:
        metrics = trainer.train(config)
    finally:
        if monkeypatch is None:
            patch.undo()
        reset_accelerate_state()
    return metrics, seen["logs"], seen["block_calls"]


def _assert_same_weights(out_a: Path, out_b: Path) -> None:
    a, b = load_sae_state(out_a / "final"), load_sae_state(out_b / "final")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-5, atol=1e-6)


def _cache_files(path: Path) -> dict:
    return {str(p.relative_to(path)): p.stat().st_mtime_ns for p in path.rglob("*")}


# ---------------------------------------------------------------- (a) the same SAE as the live run


def test_cached_run_matches_live_run(local_config, tmp_path):
    live = local_config("live")
    cache = tmp_path / "cache"
    cached = local_config("cached", activation_cache=str(cache))
    assert cached.total_steps == 8

    metrics_live, logs_live, calls_live = _train(live)
    metrics_cached, logs_cached, calls_cached = _train(cached)

    _assert_same_weights(tmp_path / "live", tmp_path / "cached")
    assert metrics_cached == pytest.approx(metrics_live, rel=1e-5, abs=1e-6)
    assert calls_live == 16 and calls_cached == 0  # the cached steps never run the base model
    # L0, alive counts and the loss terms are logged as in the live run.
    assert len(logs_cached) == len(logs_live) == 8
    for step_live, step_cached in zip(logs_live, logs_cached):
        keys = {k for k in step_live if k != "train/tokens_per_s"}
        assert {f"train/l0/{SITE}", "train/reconstruction", "train/sparsity"} <= keys
        assert {k: step_cached[k] for k in keys} == pytest.approx({k: step_live[k] for k in keys}, rel=1e-5)
    assert sum(f"train/alive/{SITE}" in step for step in logs_cached) == 4
    # One pass over the distinct samples: 16 training rows, one of them twice, read over 4 epochs.
    manifest = json.loads((cache / "manifest.json").read_text())
    assert manifest["n_chunks"] == 15 and manifest["n_samples_read"] == 64
    assert manifest["n_tokens"] == 15 * CONTEXT and manifest["sites"] == [SITE] and manifest["dtype"] == "float32"
    assert not list(tmp_path.glob("cache.tmp-*"))


def test_auxk_trains_from_the_cache(local_config, tmp_path):
    """A registered loss term (AuxK, every latent dead at once) runs on cached batches as on live ones."""
    auxk = {"auxk": {"coeff": 0.5, "dead_after_tokens": 1}}
    _, logs_live, _ = _train(local_config("live", loss=auxk))
    _, logs_cached, _ = _train(local_config("cached", loss=auxk, activation_cache=str(tmp_path / "cache")))
    assert all("train/auxk" in step for step in logs_cached)
    assert [s["train/auxk"] for s in logs_cached] == pytest.approx([s["train/auxk"] for s in logs_live], rel=1e-5)
    _assert_same_weights(tmp_path / "live", tmp_path / "cached")


def test_resume_from_the_cache_matches_live_run(local_config, tmp_path):
    """An interrupted cached run resumed from its checkpoint (samples counter) ends as the uninterrupted live run."""
    _train(local_config("live"))
    cache = str(tmp_path / "cache")
    assert _train(local_config("resumed", activation_cache=cache, save_every_samples=24, stop_after_steps=4))[0] == {}
    assert (tmp_path / "resumed" / "checkpoints" / "step_00000003").is_dir()
    _train(local_config("resumed", cli=("resume_from_checkpoint=latest",), activation_cache=cache,
                        save_every_samples=24))
    summary = json.loads((tmp_path / "resumed" / "final" / "train_summary.json").read_text())
    assert summary["train_samples"] == 64 and summary["optimizer_steps"] == 8
    _assert_same_weights(tmp_path / "live", tmp_path / "resumed")


# ---------------------------------------------------------------- (b) reuse


def test_second_run_reuses_the_cache(local_config, tmp_path, monkeypatch):
    """A sweep: another seed (init and data order) and coefficient read the same cache without rebuilding it,
    and match their own live run."""
    cache = tmp_path / "cache"
    _train(local_config("first", activation_cache=str(cache)))
    files = _cache_files(cache)
    assert (cache / "manifest.json").is_file() and len(files) > 5

    def no_build(*args, **kwargs):
        raise AssertionError("the cache was rebuilt")

    monkeypatch.setattr(ac, "build_cache", no_build)
    sweep = dict(seed=1, loss={"sparsity": {"coeff": 2.0}})
    _, logs, block_calls = _train(local_config("second", activation_cache=str(cache), **sweep), monkeypatch)
    assert block_calls == 0 and len(logs) == 8
    assert _cache_files(cache) == files  # nothing rewritten
    monkeypatch.undo()
    _train(local_config("second_live", **sweep))
    _assert_same_weights(tmp_path / "second_live", tmp_path / "second")
    first, second = load_sae_state(tmp_path / "first" / "final"), load_sae_state(tmp_path / "second" / "final")
    assert not torch.equal(first["encoder.weight"], second["encoder.weight"])


# ---------------------------------------------------------------- (c) a cache built for something else


def _one_line_error(config, match: str) -> str:
    with pytest.raises(ConfigError) as info:
        _train(config)
    message = str(info.value)
    assert "\n" not in message and message.startswith("activation_cache: "), message
    assert match in message, message
    return message


def test_mismatched_cache_is_refused_in_one_line(local_config, tiny_assets, tmp_path):
    cache = tmp_path / "cache"
    _train(local_config("build", activation_cache=str(cache), n_samples=8))  # 8 of the 16 training rows
    files = _cache_files(cache)

    _one_line_error(local_config("site", activation_cache=str(cache), sites=["blocks.0.resid_pre"]),
                    "was built for sites ['blocks.1.resid_pre'], this run trains 'blocks.0.resid_pre'")
    _one_line_error(local_config("ctx", activation_cache=str(cache), data={"context_length": CONTEXT // 2}),
                    f"was built for context_length={CONTEXT}, this run has {CONTEXT // 2}")
    _one_line_error(local_config("dtype", activation_cache=str(cache), base_model={"dtype": "bfloat16"}),
                    "was built for base_model_dtype='float32', this run has 'bfloat16'")
    _one_line_error(local_config("eval", activation_cache=str(cache), data={"n_eval_samples": 4}),
                    "was built for data.n_eval_samples=8, this run has 4")
    # Another model: a copy elsewhere, then a copy whose config differs (same folder as the cache was built for).
    other = tmp_path / "other_model"
    other.mkdir()
    for f in tiny_assets.base_dir.iterdir():
        (other / f.name).write_bytes(f.read_bytes())
    _one_line_error(local_config("model", activation_cache=str(cache), base_model={"name_or_path": str(other)}),
                    "was built for base_model='")
    cache_other = tmp_path / "cache_other"
    _train(local_config("build_other", activation_cache=str(cache_other), base_model={"name_or_path": str(other)}))
    config = json.loads((other / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**config, "layer_norm_epsilon": 1e-3}))
    _one_line_error(local_config("hash", activation_cache=str(cache_other), base_model={"name_or_path": str(other)}),
                    "was built for base_model_config_hash=")
    # The same data, but samples the cache never saw (it was built from the first 8 samples only).
    _one_line_error(local_config("more", activation_cache=str(cache)), "lacks training sample")
    # A folder that is not a cache.
    (tmp_path / "not_a_cache").mkdir()
    _one_line_error(local_config("junk", activation_cache=str(tmp_path / "not_a_cache")),
                    "is not a complete activation cache (no manifest.json)")
    assert _cache_files(cache) == files


# ---------------------------------------------------------------- (d) only for local runs


def test_cache_with_e2e_or_several_sites_is_a_config_error(local_config, tmp_path):
    with pytest.raises(ConfigError) as info:
        local_config("e2e", activation_cache=str(tmp_path / "c"), loss={"preset": "e2e"})
    message = str(info.value)
    assert "\n" not in message and "activation_cache is only for local runs: loss.preset=e2e" in message
    with pytest.raises(ConfigError, match="needs the model's logits"):
        local_config("e2eds", activation_cache=str(tmp_path / "c"), loss={"preset": "e2e+ds"})
    with pytest.raises(ConfigError, match="activation_cache trains one SAE"):
        local_config("two", activation_cache=str(tmp_path / "c"), sites=["blocks.0.resid_pre", SITE])
    assert local_config("fine", activation_cache=str(tmp_path / "c")).activation_cache == str(tmp_path / "c")
    assert not (tmp_path / "c").exists()


def test_cli_cache_errors_are_one_line_exit_2(tmp_path):
    (tmp_path / "junk").mkdir()
    cases = {"e2e preset": (["activation_cache=./cache"], "activation_cache is only for local runs"),
             "not a cache": (["loss.preset=local", "activation_cache=./junk"],
                             "activation_cache: ./junk exists but is not a complete activation cache")}
    env = {**subprocess_env(), "HF_HOME": str(tmp_path / "hf_home")}
    procs = {name: subprocess.Popen([sys.executable, "-m", "hf_e2e_sae.cli", "train", *argv], cwd=tmp_path, env=env,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for name, (argv, _) in cases.items()}
    for name, proc in procs.items():
        _, stderr = proc.communicate(timeout=300)
        lines = [line for line in stderr.splitlines() if line.strip()]
        assert proc.returncode == 2 and "Traceback" not in stderr and len(lines) == 1, (name, stderr)
        assert cases[name][1] in lines[0], lines[0]
    assert not (tmp_path / "cache").exists() and not (tmp_path / "outputs").exists()


# ---------------------------------------------------------------- (e) interrupted builds


def test_interrupted_build_leaves_no_complete_looking_cache(local_config, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    real = ac.site_activations
    calls = {"n": 0}

    def interrupted(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt  # Ctrl-C in the middle of the pass
        return real(*args, **kwargs)

    monkeypatch.setattr(ac, "site_activations", interrupted)
    with pytest.raises(KeyboardInterrupt):
        _train(local_config("ctrl_c", activation_cache=str(cache)))
    assert calls["n"] == 3
    assert not cache.exists() and not list(tmp_path.glob("cache.tmp-*"))  # the partial build is removed

    # Killed outright (the clean-up never runs): the partial build stays under its temporary name only.
    calls["n"] = 0
    no_cleanup = types.SimpleNamespace(rmtree=lambda *a, **k: None, disk_usage=shutil.disk_usage)
    monkeypatch.setattr(ac, "shutil", no_cleanup)
    monkeypatch.setattr(ac, "SHARD_BYTES", 1)  # a shard per batch: two shards are on disk when it stops
    with pytest.raises(KeyboardInterrupt):
        _train(local_config("killed", activation_cache=str(cache)))
    assert not cache.exists()
    (leftover,) = tmp_path.glob("cache.tmp-*")
    assert len(list((leftover / "activations").iterdir())) == 2 and not (leftover / "manifest.json").exists()
    with pytest.raises(ValueError, match="not a complete activation cache"):
        ac.ActivationCache(leftover)

    monkeypatch.undo()
    _train(local_config("rebuilt", activation_cache=str(cache)))
    manifest = json.loads((cache / "manifest.json").read_text())
    assert manifest["n_chunks"] == 15 and (tmp_path / "rebuilt" / "final" / "model.safetensors").is_file()


# ---------------------------------------------------------------- data parallel


def test_two_processes_from_the_cache_match_one_live_process(local_config, tmp_path):
    """2 processes (gloo on CPU): rank 0 builds while rank 1 waits, each trains on its share of the micro-batches;
    the same SAE as one live process with two accumulated micro-batches per step."""
    cached = local_config("two_procs", activation_cache=str(tmp_path / "cache"), save_every_samples=32)
    config_path = tmp_path / "two_procs.yaml"
    command = _launch_command(config_path)  # accelerate launch, 2 processes
    assert cached.batch_size == 4 and cached.effective_batch_size == 8
    proc = subprocess.Popen(command, cwd=str(REPO), env=subprocess_env(), text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True)  # a hang is killed with its workers
    try:
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            _train(local_config("one_proc"))
        finally:
            torch.set_num_threads(threads)
        stdout, stderr = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    assert proc.returncode == 0, f"rc={proc.returncode}\n{stdout[-3000:]}\n{stderr[-6000:]}"
    summary = json.loads((tmp_path / "two_procs" / "final" / "train_summary.json").read_text())
    assert summary["num_processes"] == 2 and summary["optimizer_steps"] == 8
    assert (stdout + stderr).count("Activation cache written to") == 1
    _assert_same_weights(tmp_path / "one_proc", tmp_path / "two_procs")
