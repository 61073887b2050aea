"""The GPU proof's CPU side: `scripts/gpu_check.sh --device cpu` (the dry run: tiny shapes, every step of the GPU run,
the missing sweep system reported as not available) and the KL backend choice (`loss.kl.backend`), whose liger
path cannot run here: selection, fallback with one warning, auto's decision, and the config field."""
from __future__ import annotations

import json
import logging
import os
import subprocess
from pathlib import Path

import pytest
import torch

from train_fixtures import subprocess_env

import hf_e2e_sae.training.kl_backends as kl_backends
from hf_e2e_sae.config.arguments import ConfigError
from hf_e2e_sae.training.fused_kl import fused_unembed_kl
from hf_e2e_sae.training.losses import LossConfig

REPO = Path(__file__).resolve().parents[1]


def test_gpu_check_dry_run_runs_every_step_on_cpu(tmp_path):
    env = {**subprocess_env(), "OUT": str(tmp_path)}
    done = subprocess.run(["bash", str(REPO / "scripts" / "gpu_check.sh"), "--device", "cpu"], cwd=str(REPO), env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    for section in ("1. bench", "2. 8-SAE sweep", "3. Gemma-2-2B", "4. KL backends", "done"):
        assert f"== {section}" in done.stdout, done.stdout[-3000:]
    bench = json.loads((tmp_path / "bench_tiny_float32.json").read_text())[0]
    assert {"ours_e2e", "lower_bound"} <= set(bench["systems"])
    assert all(r["tokens_per_s"] > 0 for r in bench["systems"].values())
    sweep = json.loads((tmp_path / "sweep8_tiny_float32.json").read_text())[0]  # the 8-SAE sweep ran
    assert sweep["systems"]["ours_sweep_e2e_8"]["tokens_per_s"] > 0
    gemma = json.loads((tmp_path / "gemma.json").read_text())
    assert gemma["dry_run"] and gemma["tokens_per_s"] > 0 and gemma["plan_total_bytes"] > gemma["plan_step_bytes"] > 0
    liger = json.loads((tmp_path / "liger.json").read_text())
    assert liger["selected_for_liger"] == "ours" and liger["liger"] == "not run: CUDA only"


@pytest.fixture
def fresh_backends(monkeypatch):
    monkeypatch.setattr(kl_backends, "_WARNED", set())
    monkeypatch.setattr(kl_backends, "_AUTO_CHOICE", {})
    return kl_backends


def test_backend_selection_and_fallback(fresh_backends, monkeypatch, caplog):
    kb = fresh_backends
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    with caplog.at_level(logging.WARNING, logger=kb.__name__):
        assert kb.resolve_kl_backend("ours", cuda) == "ours"
        assert kb.resolve_kl_backend("auto", cpu) == "ours"
        assert not caplog.records  # auto falls back silently
        assert kb.resolve_kl_backend("liger", cpu) == "ours"
        assert kb.resolve_kl_backend("liger", cpu) == "ours"
        assert len(caplog.records) == 1 and "CUDA only" in caplog.records[0].getMessage()  # one warning
        monkeypatch.setattr(kb, "liger_available", lambda: False)
        assert kb.resolve_kl_backend("liger", cuda) == "ours"
        assert "not installed" in caplog.records[-1].getMessage()
        monkeypatch.setattr(kb, "liger_available", lambda: True)
        assert kb.resolve_kl_backend("liger", cuda, has_bias=True) == "ours"
        assert "bias" in caplog.records[-1].getMessage()
        assert kb.resolve_kl_backend("liger", cuda) == "liger"
        assert kb.resolve_kl_backend("auto", cuda) == "liger?"  # timing decides
    with pytest.raises(ValueError, match=r"valid choices: \['auto', 'ours', 'liger'\]"):
        kb.resolve_kl_backend("fast", cpu)


def test_auto_keeps_the_faster_backend_per_shape(fresh_backends, monkeypatch):
    kb = fresh_backends
    h, w = torch.randn(8, 4), torch.randn(10, 4)
    timings = iter([2.0, 1.0, 1.0, 2.0])  # ours, liger for the first shape; then for the second
    monkeypatch.setattr(kb, "_seconds", lambda fn, h_sae: next(timings))
    assert kb._auto_choice(h, h, w, None, torch.full((8,), 1 / 8), 4, False) == "liger"
    assert kb._auto_choice(h, h, w, None, torch.full((8,), 1 / 8), 4, False) == "liger"  # cached: no new timing
    assert kb._auto_choice(h[:4], h[:4], w, None, torch.full((4,), 1 / 4), 4, False) == "ours"


def test_liger_request_on_cpu_computes_ours(fresh_backends):
    g = torch.Generator().manual_seed(0)
    h_orig, w = torch.randn(6, 4, generator=g), torch.randn(9, 4, generator=g)
    h_sae = (h_orig + 0.3 * torch.randn(6, 4, generator=g)).requires_grad_(True)
    weights = torch.full((6,), 1 / 6)
    got = fresh_backends.unembed_kl("liger", h_sae, h_orig, w, None, weights, 4, False)
    want = fused_unembed_kl(h_sae, h_orig, w, None, weights, 4)
    assert torch.equal(got, want) and got > 0


def test_config_field():
    assert LossConfig().kl.backend == "auto"
    assert LossConfig(kl={"backend": "liger"}).kl.backend == "liger"
    with pytest.raises((ConfigError, ValueError), match="backend"):
        LossConfig(kl={"backend": "triton"})
