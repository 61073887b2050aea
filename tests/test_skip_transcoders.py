"""Skip transcoders (`SAEConfig.skip_connection`): `x_hat = decode(latents) + W_skip x`, `W_skip` zero at init.

Checked: a fresh skip transcoder equals the plain transcoder with the same weights; the skip term is exactly
`x @ W_skip.T` in the dense and the sparse (TopK) forward; gradients reach `W_skip` and no base parameter; the
fast step equals the reference step; save/load and the patched save/load round-trip it; sparsify's skip
transcoders load with identical outputs and ours export to a folder sparsify loads with identical outputs. (The
trainer's `skip_connection: true` is trained in test_architecture_training.py, over every dictionary family.)
"""
from __future__ import annotations

import json

import pytest
import torch
from sparsify import SparseCoder, SparseCoderConfig

from hf_e2e_sae import SAEConfig, SAEPatchedModel, SparseAutoencoder
from hf_e2e_sae.interop import export_sae, load_sae
from hf_e2e_sae.training.losses import LossConfig, kl_divergence
from test_fast_step import _assert_equal, _both
from tiny_models import HIDDEN, random_ids, tiny_model

MLP_IN, MLP_OUT = "blocks.1.mlp_in", "blocks.1.mlp_out"
TIGHT = {"rtol": 1e-5, "atol": 1e-5}


def skip_transcoder(seed: int = 0, skip: bool = True, random_skip: bool = True, **kwargs) -> SparseAutoencoder:
    torch.manual_seed(seed)
    tc = SparseAutoencoder(SAEConfig(d_in=HIDDEN, dict_size=48, site=MLP_IN, output_site=MLP_OUT,
                                     skip_connection=skip, **kwargs))
    if skip and random_skip:
        with torch.no_grad():
            tc.W_skip.normal_(0, 0.1)
    return tc


def test_fresh_skip_transcoder_equals_the_plain_transcoder():
    plain, skip = skip_transcoder(skip=False), skip_transcoder(random_skip=False)
    assert torch.count_nonzero(skip.W_skip) == 0 and skip.W_skip.shape == (HIDDEN, HIDDEN)
    assert not hasattr(plain, "W_skip") and set(skip.state_dict()) - set(plain.state_dict()) == {"W_skip"}
    skip.load_state_dict({**plain.state_dict(), "W_skip": skip.W_skip})
    x = torch.randn(5, HIDDEN)
    torch.testing.assert_close(skip(x).reconstruction, plain(x).reconstruction, rtol=0, atol=0)


@pytest.mark.parametrize("activation, kwargs", [("relu", {}), ("topk", {"k": 3}), ("jumprelu", {})])
def test_skip_term_is_exactly_w_skip_x_in_dense_and_sparse_forward(activation, kwargs):
    tc = skip_transcoder(activation=activation, **kwargs)
    x = torch.randn(2, 7, HIDDEN)
    out = tc(x)
    expected = tc.decode(out.latents) + x @ tc.W_skip.T
    torch.testing.assert_close(out.reconstruction, expected, **TIGHT)
    assert not torch.allclose(out.reconstruction, tc.decode(out.latents))  # the skip term is not vacuous
    if activation == "topk":
        torch.testing.assert_close(tc(x, sparse_output=True).reconstruction, out.reconstruction, **TIGHT)
        assert ((out.latents > 0).sum(-1) <= 3).all()  # exact L0 bound is unchanged by the skip term


def test_gradients_reach_w_skip_and_every_transcoder_parameter_and_no_base_parameter():
    base = tiny_model("gpt2")
    model = SAEPatchedModel(base, [skip_transcoder()])
    ids = random_ids()
    with torch.no_grad(), model.saes_disabled():
        clean = model(ids).logits
    kl_divergence(clean, model(ids).logits).backward()
    for name, param in model.sae(MLP_IN).named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name
    assert all(p.grad is None for p in base.parameters())


@pytest.mark.parametrize("preset", ["local", "e2e", "e2e+ds"])
@pytest.mark.parametrize("activation, kwargs", [("relu", {}), ("topk", {"k": 4})])
def test_fast_step_equals_reference_for_a_skip_transcoder(preset, activation, kwargs):
    model = SAEPatchedModel(tiny_model("gpt2"), [skip_transcoder(activation=activation, **kwargs)])
    _assert_equal(*_both(model, random_ids(), LossConfig(preset=preset)))


def test_save_load_round_trip_alone_and_patched(tmp_path):
    tc = skip_transcoder()
    tc.save_pretrained(tmp_path / "alone")
    assert json.loads((tmp_path / "alone" / "config.json").read_text())["skip_connection"] is True
    loaded = SparseAutoencoder.from_pretrained(tmp_path / "alone")
    torch.testing.assert_close(loaded.W_skip, tc.W_skip, rtol=0, atol=0)
    base = tiny_model("gpt2")
    model = SAEPatchedModel(base, [tc])
    model.save_pretrained(tmp_path / "patched")
    reloaded = SAEPatchedModel.from_pretrained(tmp_path / "patched", base_model=tiny_model("gpt2"))
    ids = random_ids()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids).logits, model(ids).logits, rtol=0, atol=0)
    assert reloaded.output_sites == [MLP_OUT] and reloaded.sae(MLP_IN).config.skip_connection


def _sparsify_skip_transcoder(tmp_path):
    torch.manual_seed(0)
    coder = SparseCoder(HIDDEN, SparseCoderConfig(k=4, num_latents=40, transcode=True, skip_connection=True))
    with torch.no_grad():
        for param in coder.parameters():
            param.normal_(0, 0.3)
    coder.save_to_disk(tmp_path / "run" / "layers.1.mlp")
    return coder, tmp_path / "run" / "layers.1.mlp"


def test_sparsify_skip_transcoder_loads_with_identical_outputs(tmp_path):
    coder, folder = _sparsify_skip_transcoder(tmp_path)
    ours = load_sae(folder)
    c = ours.config
    assert (c.site, c.output_site, c.skip_connection, c.apply_b_dec_to_input) == (MLP_IN, MLP_OUT, True, False)
    x = torch.randn(9, HIDDEN)
    with torch.no_grad():
        theirs = coder(x).sae_out
        assert float((theirs - coder.decode(*coder.encode(x)[:2])).abs().max()) > 1e-3  # W_skip contributes
        torch.testing.assert_close(ours(x).reconstruction, theirs, **TIGHT)


@pytest.mark.parametrize("normalize", [True, False])
def test_export_to_sparsify_loads_back_in_sparsify_with_identical_outputs(tmp_path, normalize):
    tc = skip_transcoder(activation="topk", k=4, normalize_decoder=normalize)
    tc.config.base_model_name_or_path = "builtin:tiny-shakespeare-gpt2"
    folder = export_sae(tc, tmp_path / "run", format="sparsify")
    assert folder.name == "layers.1.mlp"
    assert json.loads((tmp_path / "run" / "config.json").read_text())["model"] == "builtin:tiny-shakespeare-gpt2"
    coder = SparseCoder.load_from_disk(folder)
    assert coder.cfg.transcode and coder.cfg.skip_connection
    x = torch.randn(9, HIDDEN)
    with torch.no_grad():
        torch.testing.assert_close(coder(x).sae_out, tc(x).reconstruction, **TIGHT)
        torch.testing.assert_close(load_sae(folder)(x).reconstruction, tc(x).reconstruction, **TIGHT)


def test_exports_refuse_what_they_cannot_write(tmp_path):
    with pytest.raises(NotImplementedError, match="activation 'relu'"):
        export_sae(skip_transcoder(), tmp_path, format="sparsify")
    with pytest.raises(NotImplementedError, match="not transcoders or skip transcoders"):
        export_sae(skip_transcoder(activation="topk", k=4), tmp_path / "saelens", format="saelens")
    assert not (tmp_path / "saelens").exists()  # nothing written
