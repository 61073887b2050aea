"""SAEPatchedModel on every supported architecture: exactness, hooks, gradients, errors."""
import pytest
import torch

from hf_e2e_sae import SAEConfig, SAEPatchedModel, SparseAutoencoder, kl_divergence
from hf_e2e_sae.sae.sites import SITE_KINDS

from tiny_models import ARCHS, HIDDEN, LAYERS, random_ids, tiny_model

ALL_KIND_SITES = ["blocks.0.attn_out", "blocks.1.resid_pre", "blocks.1.mlp_out", "blocks.2.resid_post"]


def make_sae(site: str, d_in: int = HIDDEN, seed: int = 0) -> SparseAutoencoder:
    torch.manual_seed(seed)
    return SparseAutoencoder(SAEConfig(d_in=d_in, dict_size=4 * d_in, site=site))


def identity_sae(site: str, d_in: int = HIDDEN) -> SparseAutoencoder:
    """Encoder [I; -I], decoder [I, -I], no biases: ReLU(x) - ReLU(-x) = x exactly."""
    sae = SparseAutoencoder(SAEConfig(d_in=d_in, dict_size=2 * d_in, site=site))
    eye = torch.eye(d_in)
    with torch.no_grad():
        sae.encoder.weight.copy_(torch.cat([eye, -eye], 0))
        sae.encoder.bias.zero_()
        sae.decoder.weight.copy_(torch.cat([eye, -eye], 1))
        sae.decoder.bias.zero_()
    return sae


def hook_count(model) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


@pytest.mark.parametrize("arch", ARCHS)
def test_disabled_saes_give_base_logits_exactly_and_unpatch_restores(arch):
    base = tiny_model(arch)
    ids = random_ids()
    expected = base(ids).logits
    base.train()  # unpatch must restore this
    grads_before = {n: p.requires_grad for n, p in base.named_parameters()}
    model = SAEPatchedModel(base, [make_sae(s, seed=i) for i, s in enumerate(ALL_KIND_SITES)])
    assert not base.training and not any(p.requires_grad for p in base.parameters())
    patched = model(ids).logits
    assert not torch.allclose(patched, expected)  # the SAEs do change the output
    with model.saes_disabled():
        torch.testing.assert_close(model(ids).logits, expected, rtol=0, atol=0)
    returned = model.unpatch()
    assert returned is base and hook_count(base) == 0 and base.training
    assert {n: p.requires_grad for n, p in base.named_parameters()} == grads_before
    base.eval()
    torch.testing.assert_close(base(ids).logits, expected, rtol=0, atol=0)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("kind", SITE_KINDS)
def test_identity_sae_reproduces_base(arch, kind):
    base = tiny_model(arch)
    ids = random_ids()
    expected = base(ids).logits
    model = SAEPatchedModel(base, identity_sae(f"blocks.1.{kind}"))
    out = model(ids)
    torch.testing.assert_close(out.logits, expected, rtol=0, atol=1e-5)
    assert kl_divergence(expected, out.logits).item() < 1e-6


@pytest.mark.parametrize("arch", ARCHS)
def test_recorded_inputs_match_hidden_states(arch):
    base = tiny_model(arch)
    ids = random_ids()
    hidden = base(ids, output_hidden_states=True).hidden_states  # hidden[i] = input of block i
    model = SAEPatchedModel(base, make_sae("blocks.1.resid_pre"))
    with model.saes_disabled():
        clean = model(ids, cache_sites=["blocks.0.resid_pre", "blocks.0.attn_out", "blocks.0.mlp_out", "blocks.0.resid_post"])
    cached = clean.cached_activations
    torch.testing.assert_close(cached["blocks.0.resid_pre"], hidden[0], rtol=0, atol=0)
    torch.testing.assert_close(cached["blocks.0.resid_post"], hidden[1], rtol=0, atol=0)
    # The attention and MLP contributions add up to the block's residual update.
    update = cached["blocks.0.resid_post"] - cached["blocks.0.resid_pre"]
    torch.testing.assert_close(cached["blocks.0.attn_out"] + cached["blocks.0.mlp_out"], update, rtol=1e-4, atol=1e-5)
    patched = model(ids)
    torch.testing.assert_close(patched.sae_outputs["blocks.1.resid_pre"].target, hidden[1], rtol=0, atol=0)


@pytest.mark.parametrize("arch", ARCHS)
def test_kl_gradients_reach_every_sae_parameter_and_no_base_parameter(arch):
    base = tiny_model(arch)
    ids = random_ids()
    model = SAEPatchedModel(base, [make_sae("blocks.0.mlp_out"), make_sae("blocks.2.resid_pre", seed=1)])
    with torch.no_grad(), model.saes_disabled():
        target = model(ids).logits
    kl = kl_divergence(target, model(ids).logits)
    kl.backward()
    for name, param in model.saes.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name
    assert all(p.grad is None for p in base.parameters())


def test_stop_early_records_the_same_sae_outputs():
    base = tiny_model("gpt2")
    ids = random_ids()
    model = SAEPatchedModel(base, make_sae("blocks.1.mlp_out"))
    full = model(ids, cache_sites=["blocks.1.resid_pre"])
    early = model(ids, cache_sites=["blocks.1.resid_pre"], stop_early=True)
    assert early.logits is None
    torch.testing.assert_close(early.sae_outputs["blocks.1.mlp_out"].latents, full.sae_outputs["blocks.1.mlp_out"].latents)
    torch.testing.assert_close(early.cached_activations["blocks.1.resid_pre"], full.cached_activations["blocks.1.resid_pre"])
    assert hook_count(base) == 1  # temporary hooks removed, the SAE hook stays


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_generate_with_saes_in_place(arch):
    base = tiny_model(arch)
    ids = random_ids(batch=1, seq=5)
    kwargs = dict(max_new_tokens=6, do_sample=False, pad_token_id=1)
    expected = base.generate(ids, **kwargs)
    identity = SAEPatchedModel(base, identity_sae("blocks.1.resid_pre"))
    torch.testing.assert_close(identity.generate(ids, **kwargs), expected)
    identity.unpatch()
    calls = []
    model = SAEPatchedModel(base, make_sae("blocks.1.resid_pre"))
    model.sae("blocks.1.resid_pre").register_forward_hook(lambda *a: calls.append(1))
    out = model.generate(ids, **kwargs)
    assert out.shape == expected.shape and len(calls) == 6  # the SAE ran at every generation step


@pytest.mark.parametrize(
    "saes, message",
    [
        (lambda: [make_sae("blocks.1.resid_mid")], "Unknown site"),
        (lambda: [make_sae(f"blocks.{LAYERS}.resid_pre")], "out of range"),
        (lambda: [make_sae("blocks.1.resid_pre", d_in=HIDDEN + 1)], "hidden size"),
        (lambda: [make_sae("blocks.1.resid_pre"), make_sae("blocks.1.hook_resid_pre")], "Two SAEs for one site"),
        (lambda: [make_sae("blocks.0.resid_pre"), make_sae(f"blocks.{LAYERS + 2}.mlp_out")], "out of range"),
    ],
)
def test_bad_input_raises_and_leaves_the_model_unpatched(saes, message):
    base = tiny_model("gpt2")
    with pytest.raises(ValueError, match=message):
        SAEPatchedModel(base, saes())
    assert hook_count(base) == 0
    assert all(p.requires_grad for p in base.parameters())


def test_unsupported_architecture_is_a_clear_error():
    from transformers import AutoModelForCausalLM, OPTConfig

    base = AutoModelForCausalLM.from_config(OPTConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1,
                                                      ffn_dim=32, num_attention_heads=2, word_embed_proj_dim=16))
    with pytest.raises(ValueError, match="Unsupported architecture 'opt'.*gpt2"):
        SAEPatchedModel(base, make_sae("blocks.0.resid_pre", d_in=16))
    assert hook_count(base) == 0


def test_train_mode_keeps_the_base_in_eval():
    model = SAEPatchedModel(tiny_model("gpt2"), make_sae("blocks.1.resid_pre"))
    model.train()
    assert model.sae("blocks.1.resid_pre").training and not model.base_model.training
    assert {id(p) for p in model.sae_parameters()} == {id(p) for p in model.saes.parameters()}
