"""evaluate(): metric values, padding exclusion, token weighting."""
import pytest
import torch

from hf_e2e_sae import SAEPatchedModel, evaluate

from test_patching import identity_sae, make_sae
from tiny_models import LAYERS, random_ids, tiny_model


@pytest.mark.parametrize("arch", ["gpt2", "gpt_neox", "llama"])
def test_identity_sae_metrics(arch):
    model = SAEPatchedModel(tiny_model(arch), identity_sae("blocks.1.resid_pre"))
    m = evaluate(model, [random_ids(seed=s) for s in range(2)])
    assert m["kl"] < 1e-6 and abs(m["ce_loss_increase"]) < 1e-5 and m["top1_agreement"] == 1.0
    assert m["total_variation"] < 1e-5
    assert m["explained_variance/blocks.1.resid_pre"] == pytest.approx(1.0, abs=1e-6)
    assert m["mse/blocks.1.resid_pre"] < 1e-10 and m["norm_ratio/blocks.1.resid_pre"] == pytest.approx(1.0)
    assert set(k for k in m if k.startswith("downstream_mse/")) == {
        f"downstream_mse/blocks.{i}.resid_post" for i in range(1, LAYERS)
    }
    assert all(m[k] < 1e-10 for k in m if k.startswith("downstream_mse/"))
    assert m["n_tokens"] == 2 * 2 * 12


def test_metrics_against_manual_computation():
    model = SAEPatchedModel(tiny_model("gpt2"), make_sae("blocks.1.resid_pre"))
    ids = random_ids()
    m = evaluate(model, [ids])
    with torch.no_grad():
        out = model(ids)
        with model.saes_disabled():
            clean = model(ids)
    so = out.sae_outputs["blocks.1.resid_pre"]
    x, xh, c = so.target.reshape(-1, so.target.shape[-1]), so.reconstruction.reshape(-1, so.target.shape[-1]), so.latents
    assert m["l0/blocks.1.resid_pre"] == pytest.approx((c > 0).sum(-1).float().mean().item())
    assert m["alive/blocks.1.resid_pre"] == int((c > 0).reshape(-1, c.shape[-1]).any(0).sum())
    ev = 1 - ((x - xh) ** 2).sum() / ((x - x.mean(0)) ** 2).sum()  # target: the ORIGINAL activation
    assert m["explained_variance/blocks.1.resid_pre"] == pytest.approx(ev.item(), rel=1e-4)
    ce = torch.nn.functional.cross_entropy(clean.logits[:, :-1].reshape(-1, 256), ids[:, 1:].reshape(-1))
    assert m["ce_loss_orig"] == pytest.approx(ce.item(), rel=1e-5)
    p, q = clean.logits.softmax(-1), out.logits.softmax(-1)
    assert m["total_variation"] == pytest.approx(0.5 * (p - q).abs().sum(-1).mean().item(), rel=1e-4)
    assert m["top1_agreement"] == pytest.approx((p.argmax(-1) == q.argmax(-1)).float().mean().item())
    assert m["ce_loss_increase"] == pytest.approx(m["ce_loss_sae"] - m["ce_loss_orig"])


def test_padding_is_excluded_and_batches_are_token_weighted():
    model = SAEPatchedModel(tiny_model("llama"), make_sae("blocks.1.mlp_out"))
    short, long = random_ids(batch=1, seq=6, seed=3), random_ids(batch=1, seq=12, seed=4)
    padded = torch.cat([torch.cat([short, torch.zeros(1, 6, dtype=torch.long)], 1), long])
    mask = torch.cat([torch.cat([torch.ones(1, 6), torch.zeros(1, 6)], 1), torch.ones(1, 12)]).long()
    together = evaluate(model, [{"input_ids": padded, "attention_mask": mask}])
    separate = evaluate(model, [short, long])
    assert together["n_tokens"] == separate["n_tokens"] == 18
    for key in ["kl", "ce_loss_sae", "l0/blocks.1.mlp_out", "explained_variance/blocks.1.mlp_out",
                "alive/blocks.1.mlp_out", "downstream_mse/blocks.2.resid_post"]:
        assert together[key] == pytest.approx(separate[key], rel=1e-4, abs=1e-6), key
