"""`hf-e2e-sae plan` and the preflight memory check (`training/memory_plan.py`).

* Accuracy: the planned step peak of our e2e step at the bench's shapes A and B is within 20% of the peak the bench
  measures for it on this CPU (`bench.benchmark.cpu_peak`: a fresh process, RSS high-water mark of one step over
  the RSS before it). About 30 s.
* Sharding: the base weights per device shrink to 1/N plus the gathered root and two blocks.
* Refusal: a run that does not fit stops in preflight with one line naming the remedy (exit 2, no weights loaded).
* The command: a table, `--json`, `--device-memory` verdicts, one-line errors.
"""
from __future__ import annotations

import json

import pytest
from transformers import GPT2Config

from train_fixtures import make_config, reset_accelerate_state, tiny_assets  # noqa: F401

import hf_e2e_sae.training.preflight as preflight
from hf_e2e_sae.bench.benchmark import SHAPES, cpu_peak
from hf_e2e_sae.cli import main, run_train
from hf_e2e_sae.config.arguments import ConfigError
from hf_e2e_sae.training.config import load_train_config
from hf_e2e_sae.training.memory_plan import PlanInputs, parse_size, plan_memory, plan_sweep, shared_pass_bytes
from hf_e2e_sae.training.sweep import setup_sweep


def _shape_plan(name: str, **kw) -> dict:
    s = SHAPES[name]
    config = GPT2Config(vocab_size=s.vocab, n_embd=s.d_model, n_layer=s.n_layer, n_head=max(1, s.d_model // 64),
                        n_positions=s.ctx)
    return plan_memory(PlanInputs(config, [s.site], s.dict_ratio * s.d_model, s.batch, s.ctx, sparse_code=True,
                                  device_type="cpu", **kw))


@pytest.mark.parametrize("shape", ["A", "B"])
def test_planned_step_peak_is_within_20_percent_of_the_measured_one(shape):
    _, measured = cpu_peak("ours_e2e", shape, 0, "float32")
    assert measured is not None
    planned = _shape_plan(shape)["step"]
    assert 0.8 <= planned / measured <= 1.2, (shape, planned / 2**20, measured / 2**20)


def test_planned_sweep_step_peak_is_within_20_percent_of_the_measured_one():
    """The bench's 4-SAE e2e sweep step (`ours_sweep_e2e_4`): each variant's step on top of the shared clean pass,
    whose clean probabilities (tokens x vocab float32) the variants' KLs share. The bench steps each variant's
    optimizer after its backward, so no variant's gradients wait for the others (the trainer's do: see below)."""
    s = SHAPES["A"]
    _, measured = cpu_peak("ours_sweep_e2e_4", "A", 0, "float32")
    assert measured is not None
    plan = plan_sweep([_shape_plan("A")] * 4, shared_pass_bytes(s.batch * s.ctx, s.d_model, s.vocab, 0, kls=4))
    planned = plan["step"] + plan["components"]["shared_pass"]
    assert 0.8 <= planned / measured <= 1.2, (planned / 2**20, measured / 2**20)


def test_a_sweep_plans_every_variants_state_and_one_shared_pass():
    one = _shape_plan("B")
    four = plan_sweep([one] * 4, shared_pass_bytes(1024, 512, 50257, 0, kls=4))
    c, c1 = four["components"], one["components"]
    assert c["base_weights"] == c1["base_weights"]  # the base model once
    assert (c["sae_parameters"], c["adam_states"]) == (4 * c1["sae_parameters"], 4 * c1["adam_states"])
    assert c["sweep_gradients"] == 3 * c1["sae_parameters"]  # the others' gradients wait for the step's end
    assert c["shared_pass"] == 2 * 1024 * 512 * 4 + 1024 * 50257 * 4  # the clean probabilities: 2+ KLs share them
    assert shared_pass_bytes(1024, 512, 50257, 0, kls=1) == 2 * 1024 * 512 * 4  # one KL makes its own
    assert four["total"] == sum(v for k, v in c.items() if not k.endswith("_peak")) + max(four["step"], four["eval"])


def test_sharding_divides_the_base_weights():
    one = _shape_plan("B")
    sharded = _shape_plan("B", num_processes=4, shard=True)
    unsharded_4 = _shape_plan("B", num_processes=4)
    assert unsharded_4["components"]["base_weights"] == one["components"]["base_weights"]
    assert one["components"]["base_weights"] / 4 < sharded["components"]["base_weights"] \
        < one["components"]["base_weights"]
    assert sharded["components"]["ddp_buckets"] == sharded["components"]["sae_parameters"]
    assert _shape_plan("B", recompute_suffix=True)["step_phases"]["kl"] < one["step_phases"]["kl"]
    assert sharded["total"] == sum(v for k, v in sharded["components"].items() if not k.endswith("_peak")) + \
        max(sharded["step"], sharded["eval"])


def test_parse_size():
    assert parse_size("80GB") == 80 * 10**9 and parse_size("1.5GiB") == int(1.5 * 2**30) and parse_size("512") == 512
    with pytest.raises(ValueError, match="80GB"):
        parse_size("eighty")


def test_preflight_refuses_a_run_that_cannot_fit_in_one_line(make_config, monkeypatch, capsys):
    path, out = make_config("too_big")
    config = load_train_config(path)
    preflight.preflight(config, 1)  # fits this machine
    monkeypatch.setattr(preflight, "device_memory", lambda world_size=1: 2**20)
    with pytest.raises(ConfigError, match=r"needs about .* but the device has 1 MiB: try "):
        preflight.preflight(config, 1)
    reset_accelerate_state()
    try:
        assert run_train([str(path)]) == 2
    finally:
        reset_accelerate_state()
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "try " in err[0] and any(r in err[0] for r in (
        "batch_size=", "recompute_suffix=true", "loss.kl.chunk_tokens=", "base_model.shard=true")), err
    assert not (out / "final").exists()


def test_preflight_refuses_a_sweep_whose_variants_fit_alone_but_not_together(make_config, monkeypatch, capsys):
    path, out = make_config("sweep_too_big", sweep={"loss.sparsity.coeff": [0.5, 1.0, 2.0, 4.0]})
    config = load_train_config(path)
    base = preflight.base_model_config(config)
    alone = preflight.plan_for_config(config.model_copy(update={"sweep": {}}), base, 1, "cpu")["total"]
    together = preflight.plan_for_config(config, base, 1, "cpu")["total"]
    assert together > alone
    monkeypatch.setattr(preflight, "device_memory", lambda world_size=1: (alone + together) // 2)
    with pytest.raises(ConfigError, match=r"needs about .* but the device has .*: try "):
        setup_sweep(config)
    assert not (out / "variants").exists()  # refused before any output folder or model
    assert main(["plan", str(path), "--device", "cpu"]) == 0
    assert "4-variant sweep" in capsys.readouterr().out


def test_plan_command(make_config, capsys):
    path, _ = make_config("plan")
    assert main(["plan", str(path), "--device-memory", "80GB"]) == 0
    text = capsys.readouterr().out
    assert "base_weights" in text and "fits in 74.5 GiB" in text
    assert main(["plan", str(path), "--json", "--num-processes", "2"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["total"] > plan["components"]["sae_parameters"] > 0 and "ddp_buckets" in plan["components"]
    assert main(["plan", str(path), "--device-memory", "1MB"]) == 1
    assert "try " in capsys.readouterr().err
    assert main(["plan", str(path), "--device-memory", "lots"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("hf-e2e-sae plan: error: cannot read a memory size"), err
    assert main(["plan", str(path), "--batch_size", "0"]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
