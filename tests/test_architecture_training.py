"""Training every architecture: configs (activation options, sparsity defaults, meaningless loss combinations,
transcoders), the AuxK and L0 straight-through loss terms, and short trainer runs of each activation and of a
transcoder on the tiny assets of `train_fixtures.py`; the README's `activation=topk k=16` run, reduced.
"""
from __future__ import annotations

import json

import pytest
import torch

from train_fixtures import SITE, fresh_accelerate, make_config, tiny_assets  # noqa: F401  (fixtures by name)
import hf_e2e_sae.training.trainer as trainer
from hf_e2e_sae import SAEConfig, SAEPatchedModel, SparseAutoencoder
from hf_e2e_sae.patching.patched_model import SiteOutput
from hf_e2e_sae.sae.activations import ACTIVATION_SPECS
from hf_e2e_sae.config.arguments import ConfigError
from hf_e2e_sae.training.config import load_train_config
from hf_e2e_sae.training.loss_terms import AuxK, build_loss_terms
from hf_e2e_sae.training.losses import LossConfig, SparsityLossConfig

TRAIN_OPTIONS = {"topk": ["k=4"], "batchtopk": ["k=4"],
                 "jumprelu": ["jumprelu_init_threshold=0.05", "jumprelu_bandwidth=0.1", "loss.sparsity.p=0"],
                 "matryoshka_topk": ["k=4", "matryoshka_prefixes=[16, 64]"],
                 "matryoshka_batchtopk": ["k=4", "matryoshka_prefixes=[16, 64]", "matryoshka_weights=[0.5, 1.0]"]}


@pytest.fixture(autouse=True)
def _clean_accelerate(fresh_accelerate):
    yield


# ---------------------------------------------------------------- configs


def test_structural_sparsity_defaults_the_coefficient_to_zero_unless_given(make_config):
    path, _ = make_config("cfg", loss={"preset": "e2e", "sparsity": {"coeff": None}})
    for name, spec in ACTIVATION_SPECS.items():
        config = load_train_config(path, [f"activation={name}"])
        assert (config.loss.sparsity.coeff == 0.0) == spec.structural_sparsity, name
    assert load_train_config(path, ["activation=topk", "loss.sparsity.coeff=0.5"]).loss.sparsity.coeff == 0.5
    assert load_train_config(path, ["activation=relu"]).loss.sparsity.coeff == 3.0  # the e2e preset's


@pytest.mark.parametrize("overrides, pattern", [
    (["activation=topk", "loss.sparsity.p=0", "loss.sparsity.coeff=1"],
     r"loss\.sparsity\.p=0 .* meaningless with activation='topk'"),
    (["activation=relu", "loss.sparsity.p=0"], r"loss\.sparsity\.p=0 .* meaningless with activation='relu'.*jumprelu"),
    (["activation=relu", "k=8"], r"k is an option of activation batchtopk / matryoshka_batchtopk / matryoshka_topk / topk, not of activation='relu'"),
    (["activation=topk", "jumprelu_bandwidth=0.1"], r"jumprelu_bandwidth is an option of activation jumprelu"),
    (["activation=topk", "k=0"], r"k=0 is invalid for activation='topk'"),
    (["activation=softmax"], r"activation='softmax' is unknown; valid choices: \['batchtopk', 'jumprelu'"),
    (["loss.auxk.coeff=-1"], r"loss\.auxk\.coeff must be >= 0"),
    (["output_sites=[blocks.1.mlp_out,blocks.2.mlp_out]"], r"output_sites .* must pair one output site"),
    (["sites=[blocks.1.mlp_out]", "output_sites=[blocks.1.mlp_in]"], r"not computed after its input site"),
])
def test_meaningless_combinations_are_errors_naming_both(make_config, overrides, pattern):
    path, _ = make_config("bad")
    with pytest.raises(ConfigError, match=pattern):
        load_train_config(path, overrides)


def test_jumprelu_with_l0_penalty_is_accepted(make_config):
    path, _ = make_config("ok")
    config = load_train_config(path, ["activation=jumprelu", "loss.sparsity.p=0"])
    assert set(build_loss_terms(config.loss)) == {"sparsity_l0_ste"}


# ---------------------------------------------------------------- loss terms


def _outputs(sae: SparseAutoencoder, x: torch.Tensor) -> dict:
    out = sae(x)
    return {"s": SiteOutput(target=x, latents=out.latents, reconstruction=out.reconstruction,
                            pre_activations=out.pre_activations)}


def test_auxk_trains_only_dead_latents_and_is_zero_while_none_is_dead():
    torch.manual_seed(0)
    sae = SparseAutoencoder(SAEConfig(d_in=8, dict_size=32, activation="topk", k=2))
    with torch.no_grad():  # latents 0..15: small positive pre-activations that never make the top 2
        sae.encoder.weight[:16] *= 0.01
        sae.encoder.bias[:16] = 0.05
        sae.encoder.bias[16:] += 5.0
    x = torch.randn(4, 6, 8)
    auxk = AuxK(coeff=1.0, k_aux=4, dead_after_tokens=48)
    loss, value = auxk(_outputs(sae, x), {"s": sae}, 8, None)
    assert float(value.detach()) == 0.0  # 24 tokens seen: nothing is dead yet
    loss, value = auxk(_outputs(sae, x), {"s": sae}, 8, None)  # 48 tokens without firing: 0..15 are dead
    assert float(value.detach()) > 0
    sae.zero_grad()
    loss.backward()
    enc_grad = sae.encoder.weight.grad.abs().sum(-1)
    dead = auxk.tokens_since_fired["s"] >= 48
    assert dead[:16].all() and not dead.all()
    assert (enc_grad[dead] > 0).any() and (enc_grad[~dead] == 0).all()


def test_l0_straight_through_term_is_zero_in_value_and_moves_only_thresholds():
    sae = SparseAutoencoder(SAEConfig(d_in=8, dict_size=32, activation="jumprelu", jumprelu_init_threshold=0.2,
                                      jumprelu_bandwidth=0.5))
    terms = build_loss_terms(LossConfig(preset="local", sparsity=SparsityLossConfig(coeff=2.0, p=0)))
    loss, logged = terms["sparsity_l0_ste"](_outputs(sae, torch.randn(5, 8)), {"s": sae}, 8, None)
    assert float(loss.detach()) == 0.0 and logged is None
    loss.backward()
    grad = sae.activation.log_threshold.grad  # descent (-grad) raises the thresholds: fewer active latents
    assert (grad < 0).any() and (grad <= 0).all()
    assert sae.encoder.weight.grad is None


# ---------------------------------------------------------------- trainer runs


def _base(assets):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(assets.base_dir)


@pytest.mark.parametrize("activation", sorted(ACTIVATION_SPECS))
def test_every_activation_trains_end_to_end_and_reloads(activation, make_config, tiny_assets):
    path, out = make_config(activation, n_samples=32, save_every_samples=None)
    config = load_train_config(path, [f"activation={activation}", *TRAIN_OPTIONS.get(activation, [])])
    metrics = trainer.train(config)
    l0 = metrics[f"l0/{SITE}"]
    assert 0 < l0 and torch.isfinite(torch.tensor(metrics["kl"]))
    if ACTIVATION_SPECS[activation].sparse_code:  # k per token exactly (topk, matryoshka_topk)
        assert l0 <= 4
    saved = json.loads((out / "final" / "config.json").read_text())
    assert saved["activation"] == activation
    loaded = SAEPatchedModel.from_pretrained(out / "final", base_model=_base(tiny_assets))
    assert loaded.sae(SITE).config.activation == activation


@pytest.mark.parametrize("preset", ["local", "e2e", "e2e+ds"])
def test_a_transcoder_trains_with_every_preset(preset, make_config, tiny_assets):
    path, out = make_config(preset.replace("+", "_"), n_samples=32, save_every_samples=None,
                            sites=["blocks.1.mlp_in"], output_sites=["blocks.1.mlp_out"],
                            loss={"preset": preset, "auxk": {"coeff": 0.03, "dead_after_tokens": 64}})
    metrics = trainer.train(load_train_config(path))
    assert "explained_variance/blocks.1.mlp_in" in metrics and metrics["kl"] > 0
    saved = json.loads((out / "final" / "config.json").read_text())
    assert (saved["site"], saved["output_site"]) == ("blocks.1.mlp_in", "blocks.1.mlp_out")
    loaded = SAEPatchedModel.from_pretrained(out / "final", base_model=_base(tiny_assets))
    assert loaded.output_sites == ["blocks.1.mlp_out"]


def test_auxk_is_logged_when_on(make_config):
    path, _ = make_config("auxk", n_samples=16, save_every_samples=None)
    config = load_train_config(path, ["activation=topk", "k=2", "loss.auxk.coeff=0.1", "loss.auxk.dead_after_tokens=128"])
    run = trainer.setup_run(config)
    logs = [trainer.train_step(run, group) for group in trainer._micro_batch_groups(run)]
    assert all("train/auxk" in step for step in logs)
    assert logs[-1]["train/auxk"] > 0  # after 128 tokens some of the 128 latents are dead at k=2


def test_readme_topk_command_reduced_trains_with_l0_at_most_k_and_reloads_identically(tmp_path, monkeypatch):
    """`hf-e2e-sae train examples/configs/tiny-e2e.yaml activation=topk k=16 loss.sparsity.coeff=0` at 32 samples."""
    from pathlib import Path

    from hf_e2e_sae.cli import main as cli_main

    repo = Path(__file__).resolve().parents[1]
    captured: dict = {}
    real_write_final = trainer.write_final

    def spy(run, metrics):
        model = run.accelerator.unwrap_model(run.model).eval()
        captured["ids"] = next(iter(run.eval_loader))["input_ids"][:2]
        with torch.no_grad():
            captured["latents"] = model(captured["ids"]).sae_outputs["blocks.2.resid_pre"].latents
        return real_write_final(run, metrics)

    monkeypatch.setattr(trainer, "write_final", spy)
    out = tmp_path / "topk"
    code = cli_main(["train", str(repo / "examples/configs/tiny-e2e.yaml"), "activation=topk", "k=16",
                     "loss.sparsity.coeff=0", "n_samples=32", "data.n_eval_samples=4", "eval_every_samples=null",
                     f"output_dir={out}"])
    assert code == 0
    metrics = json.loads((out / "final" / "eval_metrics.json").read_text())
    assert 0 < metrics["l0/blocks.2.resid_pre"] <= 16
    loaded = SAEPatchedModel.from_pretrained(out / "final").eval()  # the builtin base model loads by name
    assert loaded.sae("blocks.2.resid_pre").config.k == 16
    with torch.no_grad():
        latents = loaded(captured["ids"]).sae_outputs["blocks.2.resid_pre"].latents
    assert torch.equal(latents, captured["latents"])


# Training-config fields that select each family of tests/dictionary_families.py (a new family adds its entry).
FAMILY_TRAIN_OVERRIDES = {
    "sae": {},
    "transcoder": {"sites": ["blocks.1.mlp_in"], "output_sites": ["blocks.1.mlp_out"]},
    "skip_transcoder": {"sites": ["blocks.1.mlp_in"], "output_sites": ["blocks.1.mlp_out"], "skip_connection": True},
    "cross_layer_transcoder": {"sites": ["blocks.0.mlp_in", "blocks.1.mlp_in"], "cross_layer": True},
}


def test_every_family_has_train_overrides():
    from dictionary_families import FAMILY_NAMES

    assert sorted(FAMILY_TRAIN_OVERRIDES) == FAMILY_NAMES


@pytest.mark.parametrize("family", sorted(FAMILY_TRAIN_OVERRIDES))
def test_every_family_trains_e2e_and_reloads_identically(family, make_config, tiny_assets):
    path, out = make_config(f"family_{family}", n_samples=32, save_every_samples=None, loss={"preset": "e2e"},
                            activation="topk", k=4, **FAMILY_TRAIN_OVERRIDES[family])
    run_sites = FAMILY_TRAIN_OVERRIDES[family].get("sites", [SITE])
    metrics = trainer.train(load_train_config(path))
    assert metrics["kl"] > 0 and all(0 < metrics[f"l0/{site}"] <= 4 for site in run_sites)
    loaded = SAEPatchedModel.from_pretrained(out / "final", base_model=_base(tiny_assets))
    assert loaded.sites == run_sites
    ids = torch.randint(2, 50, (2, 10))
    again = SAEPatchedModel.from_pretrained(out / "final", base_model=_base(tiny_assets))
    with torch.no_grad():
        torch.testing.assert_close(again(ids).logits, loaded(ids).logits, rtol=0, atol=0)
    if family == "skip_transcoder":
        assert loaded.sae(run_sites[0]).W_skip.abs().sum() > 0  # trained away from its zero init
