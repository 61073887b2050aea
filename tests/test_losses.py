"""The paper's losses: values, the KL's direction and memory-lean gradient, presets."""
import pytest
import torch
import torch.nn.functional as F

from hf_e2e_sae import LossConfig, compute_losses, kl_divergence, mse_loss, sparsity_loss
from hf_e2e_sae.training.losses import default_downstream_sites
from hf_e2e_sae.patching.patched_model import SiteOutput


def test_kl_matches_an_independent_computation_and_its_gradient():
    torch.manual_seed(0)
    orig = torch.randn(3, 7, 50) * 2
    sae = (torch.randn(3, 7, 50) * 2).requires_grad_()
    ours = kl_divergence(orig, sae, chunk_tokens=4)  # chunks that do not divide 21 tokens
    sae_ref = sae.detach().clone().requires_grad_()
    ref = F.kl_div(F.log_softmax(sae_ref, -1), F.log_softmax(orig, -1), log_target=True, reduction="none").sum(-1).mean()
    torch.testing.assert_close(ours, ref)
    ours.backward()
    ref.backward()
    torch.testing.assert_close(sae.grad, sae_ref.grad)


def test_kl_direction_is_orig_to_sae():
    p = torch.tensor([[0.98, 0.01, 0.01]])
    q = torch.tensor([[1 / 3, 1 / 3, 1 / 3]])
    forward = (p * (p / q).log()).sum()  # KL(P_orig || P_sae)
    reverse = (q * (q / p).log()).sum()
    assert abs(forward - reverse) > 0.2  # an asymmetric case
    kl = kl_divergence(p.log().unsqueeze(0), q.log().unsqueeze(0))
    torch.testing.assert_close(kl, forward)


def test_kl_masks_tokens():
    torch.manual_seed(0)
    orig, sae = torch.randn(1, 4, 10), torch.randn(1, 4, 10)
    mask = torch.tensor([[1, 1, 0, 0]])
    torch.testing.assert_close(kl_divergence(orig, sae, mask), kl_divergence(orig[:, :2], sae[:, :2]))


def test_sparsity_and_mse_values():
    c = torch.tensor([[[3.0, 0.0, 4.0], [1.0, 1.0, 0.0]]])  # (1, 2, 3)
    assert sparsity_loss(c, p=1, d_in=4).item() == pytest.approx((7 + 2) / 2 / 4)
    assert sparsity_loss(c, p=2, d_in=4).item() == pytest.approx((5 + 2**0.5) / 2 / 4)
    a, b = torch.zeros(1, 2, 2), torch.tensor([[[1.0, 1.0], [2.0, 0.0]]])
    assert mse_loss(a, b).item() == pytest.approx((1 + 1 + 4 + 0) / 4)
    assert mse_loss(a, b, mask=torch.tensor([[1, 0]])).item() == pytest.approx(1.0)


def test_presets_fill_only_missing_coefficients():
    e2e = LossConfig(preset="e2e")
    assert (e2e.kl.coeff, e2e.reconstruction.coeff, e2e.downstream.coeff) == (1.0, 0.0, 0.0)
    assert LossConfig(preset="local").reconstruction.coeff == 1.0 and not LossConfig(preset="local").needs_logits
    ds = LossConfig(preset="e2e+ds")
    assert (ds.kl.coeff, ds.downstream.coeff) == (0.5, 2.5)
    from hf_e2e_sae.training.losses import SparsityLossConfig
    custom = LossConfig(preset="e2e", sparsity=SparsityLossConfig(coeff=0.7))
    assert custom.sparsity.coeff == 0.7
    with pytest.raises(ValueError, match=r"preset\n.*'local', 'e2e', 'e2e\+ds' or 'finetune'"):
        LossConfig(preset="e2e_ds")
    with pytest.raises(ValueError, match="frozen"):
        custom.kl.coeff = 2.0  # validated once, never mutated


def test_compute_losses_weights_terms_and_splits_downstream():
    torch.manual_seed(0)
    out = SiteOutput(target=torch.randn(2, 3, 4), latents=torch.rand(2, 3, 8), reconstruction=torch.randn(2, 3, 4))
    orig_logits, sae_logits = torch.randn(2, 3, 11), torch.randn(2, 3, 11)
    orig_ds = {"blocks.2.resid_pre": torch.randn(2, 3, 4), "blocks.3.resid_pre": torch.randn(2, 3, 4)}
    sae_ds = {k: v + 1.0 for k, v in orig_ds.items()}  # MSE exactly 1 at each site
    config = LossConfig(preset="e2e+ds")
    total, terms = compute_losses(config, {"blocks.1.resid_pre": out}, 4, sae_logits, orig_logits, sae_ds, orig_ds)
    assert terms["downstream"].item() == pytest.approx(1.0)
    expected = 50.0 * terms["sparsity"] + 0.5 * kl_divergence(orig_logits, sae_logits) + 2.5 * 1.0
    torch.testing.assert_close(total, expected)
    assert "reconstruction" not in terms


def test_default_downstream_sites_are_the_later_resid_pres():
    assert default_downstream_sites(["blocks.6.resid_pre"], 12) == [f"blocks.{i}.resid_pre" for i in range(7, 12)]
    assert default_downstream_sites(["blocks.10.resid_pre"], 12) == ["blocks.11.resid_pre"]
    assert default_downstream_sites(["blocks.2.mlp_out"], 4) == ["blocks.3.resid_pre"]


def _extra_saved_for_backward(fn, *inputs) -> list:
    """Shapes of the tensors autograd keeps for the backward of `fn()` that are NOT storage of `inputs`."""
    held = {t.untyped_storage().data_ptr() for t in inputs}
    extra = []

    def pack(t):
        if t.untyped_storage().data_ptr() not in held:
            extra.append(tuple(t.shape))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return extra


def test_kl_keeps_no_extra_tokens_by_vocab_tensor_for_backward():
    torch.manual_seed(0)
    n, vocab = 64, 500
    orig = torch.randn(2, n // 2, vocab)
    sae = torch.randn(2, n // 2, vocab, requires_grad=True)
    ours = _extra_saved_for_backward(lambda: kl_divergence(orig, sae, chunk_tokens=8), orig, sae)
    assert ours == [(n,)]  # the per-token weights only; the logits are kept as views of the inputs
    naive = _extra_saved_for_backward(lambda: F.kl_div(F.log_softmax(sae, -1), F.log_softmax(orig, -1),
                                                       log_target=True, reduction="none").sum(-1).mean(), orig, sae)
    assert sum(1 for shape in naive if shape[-1] == vocab) >= 2  # the usual formulation keeps new copies
