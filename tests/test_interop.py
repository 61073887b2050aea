"""Interop with the real `sae_lens` and `sparsify` packages, and with e2e_sae / dictionary_learning files built
from their documented layouts: SAEs they create load in ours with the same latents and reconstructions, ours
exported load in sae_lens with the same outputs, and foreign pickles are only ever read with weights_only=True."""
import json
import os

import pytest
import torch
import yaml
from sae_lens import SAE, JumpReLUSAE, JumpReLUSAEConfig, StandardSAE, StandardSAEConfig, TopKSAE, TopKSAEConfig
from sae_lens.saes.sae import SAEMetadata
from sparsify import SparseCoder, SparseCoderConfig
from transformers import AutoModel

import hf_e2e_sae
from hf_e2e_sae import SAEConfig, SAEPatchedModel, SparseAutoencoder, export_sae, load_sae
from hf_e2e_sae.cli import main as cli_main
from hf_e2e_sae.interop import site_from_hook_name
from tiny_models import HIDDEN, random_ids, tiny_model

D_SAE = 96
TIGHT = {"rtol": 1e-5, "atol": 1e-5}
SAELENS = {"standard": (StandardSAE, StandardSAEConfig, {}), "topk": (TopKSAE, TopKSAEConfig, {"k": 6}),
           "jumprelu": (JumpReLUSAE, JumpReLUSAEConfig, {})}


def _inputs(n=40, d=HIDDEN, seed=3):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed)) * 2 + 0.5


def _randomize(module, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in module.named_parameters():
            param.copy_(torch.randn(param.shape, generator=g) * 0.3)
            if "threshold" in name:
                param.abs_().mul_(0.3)  # positive thresholds that some pre-activations cross


def _same_latents(ours, theirs):
    assert torch.equal(ours > 0, theirs > 0)  # the same latents fire
    torch.testing.assert_close(ours, theirs, **TIGHT)


def _saelens_sae(architecture, apply_b_dec=True, center=False, seed=0):
    cls, config_cls, extra = SAELENS[architecture]
    metadata = SAEMetadata(hook_name="blocks.1.hook_resid_pre", model_name="gpt2",
                           model_from_pretrained_kwargs={"center_writing_weights": center})
    sae = cls(config_cls(d_in=HIDDEN, d_sae=D_SAE, apply_b_dec_to_input=apply_b_dec, metadata=metadata, **extra))
    _randomize(sae, seed)
    return sae


# ----------------------------------------------------------------------------------------------- SAELens -> ours
@pytest.mark.parametrize("apply_b_dec", [True, False])
@pytest.mark.parametrize("architecture", sorted(SAELENS))
def test_saelens_sae_loads_with_identical_outputs(tmp_path, architecture, apply_b_dec):
    theirs = _saelens_sae(architecture, apply_b_dec)
    theirs.save_model(tmp_path)
    ours = load_sae(tmp_path)
    assert ours.config.site == "blocks.1.resid_pre" and ours.config.base_model_name_or_path == "openai-community/gpt2"
    assert not ours.config.center_input and ours.config.apply_b_dec_to_input == apply_b_dec
    x = _inputs()
    with torch.no_grad():
        latents = theirs.encode(x)
        _same_latents(ours.encode(x), latents)
        torch.testing.assert_close(ours.decode(latents), theirs.decode(latents), **TIGHT)
        torch.testing.assert_close(ours(x).reconstruction, theirs(x), **TIGHT)


def test_saelens_centring_follows_its_metadata(tmp_path):
    """center_writing_weights=True means the SAE read centred residuals: ours centres raw inputs itself."""
    theirs = _saelens_sae("standard", center=True)
    theirs.save_model(tmp_path)
    ours = load_sae(tmp_path)
    assert ours.config.center_input
    x = _inputs()
    centred = x - x.mean(-1, keepdim=True)
    with torch.no_grad():
        _same_latents(ours.encode(x), theirs.encode(centred))
        torch.testing.assert_close(ours(x).reconstruction, theirs(centred), **TIGHT)


def test_saelens_topk_with_decoder_norm_rescaling(tmp_path):
    """rescale_acts_by_decoder_norm: SAELens scales pre-activations by the decoder norms; ours folds them exactly."""
    cls, config_cls, _ = SAELENS["topk"]
    theirs = cls(config_cls(d_in=HIDDEN, d_sae=D_SAE, k=6, rescale_acts_by_decoder_norm=True,
                            metadata=SAEMetadata(hook_name="blocks.1.hook_resid_pre", model_name="gpt2")))
    _randomize(theirs, 5)
    theirs.save_model(tmp_path)
    ours = load_sae(tmp_path)
    assert ours.config.normalize_decoder
    x = _inputs()
    with torch.no_grad():
        _same_latents(ours.encode(x), theirs.encode(x))
        torch.testing.assert_close(ours(x).reconstruction, theirs(x), **TIGHT)


def test_saelens_constant_input_scaling(tmp_path):
    """expected_average_only_in with its constant: ours scales inputs as SAELens's from_pretrained folds it."""
    theirs = _saelens_sae("topk")
    theirs.cfg.normalize_activations = "expected_average_only_in"
    theirs.save_model(tmp_path)
    ours = load_sae(tmp_path, input_scale=0.25)
    assert ours.config.input_scale == 0.25
    theirs.fold_activation_norm_scaling_factor(0.25)
    x = _inputs()
    with torch.no_grad():
        _same_latents(ours.encode(x), theirs.encode(x))
        torch.testing.assert_close(ours(x).reconstruction, theirs(x), **TIGHT)


def test_saelens_legacy_flat_config_loads_like_saelens_reads_it(tmp_path):
    """A pre-6 config (flat, hook_point, activation_fn_str topk): the same SAE as SAE.load_from_disk gives."""
    theirs = _saelens_sae("topk")
    theirs.save_model(tmp_path)
    legacy = {"d_in": HIDDEN, "d_sae": D_SAE, "dtype": "float32", "device": "cpu", "hook_point": "blocks.1.hook_resid_pre",
              "model_name": "gpt2", "activation_fn_str": "topk", "activation_fn_kwargs": {"k": 6},
              "apply_b_dec_to_input": True, "normalize_activations": False, "sae_lens_training_version": "3.0.0"}
    (tmp_path / "cfg.json").write_text(json.dumps(legacy))
    reference = SAE.load_from_disk(tmp_path)
    ours = load_sae(tmp_path)
    assert (ours.config.activation, ours.config.k, ours.config.site) == ("topk", 6, "blocks.1.resid_pre")
    x = _inputs()
    with torch.no_grad():
        _same_latents(ours.encode(x), reference.encode(x))
        torch.testing.assert_close(ours(x).reconstruction, reference(x), **TIGHT)


# ----------------------------------------------------------------------------------------------- ours -> SAELens
OUR_OPTIONS = [{}, {"apply_b_dec_to_input": True, "normalize_decoder": False},
               {"center_input": True, "input_scale": 0.5, "apply_b_dec_to_input": True}]


@pytest.mark.parametrize("options", OUR_OPTIONS, ids=["defaults", "b_dec+raw_decoder", "centre+scale+b_dec"])
@pytest.mark.parametrize("activation,extra", [("relu", {}), ("topk", {"k": 6}), ("jumprelu", {})])
def test_export_loads_in_saelens_with_identical_outputs(tmp_path, activation, extra, options):
    torch.manual_seed(0)
    ours = SparseAutoencoder(SAEConfig(d_in=HIDDEN, dict_size=D_SAE, activation=activation, site="blocks.2.resid_post",
                                       base_model_name_or_path="openai-community/gpt2", **extra, **options))
    _randomize(ours, 1)
    export_sae(ours, tmp_path / "export")
    theirs = SAE.load_from_disk(tmp_path / "export")
    meta = theirs.cfg.metadata
    assert (meta.model_name, meta.hook_name, meta.hook_layer) == ("gpt2", "blocks.2.hook_resid_post", 2)
    assert int(meta.sae_lens_version.split(".")[0]) >= 6
    assert meta.model_from_pretrained_kwargs == {"center_writing_weights": bool(options.get("center_input"))}
    x = _inputs()
    with torch.no_grad():
        latents = ours.encode(x)
        _same_latents(theirs.encode(x), latents)
        torch.testing.assert_close(theirs.decode(latents), ours.decode(latents), **TIGHT)
        torch.testing.assert_close(theirs(x), ours(x).reconstruction, **TIGHT)
        again = load_sae(tmp_path / "export")  # and back: the round trip keeps the outputs
        _same_latents(again.encode(x), latents)
        torch.testing.assert_close(again(x).reconstruction, ours(x).reconstruction, **TIGHT)


def test_export_refuses_an_sae_without_site(tmp_path):
    with pytest.raises(ValueError, match="site"):
        export_sae(SparseAutoencoder(SAEConfig(d_in=HIDDEN, dict_size=D_SAE)), tmp_path)


# ----------------------------------------------------------------------------------------------- sparsify -> ours
@pytest.fixture
def sparsify_run(tmp_path):
    torch.manual_seed(0)
    coder = SparseCoder(HIDDEN, SparseCoderConfig(k=5, num_latents=D_SAE))
    _randomize(coder, 2)
    coder.save_to_disk(tmp_path / "run" / "layers.1")
    SparseCoder(HIDDEN, SparseCoderConfig(k=5, num_latents=D_SAE)).save_to_disk(tmp_path / "run" / "layers.2")
    (tmp_path / "run" / "config.json").write_text(json.dumps({"model": "EleutherAI/pythia-14m"}))
    return coder, tmp_path / "run"


@pytest.mark.parametrize("how", ["subfolder", "hookpoint_folder"])
def test_sparsify_sae_loads_with_identical_latents(sparsify_run, how):
    coder, run = sparsify_run
    ours = load_sae(run, subfolder="layers.1") if how == "subfolder" else load_sae(run / "layers.1")
    assert ours.config.site == "blocks.1.resid_post" and ours.config.k == 5
    assert ours.config.base_model_name_or_path == "EleutherAI/pythia-14m"
    x = _inputs()
    with torch.no_grad():
        encoded = coder.encode(x)
        dense = torch.zeros(len(x), D_SAE).scatter(-1, encoded.top_indices, encoded.top_acts)
        _same_latents(ours.encode(x), dense)
        torch.testing.assert_close(ours(x).reconstruction, coder.decode(encoded.top_acts, encoded.top_indices), **TIGHT)


def test_sparsify_run_folder_needs_a_subfolder(sparsify_run):
    with pytest.raises(ValueError, match="subfolder"):
        load_sae(sparsify_run[1])


# ----------------------------------------------------------------------------------------------- e2e_sae -> ours
def _e2e_state(sites, seed=4):
    g = torch.Generator().manual_seed(seed)
    state = {}
    for site in sites:
        prefix = site.replace(".", "-")
        state.update({f"{prefix}.encoder.0.weight": torch.randn(D_SAE, HIDDEN, generator=g) * 0.3,
                      f"{prefix}.encoder.0.bias": torch.randn(D_SAE, generator=g) * 0.1,
                      f"{prefix}.decoder.weight": torch.randn(HIDDEN, D_SAE, generator=g),
                      f"{prefix}.decoder.bias": torch.randn(HIDDEN, generator=g) * 0.1})
    return state


def test_e2e_sae_checkpoint_loads_with_identical_outputs_given_centring(tmp_path):
    site = "blocks.1.hook_resid_pre"
    state = _e2e_state([site])
    torch.save(state, tmp_path / "samples_400000.pt")
    torch.save(_e2e_state([site], seed=9), tmp_path / "samples_100.pt")  # an earlier checkpoint: not chosen
    (tmp_path / "final_config.yaml").write_text(yaml.safe_dump({"tlens_model_name": "gpt2", "saes": {"sae_positions": [site]}}))
    ours = load_sae(tmp_path)
    assert ours.config.site == "blocks.1.resid_pre" and ours.config.center_input
    assert ours.config.base_model_name_or_path == "openai-community/gpt2"
    # The reference's SAE (e2e_sae/models/sparse_autoencoders.py), written out, on TransformerLens's centred residual
    model = tiny_model("gpt2")
    patched = SAEPatchedModel(model, [ours])
    with torch.no_grad():
        record = patched(random_ids()).sae_outputs["blocks.1.resid_pre"]
    raw = record.target
    tl_residual = raw - raw.mean(-1, keepdim=True)
    p = "blocks-1-hook_resid_pre"
    latents = torch.relu(tl_residual @ state[f"{p}.encoder.0.weight"].T + state[f"{p}.encoder.0.bias"])
    dictionary = torch.nn.functional.normalize(state[f"{p}.decoder.weight"], dim=0)
    reconstruction = latents @ dictionary.T + state[f"{p}.decoder.bias"]
    _same_latents(record.latents, latents)
    # spliced into HF's basis: the reference's reconstruction plus the token mean TransformerLens folded away
    torch.testing.assert_close(record.reconstruction, reconstruction + raw.mean(-1, keepdim=True), **TIGHT)


def test_e2e_sae_checkpoint_with_several_saes_needs_site(tmp_path):
    torch.save(_e2e_state(["blocks.1.hook_resid_pre", "blocks.2.hook_resid_pre"]), tmp_path / "samples_10.pt")
    with pytest.raises(ValueError, match="site="):
        load_sae(tmp_path)
    assert load_sae(tmp_path, site="blocks.2.resid_pre").config.site == "blocks.2.resid_pre"


# ----------------------------------------------------------------------------------------------- dictionary_learning
def _dl_folder(tmp_path, kind):
    g = torch.Generator().manual_seed(5)
    enc, dec = torch.randn(D_SAE, HIDDEN, generator=g) * 0.3, torch.randn(HIDDEN, D_SAE, generator=g)
    b_enc, b = torch.randn(D_SAE, generator=g) * 0.1, torch.randn(HIDDEN, generator=g)
    if kind == "AutoEncoder":
        state = {"encoder.weight": enc, "encoder.bias": b_enc, "decoder.weight": dec, "bias": b}
    elif kind == "AutoEncoderTopK":
        state = {"encoder.weight": enc, "encoder.bias": b_enc, "decoder.weight": dec, "b_dec": b, "k": torch.tensor(6)}
    else:
        state = {"W_enc": enc.T.clone(), "b_enc": b_enc, "W_dec": dec.T.clone(), "b_dec": b,
                 "threshold": torch.rand(D_SAE, generator=g) * 0.2}
    torch.save(state, tmp_path / "ae.pt")
    trainer = {"dict_class": kind, "layer": 2, "lm_name": "EleutherAI/pythia-70m-deduped", "submodule_name": "resid_post_layer_2"}
    (tmp_path / "config.json").write_text(json.dumps({"trainer": trainer, "buffer": {"io": "out"}}))
    return state


def _dl_reference(kind, s, x):
    """dictionary_learning's forward passes (dictionary.py, trainers/top_k.py), written out."""
    if kind == "AutoEncoder":
        f = torch.relu((x - s["bias"]) @ s["encoder.weight"].T + s["encoder.bias"])
        return f, f @ s["decoder.weight"].T + s["bias"]
    if kind == "AutoEncoderTopK":
        post = torch.relu((x - s["b_dec"]) @ s["encoder.weight"].T + s["encoder.bias"])
        top = post.topk(int(s["k"]), dim=-1)
        f = torch.zeros_like(post).scatter(-1, top.indices, top.values)
        return f, f @ s["decoder.weight"].T + s["b_dec"]
    pre = x @ s["W_enc"] + s["b_enc"]
    f = torch.relu(pre * (pre > s["threshold"]))
    return f, f @ s["W_dec"] + s["b_dec"]


@pytest.mark.parametrize("kind", ["AutoEncoder", "AutoEncoderTopK", "JumpReluAutoEncoder"])
def test_dictionary_learning_loads_with_identical_outputs(tmp_path, kind):
    state = _dl_folder(tmp_path, kind)
    ours = load_sae(tmp_path)
    assert ours.config.site == "blocks.2.resid_post"
    assert ours.config.base_model_name_or_path == "EleutherAI/pythia-70m-deduped"
    x = _inputs()
    latents, reconstruction = _dl_reference(kind, state, x)
    with torch.no_grad():
        _same_latents(ours.encode(x), latents)
        torch.testing.assert_close(ours(x).reconstruction, reconstruction, **TIGHT)


# ----------------------------------------------------------------------------------------------- safety
class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("filename", ["ae.pt", "samples_1.pt"])
def test_malicious_pickles_are_refused_unexecuted(tmp_path, filename):
    marker = tmp_path / "pwned"
    torch.save({"encoder.weight": torch.zeros(2, 2), "x": _Payload(marker)}, tmp_path / filename)
    with pytest.raises(ValueError, match="weights_only"):
        load_sae(tmp_path)
    assert not marker.exists()


# ----------------------------------------------------------------------------------------------- conversion, patching
def test_convert_cli_writes_our_format_and_saelens(tmp_path, sparsify_run):
    coder, run = sparsify_run
    assert cli_main(["convert", str(run), str(tmp_path / "ours"), "--subfolder", "layers.1"]) == 0
    x = _inputs()
    expected = load_sae(run, subfolder="layers.1")(x)
    for loaded in (SparseAutoencoder.from_pretrained(tmp_path / "ours"), AutoModel.from_pretrained(tmp_path / "ours")):
        assert loaded.config.site == "blocks.1.resid_post"
        assert torch.equal(loaded(x).reconstruction, expected.reconstruction)
    assert cli_main(["convert", str(tmp_path / "ours"), str(tmp_path / "sl"), "--to", "saelens"]) == 0
    with torch.no_grad():
        torch.testing.assert_close(SAE.load_from_disk(tmp_path / "sl")(x), expected.reconstruction, **TIGHT)
    assert cli_main(["convert", str(tmp_path / "nothing-here"), str(tmp_path / "x")]) == 2


def test_patched_model_from_a_foreign_folder(tmp_path):
    theirs = _saelens_sae("topk")
    theirs.save_model(tmp_path / "sl")
    model = tiny_model("gpt2")
    patched = SAEPatchedModel.from_pretrained(tmp_path / "sl", base_model=model)
    assert patched.sites == ["blocks.1.resid_pre"]
    with torch.no_grad():
        record = patched(random_ids()).sae_outputs["blocks.1.resid_pre"]
        _same_latents(record.latents, theirs.encode(record.target))
    wide = SAEMetadata(hook_name="blocks.1.hook_resid_pre", model_name="gpt2")
    StandardSAE(StandardSAEConfig(d_in=HIDDEN * 2, d_sae=8, metadata=wide)).save_model(tmp_path / "wide")
    fresh = tiny_model("gpt2")
    with pytest.raises(ValueError, match="d_in"):
        SAEPatchedModel.from_pretrained(tmp_path / "wide", base_model=fresh)
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in fresh.modules())  # nothing was patched


@pytest.mark.parametrize("name,site", [
    ("blocks.6.hook_resid_pre", "blocks.6.resid_pre"), ("blocks-6-hook_resid_post", "blocks.6.resid_post"),
    ("layers.6", "blocks.6.resid_post"), ("transformer.h.6", "blocks.6.resid_post"),
    ("model.layers.3.mlp", "blocks.3.mlp_out"), ("gpt_neox.layers.2.attention", "blocks.2.attn_out"),
    ("resid_post_layer_3", "blocks.3.resid_post"), ("blocks.6.hook_resid_mid", None), ("blocks.6.attn.hook_z", None)])
def test_foreign_hook_names_map_to_sites_by_rule(name, site):
    assert site_from_hook_name(name) == site


def test_unknown_format_is_a_clear_error(tmp_path):
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(ValueError, match="no known SAE format"):
        load_sae(tmp_path)
    with pytest.raises(ValueError, match="valid choices"):
        load_sae(tmp_path, format="nope")
    assert hf_e2e_sae.load_sae is load_sae


def test_foreign_repos_load_from_the_hub(hub, hf_cache, hf_token, tmp_path, sparsify_run):
    """By repo id (fake Hub on 127.0.0.1): a SAELens repo, and one hookpoint of a sparsify run repo."""
    theirs = _saelens_sae("jumprelu")
    theirs.save_model(tmp_path / "sl")
    sl_repo = hub.unique_repo_id("saelens")
    hub.add_commit(sl_repo, {f"blocks.1/{p.name}": p.read_bytes() for p in (tmp_path / "sl").iterdir()})
    coder, run = sparsify_run
    sp_repo = hub.unique_repo_id("sparsify")
    hub.add_commit(sp_repo, {str(p.relative_to(run)): p.read_bytes() for p in run.rglob("*") if p.is_file()})
    x = _inputs()
    with torch.no_grad():
        _same_latents(load_sae(sl_repo, subfolder="blocks.1").encode(x), theirs.encode(x))
        patched = SAEPatchedModel.from_pretrained(sl_repo, subfolder="blocks.1", base_model=tiny_model("gpt2"))
        record = patched(random_ids()).sae_outputs["blocks.1.resid_pre"]
        _same_latents(record.latents, theirs.encode(record.target))
        ours = load_sae(sp_repo, subfolder="layers.1")
        encoded = coder.encode(x)
        _same_latents(ours.encode(x), torch.zeros(len(x), D_SAE).scatter(-1, encoded.top_indices, encoded.top_acts))
