"""Cross-layer transcoders (`CrossLayerTranscoder`, `CLTPatchedModel`).

Checked: the maths (`y_j = b_dec[j] + sum_{i<=j} W_dec[i->j] c_i`, jointly unit-norm decoders); the patched forward
reads each layer's MLP input of the patched run, replaces every MLP output, records one `SiteOutput` per layer;
a CLT built from a ReLU MLP's own weights gives KL 0; TopK's L0 is exact per layer; gradients reach every CLT
parameter (cross-layer decoders included) and no base parameter; the local loss is the sum of per-layer MSEs;
the fast step equals the reference step; save/load (alone through AutoModel, patched through
`SAEPatchedModel.from_pretrained`) round-trips; misuse is a clear error.
"""
from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModel, AutoModelForCausalLM

from hf_e2e_sae import CLTConfig, CLTPatchedModel, CrossLayerTranscoder, SAEPatchedModel, evaluate
from hf_e2e_sae.training.losses import LossConfig, compute_losses, kl_divergence, mse_loss
from test_fast_step import _assert_equal
from test_transcoders import _relu_gpt2
from tiny_models import HIDDEN, random_ids, tiny_model
from train_fixtures import fresh_accelerate, make_config, tiny_assets  # noqa: F401  (fixtures by name)

LAYERS = [0, 1, 2]
SITES = [f"blocks.{layer}.mlp_in" for layer in LAYERS]


def make_clt(layers=LAYERS, seed: int = 0, **kwargs) -> CrossLayerTranscoder:
    torch.manual_seed(seed)
    clt = CrossLayerTranscoder(CLTConfig(d_in=HIDDEN, dict_size=24, layers=layers, **kwargs))
    with torch.no_grad():
        clt.b_dec.normal_(0, 0.1)
    return clt


def test_reconstruction_sums_every_earlier_layers_decoded_latents():
    clt = make_clt()
    xs = [torch.randn(2, 5, HIDDEN) for _ in LAYERS]
    out = clt(xs)
    norms = [clt.decoder_weights(i).pow(2).sum(dim=(0, 2)).sqrt() for i in range(3)]
    for norm in norms:  # each latent's decoder vectors have joint unit norm over the layers it writes
        torch.testing.assert_close(norm, torch.ones_like(norm))
    for j in range(3):
        expected = clt.b_dec[j] + sum(
            torch.relu(xs[i] @ clt.encoders[i].weight.T + clt.encoders[i].bias) @ clt.decoder_weights(i)[j - i]
            for i in range(j + 1))
        torch.testing.assert_close(out.reconstructions[j], expected)
    assert [tuple(d.shape) for d in clt.decoders] == [(3, 24, HIDDEN), (2, 24, HIDDEN), (1, 24, HIDDEN)]


def test_patched_forward_reads_patched_inputs_and_records_each_layer():
    base = tiny_model("gpt2")
    ids = random_ids()
    with torch.no_grad():
        clean_logits = base(ids).logits
    model = CLTPatchedModel(base, make_clt())
    with torch.no_grad():
        with model.saes_disabled():
            clean = model(ids, cache_sites=SITES)
            torch.testing.assert_close(clean.logits, clean_logits, rtol=0, atol=0)
            assert clean.sae_outputs == {}
        out = model(ids, cache_sites=SITES)
    assert list(out.sae_outputs) == SITES and model.sites == SITES
    clt = model.clt
    latents = [clt.encode_layer(i, out.cached_activations[s])[1] for i, s in enumerate(SITES)]
    for j, site in enumerate(SITES):
        record = out.sae_outputs[site]
        torch.testing.assert_close(record.source, out.cached_activations[site])  # this run's MLP input
        torch.testing.assert_close(record.latents, latents[j])
        torch.testing.assert_close(record.reconstruction, clt.decode_layer(j, latents))
    torch.testing.assert_close(out.cached_activations[SITES[0]], clean.cached_activations[SITES[0]])
    # layer 1 reads the patched run's MLP input, which differs once layer 0's output was replaced
    assert not torch.allclose(out.cached_activations[SITES[1]], clean.cached_activations[SITES[1]])
    assert not torch.allclose(out.logits, clean_logits)


@torch.no_grad()
def test_a_clt_made_of_the_mlps_own_weights_gives_kl_zero_and_cross_layer_terms_add():
    base = _relu_gpt2()
    clt = CrossLayerTranscoder(CLTConfig(d_in=HIDDEN, dict_size=4 * HIDDEN, layers=LAYERS, normalize_decoder=False))
    for i, layer in enumerate(LAYERS):
        mlp = base.transformer.h[layer].mlp  # GPT-2 Conv1D: weight (in, out)
        clt.encoders[i].weight.copy_(mlp.c_fc.weight.T)
        clt.encoders[i].bias.copy_(mlp.c_fc.bias)
        clt.decoders[i].zero_()
        clt.decoders[i][0].copy_(mlp.c_proj.weight)
        clt.b_dec[i].copy_(mlp.c_proj.bias)
    model = CLTPatchedModel(base, clt)
    ids = random_ids(4, 16)
    with model.saes_disabled():
        clean = model(ids).logits
    out = model(ids)
    assert float(kl_divergence(clean, out.logits)) < 1e-6
    for record in out.sae_outputs.values():
        torch.testing.assert_close(record.reconstruction, record.target, atol=1e-5, rtol=1e-5)
    clt.decoders[0][2].normal_(0, 0.1)  # now layer 0's latents also write into layer 2's MLP output
    moved = model(ids).sae_outputs[SITES[2]]
    assert (moved.reconstruction - moved.target).abs().max() > 1e-2


@torch.no_grad()
def test_zero_cross_layer_decoders_make_a_chain_of_transcoders():
    from hf_e2e_sae import SAEConfig, SparseAutoencoder

    clt = make_clt([1, 2])
    transcoders = []
    for i, layer in enumerate([1, 2]):
        clt.decoders[i][1:].zero_()
        tc = SparseAutoencoder(SAEConfig(d_in=HIDDEN, dict_size=24, site=f"blocks.{layer}.mlp_in",
                                         output_site=f"blocks.{layer}.mlp_out"))
        tc.encoder.load_state_dict(clt.encoders[i].state_dict())
        tc.decoder.weight.copy_(clt.decoders[i][0].T)
        tc.decoder.bias.copy_(clt.b_dec[i])
        transcoders.append(tc)
    ids = random_ids()
    chained = SAEPatchedModel(tiny_model("gpt2"), transcoders)(ids)
    crossed = CLTPatchedModel(tiny_model("gpt2"), clt)(ids)
    torch.testing.assert_close(crossed.logits, chained.logits)
    for site in crossed.sae_outputs:
        torch.testing.assert_close(crossed.sae_outputs[site].latents, chained.sae_outputs[site].latents)


def test_topk_l0_is_exact_per_layer_and_evaluate_reports_every_layer():
    model = CLTPatchedModel(tiny_model("gpt2"), make_clt(activation="topk", k=3))
    with torch.no_grad():
        out = model(random_ids())
    for record in out.sae_outputs.values():
        assert ((record.latents != 0).sum(-1) == 3).all()
    metrics = evaluate(model, [random_ids()])
    for site in SITES:
        assert metrics[f"l0/{site}"] == pytest.approx(3.0)
        assert f"explained_variance/{site}" in metrics
    assert metrics["kl"] > 0


def test_gradients_reach_every_clt_parameter_and_no_base_parameter():
    base = tiny_model("llama")
    model = CLTPatchedModel(base, make_clt())
    ids = random_ids()
    with torch.no_grad(), model.saes_disabled():
        clean = model(ids).logits
    kl_divergence(clean, model(ids).logits).backward()
    for name, param in model.clt.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name
    assert all(p.grad is None for p in base.parameters())
    assert {id(p) for p in model.sae_parameters()} == {id(p) for p in model.clt.parameters()}


def test_local_loss_is_the_sum_of_per_layer_mses():
    model = CLTPatchedModel(tiny_model("gpt2"), make_clt())
    out = model(random_ids(), stop_early=True)
    assert out.logits is None and list(out.sae_outputs) == SITES
    _, terms = compute_losses(LossConfig(preset="local"), out.sae_outputs, HIDDEN)
    expected = sum(mse_loss(o.reconstruction, o.target) for o in out.sae_outputs.values())
    torch.testing.assert_close(terms["reconstruction"], expected.detach())


@pytest.mark.parametrize("preset", ["local", "e2e", "e2e+ds"])
@pytest.mark.parametrize("layers, kwargs", [(LAYERS, {}), ([1, 2], {"activation": "topk", "k": 4})])
def test_fast_step_equals_reference(preset, layers, kwargs):
    model = CLTPatchedModel(tiny_model("gpt2"), make_clt(layers, **kwargs))
    downstream = [] if preset != "e2e+ds" else ["blocks.2.resid_post"]
    ids = random_ids()
    from hf_e2e_sae.training.step import micro_batch_loss, reference_micro_batch_loss

    results = []
    for step in (reference_micro_batch_loss, micro_batch_loss):
        model.zero_grad(set_to_none=True)
        total, terms, _ = step(model, model, ids, LossConfig(preset=preset), downstream, HIDDEN)
        total.backward()
        results.append((total.detach(), terms, {n: p.grad.clone() for n, p in model.saes.named_parameters()}))
    _assert_equal(*results)


def test_save_load_round_trip_alone_and_patched(tmp_path):
    model = CLTPatchedModel(tiny_model("gpt2"), make_clt(activation="topk", k=4))
    model.save_pretrained(tmp_path)
    manifest = json.loads((tmp_path / "hf_e2e_sae.json").read_text())
    assert manifest["family"] == "cross_layer_transcoder" and list(manifest["saes"]) == SITES
    alone = AutoModel.from_pretrained(tmp_path)
    assert isinstance(alone, CrossLayerTranscoder) and alone.config.layers == LAYERS and alone.config.k == 4
    for name, tensor in model.clt.state_dict().items():
        torch.testing.assert_close(alone.state_dict()[name], tensor, rtol=0, atol=0)
    reloaded = SAEPatchedModel.from_pretrained(tmp_path, base_model=tiny_model("gpt2"))
    assert isinstance(reloaded, CLTPatchedModel) and reloaded.output_sites == [f"blocks.{l}.mlp_out" for l in LAYERS]
    ids = random_ids()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids).logits, model(ids).logits, rtol=0, atol=0)


def test_layer_views_serve_per_site_readers():
    model = CLTPatchedModel(tiny_model("gpt2"), make_clt())
    view = model.sae("blocks.1.hook_mlp_in")
    assert (view.config.site, view.config.output_site, view.config.dict_size) == ("blocks.1.mlp_in", "blocks.1.mlp_out", 24)
    assert view.dictionary.shape == (24, HIDDEN)
    torch.testing.assert_close(view.dictionary.norm(dim=-1), torch.ones(24))


@pytest.mark.parametrize("call, error, message", [
    (lambda: CLTConfig(d_in=HIDDEN, dict_size=8, layers=[2, 1]), ValueError, "layers must be distinct"),
    (lambda: CLTConfig(d_in=HIDDEN, dict_size=0, layers=[0]), ValueError, "dict_size"),
    (lambda: CLTConfig(d_in=HIDDEN, dict_size=8, activation="nope"), ValueError, "activation='nope'"),
    (lambda: CLTPatchedModel(tiny_model("gpt2"), make_clt([0, 7])), ValueError, "7"),
    (lambda: CLTPatchedModel(tiny_model("gpt2"), CrossLayerTranscoder(CLTConfig(d_in=8, dict_size=8))), ValueError,
     "hidden size"),
    (lambda: CLTPatchedModel(tiny_model("gpt2"), make_clt()).steer({SITES[0]: {0: 1.0}}), NotImplementedError, "steer"),
])
def test_misuse_is_a_clear_error(call, error, message):
    with pytest.raises(error, match=message):
        call()


# ------------------------------------------------------------------------------------------------ training
@pytest.fixture
def _clean_accelerate(fresh_accelerate):
    yield


@pytest.mark.parametrize("preset", ["local"])  # e2e: test_architecture_training.py, over every family
def test_the_trainer_trains_a_clt_and_reloads_it(preset, make_config, tiny_assets, _clean_accelerate):
    import hf_e2e_sae.training.trainer as trainer
    from hf_e2e_sae.training.config import load_train_config

    path, out = make_config(f"clt_{preset}", n_samples=32, save_every_samples=None, cross_layer=True,
                            sites=["blocks.0.mlp_in", "blocks.1.mlp_in"], dict_size=32, loss={"preset": preset})
    metrics = trainer.train(load_train_config(path))
    for site in ["blocks.0.mlp_in", "blocks.1.mlp_in"]:
        assert metrics[f"l0/{site}"] > 0 and f"explained_variance/{site}" in metrics
    saved = json.loads((out / "final" / "config.json").read_text())
    assert (saved["model_type"], saved["layers"], saved["dict_size"]) == ("hf_e2e_sae_clt", [0, 1], 32)
    base = AutoModelForCausalLM.from_pretrained(tiny_assets.base_dir)
    loaded = SAEPatchedModel.from_pretrained(out / "final", base_model=base)
    assert isinstance(loaded, CLTPatchedModel) and loaded.sites == ["blocks.0.mlp_in", "blocks.1.mlp_in"]
    fresh = CrossLayerTranscoder(loaded.clt.config)
    assert not torch.allclose(loaded.clt.decoders[0], fresh.decoders[0])  # trained, not a fresh init


@pytest.mark.parametrize("overrides, message", [
    ({"sites": ["blocks.1.mlp_in", "blocks.0.mlp_in"]}, "l increasing"),
    ({"sites": ["blocks.0.resid_pre"]}, "mlp_in"),
    ({"output_sites": ["blocks.0.mlp_out", "blocks.2.mlp_out"]}, "output_sites must be empty or"),
    ({"activation": "topk", "k": 2, "loss": {"preset": "local", "auxk": {"coeff": 0.1}}}, "loss.auxk.coeff"),
])
def test_bad_cross_layer_configs_name_the_field(overrides, message, make_config):
    from hf_e2e_sae.training.config import load_train_config

    base = {"cross_layer": True, "sites": ["blocks.0.mlp_in", "blocks.1.mlp_in"]}
    path, _ = make_config("bad", **{**base, **overrides})
    with pytest.raises(Exception, match=message):
        load_train_config(path)


# ------------------------------------------------------------------------------------------ hub and browser
def _saved_clt_run(folder):
    """A run folder like the trainer's final/: a CLT on the built-in tiny model plus a train_config.yaml."""
    import yaml

    from hf_e2e_sae.patching.base_models import TINY_LM_DIR

    base = AutoModelForCausalLM.from_pretrained(str(TINY_LM_DIR))
    torch.manual_seed(0)
    clt = CrossLayerTranscoder(CLTConfig(d_in=base.config.hidden_size, dict_size=40, layers=[0, 1],
                                         base_model_name_or_path="builtin:tiny-shakespeare-gpt2"))
    model = CLTPatchedModel(base, clt)
    model.save_pretrained(folder)
    (folder / "train_config.yaml").write_text(yaml.safe_dump({
        "cross_layer": True, "loss": {"preset": "e2e"},
        "data": {"path": "builtin:shakespeare", "split": "train", "eval_split": "test", "context_length": 64}}))
    return model, folder


def test_push_to_the_hub_reload_and_browse(hub, hf_cache, hf_token, tmp_path):
    from hf_e2e_sae.cli import main as cli_main
    from hf_e2e_sae.hub.push import push_run_to_hub

    model, run = _saved_clt_run(tmp_path / "run" / "final")
    repo_id = hub.unique_repo_id("clt")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. huggingface_hub's "update multiple times the same file"
        push_run_to_hub(run, repo_id)
    reloaded = SAEPatchedModel.from_pretrained(repo_id)  # the base model named in the manifest, built in
    assert isinstance(reloaded, CLTPatchedModel)
    ids = random_ids(seed=3)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids).logits, model(ids).logits, rtol=0, atol=0)
    from huggingface_hub import hf_hub_download

    card = open(hf_hub_download(repo_id, "README.md")).read()
    assert "blocks.0.mlp_in" in card and "blocks.1.mlp_in" in card
    assert cli_main(["browse", repo_id, "--out", str(tmp_path / "site"), "--n-tokens", "320", "--top-n", "4"]) == 0
    data = tmp_path / "site" / "data"
    assert (tmp_path / "site" / "index.html").is_file()
    assert {p.name for p in data.iterdir() if p.is_dir()} >= {"sae0", "sae1"}  # one dictionary per CLT layer


def test_the_docs_python_blocks_run():
    """docs/concepts/transcoders.md: every ```python block (not `notest`) runs offline and its asserts hold."""
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "docs" / "concepts" / "transcoders.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert len(blocks) == 2
    for i, code in enumerate(blocks):
        exec(compile(code, f"transcoders.md-block-{i}", "exec"), {})


def test_an_interrupted_clt_run_resumes_to_the_uninterrupted_result(make_config, _clean_accelerate):
    """Checkpoints hold the CLT's parameters (saes.clt.*); stop + resume equals one uninterrupted run."""
    import hf_e2e_sae.training.trainer as trainer
    from hf_e2e_sae.training.config import load_train_config

    overrides = dict(n_samples=32, save_every_samples=16, cross_layer=True, dict_size=16,
                     sites=["blocks.0.mlp_in", "blocks.1.mlp_in"], loss={"preset": "local"})
    path_a, out_a = make_config("clt_whole", **overrides)
    metrics_a = trainer.train(load_train_config(path_a))
    path_b, out_b = make_config("clt_parts", **overrides)
    assert trainer.train(load_train_config(path_b, ["--stop_after_steps", "2"])) == {}
    metrics_b = trainer.train(load_train_config(path_b, ["--resume_from_checkpoint", "latest"]))
    a = CrossLayerTranscoder.from_pretrained(out_a / "final")
    b = CrossLayerTranscoder.from_pretrained(out_b / "final")
    for name, tensor in a.state_dict().items():
        torch.testing.assert_close(b.state_dict()[name], tensor, rtol=0, atol=1e-6)
    assert metrics_b == pytest.approx(metrics_a, rel=1e-6, abs=1e-7)


def test_a_model_carries_one_wrapper_clt_included():
    """A CLT patches a model only once, and not on top of an SAEPatchedModel either; unpatch() frees it."""
    from dictionary_families import FAMILIES
    from tiny_models import tiny_model

    base = tiny_model("gpt2")
    first = FAMILIES["cross_layer_transcoder"](base, "topk", k=4)
    with pytest.raises(ValueError, match="unpatch"):
        FAMILIES["cross_layer_transcoder"](base, "topk", k=4)
    with pytest.raises(ValueError, match="unpatch"):
        FAMILIES["sae"](base, "topk", k=4)
    first.unpatch()
    FAMILIES["cross_layer_transcoder"](base, "topk", k=4)  # free again
