"""Fault injection on resumption: no unpickling, incomplete checkpoints, changed configs, durable writes.

Today a crafted `custom_checkpoint_0.pkl` runs code on resume, a checkpoint missing a tensor resumes
silently (`strict=False`), a missing file raises a raw FileNotFoundError naming `pytorch_model.bin`, a
resume with another dictionary size or loss coefficient goes ahead, and nothing is fsynced.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

import torch  # a README-installed dependency: missing fails, never skips
import accelerate  # noqa: F401

from safetensors.torch import load_file, save_file  # noqa: E402
from train_fixtures import fresh_accelerate, make_config, tiny_assets  # noqa: E402,F401  (fixtures)

import hf_e2e_sae.training.trainer as trainer  # noqa: E402
from hf_e2e_sae.runs.checkpointing import list_checkpoints  # noqa: E402
from hf_e2e_sae.training.config import load_train_config  # noqa: E402

STEP2, STEP4 = "step_00000002", "step_00000004"


@pytest.fixture(autouse=True)
def _clean_accelerate(fresh_accelerate):
    yield


class _RunsCode:
    """Unpickling this creates `marker`: what a malicious checkpoint file could do."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _interrupted_run(make_config, name: str, stop_after: int):
    """A run stopped after `stop_after` steps with a checkpoint every 2 steps; returns (yaml path, output_dir)."""
    path, out = make_config(name, save_every_samples=16)
    assert trainer.train(load_train_config(path, ["--stop_after_steps", str(stop_after)])) == {}
    return path, out


def _resumed_from(caplog) -> str:
    return " ".join(r.getMessage() for r in caplog.records if "Resumed from" in r.getMessage())


def test_resume_never_unpickles_checkpoint_files(make_config, tmp_path):
    path, out = _interrupted_run(make_config, "pickle", 3)
    marker = tmp_path / "code_ran"
    for name in ("custom_checkpoint_0.pkl", "custom_checkpoint_1.pkl", "random_states_0.pkl"):
        torch.save(_RunsCode(marker), out / "checkpoints" / STEP2 / name)
    trainer.train(load_train_config(path, ["--resume_from_checkpoint", "latest"]))
    assert not marker.exists(), "resuming ran code from a checkpoint file"
    assert (out / "final" / "model.safetensors").exists()


def test_crafted_optimizer_state_is_refused_naming_the_file(make_config, tmp_path):
    path, out = _interrupted_run(make_config, "evil_optimizer", 3)
    marker = tmp_path / "code_ran"
    torch.save({"state": _RunsCode(marker), "param_groups": []}, out / "checkpoints" / STEP2 / "optimizer.bin")
    with pytest.raises(Exception, match=r"optimizer\.bin"):
        trainer.train(load_train_config(path, ["--resume_from_checkpoint", str(out / "checkpoints" / STEP2)]))
    assert not marker.exists()


@pytest.mark.parametrize("damage", ["missing_tensor", "missing_file"])
def test_incomplete_checkpoint_is_an_error_and_latest_falls_back(make_config, caplog, damage):
    path, out = _interrupted_run(make_config, f"incomplete_{damage}", 5)  # checkpoints at steps 2 and 4
    newest = out / "checkpoints" / STEP4
    if damage == "missing_tensor":
        weights = load_file(str(newest / "model.safetensors"))
        key = next(k for k in weights if k.endswith("decoder.weight"))
        del weights[key]
        save_file(weights, str(newest / "model.safetensors"), metadata={"format": "pt"})
        expected = r"model\.safetensors.*decoder\.weight"
    else:
        (newest / "optimizer.bin").unlink()
        expected = r"optimizer\.bin"
    with pytest.raises(Exception, match=expected):
        trainer.train(load_train_config(path, ["--resume_from_checkpoint", str(newest)]))

    caplog.set_level(logging.INFO, logger="hf_e2e_sae")
    caplog.clear()
    trainer.train(load_train_config(path, ["--resume_from_checkpoint", "latest"]))
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(STEP4 in w and STEP2 in w for w in warnings), warnings
    assert STEP2 in _resumed_from(caplog) and STEP4 not in _resumed_from(caplog)
    assert (out / "final" / "model.safetensors").exists()


def test_resume_with_a_changed_training_config_is_refused(make_config):
    path, out = _interrupted_run(make_config, "changed", 3)
    changed = ["--dict_size_ratio", "8", "--loss.sparsity.coeff", "2", "--data.context_length", "16",
               "--resume_from_checkpoint", "latest"]
    with pytest.raises(Exception, match=r"dict_size_ratio") as error:
        trainer.train(load_train_config(path, changed))
    for field in ("dict_size_ratio", "loss.sparsity.coeff", "data.context_length"):
        assert field in str(error.value)
    assert "log_every_steps" not in str(error.value)
    # Logging and evaluation cadence may change on resume.
    allowed = ["--log_every_steps", "2", "--eval_every_samples", "32", "--resume_from_checkpoint", "latest"]
    trainer.train(load_train_config(path, allowed))
    assert (out / "final" / "model.safetensors").exists()


def test_checkpoints_are_fsynced_before_the_rename_and_stale_tmp_removed(make_config, monkeypatch):
    path, out = make_config("durable", save_every_samples=16)
    stale = out / "checkpoints" / ".tmp-step_00000009"
    stale.mkdir(parents=True)
    (stale / "model.safetensors").write_bytes(b"half a file")
    synced = []
    real_fsync = os.fsync

    def recording_fsync(fd):
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    trainer.train(load_train_config(path))
    assert not stale.exists()
    checkpoints = list_checkpoints(out)
    assert checkpoints
    for checkpoint in checkpoints:
        tmp = checkpoint.parent / f".tmp-{checkpoint.name}"
        for file in checkpoint.iterdir():
            assert str(tmp / file.name) in synced, f"{file.name} was not fsynced before the rename"
        assert str(tmp) in synced  # the directory entries too


def test_fields_that_may_change_on_resume_are_documented_and_real():
    """Every field MAY_CHANGE_ON_RESUME names exists in TrainConfig and is listed in the failure-behaviour docs."""
    from hf_e2e_sae.config.arguments import to_dict
    from hf_e2e_sae.training.config import TrainConfig
    from hf_e2e_sae.runs.resume_compat import MAY_CHANGE_ON_RESUME, _flatten

    fields = set(_flatten(to_dict(TrainConfig())))
    section = (Path(__file__).resolve().parents[1] / "docs" / "concepts" / "failure-behaviour.md").read_text()
    for name in MAY_CHANGE_ON_RESUME:
        assert any(f == name or f.startswith(name + ".") for f in fields) or name == "data.load_kwargs", name
        assert f"`{name}`" in section, name
