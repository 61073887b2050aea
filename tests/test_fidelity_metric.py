"""The `evaluate` module shipped in the package gives the same numbers as `hf_e2e_sae.evaluate`."""
import evaluate
import pytest
import torch

from hf_e2e_sae import SAEConfig, SAEPatchedModel, SparseAutoencoder
from hf_e2e_sae import evaluate as evaluate_model
from hf_e2e_sae.evaluation.fidelity import FIDELITY_METRIC_PATH, fidelity_inputs

from tiny_models import HIDDEN, random_ids, tiny_model

SITE = "blocks.1.resid_pre"


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
@pytest.mark.parametrize("padded", [False, True])
def test_add_batch_compute_equals_hf_e2e_sae_evaluate(arch, padded):
    torch.manual_seed(0)
    model = SAEPatchedModel(tiny_model(arch), SparseAutoencoder(SAEConfig(d_in=HIDDEN, dict_size=64, site=SITE)))
    batches = []
    for seed in range(3):
        ids = random_ids(batch=2, seq=10, seed=seed)
        mask = torch.ones_like(ids)
        if padded:
            mask[1, 6 + seed:] = 0
        batches.append({"input_ids": ids, "attention_mask": mask})
    metric = evaluate.load(FIDELITY_METRIC_PATH)  # a local folder: works offline
    for batch in batches:
        metric.add_batch(**fidelity_inputs(model, batch["input_ids"], batch["attention_mask"]))
    got = metric.compute()
    expected = evaluate_model(model, batches)
    keys = ["ce_loss_orig", "ce_loss_sae", "ce_loss_increase", "kl", "top1_agreement", "total_variation", "n_tokens"]
    for key in keys:  # float32 sums over other groupings of tokens: CE agrees to ~1e-7 relative
        abs_tol = 1e-5 if key == "ce_loss_increase" else 1e-7  # a difference of two CEs of ~5
        assert got[key] == pytest.approx(expected[key], rel=1e-5, abs=abs_tol), key
    for key in ["l0", "alive", "explained_variance", "mse", "norm_ratio"]:
        assert got[key] == pytest.approx(expected[f"{key}/{SITE}"], rel=1e-5, abs=1e-7), key
    assert got["n_tokens"] == sum(int(b["attention_mask"].sum()) for b in batches)


def test_compute_without_tokens_fails_clearly():
    torch.manual_seed(0)
    model = SAEPatchedModel(tiny_model("gpt2"), SparseAutoencoder(SAEConfig(d_in=HIDDEN, dict_size=64, site=SITE)))
    ids = random_ids(batch=1, seq=6)
    metric = evaluate.load(FIDELITY_METRIC_PATH)
    metric.add_batch(**fidelity_inputs(model, ids, torch.zeros_like(ids)))
    with pytest.raises(ValueError, match="no \\(unmasked\\) tokens"):
        metric.compute()
