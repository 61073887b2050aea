"""Fault injection on the trainer: non-finite training, secrets, one run per output_dir, full disks, bad dirs.

Each test reproduces a failure an adversarial user found (issue 9) and checks the guaranteed behaviour:
no NaN artifact is ever written or published, no credential reaches a file, two runs never share an
output_dir, and failures happen before the work, not after it. Resume and loading faults live in
`test_faults_resume.py` and `test_faults_loading.py`. Tiny configs: every run takes about a second.
"""
from __future__ import annotations

import gc
import json
import os
import re
from pathlib import Path

import pytest

import torch  # a README-installed dependency: missing fails, never skips
import accelerate  # noqa: F401

from safetensors.torch import load_file, save_file  # noqa: E402
from train_fixtures import (  # noqa: E402,F401  (fixtures)
    SITE, fresh_accelerate, make_config, tiny_assets, write_train_config,
)

import hf_e2e_sae.training.trainer as trainer  # noqa: E402
from hf_e2e_sae import SparseAutoencoder, SAEConfig  # noqa: E402
from hf_e2e_sae.cli import main as cli_main  # noqa: E402
from hf_e2e_sae.runs.checkpointing import list_checkpoints  # noqa: E402
from hf_e2e_sae.training.config import load_train_config  # noqa: E402

SHORT = dict(n_samples=16, save_every_samples=None)  # 2 optimizer steps, no checkpoint


@pytest.fixture(autouse=True)
def _clean_accelerate(fresh_accelerate):
    yield


def _strict_json(path: Path):
    """json.loads that refuses NaN / Infinity (what every other JSON reader does)."""
    def refuse(constant):
        raise ValueError(f"{path}: invalid JSON constant {constant}")

    return json.loads(path.read_text(), parse_constant=refuse)


def _all_finite(folder: Path) -> bool:
    return all(torch.isfinite(t).all() for f in folder.rglob("*.safetensors") for t in load_file(str(f)).values())


# ---------------------------------------------------------------- 1. non-finite training stops


@pytest.mark.parametrize("override", [["--loss.sparsity.coeff", "1e39"], ["--loss.sparsity.p", "1e-9"]])
def test_non_finite_loss_stops_with_one_line_error(make_config, capsys, override):
    """Today: inf/NaN loss, exit 0, an all-NaN final/model.safetensors and a bare NaN in eval_metrics.json."""
    path, out = make_config("nonfinite", **SHORT)
    status = cli_main(["train", str(path), *override])
    err = capsys.readouterr().err
    messages = [line for line in err.splitlines() if line.startswith("hf-e2e-sae train:")]
    assert status == 1 and len(messages) == 1, err[-2000:]
    assert "step 1" in messages[0] and "sparsity" in messages[0] and "non-finite" in messages[0].lower()
    assert "Traceback" not in err
    assert not (out / "final").exists()
    for file in out.rglob("*.json"):
        _strict_json(file)


def test_non_finite_mid_run_keeps_last_good_checkpoint(make_config, monkeypatch):
    """Weights blow up after the step-4 checkpoint: the run stops at step 5 and step_00000004 stays good."""
    path, out = make_config("blowup", save_every_samples=32)  # 8 steps, a checkpoint at step 4
    real_step = trainer.train_step

    def blow_up_at_step_5(run, batches):
        if run.state.step == 4:
            with torch.no_grad():
                next(iter(run.sae_parameters)).fill_(float("inf"))
        return real_step(run, batches)

    monkeypatch.setattr(trainer, "train_step", blow_up_at_step_5)
    with pytest.raises(Exception, match=r"(?i)non-finite.*step 5"):
        trainer.train(load_train_config(path))
    assert not (out / "final").exists()
    assert [p.name for p in list_checkpoints(out)] == ["step_00000004"]
    assert _all_finite(out / "checkpoints" / "step_00000004")


@pytest.mark.parametrize("metrics, named", [
    ({"loss": float("nan"), "sparsity": 0.1, "kl": float("nan"), "grad_norm": float("nan")}, "loss term 'kl' is nan"),
    ({"loss": float("inf"), "sparsity": 1e-3, "grad_norm": 1.0}, "loss.sparsity.coeff=1e+39"),
    ({"loss": 0.5, "sparsity": 0.1, "grad_norm": float("inf")}, "gradient norm is inf"),
])
def test_non_finite_step_names_the_term(metrics, named):
    """The check reads the step's host values (already synced once per step): it names what went wrong."""
    from types import SimpleNamespace

    from hf_e2e_sae.runs.safety import NonFiniteTrainingError, check_step_finite

    loss = SimpleNamespace(sparsity=SimpleNamespace(coeff=1e39), kl=SimpleNamespace(coeff=1.0))
    with pytest.raises(NonFiniteTrainingError, match=rf"^Non-finite training at step 7: .*{re.escape(named)}") as e:
        check_step_finite(7, metrics, loss)
    assert "\n" not in str(e.value)
    check_step_finite(7, {"loss": 0.5, "sparsity": 0.1, "grad_norm": 3.0}, loss)  # finite: no error


def test_save_and_push_refuse_non_finite_weights(tmp_path, hub, hf_cache, hf_token):
    """Today save_pretrained writes NaN weights and push_run_to_hub publishes them."""
    from hf_e2e_sae.hub import push_run_to_hub

    sae = SparseAutoencoder(SAEConfig(d_in=8, dict_size=16, site=SITE, base_model_name_or_path="gpt2"))
    with torch.no_grad():
        sae.decoder.weight[0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"decoder\.weight.*non-finite|non-finite.*decoder\.weight"):
        sae.save_pretrained(tmp_path / "nan_sae")
    assert not (tmp_path / "nan_sae" / "model.safetensors").exists()

    folder = tmp_path / "run" / "final"
    with torch.no_grad():
        sae.decoder.weight[0, 0] = 0.0
    sae.save_pretrained(folder)
    weights = load_file(str(folder / "model.safetensors"))
    weights["encoder.bias"][3] = float("inf")  # corrupted on disk after saving
    save_file(weights, str(folder / "model.safetensors"), metadata={"format": "pt"})
    repo_id = hub.unique_repo_id("nan")
    with pytest.raises(ValueError, match=r"model\.safetensors.*encoder\.bias.*non-finite"):
        push_run_to_hub(tmp_path / "run", repo_id)
    assert not hub.repo_exists(repo_id)


def test_patched_model_save_writes_nothing_when_one_sae_is_non_finite(tmp_path):
    from transformers import AutoModelForCausalLM

    from hf_e2e_sae import SAEPatchedModel
    from hf_e2e_sae.patching.base_models import TINY_LM_DIR

    saes = [SparseAutoencoder(SAEConfig(d_in=128, dict_size=64, site=f"blocks.{i}.resid_pre")) for i in (1, 2)]
    with torch.no_grad():
        saes[1].encoder.weight[0, 0] = float("inf")
    model = SAEPatchedModel(AutoModelForCausalLM.from_pretrained(TINY_LM_DIR), saes)
    with pytest.raises(ValueError, match=r"blocks\.2\.resid_pre.*encoder\.weight.*non-finite"):
        model.save_pretrained(tmp_path / "saved")
    assert not (tmp_path / "saved").exists()  # not even the finite first SAE


def test_json_outputs_stay_valid_with_nan_metrics(make_config, monkeypatch):
    """A metric that is NaN (e.g. a variance of zero) is written as null, never as a bare NaN."""
    path, out = make_config("nan_metric", **SHORT)
    monkeypatch.setattr(trainer, "evaluate", lambda *a, **k: {"kl": float("nan"), "n_tokens": 8})
    trainer.train(load_train_config(path))
    assert _strict_json(out / "final" / "eval_metrics.json") == {"kl": None, "n_tokens": 8}
    for file in out.rglob("*.json"):
        _strict_json(file)


# ---------------------------------------------------------------- 2. secrets stay secret


def test_secrets_are_redacted_everywhere_but_still_used(make_config, monkeypatch, hub, hf_cache, hf_token):
    """A token in data.load_kwargs reached checkpoints, final/, tensorboard files, the pushed README and config."""
    import tensorboard  # noqa: F401  (the examples extra installs it)
    import hf_e2e_sae.data.pipeline as data

    secret = "hf_SECRETsecretSECRET1234567890"
    repo_id = hub.unique_repo_id("secret")
    path, out = make_config("secret", n_samples=32, save_every_samples=16, tracker="tensorboard", push_to_hub=True,
                            hub_repo_id=repo_id, data={"load_kwargs": {"sample_by": "document", "token": secret}})
    seen = []
    real_load = data.datasets.load_dataset

    def spy(*args, **kwargs):
        seen.append(kwargs.get("token"))
        return real_load(*args, **{k: v for k, v in kwargs.items() if k != "token"})

    monkeypatch.setattr(data.datasets, "load_dataset", spy)
    trainer.train(load_train_config(path))
    assert secret in seen  # the run still used it
    written = [f for f in out.rglob("*") if f.is_file()]
    assert any(f.name.startswith("events.out.tfevents") for f in written)
    assert any(f.parent.name.startswith("step_") for f in written)
    leaks = [str(f) for f in written if secret.encode() in f.read_bytes()]
    assert not leaks, leaks
    pushed = hub.repo_files(repo_id)
    assert "train_config.yaml" in pushed and "README.md" in pushed
    assert not [name for name, data in pushed.items() if secret.encode() in data]
    assert "load_kwargs" in pushed["train_config.yaml"].decode()  # redacted, not dropped


def test_push_of_an_old_run_folder_publishes_valid_json_and_no_secret(tmp_path, hub, hf_cache, hf_token):
    """A final/ written before these fixes (bare NaN metric, plain-text token) is cleaned on the way up."""
    from hf_e2e_sae.hub import push_run_to_hub

    folder = tmp_path / "old_run" / "final"
    SparseAutoencoder(SAEConfig(d_in=8, dict_size=16, site=SITE, base_model_name_or_path="gpt2")).save_pretrained(folder)
    (folder / "eval_metrics.json").write_text('{"kl": NaN, "n_tokens": 8}')
    (folder / "train_config.yaml").write_text("data:\n  load_kwargs:\n    token: hf_oldSECRET\n")
    repo_id = hub.unique_repo_id("old")
    push_run_to_hub(folder.parent, repo_id)
    files = hub.repo_files(repo_id)
    assert json.loads(files["eval_metrics.json"], parse_constant=lambda c: pytest.fail(c)) == {"kl": None, "n_tokens": 8}
    assert not [name for name, data in files.items() if b"hf_oldSECRET" in data]


def test_redaction_rules():
    from hf_e2e_sae.runs.redaction import REDACTED, redact_secrets

    tree = {"token": "t", "hf_token": "t", "use_auth_token": "t", "password": "p", "client_secret": "s",
            "api_key": "k", "apiKey": "k", "headers": {"Authorization": "Bearer x"}, "n_tokens": 5,
            "alive_window_tokens": 7, "eos_token": "<eos>", "tokenizer": "gpt2", "token_flag": None,
            "url": "https://user:pw@host/x?token=abc&x=1", "nested": [{"secret": 1}]}
    red = redact_secrets(tree)
    assert red["n_tokens"] == 5 and red["alive_window_tokens"] == 7 and red["eos_token"] == "<eos>"
    assert red["tokenizer"] == "gpt2" and red["token_flag"] is None
    for key in ("token", "hf_token", "use_auth_token", "password", "client_secret", "api_key", "apiKey"):
        assert red[key] == REDACTED, key
    assert red["headers"]["Authorization"] == REDACTED and red["nested"][0]["secret"] == REDACTED
    assert "pw" not in red["url"] and "abc" not in red["url"] and red["url"].endswith("x=1")
    assert tree["token"] == "t"  # the original is untouched


# ---------------------------------------------------------------- 3. one run per output directory


def test_second_run_on_a_locked_output_dir_fails_naming_the_pid(make_config):
    """Today two runs on one output_dir both exit 0 and interleave their checkpoints."""
    path, out = make_config("locked", **SHORT)
    first = trainer.setup_run(load_train_config(path))  # holds output_dir for its lifetime
    with pytest.raises(Exception, match=rf"(?i)in use.*pid {os.getpid()}"):
        trainer.train(load_train_config(path))
    assert not (out / "final").exists()
    del first
    gc.collect()  # the holder is gone: its lock file stays behind but must not block
    assert (out / ".lock").exists()
    trainer.train(load_train_config(path))
    assert (out / "final" / "model.safetensors").exists()


def test_lock_names_another_process_and_a_killed_holder_never_blocks(tmp_path):
    """The holder's pid is read from the lock file; after `kill -9` the kernel has dropped its flock."""
    import signal
    import subprocess
    import sys

    from hf_e2e_sae.runs.output_dir import OutputDirError, prepare_output_dir

    holder = subprocess.Popen([sys.executable, "-c", (
        "import fcntl, os, sys, time; f = open(sys.argv[1], 'a+'); fcntl.flock(f, fcntl.LOCK_EX); "
        "f.write(str(os.getpid())); f.flush(); print('locked', flush=True); time.sleep(60)"), str(tmp_path / ".lock")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(OutputDirError, match=rf"in use by another run \(pid {holder.pid}\)"):
            prepare_output_dir(tmp_path, None, False)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    lock = prepare_output_dir(tmp_path, None, False)  # the stale lock file does not block
    assert (tmp_path / ".lock").read_text().strip() == str(os.getpid())
    lock.release()


def test_refuses_another_runs_directory_unless_told(make_config):
    """Today a new run in a finished run's directory mixes checkpoints and `resume latest` picks the old run."""
    path, out = make_config("reuse", n_samples=32, save_every_samples=16)
    trainer.train(load_train_config(path))
    old_checkpoints = list_checkpoints(out)
    assert old_checkpoints and (out / "final").exists()
    with pytest.raises(Exception, match=r"(?s)final.*overwrite_output_dir.*resume_from_checkpoint"):
        trainer.train(load_train_config(path))
    assert list_checkpoints(out) == old_checkpoints
    trainer.train(load_train_config(path, ["--overwrite_output_dir", "true", "--save_every_samples", "null"]))
    assert list_checkpoints(out) == [] and (out / "final" / "model.safetensors").exists()


# ---------------------------------------------------------------- 5. fail before the work


@pytest.mark.parametrize("where", ["parent_is_a_file", "read_only_filesystem"])
def test_unusable_output_dir_fails_before_the_model_loads(tiny_assets, tmp_path, monkeypatch, where):
    """Today a read-only output_dir trains every step and evaluates, then fails writing final/."""
    if where == "parent_is_a_file":
        (tmp_path / "a_file").write_text("x")
        target = tmp_path / "a_file" / "out"
    else:
        target = Path("/proc/self/hf_e2e_sae_out")  # /proc refuses new entries, even to root
    path = write_train_config(tmp_path / "unusable.yaml", tiny_assets, target, **SHORT)
    monkeypatch.setattr(trainer, "build_patched_model", lambda *a: pytest.fail("the model was loaded"))
    with pytest.raises(Exception, match=rf"output_dir.*{target}"):
        trainer.train(load_train_config(path))


def test_full_disk_while_saving_names_the_path_and_keeps_earlier_checkpoints(make_config, monkeypatch):
    """Today: `enforce fail at inline_container.cc:672`, and a half-written .tmp checkpoint left behind."""
    path, out = make_config("full_disk", save_every_samples=16)  # checkpoints at steps 2, 4, 6
    real_save = torch.save

    def save_on_a_full_disk(*args, **kwargs):
        if list_checkpoints(out):  # the first checkpoint fits, the second does not
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 128 vs 0")
        return real_save(*args, **kwargs)

    monkeypatch.setattr(torch, "save", save_on_a_full_disk)
    with pytest.raises(Exception, match=r"(?i)disk is full.*step_00000004") as error:
        trainer.train(load_train_config(path))
    assert str(out) in str(error.value)
    assert [p.name for p in list_checkpoints(out)] == ["step_00000002"]
    assert not [p for p in (out / "checkpoints").iterdir() if p.name.startswith(".tmp-")]
    assert _all_finite(out / "checkpoints" / "step_00000002")


def test_disk_full_oserror_is_reported_with_the_path(tmp_path, monkeypatch):
    import errno

    from hf_e2e_sae.runs import output_dir as output_dir_module

    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(output_dir_module.os, "fsync", no_space)
    target = tmp_path / "f.bin"
    with pytest.raises(OSError, match=rf"(?i)disk is full.*{target}"):
        output_dir_module.write_bytes_durably(target, b"abc")

