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


# ----------------------------------------------------------------------------------------------- SAELens layouts
def _inputs(n: int = 40) -> torch.Tensor:
    return torch.randn(n, HIDDEN, generator=torch.Generator().manual_seed(3)) * 2 + 0.5


def test_saelens_matryoshka_files_load_as_matryoshka_batchtopk_with_their_latents(tmp_path):
    """A SAELens MatryoshkaBatchTopK SAE (decoder rows not of norm 1, rescale_acts_by_decoder_norm), saved as a
    training checkpoint and for inference: both load as our matryoshka_batchtopk with SAELens's inference latents."""
    from sae_lens import SAE
    from sae_lens.saes.matryoshka_batchtopk_sae import (MatryoshkaBatchTopKTrainingSAE,
                                                        MatryoshkaBatchTopKTrainingSAEConfig)
    from sae_lens.saes.sae import SAEMetadata

    from hf_e2e_sae import load_sae

    cfg = MatryoshkaBatchTopKTrainingSAEConfig(d_in=HIDDEN, d_sae=96, k=6, matryoshka_widths=[12, 48, 96],
                                               metadata=SAEMetadata(hook_name="blocks.1.hook_resid_pre", model_name="gpt2"))
    theirs = MatryoshkaBatchTopKTrainingSAE(cfg)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in theirs.parameters():
            param.copy_(torch.randn(param.shape, generator=g) * 0.3)
        theirs.topk_threshold.fill_(0.4)
    theirs.save_model(tmp_path / "training")  # before the inference save, which folds the decoder norms in place
    theirs.save_inference_model(tmp_path / "inference")
    reference = SAE.load_from_disk(tmp_path / "inference")
    x = _inputs()
    with torch.no_grad():
        want = reference.encode(x)
        assert 0 < (want > 0).sum(-1).float().mean() < 96  # some latents fire, not all
        for layout in ("training", "inference"):
            ours = load_sae(tmp_path / layout).eval()
            assert ours.config.activation == "matryoshka_batchtopk" and ours.config.site == "blocks.1.resid_pre"
            assert (ours.config.k, ours.activation.prefixes) == (6, (12, 48))
            torch.testing.assert_close(ours.encode(x), want, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(ours(x).reconstruction, reference(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("activation,options", [("matryoshka_batchtopk", {}),
                                                ("matryoshka_batchtopk", {"normalize_decoder": False}),
                                                ("matryoshka_topk", {"center_input": True})])
def test_export_loads_in_saelens_and_round_trips(tmp_path, activation, options):
    from sae_lens import SAE

    from hf_e2e_sae import export_sae, load_sae

    sae = make(activation, site="blocks.2.resid_post", base_model_name_or_path="openai-community/gpt2", **options)
    if activation == "matryoshka_batchtopk":
        sae.train()(_inputs(64))  # a training call sets the threshold
    sae.eval()
    export_sae(sae, tmp_path / "export")
    theirs = SAE.load_from_disk(tmp_path / "export")
    meta = theirs.cfg.metadata
    assert meta.training_architecture == activation
    assert meta.training_architecture_details["matryoshka_widths"] == [*PREFIXES, 128]
    x = _inputs()
    with torch.no_grad():
        latents = sae.encode(x)
        assert (latents > 0).any()
        torch.testing.assert_close(theirs.encode(x), latents, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(theirs(x), sae(x).reconstruction, rtol=1e-5, atol=1e-5)
        again = load_sae(tmp_path / "export").eval()  # and back: the Matryoshka SAE it was
        assert again.config.activation == activation
        assert matryoshka_levels(again) == matryoshka_levels(sae)
        if activation == "matryoshka_batchtopk":
            torch.testing.assert_close(again.activation.threshold, sae.activation.threshold)
        assert torch.equal(again.encode(x) > 0, latents > 0)
        torch.testing.assert_close(again.encode(x), latents, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(again(x).reconstruction, sae(x).reconstruction, rtol=1e-5, atol=1e-5)
