"""Basis and normalisation options of `SparseAutoencoder` (hf_e2e_sae.sae.basis): each is applied exactly as
its formula says, saved and loaded with the SAE, the defaults reproduce the paper's SAE and load today's
saved format, and a centring SAE spliced into a model adds each token's mean back."""
import json

import pytest
import torch
import torch.nn.functional as F

from hf_e2e_sae import SAEConfig, SAEPatchedModel, SparseAutoencoder
from tiny_models import HIDDEN, random_ids, tiny_model

D_IN, DICT = 16, 48
OPTIONS = [
    {},
    {"center_input": True},
    {"input_scale": 0.25},
    {"apply_b_dec_to_input": True},
    {"normalize_decoder": False},
    {"center_input": True, "input_scale": 3.0, "apply_b_dec_to_input": True, "normalize_decoder": False},
]
ACTS = [("relu", {}), ("topk", {"k": 5}), ("jumprelu", {})]


def _sae(activation="relu", d_in=D_IN, seed=0, **options) -> SparseAutoencoder:
    torch.manual_seed(seed)
    sae = SparseAutoencoder(SAEConfig(d_in=d_in, dict_size=DICT, activation=activation, **options))
    with torch.no_grad():
        sae.decoder.bias.normal_()  # non-zero b_dec, so apply_b_dec_to_input matters
        sae.decoder.weight.mul_(torch.rand(DICT) + 0.5)  # non-unit columns, so normalize_decoder matters
        if activation == "jumprelu":
            sae.activation.threshold.uniform_(0, 0.3)
    return sae


def _reference(sae: SparseAutoencoder, x: torch.Tensor):
    """The options written out by hand."""
    c = sae.config
    h = x - x.mean(-1, keepdim=True) if c.center_input else x
    h = h * c.input_scale
    if c.apply_b_dec_to_input:
        h = h - sae.decoder.bias
    pre = h @ sae.encoder.weight.T + sae.encoder.bias
    if c.activation == "relu":
        latents = pre.relu()
    elif c.activation == "topk":
        kth = pre.topk(c.k, dim=-1).values[..., -1:]
        latents = torch.where(pre >= kth, pre.relu(), torch.zeros_like(pre))
    else:
        latents = pre.relu() * (pre > sae.activation.threshold)
    dec = F.normalize(sae.decoder.weight, dim=0) if c.normalize_decoder else sae.decoder.weight
    return latents, (latents @ dec.T + sae.decoder.bias) / c.input_scale


@pytest.mark.parametrize("activation,extra", ACTS)
@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: "+".join(o) or "defaults")
def test_options_follow_their_formulas(activation, extra, options):
    sae = _sae(activation, **extra, **options)
    x = torch.randn(3, 7, D_IN) + 2.0  # non-zero token means, so centring matters
    latents, reconstruction = _reference(sae, x)
    out = sae(x)
    torch.testing.assert_close(out.latents, latents, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.reconstruction, reconstruction, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(sae.decode(sae.encode(x)), out.reconstruction)


@pytest.mark.parametrize("activation,extra", ACTS)
@pytest.mark.parametrize("options", OPTIONS[1:], ids=lambda o: "+".join(o))
def test_options_round_trip_through_save_pretrained(tmp_path, activation, extra, options):
    sae = _sae(activation, **extra, **options)
    sae.save_pretrained(tmp_path)
    loaded = SparseAutoencoder.from_pretrained(tmp_path)
    for name, value in {**extra, **options}.items():
        assert getattr(loaded.config, name) == value
    x = torch.randn(4, D_IN)
    assert torch.equal(loaded(x).latents, sae(x).latents)
    assert torch.equal(loaded(x).reconstruction, sae(x).reconstruction)


def test_defaults_load_todays_saved_format(tmp_path):
    """A config.json written before these options existed loads with every option off."""
    sae = _sae()
    sae.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    for key in ("apply_b_dec_to_input", "input_scale", "center_input", "normalize_decoder"):
        config.pop(key)
    (tmp_path / "config.json").write_text(json.dumps(config))
    loaded = SparseAutoencoder.from_pretrained(tmp_path)
    c = loaded.config
    assert (c.apply_b_dec_to_input, c.input_scale, c.center_input, c.normalize_decoder) == (False, 1.0, False, True)
    x = torch.randn(4, D_IN)
    expected = F.linear(torch.relu(sae.encoder(x)), F.normalize(sae.decoder.weight, dim=0), sae.decoder.bias)
    torch.testing.assert_close(loaded(x).reconstruction, expected)


def test_centring_ignores_the_token_mean():
    sae = _sae(center_input=True)
    x = torch.randn(5, D_IN)
    shifted = x + torch.randn(5, 1) * 10
    torch.testing.assert_close(sae.encode(shifted), sae.encode(x), rtol=1e-4, atol=1e-4)
    assert torch.allclose(sae(x).reconstruction, sae.decode(sae.encode(x)))  # SAE basis: no mean added


@pytest.mark.parametrize("center", [False, True])
def test_patched_model_adds_the_token_mean_back(center):
    model = tiny_model("gpt2")
    sae = _sae(d_in=HIDDEN, center_input=center)
    sae.config.site = "blocks.1.resid_pre"
    patched = SAEPatchedModel(model, [sae])
    with torch.no_grad():
        out = patched(random_ids(), cache_sites=[])
    record = out.sae_outputs["blocks.1.resid_pre"]
    x = record.target
    expected = sae(x).reconstruction + (x.mean(-1, keepdim=True) if center else 0)
    torch.testing.assert_close(record.reconstruction, expected)
    # and that is what the model ran on: splice it by hand and compare logits
    patched.unpatch()
    handle = model.transformer.h[1].register_forward_pre_hook(lambda m, args: (expected,) + args[1:])
    try:
        with torch.no_grad():
            logits = model(random_ids()).logits
    finally:
        handle.remove()
    torch.testing.assert_close(out.logits, logits)


@pytest.mark.parametrize("field,value", [("input_scale", 0.0), ("input_scale", float("inf")), ("center_input", "yes"),
                                         ("normalize_decoder", None)])
def test_invalid_options_name_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        SAEConfig(d_in=D_IN, dict_size=DICT, **{field: value})


@pytest.mark.parametrize("k", [0, DICT + 1, 2.5])  # None takes TopK's declared default (32)
def test_topk_needs_a_valid_k(k):
    with pytest.raises(ValueError, match="k"):
        SparseAutoencoder(SAEConfig(d_in=D_IN, dict_size=DICT, activation="topk", k=k))


def test_gradients_reach_every_trainable_parameter_with_all_options():
    sae = _sae(**OPTIONS[-1])
    x = torch.randn(6, D_IN) + 1
    sae(x).reconstruction.pow(2).sum().backward()
    for name, param in sae.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name
