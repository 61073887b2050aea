"""E2E fine-tuning of an existing SAE: `loss.preset: finetune` keeps the KL's contribution at a fixed ratio to
the MSE's at any scale, and `init_from` starts training from an SAE in any format (site and width from it,
mismatches are config errors)."""
from __future__ import annotations

import pytest
import torch

from train_fixtures import N_EMBD, SITE, fresh_accelerate, make_config, tiny_assets  # noqa: F401

import hf_e2e_sae.training.trainer as trainer
from hf_e2e_sae import SAEConfig, SparseAutoencoder, export_sae, load_sae
from hf_e2e_sae.patching.patched_model import SiteOutput
from hf_e2e_sae.training.config import load_train_config
from hf_e2e_sae.training.finetune import check_initial_sae
from hf_e2e_sae.training.losses import CoeffConfig, KLLossConfig, LossConfig, SparsityLossConfig, compute_losses


@pytest.fixture(autouse=True)
def _clean_accelerate(fresh_accelerate):
    yield


def _terms(scale: float, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 5, 16, generator=g) * scale
    recon = (x + torch.randn(2, 5, 16, generator=g) * scale * 0.3).requires_grad_()
    latents = torch.rand(2, 5, 40, generator=g).requires_grad_()
    orig = torch.randn(2, 5, 50, generator=g)
    sae_logits = (orig + torch.randn(2, 5, 50, generator=g) * 0.1).requires_grad_()
    return {"s": SiteOutput(target=x, latents=latents, reconstruction=recon)}, sae_logits, orig


@pytest.mark.parametrize("scale", [0.01, 1.0, 100.0])
@pytest.mark.parametrize("ratio", [(0.5, 0.5), (0.8, 0.2)])
def test_finetune_balances_kl_to_a_fixed_share_of_the_mse(scale, ratio):
    a, b = ratio
    config = LossConfig(preset="finetune", sparsity=SparsityLossConfig(coeff=2.0), reconstruction=CoeffConfig(coeff=a),
                        kl=KLLossConfig(coeff=b))
    assert config.kl.balance
    outputs, sae_logits, orig = _terms(scale)
    total, terms = compute_losses(config, outputs, 16, sae_logits, orig)
    mse, kl, sparsity = terms["reconstruction"], terms["kl"], terms["sparsity"]
    # the value is (a + b) * MSE + lambda * sparsity: lambda keeps the meaning it had in local training
    torch.testing.assert_close(total.detach(), (a + b) * mse + 2.0 * sparsity)
    # the gradient is a * dMSE + b * (MSE / KL) * dKL: the KL's share is b / a of the MSE's at any scale
    total.backward()
    grad_logits = sae_logits.grad.clone()
    sae_logits.grad = None
    outputs2, sae_logits2, orig2 = _terms(scale)
    plain = LossConfig(preset="e2e", sparsity=SparsityLossConfig(coeff=0.0), kl=KLLossConfig(coeff=1.0))
    compute_losses(plain, outputs2, 16, sae_logits2, orig2)[0].backward()
    torch.testing.assert_close(grad_logits, b * (mse / kl) * sae_logits2.grad)


def test_balance_is_the_finetune_default_and_needs_both_terms():
    assert LossConfig(preset="finetune").kl.balance
    assert not LossConfig(preset="e2e").kl.balance and not LossConfig(preset="local").kl.balance
    with pytest.raises(ValueError, match="reconstruction.coeff"):
        LossConfig(preset="e2e", kl=KLLossConfig(balance=True))


def _sae(site=SITE, dict_size=4 * N_EMBD, **options):
    torch.manual_seed(7)
    return SparseAutoencoder(SAEConfig(d_in=N_EMBD, dict_size=dict_size, site=site, **options))


def test_init_from_mismatches_are_config_errors(make_config, tmp_path):
    path, _ = make_config("mismatch", init_from=str(tmp_path / "sae"))
    config = load_train_config(path)
    with pytest.raises(ValueError, match="sites"):
        check_initial_sae(config, _sae(site="blocks.2.resid_pre"))
    with pytest.raises(ValueError, match="dict_size"):
        check_initial_sae(config.model_copy(update={"dict_size": 64}), _sae())
    bad, _ = make_config("two", init_from=str(tmp_path / "sae"), sites=[SITE, "blocks.2.resid_pre"])
    with pytest.raises(Exception, match="init_from"):
        load_train_config(bad)


@pytest.mark.parametrize("fmt", ["saelens", "hf_e2e_sae"])
def test_init_from_starts_from_the_given_sae_and_keeps_its_options(make_config, tmp_path, fmt):
    """A SAELens export (or our own save) with basis options: training starts from exactly its weights."""
    start = _sae(activation="topk", k=8, apply_b_dec_to_input=True, normalize_decoder=False)
    with torch.no_grad():
        start.decoder.bias.normal_()
    export_sae(start, tmp_path / "start", format=fmt)
    initial = load_sae(tmp_path / "start")
    path, out = make_config("ft", init_from=str(tmp_path / "start"), loss={"preset": "finetune"}, n_samples=16,
                            save_every_samples=None)
    run = trainer.setup_run(load_train_config(path))
    sae = run.accelerator.unwrap_model(run.model).sae(SITE)
    assert (sae.config.activation, sae.config.k, sae.config.apply_b_dec_to_input) == ("topk", 8, True)
    for name, tensor in initial.state_dict().items():
        assert torch.equal(sae.state_dict()[name], tensor), name
    logs = [trainer.train_step(run, group) for group in trainer._micro_batch_groups(run)]
    assert {"train/kl", "train/reconstruction"} <= set(logs[0])
    assert all(torch.isfinite(torch.tensor(list(step.values()))).all() for step in logs)
    assert not torch.equal(sae.encoder.weight, initial.encoder.weight)  # it trained


def test_finetune_cli_run_writes_a_loadable_sae(make_config, tmp_path):
    from hf_e2e_sae.cli import main as cli_main

    _sae().save_pretrained(tmp_path / "start")
    path, out = make_config("cli", loss={"preset": "finetune"}, n_samples=16, save_every_samples=None)
    assert cli_main(["train", str(path), f"init_from={tmp_path / 'start'}"]) == 0
    tuned = SparseAutoencoder.from_pretrained(out / "final")
    assert tuned.config.site == SITE and tuned.config.dict_size == 4 * N_EMBD
