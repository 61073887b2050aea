"""End-to-end tests of the trainer (`hf_e2e_sae.training.trainer`) on a tiny GPT-2, in-process and offline.

Every run uses the assets of `train_fixtures.py` (3-block width-32 GPT-2, 512-token BPE, two Shakespeare
documents) and finishes in seconds on 2 CPU cores. Accelerate's process-global state is reset around each
test (`fresh_accelerate`). The 2-process run lives in `test_trainer_multiprocess.py`.
"""
from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest

import torch  # a README-installed dependency: missing fails, never skips
import accelerate  # noqa: F401
import datasets  # noqa: F401

from safetensors.torch import load_file  # noqa: E402
from train_fixtures import (  # noqa: E402,F401  (fixtures are used by name)
    CONTEXT, N_LAYER, SITE, fresh_accelerate, load_sae_state, make_config, tiny_assets,
)
from transformers import AutoTokenizer  # noqa: E402

import hf_e2e_sae.training.trainer as trainer  # noqa: E402
from hf_e2e_sae import SAEPatchedModel  # noqa: E402
from hf_e2e_sae.runs.checkpointing import list_checkpoints, resolve_resume  # noqa: E402
from hf_e2e_sae.cli import main as cli_main  # noqa: E402
from hf_e2e_sae.config.arguments import ConfigError  # noqa: E402
from hf_e2e_sae.data.pipeline import build_datasets  # noqa: E402
from hf_e2e_sae.evaluation.metrics import evaluate  # noqa: E402
from hf_e2e_sae.training.config import load_train_config  # noqa: E402

FINAL_FILES = {"hf_e2e_sae.json", "config.json", "model.safetensors", "eval_metrics.json", "train_config.yaml",
               "train_summary.json"}


@pytest.fixture(autouse=True)
def _clean_accelerate(fresh_accelerate):
    yield


def _sae_key(site: str = SITE) -> str:
    return "saes." + site.replace(".", "__") + "."


def _check_metric_ranges(metrics: dict, dict_size: int) -> None:
    assert metrics["n_tokens"] == 8 * CONTEXT
    assert metrics["kl"] >= 0
    assert 0 <= metrics["top1_agreement"] <= 1
    assert 0 <= metrics["total_variation"] <= 1
    assert metrics["ce_loss_orig"] > 0 and metrics["ce_loss_sae"] > 0
    assert metrics["ce_loss_increase"] == pytest.approx(metrics["ce_loss_sae"] - metrics["ce_loss_orig"], abs=1e-12)
    assert 0 < metrics[f"l0/{SITE}"] <= dict_size
    alive = metrics[f"alive/{SITE}"]
    assert isinstance(alive, int) and 0 <= alive <= dict_size


# ---------------------------------------------------------------- 1. a short e2e run


def test_e2e_run_lowers_loss_and_writes_final(make_config, tiny_assets, monkeypatch):
    """train(): per-step training loss falls (also on one fixed batch), final metrics are in range and
    final/ holds a loadable SAEPatchedModel that reproduces eval_metrics.json."""
    path, out = make_config("e2e")
    config = load_train_config(path)
    assert config.total_steps == 8

    seen: dict = {"logs": []}
    real_train_step = trainer.train_step

    def spy(run, batches):
        if not seen["logs"]:  # before the first optimizer step: the loss of a fixed micro-batch
            seen["run"], seen["fixed"] = run, batches[0]["input_ids"].clone()
            with torch.no_grad():
                seen["before"] = float(trainer.micro_batch_loss(run, seen["fixed"])[0])
        logs = real_train_step(run, batches)
        seen["logs"].append(logs)
        return logs

    monkeypatch.setattr(trainer, "train_step", spy)
    metrics = trainer.train(config)

    logs = seen["logs"]
    assert len(logs) == config.total_steps
    for step_logs in logs:
        assert {"train/loss", "train/sparsity", "train/kl", f"train/l0/{SITE}", "train/grad_norm"} <= set(step_logs)
        assert "train/reconstruction" not in step_logs and "train/downstream" not in step_logs
        assert step_logs["train/kl"] >= 0 and 0 < step_logs[f"train/l0/{SITE}"] <= tiny_assets.dict_size
    losses = [step_logs["train/loss"] for step_logs in logs]
    assert sum(losses[-2:]) < 0.97 * sum(losses[:2]), losses
    with torch.no_grad():
        after = float(trainer.micro_batch_loss(seen["run"], seen["fixed"])[0])
    assert after < 0.97 * seen["before"], (seen["before"], after)
    # Alive windows of 512 tokens = 2 optimizer steps of 2 x 4 x 32 tokens: reported every second step.
    alive_logs = [step_logs[f"train/alive/{SITE}"] for step_logs in logs if f"train/alive/{SITE}" in step_logs]
    assert len(alive_logs) == 4 and all(0 <= a <= tiny_assets.dict_size for a in alive_logs)
    assert logs[-1]["train/lr"] == pytest.approx(config.lr * config.min_lr_factor)
    # One Adam update per optimizer step: gradient accumulation never splits a step (not even the last one).
    adam = seen["run"].optimizer.optimizer
    assert [int(adam.state[p]["step"]) for p in seen["run"].sae_parameters] == [config.total_steps] * 4

    _check_metric_ranges(metrics, tiny_assets.dict_size)
    final = out / "final"
    assert FINAL_FILES <= {p.name for p in final.iterdir()}
    assert json.loads((final / "eval_metrics.json").read_text()) == pytest.approx(metrics)
    summary = json.loads((final / "train_summary.json").read_text())
    assert summary["optimizer_steps"] == 8 and summary["train_samples"] == 64 and summary["num_processes"] == 1
    assert summary["train_tokens"] == 64 * CONTEXT
    assert load_train_config(final / "train_config.yaml") == config
    assert all(k.startswith(("encoder.", "decoder.")) for k in load_sae_state(final))

    loaded = SAEPatchedModel.from_pretrained(final, base_model=config.base_model.name_or_path)
    assert loaded.sites == [SITE]
    trained = seen["run"].accelerator.unwrap_model(seen["run"].model)
    for name, value in trained.sae(SITE).state_dict().items():
        torch.testing.assert_close(loaded.sae(SITE).state_dict()[name], value, rtol=0, atol=0)
    out_loaded = loaded(seen["fixed"])
    assert out_loaded.logits.shape == (*seen["fixed"].shape, loaded.config.vocab_size)
    assert torch.isfinite(out_loaded.logits).all()
    reloaded_metrics = evaluate(loaded, seen["run"].eval_loader)
    assert reloaded_metrics == pytest.approx(metrics, rel=1e-5, abs=1e-6)


# ---------------------------------------------------------------- 2. the three presets


@pytest.mark.parametrize("preset", ["local", "e2e", "e2e+ds"])
def test_presets_train(preset, make_config, tiny_assets):
    """Each preset trains: its loss terms, whether logits are computed, falling loss, finite changed weights."""
    path, _ = make_config(preset.replace("+", "_"), loss={"preset": preset}, n_samples=32, save_every_samples=None)
    run = trainer.setup_run(load_train_config(path))
    model = run.accelerator.unwrap_model(run.model)
    calls = {"lm_head": 0, "after_site": 0}
    model.base_model.lm_head.register_forward_hook(lambda *a: calls.__setitem__("lm_head", calls["lm_head"] + 1))
    # Blocks from the SAE's block on: a local run stops at the SAE (blocks.1.resid_pre) and never runs them.
    for block in model.base_model.transformer.h[1:]:
        block.register_forward_hook(lambda *a: calls.__setitem__("after_site", calls["after_site"] + 1))
    w0 = {k: v.detach().clone() for k, v in model.saes.state_dict().items()}

    groups = list(trainer._micro_batch_groups(run))
    assert len(groups) == 4 and all(len(g) == 2 for g in groups)
    fixed = groups[0][0]["input_ids"]
    with torch.no_grad():
        before_total, before_terms = trainer.micro_batch_loss(run, fixed)[:2]
    calls.update(lm_head=0, after_site=0)
    logs = [trainer.train_step(run, g) for g in groups]
    with torch.no_grad():
        after_total, after_terms = trainer.micro_batch_loss(run, fixed)[:2]

    all_terms = ("sparsity", "reconstruction", "kl", "downstream")
    terms = {name for name in all_terms if f"train/{name}" in logs[0]}
    if preset == "local":
        assert terms == {"sparsity", "reconstruction"}
        assert calls == {"lm_head": 0, "after_site": 0}  # never computes logits nor later blocks
    else:
        assert terms == ({"sparsity", "kl"} if preset == "e2e" else {"sparsity", "kl", "downstream"})
        n_micro = sum(len(g) for g in groups) + 1  # + the fixed batch after training
        assert calls["lm_head"] == 0  # the KL is fused with the unembedding: no logits are ever made
        assert calls["after_site"] == 2 * n_micro * (N_LAYER - 1)  # blocks from the SAE's on: both passes
    if preset == "e2e+ds":
        assert run.downstream_sites == [f"blocks.{b}.resid_pre" for b in range(2, N_LAYER)]
    assert set(before_terms) == terms

    assert float(after_total) < 0.99 * float(before_total), (float(before_total), float(after_total))
    assert float(after_terms["sparsity"]) < float(before_terms["sparsity"])
    losses = [step_logs["train/loss"] for step_logs in logs]
    assert losses[-1] < losses[0], losses
    for k, v in model.saes.state_dict().items():
        assert torch.isfinite(v).all(), k
        assert not torch.equal(v, w0[k]), f"{k} did not change"
    assert all(torch.isfinite(torch.tensor(list(step_logs.values()))).all() for step_logs in logs)


# ---------------------------------------------------------------- 3. resumption and checkpoints


def test_resume_matches_uninterrupted_run(make_config, caplog):
    """stop_after_steps + resume_from_checkpoint=latest == one uninterrupted run; checkpoints hold SAE weights
    only, are rotated to keep_checkpoints, and a leftover .tmp-step_* directory is never resumed from."""
    caplog.set_level(logging.INFO, logger="hf_e2e_sae")
    overrides = dict(save_every_samples=16, keep_checkpoints=2)  # checkpoints at steps 2, 4, 6 of 8

    path_a, out_a = make_config("uninterrupted", **overrides)
    metrics_a = trainer.train(load_train_config(path_a))
    assert [p.name for p in list_checkpoints(out_a)] == ["step_00000004", "step_00000006"]  # step 2 rotated out
    assert sorted(p.name for p in (out_a / "checkpoints").iterdir()) == ["step_00000004", "step_00000006"]

    path_b, out_b = make_config("interrupted", **overrides)
    fresh = load_train_config(path_b, ["--stop_after_steps", "5"])
    assert trainer.train(fresh) == {}
    assert not (out_b / "final").exists()
    assert [p.name for p in list_checkpoints(out_b)] == ["step_00000002", "step_00000004"]

    # The checkpoint holds the SAE weights, optimizer, scheduler, trainer state and config; no base weights.
    ckpt = out_b / "checkpoints" / "step_00000004"
    weights = load_file(str(ckpt / "model.safetensors"))
    assert weights and all(k.startswith(_sae_key()) for k in weights), sorted(weights)
    assert {k[len(_sae_key()):] for k in weights} == {"encoder.weight", "encoder.bias", "decoder.weight",
                                                      "decoder.bias"}
    assert {"optimizer.bin", "scheduler.json", "trainer_state.json", "train_config.yaml"} <= {
        p.name for p in ckpt.iterdir()}
    assert not list(ckpt.glob("*.pkl"))  # nothing that resuming would have to unpickle

    # A crash while saving step 7 leaves a newer but incomplete, corrupt temporary directory behind.
    tmp = out_b / "checkpoints" / ".tmp-step_00000007"
    shutil.copytree(ckpt, tmp)
    for name in ("model.safetensors", "optimizer.bin", "trainer_state.json"):
        (tmp / name).write_bytes(b"truncated")
    assert resolve_resume("latest", out_b) == ckpt

    caplog.clear()
    resumed = load_train_config(path_b, ["--resume_from_checkpoint", "latest"])
    metrics_b = trainer.train(resumed)
    assert any("Resumed from" in r.getMessage() and r.getMessage().split()[2].endswith("step_00000004")
               and "at step 4" in r.getMessage() for r in caplog.records), [r.getMessage() for r in caplog.records]

    state_a, state_b = load_sae_state(out_a / "final"), load_sae_state(out_b / "final")
    assert state_a.keys() == state_b.keys()
    for k in state_a:
        torch.testing.assert_close(state_b[k], state_a[k], rtol=0, atol=1e-6)
    assert metrics_b == pytest.approx(metrics_a, rel=1e-6, abs=1e-7)
    summary_b = json.loads((out_b / "final" / "train_summary.json").read_text())
    assert summary_b["optimizer_steps"] == 8 and summary_b["train_samples"] == 64
    # The resumed run saved step 6 and rotated step 2 out; the stale .tmp dir stays ignored.
    assert [p.name for p in list_checkpoints(out_b)] == ["step_00000004", "step_00000006"]


# ---------------------------------------------------------------- 5. bad configs


def test_unknown_key_suggests_nearest(make_config, capsys):
    path, _ = make_config("bad_key")
    with pytest.raises(ConfigError, match=r"'loss\.sparsity\.coeff'\?$"):
        load_train_config(path, ["--loss.sparsty.coeff", "3"])
    # the console command: exit status 2 and the message, no traceback
    assert cli_main(["train", str(path), "--loss.sparsty.coeff", "3"]) == 2
    assert "did you mean 'loss.sparsity.coeff'?" in capsys.readouterr().err


@pytest.mark.parametrize("overrides, pattern", [
    (["--batch_size", "3"], r"batch_size=3 must divide effective_batch_size=8"),
    (["--loss.preset", "e2e_ds"], r"loss\.preset.*'local', 'e2e', 'e2e\+ds'"),
    (["--n_tokens", "2048"], r"exactly one of n_samples and n_tokens"),
    (["--n_samples", "null"], r"exactly one of n_samples and n_tokens"),
    (["--sites", "blocks.1.resid_pre", "--loss.preset", "e2e+ds", "--loss.downstream.sites", "blocks.0.resid_pre"],
     r"blocks\.0\.resid_pre.*not after the last SAE site"),
    (["--loss.preset", "e2e+ds", "--loss.downstream.sites", "blocks.1.resid_pre"], r"not after the last SAE site"),
    (["--loss.preset", "e2e+ds", "--loss.downstream.sites", "blocks.0.resid_post"], r"not after the last SAE site"),
    (["--sites", "blocks.1.resid_mid"], r"Unknown site 'blocks\.1\.resid_mid'"),
])
def test_bad_config_errors(make_config, overrides, pattern):
    path, _ = make_config("bad")
    with pytest.raises(ConfigError, match=pattern):
        load_train_config(path, overrides)


def test_downstream_site_after_sae_is_accepted(make_config):
    path, _ = make_config("ok_ds")
    config = load_train_config(path, ["--loss.preset", "e2e+ds", "--loss.downstream.sites", "blocks.1.attn_out"])
    assert config.loss.downstream.sites == ["blocks.1.attn_out"]


@pytest.mark.parametrize("overrides, pattern", [
    (["--sites", "blocks.5.resid_pre"], r"'blocks\.5\.resid_pre'.*block index 5 out of range.*3 blocks"),
    (["--loss.preset", "e2e+ds", "--loss.downstream.sites", "blocks.3.resid_pre"],
     r"'blocks\.3\.resid_pre'.*block index 3 out of range.*3 blocks"),
])
def test_site_missing_from_base_model_fails_before_training(make_config, monkeypatch, overrides, pattern):
    path, out = make_config("bad_site")
    config = load_train_config(path, overrides)  # valid syntax: only the base model can tell

    def never(*args, **kwargs):
        raise AssertionError("training data was built / a step was taken before the site was checked")

    monkeypatch.setattr(trainer, "build_datasets", never)
    monkeypatch.setattr(trainer, "train_step", never)
    with pytest.raises(ValueError, match=pattern):
        trainer.train(config)
    assert not (out / "final").exists() and not (out / "checkpoints").exists()


# ---------------------------------------------------------------- 6. held-out data


@pytest.mark.parametrize("sample_by", ["document", "paragraph"])
def test_held_out_eval_does_not_overlap_training(make_config, tiny_assets, monkeypatch, sample_by):
    """The datasets the trainer builds: eval = the first n_eval_samples chunks of the token stream, training
    only chunks after the first document that starts after them; no eval chunk is a training chunk."""
    path, _ = make_config(f"heldout_{sample_by}", data={"load_kwargs": {"sample_by": sample_by}})
    config = load_train_config(path)
    captured = {}

    def spy(data_config, tokenizer, n_train_samples=None, seed=0):
        captured.update(args=(data_config, n_train_samples, seed))
        captured["train"], captured["eval"] = build_datasets(data_config, tokenizer, n_train_samples, seed)
        return captured["train"], captured["eval"]

    monkeypatch.setattr(trainer, "build_datasets", spy)
    run = trainer.setup_run(config)
    assert captured["args"] == (config.data, config.total_samples, config.seed)
    L = config.data.context_length
    eval_chunks = [tuple(row.tolist()) for row in captured["eval"]["input_ids"]]
    train_chunks = [tuple(row.tolist()) for row in captured["train"]["input_ids"]]
    assert len(eval_chunks) == config.data.n_eval_samples and len(train_chunks) == config.total_samples
    assert all(len(c) == L for c in eval_chunks + train_chunks)
    assert not set(eval_chunks) & set(train_chunks)

    # What the loaders hand to training / evaluation is exactly that data.
    assert [tuple(r.tolist()) for b in run.eval_loader for r in b["input_ids"]] == eval_chunks
    assert [tuple(r.tolist()) for b in run.train_loader for r in b["input_ids"]] == train_chunks

    # Independent reconstruction of the token stream (documents + EOS, as `datasets` "text" splits them).
    tok = AutoTokenizer.from_pretrained(config.base_model.name_or_path)
    texts = [Path(d).read_text(encoding="utf-8") for d in tiny_assets.docs]
    if sample_by == "paragraph":
        texts = [p for t in texts for p in t.split("\n\n")]
    docs = [tok(t, add_special_tokens=False)["input_ids"] + [tok.eos_token_id] for t in texts if t]
    stream = [t for d in docs for t in d]
    assert eval_chunks == [tuple(stream[i * L:(i + 1) * L]) for i in range(len(eval_chunks))]
    starts, pos = [], 0
    for d in docs:
        starts.append(pos)
        pos += len(d)
    train_start = min(s for s in starts if s >= len(eval_chunks) * L)
    assert train_start >= len(eval_chunks) * L
    windows = {tuple(stream[i:i + L]) for i in range(train_start, len(stream) - L + 1, L)}
    assert set(train_chunks) <= windows
    # Document-disjoint too: no training chunk contains tokens from before train_start.
    held_out_part = stream[:train_start]
    assert not {tuple(held_out_part[i:i + L]) for i in range(0, len(held_out_part) - L + 1)} & set(train_chunks)


def test_tensorboard_tracker_receives_train_and_eval_metrics(make_config):
    """`tracker: tensorboard` logs training and held-out metrics; a missing tracker package is an error."""
    from tensorboard.backend.event_processing import event_accumulator  # the examples extra installs it
    path, out = make_config("tb", tracker="tensorboard", n_samples=16, save_every_samples=None, log_every_steps=1)
    trainer.train(load_train_config(path))
    logdir = next(p.parent for p in out.rglob("events.out.tfevents.*"))
    events = event_accumulator.EventAccumulator(str(logdir))
    events.Reload()
    scalars = set(events.Tags()["scalars"])
    assert {"train/loss", "train/lr", "train/kl", f"train/l0/{SITE}", "eval/ce_loss_increase", "eval/kl"} <= scalars
    assert [e.step for e in events.Scalars("train/loss")] == [1, 2]


def test_missing_tracker_package_is_a_clear_error(make_config, monkeypatch):
    import accelerate.utils

    monkeypatch.setattr(accelerate.utils, "is_wandb_available", lambda: False)
    path, _ = make_config("wandb", tracker="wandb")
    with pytest.raises(ValueError, match="pip install wandb"):
        trainer.setup_run(load_train_config(path))


def test_logged_step_metrics_match_the_step(make_config):
    """train/grad_norm is the SAE gradient norm the optimizer stepped with; train/l0 the micro-batch mean."""
    path, _ = make_config("metrics", n_samples=16, save_every_samples=None, max_grad_norm=1e6)
    run = trainer.setup_run(load_train_config(path))
    seen = []
    step = run.optimizer.step

    def recording_step(*args, **kwargs):
        if run.accelerator.sync_gradients:
            seen.append(torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in run.sae_parameters])).item())
        return step(*args, **kwargs)

    run.optimizer.step = recording_step
    group = next(trainer._micro_batch_groups(run))
    with torch.no_grad():
        l0 = [(trainer.micro_batch_loss(run, b["input_ids"])[2][SITE].latents > 0).sum(-1).float().mean().item()
              for b in group]
    logs = trainer.train_step(run, group)
    assert len(seen) == 1 and logs["train/grad_norm"] == pytest.approx(seen[0], rel=1e-5)
    assert logs[f"train/l0/{SITE}"] == pytest.approx(sum(l0) / len(l0), rel=1e-5)
