"""Steering and ablation of SAE features on SAEPatchedModel (patching/interventions.py)."""
import pytest
import torch

from hf_e2e_sae import ACTIVATIONS, SAEConfig, SAEPatchedModel, SparseAutoencoder

from tiny_models import ARCHS, HIDDEN, random_ids, tiny_model

SITE = "blocks.1.resid_pre"


def patched(arch: str = "gpt2", activation: str = "relu") -> SAEPatchedModel:
    torch.manual_seed(0)
    sae = SparseAutoencoder(SAEConfig(d_in=HIDDEN, dict_size=4 * HIDDEN, site=SITE, activation=activation))
    with torch.no_grad():
        sae.decoder.bias.normal_()  # a non-zero bias, so "equal to the bias" is a real check
        sae.decoder.weight.mul_(3.0)  # not unit norm as stored: steering must use the normalised direction
    return SAEPatchedModel(tiny_model(arch), sae)


def hook_count(model) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


@pytest.mark.parametrize("arch", ARCHS)
def test_steering_by_zero_is_exact_and_steering_adds_the_unit_direction(arch):
    model, ids = patched(arch), random_ids()
    plain = model(ids)
    with model.steer({SITE: {7: 0.0}}):
        zero = model(ids)
    torch.testing.assert_close(zero.logits, plain.logits, rtol=0, atol=0)
    with model.steer({"blocks.1.hook_resid_pre": {7: 2.5, 3: -1.0}}):
        steered = model(ids)
    direction = model.sae(SITE).decoder.weight[:, 7] / model.sae(SITE).decoder.weight[:, 7].norm()
    other = model.sae(SITE).decoder.weight[:, 3] / model.sae(SITE).decoder.weight[:, 3].norm()
    expected = plain.sae_outputs[SITE].reconstruction + 2.5 * direction - other
    torch.testing.assert_close(steered.sae_outputs[SITE].reconstruction, expected, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(steered.logits, plain.logits)
    assert model._interventions is None


@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
def test_ablating_every_latent_leaves_the_decoder_bias(activation):
    model, ids = patched(activation=activation), random_ids()
    dict_size = model.sae(SITE).config.dict_size
    with model.ablate({SITE: list(range(dict_size))}):
        out = model(ids)
    rec = out.sae_outputs[SITE].reconstruction
    torch.testing.assert_close(rec, model.sae(SITE).decoder.bias.expand_as(rec), rtol=0, atol=0)
    assert (out.sae_outputs[SITE].latents == 0).all()


def test_ablating_some_latents_equals_decoding_without_them():
    model, ids = patched(), random_ids()
    plain = model(ids).sae_outputs[SITE]
    fired = (plain.latents > 0).sum((0, 1)).nonzero().flatten()[:3].tolist()
    assert fired, "the random SAE should fire"
    with model.ablate({SITE: fired}), model.steer({SITE: {1: 1.5}}):
        out = model(ids).sae_outputs[SITE]
    latents = plain.latents.clone()
    latents[..., fired] = 0
    expected = model.sae(SITE).decode(latents) + 1.5 * model.sae(SITE).dictionary[1]
    torch.testing.assert_close(out.latents, latents)
    torch.testing.assert_close(out.reconstruction, expected, rtol=1e-5, atol=1e-6)


def test_nesting_composes_and_saes_disabled_is_untouched():
    model, ids = patched(), random_ids()
    with model.saes_disabled():
        clean = model(ids).logits
    hooks = hook_count(model)
    with model.steer({SITE: {2: 1.0}}):
        with model.steer({SITE: {2: 1.0}}):
            twice = model(ids).sae_outputs[SITE].reconstruction
            with model.saes_disabled():
                torch.testing.assert_close(model(ids).logits, clean, rtol=0, atol=0)
        once = model(ids).sae_outputs[SITE].reconstruction
    torch.testing.assert_close(twice - once, model.sae(SITE).dictionary[2].expand_as(once), rtol=1e-5, atol=1e-5)
    with model.saes_disabled(), model.ablate({SITE: [0]}):
        torch.testing.assert_close(model(ids).logits, clean, rtol=0, atol=0)
    assert hook_count(model) == hooks and model._interventions is None


def test_state_is_restored_after_an_exception_and_bad_requests_change_nothing():
    model, ids = patched(), random_ids()
    plain = model(ids).logits
    with pytest.raises(RuntimeError):
        with model.steer({SITE: {0: 5.0}}), model.ablate({SITE: [1]}):
            raise RuntimeError("boom")
    assert model._interventions is None
    torch.testing.assert_close(model(ids).logits, plain, rtol=0, atol=0)
    with model.steer({SITE: {0: 1.0}}):
        with pytest.raises(IndexError):
            with model.ablate({SITE: [0, 10_000]}):
                pass
        with pytest.raises(KeyError, match=r"^no SAE at site 'blocks.0.resid_pre': this model patches \[") as error:
            with model.ablate({"blocks.0.resid_pre": [0]}):
                pass
        assert "\n" not in str(error.value) and "__" not in str(error.value)  # one line, no module keys
        assert set(model._interventions) == {SITE} and not model._interventions[SITE].ablate
    assert model._interventions is None


def test_steering_applies_during_generate():
    model = patched()
    ids = random_ids(batch=1, seq=5)
    kwargs = dict(max_new_tokens=6, do_sample=False, pad_token_id=0)
    plain = model.generate(ids, **kwargs)
    with model.steer({SITE: {4: 0.0}}):
        assert torch.equal(model.generate(ids, **kwargs), plain)
    with model.steer({SITE: {4: 200.0}}):
        steered = model.generate(ids, **kwargs)
    assert not torch.equal(steered, plain)
    assert torch.equal(model.generate(ids, **kwargs), plain)


def test_gradients_flow_through_a_steered_sae():
    model, ids = patched(), random_ids()
    with model.steer({SITE: {0: 1.0}}), model.ablate({SITE: [1]}):
        model(ids, labels=ids).loss.backward()
    sae = model.sae(SITE)
    assert sae.encoder.weight.grad is not None and sae.decoder.weight.grad[:, 0].abs().sum() > 0
    assert all(p.grad is None for p in model.base_model.parameters())


def test_docs_steering_and_evaluate_blocks_run():
    import re
    from pathlib import Path

    docs = Path(__file__).resolve().parents[1] / "docs"
    pages = [(docs / "tutorials" / "features.md", "## Steering and ablation"),
             (docs / "concepts" / "method.md", "## The `evaluate` integration")]
    blocks = [re.search(r"```python\n(.*?)```", page.read_text()[page.read_text().index(h):], re.S).group(1)
              for page, h in pages]
    scope: dict = {}
    exec(compile(blocks[0], "README-steering", "exec"), scope)
    model, ids = scope["model"], scope["ids"]
    plain = model.generate(ids, max_new_tokens=20, do_sample=False)
    assert scope["steered"].shape == plain.shape and not torch.equal(scope["steered"], plain)
    assert scope["ablated"].sae_outputs["blocks.2.resid_pre"].latents[..., [5, 17]].abs().sum() == 0
    assert model._interventions is None
    exec(compile(blocks[1], "README-evaluate", "exec"), scope)
    assert scope["results"]["n_tokens"] == scope["ids"].numel() and scope["results"]["l0"] > 0
