"""SparseAutoencoder and SAEConfig: architecture, init, config validation, Auto registration."""
import logging

import pytest
import torch
from transformers import AutoConfig, AutoModel

from hf_e2e_sae import SAEConfig, SparseAutoencoder, parse_site


def test_forward_matches_reference_formula():
    torch.manual_seed(0)
    sae = SparseAutoencoder(SAEConfig(d_in=8, dict_size=24))
    with torch.no_grad():
        sae.decoder.weight.mul_(torch.rand(1, 24) * 3 + 0.5)  # columns of arbitrary norm
    x = torch.randn(5, 8)
    out = sae(x)
    c = torch.relu(x @ sae.encoder.weight.T + sae.encoder.bias)
    D = sae.decoder.weight / sae.decoder.weight.norm(dim=0, keepdim=True)
    torch.testing.assert_close(out.latents, c)
    torch.testing.assert_close(out.reconstruction, c @ D.T + sae.decoder.bias)
    torch.testing.assert_close(sae.encode(x), c)
    torch.testing.assert_close(sae.decode(c), out.reconstruction)
    assert sae.dictionary.shape == (24, 8)
    torch.testing.assert_close(sae.dictionary.norm(dim=-1), torch.ones(24))
    assert not torch.allclose(sae.decoder.weight.norm(dim=0), torch.ones(24))  # stored weight untouched


def test_gradient_flows_through_the_normalisation():
    sae = SparseAutoencoder(SAEConfig(d_in=4, dict_size=6))
    sae(torch.randn(3, 4)).reconstruction.sum().backward()
    # d/dW of W/||W|| is orthogonal to W per column: the radial component of the grad vanishes.
    grad = sae.decoder.weight.grad
    assert grad is not None and grad.abs().sum() > 0
    assert torch.allclose((grad * sae.decoder.weight).sum(0), torch.zeros(6), atol=1e-5)


def test_orthogonal_decoder_init_and_option_off():
    torch.manual_seed(0)
    sae = SparseAutoencoder(SAEConfig(d_in=16, dict_size=64))
    W = sae.decoder.weight  # (d_in, dict_size)
    torch.testing.assert_close(W @ W.T, torch.eye(16), atol=1e-5, rtol=0)
    plain = SparseAutoencoder(SAEConfig(d_in=16, dict_size=64, init_decoder_orthogonal=False))
    assert not torch.allclose(plain.decoder.weight @ plain.decoder.weight.T, torch.eye(16), atol=1e-2)
    # encoder keeps PyTorch's Linear default: U(-1/sqrt(d_in), 1/sqrt(d_in))
    assert sae.encoder.weight.abs().max() <= 16 ** -0.5


def test_dict_size_ratio_and_site_alias():
    config = SAEConfig(d_in=10, dict_size_ratio=2.5, site="blocks.3.hook_mlp_out")
    assert config.dict_size == 25
    assert SAEConfig(d_in=4).dict_size == 240  # the paper's ratio 60 by default
    assert config.site == "blocks.3.mlp_out"
    assert str(parse_site("blocks.0.hook_resid_pre")) == "blocks.0.resid_pre"


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"d_in": 0, "dict_size": 4}, "d_in"),
        ({"d_in": 4, "dict_size_ratio": -1.0}, "dict_size_ratio"),
        ({"d_in": 4, "dict_size": 0}, "dict_size"),
        ({"d_in": 4, "dict_size": 8, "activation": "softplus"}, "valid choices"),
        ({"d_in": 4, "dict_size": 8, "site": "blocks.x.resid"}, "Unknown site"),
        ({"d_in": 4, "dict_size": 8, "site": "blocks.1.resid_mid"}, "resid_pre"),
        ({"d_in": 4, "dict_size": 8, "format_version": 99}, "newer"),
    ],
)
def test_config_errors_name_the_field(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SAEConfig(**kwargs)


def test_unknown_keys_load_with_a_warning(tmp_path, caplog):
    SAEConfig(d_in=4, dict_size=8).save_pretrained(tmp_path)
    import json
    data = json.loads((tmp_path / "config.json").read_text())
    data["some_future_option"] = 3
    (tmp_path / "config.json").write_text(json.dumps(data))
    with caplog.at_level(logging.WARNING):
        config = SAEConfig.from_pretrained(tmp_path)
    assert config.dict_size == 8
    assert "some_future_option" in caplog.text


def test_auto_classes_round_trip(tmp_path):
    sae = SparseAutoencoder(SAEConfig(d_in=8, dict_size=16, site="blocks.1.resid_pre"))
    sae.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    assert isinstance(AutoConfig.from_pretrained(tmp_path), SAEConfig)
    loaded = AutoModel.from_pretrained(tmp_path)
    assert isinstance(loaded, SparseAutoencoder)
    x = torch.randn(3, 8)
    torch.testing.assert_close(loaded(x).reconstruction, sae(x).reconstruction, rtol=0, atol=0)
