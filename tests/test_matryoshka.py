"""Matryoshka SAEs (sae/activations/matryoshka.py, training/matryoshka.py) mean what they say.

The registry-parametrised suites cover what every activation must do (test_activations: latents, gradients,
save/load, Hub; test_fast_step: fast step == reference step; test_architecture_training: a trainer run). Here:
a prefix's reconstruction is the decode of the code masked to the prefix (dense and sparse codes alike); the
local term is the weighted sum of the prefixes' MSEs; the e2e term is the weighted sum of the KLs of models with
each prefix spliced in (checked against SAEs whose decoder is cut to the prefix); the extra passes leave BatchTopK
thresholds alone; and after the same short training a Matryoshka SAE's small prefix reconstructs better than a
plain TopK SAE's.
"""
from __future__ import annotations

import copy

import pytest
import torch

from hf_e2e_sae import SAEConfig, SAEPatchedModel, SparseAutoencoder
from hf_e2e_sae.patching.patched_model import SiteOutput
from hf_e2e_sae.sae.activations.matryoshka import matryoshka_levels, prefix_reconstruction
from hf_e2e_sae.training.loss_terms import add_loss_terms, build_loss_terms
from hf_e2e_sae.training.losses import LossConfig, kl_divergence, mse_loss
from hf_e2e_sae.training.step import micro_batch_loss, reference_micro_batch_loss
from tiny_models import HIDDEN, random_ids, tiny_model

SITE = "blocks.1.resid_pre"
PREFIXES, WEIGHTS = [8, 32], [0.25, 2.0]


def make(activation: str = "matryoshka_topk", site: str = SITE, seed: int = 0, **extra) -> SparseAutoencoder:
    torch.manual_seed(seed)
    options = {"matryoshka_prefixes": PREFIXES, "matryoshka_weights": WEIGHTS} if "matryoshka" in activation else {}
    return SparseAutoencoder(SAEConfig(d_in=HIDDEN, dict_size=128, activation=activation, k=6, site=site,
                                       **{**options, **extra}))


def cut_to_prefix(sae: SparseAutoencoder, size: int) -> SparseAutoencoder:
    """A copy whose latents outside the first `size` decode to nothing (its code is the same: same encoder)."""
    cut = copy.deepcopy(sae)
    with torch.no_grad():
        cut.decoder.weight[:, size:] = 0.0
    return cut


@pytest.mark.parametrize("activation", ["matryoshka_topk", "matryoshka_batchtopk"])
@pytest.mark.parametrize("sparse", [False, True])
def test_prefix_reconstruction_decodes_the_code_masked_to_the_prefix(activation, sparse):
    sae = make(activation, center_input=True)
    model = SAEPatchedModel(tiny_model("gpt2"), [sae]).train()
    ids = random_ids(3, 10)
    with model.sparse_records() if sparse else torch.enable_grad():
        out = model(ids).sae_outputs[SITE]
    assert (out.latents is None) == (sparse and activation == "matryoshka_topk")
    with torch.no_grad():
        latents = model(ids).sae_outputs[SITE].latents
    assert matryoshka_levels(sae) == list(zip(PREFIXES, WEIGHTS))
    for size in PREFIXES:
        mask = torch.arange(128) < size
        want = sae.decode(latents * mask) + out.target.mean(-1, keepdim=True)  # center_input: the token mean back
        torch.testing.assert_close(prefix_reconstruction(sae, out, size), want, rtol=1e-5, atol=1e-5)
        assert not torch.allclose(want, out.reconstruction, atol=1e-3)  # a prefix is not the whole dictionary


def test_local_term_is_the_weighted_sum_of_the_prefixes_mse():
    sae = make()
    model = SAEPatchedModel(tiny_model("gpt2"), [sae]).train()
    loss = LossConfig(preset="local", sparsity={"coeff": 0.0}, reconstruction={"coeff": 3.0})
    total, terms, outputs = reference_micro_batch_loss(model, model, random_ids(), loss, [], HIDDEN)
    total, terms = add_loss_terms(build_loss_terms(loss), total, terms, outputs, {SITE: sae}, HIDDEN)
    out = outputs[SITE]
    with torch.no_grad():
        prefix_mses = [mse_loss(cut_to_prefix(sae, m)(out.target).reconstruction, out.target) for m in PREFIXES]
    want = sum(w * m for w, m in zip(WEIGHTS, prefix_mses))
    torch.testing.assert_close(terms["matryoshka_reconstruction"], want, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(total.detach(), 3.0 * (terms["reconstruction"] + want), rtol=1e-5, atol=1e-7)
    assert len({float(m) for m in [*prefix_mses, terms["reconstruction"]]}) == 3  # three different reconstructions


@pytest.mark.parametrize("step", [reference_micro_batch_loss, micro_batch_loss])
def test_e2e_term_is_the_weighted_kl_of_each_prefix_spliced_in(step):
    """Two SAEs (the Matryoshka one second): each prefix pass splices the first SAE's own reconstruction and the
    prefix's; its KL equals that of a model whose second SAE decodes only the prefix."""
    first = make("topk", site="blocks.0.mlp_out", seed=1)
    sae = make()
    model = SAEPatchedModel(tiny_model("gpt2"), [first, sae]).train()
    ids = random_ids(2, 12)
    loss = LossConfig(preset="e2e", sparsity={"coeff": 0.0})
    total, terms, _ = step(model, model, ids, loss, [], HIDDEN)
    with torch.no_grad(), model.saes_disabled():
        clean = model(ids).logits
    kls = []
    for size in PREFIXES:
        cut = SAEPatchedModel(tiny_model("gpt2"), [first, cut_to_prefix(sae, size)]).train()
        with torch.no_grad():
            kls.append(kl_divergence(clean, cut(ids).logits))
    want = sum(w * kl for w, kl in zip(WEIGHTS, kls))
    torch.testing.assert_close(terms["matryoshka_kl"], want, rtol=1e-5, atol=1e-8)
    torch.testing.assert_close(total.detach(), terms["kl"] + want, rtol=1e-5, atol=1e-8)
    assert len({float(kl) for kl in [*kls, terms["kl"]]}) == 3 and min(kls) > 0  # three different models


def test_prefix_passes_leave_batchtopk_thresholds_alone():
    """A later BatchTopK SAE runs again in the earlier SAE's prefix passes: its threshold moves once per step."""
    saes = [make("matryoshka_batchtopk", site="blocks.0.mlp_out", seed=1), make("batchtopk", seed=2)]
    twin = copy.deepcopy(saes)
    model = SAEPatchedModel(tiny_model("gpt2"), saes).train()
    reference = SAEPatchedModel(tiny_model("gpt2"), twin).train()
    ids = random_ids(2, 12)
    for _ in range(2):  # from 0, then an average
        micro_batch_loss(model, model, ids, LossConfig(preset="e2e"), [], HIDDEN)
        with torch.no_grad():
            reference(ids)  # one plain training forward per step
    for site in model.sites:
        threshold = model.sae(site).activation.threshold
        assert threshold > 0 and torch.equal(threshold, reference.sae(site).activation.threshold)


def _train_on_activations(activation: str, steps: int = 150) -> tuple:
    """`(MSE of the first 8 latents' reconstruction, MSE of the whole dictionary's)` after a short local training
    on fixed activations made of 24 directions of falling importance."""
    torch.manual_seed(0)
    basis = torch.randn(24, HIDDEN)
    codes = torch.relu(torch.randn(512, 24)) * 0.85 ** torch.arange(24.0)  # early directions matter most
    x = codes @ basis
    extra = {"matryoshka_weights": [1.0, 1.0]} if "matryoshka" in activation else {}
    sae = make(activation, site=None, seed=3, **extra).train()
    loss = LossConfig(preset="local", sparsity={"coeff": 0.0})
    terms = build_loss_terms(loss)
    optimizer = torch.optim.Adam(sae.parameters(), lr=3e-3)
    for _ in range(steps):
        out = sae(x)
        site_out = SiteOutput(target=x, latents=out.latents, reconstruction=out.reconstruction,
                              pre_activations=out.pre_activations, source=x)
        total, _ = add_loss_terms(terms, mse_loss(out.reconstruction, x), {}, {"s": site_out}, {"s": sae}, HIDDEN)
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
    with torch.no_grad():
        out = sae(x)
        site_out = SiteOutput(target=x, latents=out.latents, reconstruction=out.reconstruction, source=x)
        return float(mse_loss(prefix_reconstruction(sae, site_out, PREFIXES[0]), x)), float(mse_loss(out.reconstruction, x))


def test_a_short_training_makes_the_small_prefix_reconstruct_better_than_a_plain_topk_prefix():
    matryoshka_prefix, matryoshka_full = _train_on_activations("matryoshka_topk")
    plain_prefix, plain_full = _train_on_activations("topk")
    assert matryoshka_prefix < 0.5 * plain_prefix, (matryoshka_prefix, plain_prefix)  # measured 0.54 vs 1.55
    assert matryoshka_full < 1.5 * plain_full  # the whole dictionary still reconstructs (0.062 vs 0.060)
