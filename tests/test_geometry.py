"""Decoder geometry (evaluation/geometry.py) against brute force, and `hf-e2e-sae geometry` on saved runs."""
import json

import pytest
import torch
import torch.nn.functional as F
import yaml

from hf_e2e_sae import SAEConfig, SAEPatchedModel, SparseAutoencoder
from hf_e2e_sae.cli import main as cli_main
from hf_e2e_sae.evaluation.geometry import geometry_report, nearest_features, report_table


def brute(a, b=None):
    sims = F.normalize(a, dim=-1) @ F.normalize(a if b is None else b, dim=-1).T
    if b is None:
        sims.fill_diagonal_(-2.0)
    return sims.max(1)


def test_nearest_features_equals_the_full_similarity_matrix():
    torch.manual_seed(0)
    a, b = torch.randn(70, 8) * 3, torch.randn(50, 8)
    for other in (None, b):
        values, index = nearest_features(a, other, chunk=16)  # several chunks
        ref = brute(a, other)
        torch.testing.assert_close(values, ref.values)
        assert torch.equal(index, ref.indices)
    values, index = nearest_features(a)
    assert not torch.any(index == torch.arange(70))  # never the feature itself


def test_duplicated_features_are_found_and_the_report_has_the_paper_comparisons():
    torch.manual_seed(0)
    base = torch.randn(40, 8)
    dup = torch.cat([base, base[:5] * 2])  # 5 features duplicated (another scale): max cosine 1
    within, _ = nearest_features(dup)
    assert (within[:5] > 0.9999).all() and (within[40:] > 0.9999).all() and (within[5:40] < 0.9999).all()
    report = geometry_report({"local (seed 1)": (dup, "local", 1), "local (seed 2)": (base, "local", 2),
                              "e2e (seed 1)": (torch.randn(30, 8), "e2e", 1)})
    assert set(report["within"]) == {"local (seed 1)", "local (seed 2)", "e2e (seed 1)"}
    assert set(report["cross_type"]) == {"local -> e2e", "e2e -> local", "e2e -> local (other seed)"}
    assert report["cross_type"]["e2e -> local"].shape == (30,)
    assert set(report["cross_seed"]) == {"local"}
    assert torch.allclose(report["cross_seed"]["local"], torch.ones(45))  # every feature of seed 1 exists in seed 2
    assert "| cross_seed: local | 45 | 1.000 | 1.000 |" in report_table(report)


def test_geometry_command_on_saved_runs(tmp_path):
    from transformers import AutoModelForCausalLM

    from hf_e2e_sae.patching.base_models import TINY_LM_DIR

    base = AutoModelForCausalLM.from_pretrained(str(TINY_LM_DIR))
    runs = []
    for preset, seed in [("local", 1), ("local", 2), ("e2e", 1)]:
        torch.manual_seed(seed)
        sae = SparseAutoencoder(SAEConfig(d_in=base.config.hidden_size, dict_size=96, site="blocks.2.resid_pre",
                                          base_model_name_or_path="builtin:tiny-shakespeare-gpt2"))
        folder = tmp_path / f"{preset}-{seed}" / "final"
        model = SAEPatchedModel(base, sae)
        model.save_pretrained(folder)
        model.unpatch()
        (folder / "train_config.yaml").write_text(yaml.safe_dump({"loss": {"preset": preset}, "seed": seed}))
        runs.append(str(folder))
    assert cli_main(["geometry", *runs, "--out", str(tmp_path / "geo"), "--alive-tokens", "0"]) == 0
    for name in ("within.png", "cross_type.png", "cross_seed.png", "geometry.md", "geometry.json"):
        assert (tmp_path / "geo" / name).stat().st_size > 0, name
    summary = json.loads((tmp_path / "geo" / "geometry.json").read_text())
    assert set(summary["within"]) == {"local (seed 1)", "local (seed 2)", "e2e (seed 1)"}
    assert summary["cross_seed"]["local"]["n"] == 96 and set(summary["cross_type"]) == {"local -> e2e", "e2e -> local", "e2e -> local (other seed)"}
