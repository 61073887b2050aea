"""A sweep in one run (`hf_e2e_sae.training.sweep`): N SAE variants sharing data and the base model's passes.

The central check: every variant's weights after training equal those of a separate `train()` run with the
variant's config (same seed, same batches), to 1e-6 relative in fp32, for e2e, local, a mix of local and e2e+ds,
and local from the activation cache; a killed and resumed sweep equals the uninterrupted one; fields that cannot
vary are refused in one line before any model loads.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
import yaml

from train_fixtures import SITE, fresh_accelerate, load_sae_state, make_config, tiny_assets  # noqa: F401
from hf_e2e_sae.cli import main as cli_main
from hf_e2e_sae.config.arguments import ConfigError
from hf_e2e_sae.training.config import load_train_config
from hf_e2e_sae.training import step, sweep_step
from hf_e2e_sae.training.sweep import setup_sweep, sweep_outputs, train_sweep
from hf_e2e_sae.training.sweep_config import expand_sweep, variant_names
from hf_e2e_sae.training.trainer import train

SHORT = {"n_samples": 32, "save_every_samples": None}  # 4 optimizer steps of 2 micro-batches


@pytest.fixture(autouse=True)
def _clean_accelerate(fresh_accelerate):
    yield


def _max_relative_difference(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max() / b[k].abs().max().clamp_min(1e-30)) for k in a)


def _check_equals_separate_runs(config, tmp_path: Path, fresh_accelerate_state) -> list:
    """Train the sweep, then each variant alone; assert equal weights; returns the variant names."""
    metrics = train_sweep(config)
    names = []
    for name, variant in expand_sweep(config):
        fresh_accelerate_state()
        alone = variant.model_copy(update={"output_dir": str(tmp_path / "alone" / name)})
        single_metrics = train(alone)
        swept = load_sae_state(Path(variant.output_dir) / "final")
        separate = load_sae_state(tmp_path / "alone" / name / "final")
        assert _max_relative_difference(swept, separate) <= 1e-6, name
        assert metrics[name]["kl"] == pytest.approx(single_metrics["kl"], rel=1e-5)
        names.append(name)
    return names


def _reset():
    from train_fixtures import reset_accelerate_state
    reset_accelerate_state()


def test_e2e_sweep_equals_separate_runs_and_writes_table(make_config, tmp_path, monkeypatch):
    path, out = make_config("e2e", **SHORT, sweep={"loss.sparsity.coeff": [0.5, 4.0]})
    config = load_train_config(path)
    shared = []  # the variants' KLs read clean probabilities made once per micro-batch
    monkeypatch.setattr(sweep_step, "share_clean_probs", lambda *a: shared.append(step.share_clean_probs(*a)))
    names = _check_equals_separate_runs(config, tmp_path, _reset)
    assert len(shared) == 8  # 4 steps x 2 micro-batches
    assert names == ["coeff-0.5", "coeff-4"]
    for folder in sweep_outputs(config).values():
        assert (folder / "model.safetensors").is_file() and (folder / "eval_metrics.json").is_file()
    rows = list(csv.DictReader(open(out / "sweep.csv")))
    assert [r["variant"] for r in rows] == names
    for row, folder in zip(rows, sweep_outputs(config).values()):  # the table holds each variant's final metrics
        final = json.loads((folder / "eval_metrics.json").read_text())
        assert float(row["l0"]) == pytest.approx(final[f"l0/{SITE}"])
        assert float(row["ce_loss_increase"]) == pytest.approx(final["ce_loss_increase"])
        assert float(row["loss.sparsity.coeff"]) in (0.5, 4.0)
    assert "Pareto" in (out / "sweep.md").read_text()


@pytest.mark.parametrize("overrides, sweep, shares", [
    ({}, {"loss.sparsity.coeff": [0.5, 4.0]}, True),
    ({}, {"loss.preset": ["local", "e2e"]}, False),  # one KL: nothing to share
    ({"loss": {"preset": "e2e", "kl": {"backend": "liger"}}}, {"loss.sparsity.coeff": [0.5, 4.0]}, False),
    ({"loss": {"preset": "e2e", "kl": {"coeff": 0.0}}, "activation": "topk"}, {"k": [4, 8]}, False),  # no KL
])
def test_clean_probabilities_are_shared_only_by_two_or_more_kls(make_config, overrides, sweep, shares):
    path, _ = make_config("plan", **SHORT, **overrides, sweep=sweep)
    swept = setup_sweep(load_train_config(path))
    try:
        assert (swept.plan.kl_loss is not None) == shares
    finally:
        swept.release()


def test_local_sweep_over_two_fields_equals_separate_runs(make_config, tmp_path):
    path, _ = make_config("local", **SHORT, loss={"preset": "local"},
                          sweep={"loss.sparsity.coeff": [0.5, 2.0], "dict_size_ratio": [2, 4]})
    names = _check_equals_separate_runs(load_train_config(path), tmp_path, _reset)
    assert len(names) == 4 and "coeff-2_dict_size_ratio-4" in names


def test_mixed_local_and_e2e_ds_sweep_equals_separate_runs(make_config, tmp_path):
    """Local variants read the site's activation from the e2e variants' clean pass; e2e+ds reads its downstream."""
    path, _ = make_config("mixed", **SHORT, sweep={"loss.preset": ["local", "e2e+ds"]})
    assert _check_equals_separate_runs(load_train_config(path), tmp_path, _reset) == ["preset-local", "preset-e2e+ds"]


def test_local_sweep_from_activation_cache_equals_separate_live_runs(make_config, tmp_path):
    path, _ = make_config("cached", **SHORT, loss={"preset": "local"}, activation_cache=str(tmp_path / "cache"),
                          sweep={"loss.sparsity.coeff": [0.5, 2.0]})
    config = load_train_config(path)
    train_sweep(config)
    assert (tmp_path / "cache" / "manifest.json").is_file()
    for name, variant in expand_sweep(config):
        _reset()
        live = variant.model_copy(update={"output_dir": str(tmp_path / "live" / name), "activation_cache": None})
        train(live)
        swept = load_sae_state(Path(variant.output_dir) / "final")
        assert _max_relative_difference(swept, load_sae_state(tmp_path / "live" / name / "final")) <= 1e-6, name


def test_killed_and_resumed_sweep_equals_uninterrupted(make_config, tmp_path):
    sweep = {"loss.sparsity.coeff": [0.5, 4.0]}
    path, out = make_config("whole", n_samples=48, save_every_samples=16, sweep=sweep)
    train_sweep(load_train_config(path))
    _reset()
    path2, out2 = make_config("killed", n_samples=48, save_every_samples=16, sweep=sweep)
    assert train_sweep(load_train_config(path2, ["stop_after_steps=4"])) == {}
    assert not (out2 / "variants" / "coeff-0.5" / "final").exists()
    _reset()
    train_sweep(load_train_config(path2, ["resume_from_checkpoint=latest"]))
    for name in ("coeff-0.5", "coeff-4"):
        whole = load_sae_state(out / "variants" / name / "final")
        resumed = load_sae_state(out2 / "variants" / name / "final")
        assert _max_relative_difference(resumed, whole) == 0.0, name


@pytest.mark.parametrize("field, words", [
    ("data.context_length", "share one data stream"), ("seed", "data order"), ("base_model.dtype", "one base model"),
    ("sites", "blocks before the site"), ("output_dir", "one setting of the whole sweep")])
def test_fields_that_cannot_vary_are_refused_in_one_line(make_config, field, words):
    path, _ = make_config("bad")
    with pytest.raises(ConfigError, match=f"sweep: '{field}' cannot vary within a sweep: .*{words}") as error:
        load_train_config(path, [f"--sweep.{field}", "[1, 2]"])
    assert "\n" not in str(error.value)


def test_cli_refuses_a_bad_sweep_with_exit_2(make_config, capsys):
    path, out = make_config("cli")
    assert cli_main(["train", str(path), "--sweep.data.context_length", "16,32"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "data.context_length" in err and "Traceback" not in err
    assert not out.exists()


def test_sweep_parsing_names_and_variant_configs(make_config):
    path, out = make_config("parse")
    config = load_train_config(path, ["--sweep.loss.sparsity.coeff", "0.5,1,2", "sweep.k=[8]", "activation=topk"])
    assert config.sweep == {"loss.sparsity.coeff": [0.5, 1, 2], "k": [8]}
    variants = expand_sweep(config)
    assert [n for n, _ in variants] == ["coeff-0.5_k-8", "coeff-1_k-8", "coeff-2_k-8"]
    assert [v.loss.sparsity.coeff for _, v in variants] == [0.5, 1, 2] and all(v.k == 8 for _, v in variants)
    assert all(v.output_dir == f"{out}/variants/{n}" and not v.sweep for n, v in variants)
    assert variant_names({"loss.kl.coeff": [1], "loss.sparsity.coeff": [2]}) == ["loss-kl-coeff-1_loss-sparsity-coeff-2"]
    with pytest.raises(ConfigError, match="sweep variant k-0"):  # each variant is validated as a run of its own
        load_train_config(path, ["--sweep.k", "0", "activation=topk"])
    with pytest.raises(ValueError, match="train_sweep"):
        train(config)
    assert yaml.safe_load(yaml.safe_dump({"sweep": config.sweep}))["sweep"] == config.sweep


def test_a_preset_sweep_gives_each_variant_its_own_presets_coefficients(make_config):
    """The base config's preset fills its coefficients; a swept preset must not inherit them (only given ones)."""
    path, _ = make_config("presets", loss={"preset": "e2e", "sparsity": {"coeff": 2.0}},
                          sweep={"loss.preset": ["local", "e2e", "e2e+ds"]})
    local, e2e, e2e_ds = (v.loss for _, v in expand_sweep(load_train_config(path)))
    assert (local.kl.coeff, local.reconstruction.coeff, local.needs_logits) == (0.0, 1.0, False)
    assert (e2e.kl.coeff, e2e.reconstruction.coeff, e2e.downstream.coeff) == (1.0, 0.0, 0.0)
    assert e2e_ds.kl.coeff > 0 and e2e_ds.downstream.coeff > 0
    assert all(loss.sparsity.coeff == 2.0 for loss in (local, e2e, e2e_ds))  # the given coefficient is kept


def test_a_variant_that_diverges_stops_the_sweep_naming_it(make_config):
    from hf_e2e_sae.runs.safety import NonFiniteTrainingError

    path, out = make_config("nan", **SHORT, sweep={"lr": [1e-3, float("inf")]})
    with pytest.raises(NonFiniteTrainingError, match="^sweep variant lr-inf: Non-finite training at step"):
        train_sweep(load_train_config(path))
    assert not (out / "variants" / "lr-0.001" / "final").exists()  # no final/ for any variant


def test_cli_trains_a_sweep_given_on_the_command_line(make_config, capsys):
    path, out = make_config("cli_sweep", n_samples=16, save_every_samples=None)
    assert cli_main(["train", str(path), "--sweep.loss.sparsity.coeff", "0.5,4"]) == 0
    printed = capsys.readouterr().out
    assert "Sweep of 2 variants" in printed and "| coeff-0.5 |" in printed and "| coeff-4 |" in printed
    for name in ("coeff-0.5", "coeff-4"):
        saved = yaml.safe_load((out / "variants" / name / "final" / "train_config.yaml").read_text())
        assert saved["loss"]["sparsity"]["coeff"] == float(name.split("-")[1]) and saved["sweep"] == {}


def test_two_process_sweep_equals_one_process_sweep(make_config):
    """`accelerate launch` with 2 gloo processes (one micro-batch each per step) reaches the same weights for every
    variant as one process accumulating two micro-batches (the helpers of test_trainer_multiprocess.py)."""
    import subprocess

    from test_trainer_multiprocess import REPO, TIMEOUT_S, _launch_command
    from train_fixtures import finish_launch, subprocess_env

    sweep = {"loss.sparsity.coeff": [0.5, 4.0]}
    path_2, out_2 = make_config("two_procs", **SHORT, sweep=sweep)
    path_1, out_1 = make_config("one_proc", **SHORT, sweep=sweep)
    proc = subprocess.Popen(_launch_command(path_2), cwd=str(REPO), env=subprocess_env(), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        train_sweep(load_train_config(path_1))
    except BaseException:
        proc.kill()
        proc.communicate()
        raise
    finish_launch(proc, TIMEOUT_S * 3)
    for name in ("coeff-0.5", "coeff-4"):
        summary = yaml.safe_load((out_2 / "variants" / name / "final" / "train_summary.json").read_text())
        assert summary["num_processes"] == 2 and summary["optimizer_steps"] == 4
        one, two = load_sae_state(out_1 / "variants" / name / "final"), load_sae_state(out_2 / "variants" / name / "final")
        for key in one:
            torch.testing.assert_close(two[key], one[key], rtol=0, atol=1e-5)
