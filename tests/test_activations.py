"""Every registered activation (parametrised over the registry: a new activation is tested by registering it).

What is checked: the defining property of each activation (exact per-token L0 for the top-k-per-token ones;
batch-level top-k in training and batch independence at inference for the BatchTopK ones; straight-through
threshold gradients for jumprelu),
that KL gradients reach every SAE parameter and no base parameter, that config options are declared, validated
and reach the saved config, and that save/load and push/load give identical latents.
"""
from __future__ import annotations

import re

import pytest
import torch

from hf_e2e_sae import SAEConfig, SAEPatchedModel, SparseAutoencoder
from hf_e2e_sae.sae.activations import ACTIVATION_SPECS, activation_option_owners
from hf_e2e_sae.sae.activations.batchtopk import BatchTopKActivation
from hf_e2e_sae.sae.activations.jumprelu import JumpReLUActivation
from hf_e2e_sae.training.config import TrainConfig
from hf_e2e_sae.training.losses import kl_divergence
from dictionary_families import FAMILIES, FAMILY_NAMES
from tiny_models import HIDDEN, random_ids, tiny_model

ACTIVATION_NAMES = sorted(ACTIVATION_SPECS)
# Options making each activation non-trivial on tiny random data (a jumprelu threshold near the pre-activations).
TEST_OPTIONS = {"topk": {"k": 4}, "batchtopk": {"k": 4},
                "jumprelu": {"jumprelu_init_threshold": 0.1, "jumprelu_bandwidth": 0.5},
                "matryoshka_topk": {"k": 4, "matryoshka_prefixes": [8, 24], "matryoshka_weights": [0.5, 1.0]},
                "matryoshka_batchtopk": {"k": 4, "matryoshka_prefixes": [8, 24], "matryoshka_weights": [0.5, 1.0]}}
SITE = "blocks.1.resid_pre"


def make_sae(activation: str, d_in: int = HIDDEN, dict_size: int = 64, seed: int = 0, **config) -> SparseAutoencoder:
    torch.manual_seed(seed)
    return SparseAutoencoder(SAEConfig(d_in=d_in, dict_size=dict_size, activation=activation,
                                       **{**TEST_OPTIONS.get(activation, {}), **config}))


def test_every_activation_has_test_options_and_a_train_config_field_per_option():
    """A new activation's options reach SAEConfig from TrainConfig (a field of the same name)."""
    fields = set(TrainConfig.model_fields)
    assert set(activation_option_owners()) <= fields
    for name, spec in ACTIVATION_SPECS.items():
        assert set(spec.options) == set(TEST_OPTIONS.get(name, {})), f"add TEST_OPTIONS for {name}"


@pytest.mark.parametrize("activation", ACTIVATION_NAMES)
def test_latents_are_non_negative_and_options_are_saved(activation, tmp_path):
    sae = make_sae(activation)
    latents = sae(torch.randn(3, 5, HIDDEN)).latents
    assert latents.shape == (3, 5, 64) and (latents >= 0).all()
    sae.config.save_pretrained(tmp_path)
    loaded = SAEConfig.from_pretrained(tmp_path)
    for key, value in TEST_OPTIONS.get(activation, {}).items():
        assert getattr(loaded, key) == value


SPARSE_CODE = [name for name in ACTIVATION_NAMES if ACTIVATION_SPECS[name].sparse_code]  # top k per token
BATCH_TOPK = [name for name in ACTIVATION_NAMES if isinstance(make_sae(name).activation, BatchTopKActivation)]


@pytest.mark.parametrize("k", [1, 4, 17])
@pytest.mark.parametrize("activation", SPARSE_CODE)
def test_topk_l0_is_exactly_k_or_the_number_of_positive_pre_activations(activation, k):
    sae = make_sae(activation, k=k)
    with torch.no_grad():
        sae.encoder.bias[:32] = -100.0  # half the latents can never be positive
    x = torch.randn(6, 7, HIDDEN)
    out = sae(x)
    l0 = (out.latents > 0).sum(-1)
    positive = (out.pre_activations > 0).sum(-1)
    assert torch.equal(l0, torch.clamp(positive, max=k))
    # The kept values are the k largest pre-activations, unchanged.
    top = out.pre_activations.topk(k, dim=-1).values
    kept = out.latents.sort(dim=-1, descending=True).values[..., :k]
    torch.testing.assert_close(kept, torch.relu(top))


def test_topk_all_negative_token_has_l0_zero():
    sae = make_sae("topk", k=4)
    with torch.no_grad():
        sae.encoder.bias.fill_(-1e3)
    assert (sae(torch.randn(2, HIDDEN)).latents == 0).all()


@pytest.mark.parametrize("activation", BATCH_TOPK)
def test_batchtopk_training_keeps_k_per_token_on_average_and_updates_a_buffer(activation):
    sae = make_sae(activation, k=4).train()
    assert "activation.threshold" in dict(sae.named_buffers())
    assert not any("threshold" in name for name, _ in sae.named_parameters())
    assert float(sae.activation.threshold) == 0.0
    x = torch.randn(8, 10, HIDDEN)
    out = sae(x)
    assert int((out.latents > 0).sum()) == 4 * 80
    per_token = (out.latents > 0).sum(-1)
    assert per_token.min() != per_token.max()  # per batch, not per token
    kept = out.latents.detach()[out.latents.detach() > 0]
    assert float(sae.activation.threshold) == pytest.approx(float(kept.min()))  # first update takes the value
    sae(torch.randn(8, 10, HIDDEN) * 2)
    assert float(sae.activation.threshold) > float(kept.min())  # a running average moves towards larger minima


@pytest.mark.parametrize("activation", BATCH_TOPK)
def test_batchtopk_inference_is_independent_of_the_batch(activation):
    sae = make_sae(activation, k=4).train()
    for _ in range(5):
        sae(torch.randn(16, 8, HIDDEN))
    sae.eval()
    x = torch.randn(12, HIDDEN)
    together = sae(x).latents
    alone = torch.cat([sae(x[i:i + 1]).latents for i in range(12)])
    with_others = sae(torch.cat([x, torch.randn(30, HIDDEN) * 3])).latents[:12]
    # Same active set; values equal up to the matmul's batch-size-dependent rounding.
    for other in (alone, with_others):
        assert torch.equal(together > 0, other > 0)
        torch.testing.assert_close(together, other)
    expected = torch.relu(sae.encoder(x)) * (sae.encoder(x) > sae.activation.threshold)
    torch.testing.assert_close(together, expected)
    assert 0 < (together > 0).sum(-1).float().mean() < 64


def test_jumprelu_forward_and_straight_through_gradients():
    act = JumpReLUActivation(dict_size=3, init_threshold=1.0, bandwidth=0.5)
    pre = torch.tensor([[0.9, 1.1, 2.0], [0.5, 0.8, 1.2]], requires_grad=True)
    out = act(pre)
    torch.testing.assert_close(out, torch.tensor([[0.0, 1.1, 2.0], [0.0, 0.0, 1.2]]))
    out.sum().backward()
    # d c/d pre = H(pre - theta); d c/d theta = -(theta/eps) K((pre - theta)/eps), K = 1 inside |u| < 1/2.
    torch.testing.assert_close(pre.grad, torch.tensor([[0.0, 1.0, 1.0], [0.0, 0.0, 1.0]]))
    window = ((pre.detach() - 1.0).abs() < 0.25).float()  # |pre - theta| < eps / 2
    expected_theta = -(1.0 / 0.5) * window.sum(0)
    # theta = exp(log_threshold): d/d log_theta = theta * d/d theta
    torch.testing.assert_close(act.log_threshold.grad, expected_theta * 1.0)
    assert act.log_threshold.grad.abs().sum() > 0


def test_jumprelu_l0_counts_active_latents_and_its_gradient_reaches_only_the_threshold():
    act = JumpReLUActivation(dict_size=3, init_threshold=1.0, bandwidth=0.5)
    pre = torch.tensor([[0.9, 1.1, 2.0], [0.5, 0.8, 1.2]], requires_grad=True)
    l0 = act.l0(pre)
    torch.testing.assert_close(l0, torch.tensor([2.0, 1.0]))
    torch.testing.assert_close(l0, (act(pre) > 0).sum(-1).float())
    l0.sum().backward()
    assert pre.grad is None or (pre.grad == 0).all()
    window = ((pre.detach() - 1.0).abs() < 0.25).float()
    torch.testing.assert_close(act.log_threshold.grad, -(1.0 / 0.5) * window.sum(0))  # theta = 1


def _train_jumprelu_l0(coeff: float, steps: int = 150) -> float:
    """Local MSE + coeff * L0 (straight-through) on fixed random data; the final mean L0."""
    torch.manual_seed(0)
    sae = make_sae("jumprelu", d_in=16, dict_size=64, jumprelu_init_threshold=0.05, jumprelu_bandwidth=0.2)
    x = torch.randn(256, 16)
    optimizer = torch.optim.Adam(sae.parameters(), lr=2e-2)
    for _ in range(steps):
        out = sae(x)
        loss = (out.reconstruction - x).pow(2).mean() + coeff * sae.activation.l0(out.pre_activations).mean() / 16
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return float((sae(x).latents > 0).sum(-1).float().mean())


def test_jumprelu_l0_falls_as_the_coefficient_rises():
    l0s = [_train_jumprelu_l0(c) for c in (0.0, 0.3, 3.0)]
    assert l0s[0] > l0s[1] > l0s[2], l0s
    assert l0s[2] < 0.5 * l0s[0], l0s


@pytest.mark.parametrize("activation", ACTIVATION_NAMES)
def test_kl_gradients_reach_every_sae_parameter_and_no_base_parameter(activation):
    base = tiny_model("gpt2")
    sae = make_sae(activation, dict_size=64)
    sae.config.site = SITE
    model = SAEPatchedModel(base, [sae]).train()
    ids = random_ids(4, 16)
    with torch.no_grad(), model.saes_disabled():
        clean = model(ids).logits
    kl = kl_divergence(clean, model(ids).logits)
    kl.backward()
    for name, param in sae.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, f"{activation}: no gradient for {name}"
    assert all(p.grad is None for p in base.parameters())


@pytest.mark.parametrize("activation", ACTIVATION_NAMES)
def test_save_load_round_trip_gives_identical_latents(activation, tmp_path):
    base = tiny_model("gpt2")
    sae = make_sae(activation)
    sae.config.site = SITE
    model = SAEPatchedModel(base, [sae]).train()
    ids = random_ids(4, 16)
    model(ids)  # a training call (moves batchtopk's threshold away from its initial 0)
    model.eval()
    before = model(ids).sae_outputs[SITE].latents
    model.save_pretrained(tmp_path)
    loaded = SAEPatchedModel.from_pretrained(tmp_path, base_model=tiny_model("gpt2")).eval()
    assert loaded.sae(SITE).config.activation == activation
    assert torch.equal(loaded(ids).sae_outputs[SITE].latents, before)
    reloaded_sae = SparseAutoencoder.from_pretrained(tmp_path)
    torch.testing.assert_close(dict(reloaded_sae.state_dict()), dict(sae.state_dict()), rtol=0, atol=0)


@pytest.mark.parametrize("activation", ACTIVATION_NAMES)
def test_push_and_load_from_the_hub_gives_identical_latents(activation, hub, hf_cache, hf_token):
    sae = make_sae(activation)
    sae.config.site = SITE
    model = SAEPatchedModel(tiny_model("gpt2"), [sae]).train()
    ids = random_ids(4, 16)
    model(ids)
    model.eval()
    before = model(ids).sae_outputs[SITE].latents
    repo_id = hub.unique_repo_id(f"arch-{activation}")
    model.push_to_hub(repo_id)
    loaded = SAEPatchedModel.from_pretrained(repo_id, base_model=tiny_model("gpt2")).eval()
    assert torch.equal(loaded(ids).sae_outputs[SITE].latents, before)
    card = hub.repo_files(repo_id)["README.md"].decode()
    for key, value in TEST_OPTIONS.get(activation, {}).items():  # the card names the activation's options
        assert f"{key}={value}" in card


@pytest.mark.parametrize("kwargs, message", [
    ({"activation": "relu", "k": 4}, "k is an option of activation batchtopk / matryoshka_batchtopk / matryoshka_topk / topk, not of activation='relu'"),
    ({"activation": "topk", "k": 0}, "k=0 is invalid for activation='topk'"),
    ({"activation": "topk", "k": 65}, "k=65 exceeds dict_size=64"),
    ({"activation": "batchtopk", "jumprelu_bandwidth": 0.1}, "jumprelu_bandwidth is an option of activation jumprelu"),
    ({"activation": "jumprelu", "jumprelu_bandwidth": -1.0}, "jumprelu_bandwidth=-1.0 is invalid"),
    ({"activation": "jumprelu", "jumprelu_init_threshold": 0.0}, "jumprelu_init_threshold=0.0 is invalid"),
    ({"activation": "matryoshka_topk", "matryoshka_prefixes": [0, 8]}, "matryoshka_prefixes=[0, 8] is invalid for "
     "activation='matryoshka_topk'"),
    ({"activation": "matryoshka_batchtopk", "matryoshka_prefixes": [16, 8]}, "matryoshka_prefixes=[16, 8] is invalid"),
    ({"activation": "matryoshka_topk", "matryoshka_prefixes": [8, 64]}, "must all be < dict_size=64"),
    ({"activation": "matryoshka_topk", "matryoshka_prefixes": [8], "matryoshka_weights": [1.0, 2.0]},
     "matryoshka_weights=[1.0, 2.0] needs one weight per entry"),
    ({"activation": "topk", "matryoshka_prefixes": [8]}, "matryoshka_prefixes is an option of activation matryoshka"),
])
def test_bad_activation_options_name_option_and_activation(kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        SparseAutoencoder(SAEConfig(d_in=8, dict_size=64, **kwargs))


# --------------------------------------------------------------- every family x every activation (dictionary_families)
@pytest.mark.parametrize("family", FAMILY_NAMES)
@pytest.mark.parametrize("activation", ACTIVATION_NAMES)
def test_every_family_has_exact_l0_gradients_only_into_it_and_round_trips(family, activation, tmp_path):
    base = tiny_model("gpt2")
    model = FAMILIES[family](base, activation, **TEST_OPTIONS.get(activation, {})).train()
    ids = random_ids(4, 16)
    with torch.no_grad(), model.saes_disabled():
        clean = model(ids).logits
    out = model(ids)
    assert list(out.sae_outputs) == model.sites
    if activation == "topk":  # structural: exactly k per token wherever k pre-activations are positive
        for record in out.sae_outputs.values():
            positive = (record.pre_activations > 0).sum(-1).clamp(max=4)
            assert torch.equal((record.latents != 0).sum(-1), positive)
    kl_divergence(clean, out.logits).backward()
    for name, param in model.saes.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, f"{family}/{activation}: no gradient for {name}"
    assert all(p.grad is None for p in base.parameters())
    model.eval()
    with torch.no_grad():
        before = model(ids)
    model.save_pretrained(tmp_path)
    loaded = SAEPatchedModel.from_pretrained(tmp_path, base_model=tiny_model("gpt2")).eval()
    assert type(loaded) is type(model) and loaded.sites == model.sites
    with torch.no_grad():
        after = loaded(ids)
    torch.testing.assert_close(after.logits, before.logits, rtol=0, atol=0)
    for site in model.sites:
        assert torch.equal(after.sae_outputs[site].latents, before.sae_outputs[site].latents)
