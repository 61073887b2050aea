"""Transcoders: the `mlp_in` site in every model family, and dictionaries that read it and replace `mlp_out`.

Checked: `mlp_in` is exactly what each family's MLP reads; a transcoder's record holds the real MLP output as
its target (local loss and explained variance); an exact transcoder of a ReLU MLP gives KL ~ 0; transcoders and
SAEs patch together; early-stopping local forwards still run the transcoder; the trainer trains one.
"""
from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, GPT2Config

from hf_e2e_sae import SAEConfig, SAEPatchedModel, SparseAutoencoder, evaluate
from hf_e2e_sae.patching.architectures import architecture_for
from hf_e2e_sae.training.losses import LossConfig, compute_losses, kl_divergence, mse_loss
from tiny_models import ARCHS, HIDDEN, VOCAB, random_ids, tiny_model

BLOCK = 1
MLP_IN, MLP_OUT = f"blocks.{BLOCK}.mlp_in", f"blocks.{BLOCK}.mlp_out"


def _capture_mlp(model, block: int = BLOCK) -> tuple:
    """Hooks recording the MLP module's input and the mlp_out contribution; returns (store, handles)."""
    spec = architecture_for(model.config)
    layer = model.get_submodule(spec.layers)[block]
    store: dict = {}
    h1 = layer.get_submodule(spec.mlp_in).register_forward_pre_hook(
        lambda m, args, kwargs: store.__setitem__("in", (args[0] if args else kwargs["hidden_states"]).detach()),
        with_kwargs=True)
    h2 = layer.get_submodule(spec.mlp_out).register_forward_hook(
        lambda m, args, out: store.__setitem__("out", (out[0] if isinstance(out, tuple) else out).detach()))
    return store, [h1, h2]


def transcoder(seed: int = 0, activation: str = "relu", **kwargs) -> SparseAutoencoder:
    torch.manual_seed(seed)
    return SparseAutoencoder(SAEConfig(d_in=HIDDEN, dict_size=64, activation=activation, site=MLP_IN,
                                       output_site=MLP_OUT, **kwargs))


@pytest.mark.parametrize("arch", ARCHS)
def test_mlp_in_is_what_the_mlp_reads_and_the_transcoder_replaces_mlp_out(arch):
    base = tiny_model(arch)
    ids = random_ids()
    store, handles = _capture_mlp(base)
    with torch.no_grad():
        clean_logits = base(ids).logits
    real_in, real_out = store["in"], store["out"]
    for h in handles:
        h.remove()
    model = SAEPatchedModel(base, [transcoder()])
    with torch.no_grad():
        clean = model(ids, cache_sites=[MLP_IN])
        assert clean.sae_outputs.keys() == {MLP_IN}
        torch.testing.assert_close(clean.cached_activations[MLP_IN], real_in)
        record = clean.sae_outputs[MLP_IN]
        torch.testing.assert_close(record.target, real_out)  # the target: the real MLP output
        torch.testing.assert_close(record.reconstruction, model.sae(MLP_IN)(real_in).reconstruction)
        with model.saes_disabled():
            torch.testing.assert_close(model(ids).logits, clean_logits, rtol=0, atol=0)
    assert not torch.allclose(clean.logits, clean_logits)  # the reconstruction was spliced in
    model.unpatch()


def _relu_gpt2():
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=VOCAB, n_embd=HIDDEN, n_layer=3, n_head=4, n_positions=128,
                        activation_function="relu", bos_token_id=0, eos_token_id=1)
    config._attn_implementation = "eager"
    return AutoModelForCausalLM.from_config(config).eval()


@torch.no_grad()
def exact_transcoder_of(base, activation: str = "relu", **kwargs) -> SparseAutoencoder:
    """A transcoder equal to a ReLU MLP: encoder = c_fc scaled by the decoder column norms, decoder = c_proj."""
    mlp = base.transformer.h[BLOCK].mlp
    w_fc, b_fc = mlp.c_fc.weight.T, mlp.c_fc.bias        # GPT-2 Conv1D: weight (in, out)
    w_proj, b_proj = mlp.c_proj.weight.T, mlp.c_proj.bias  # (d, 4d)
    n = w_proj.norm(dim=0)                                 # the SAE normalises decoder columns; undo it in the encoder
    tc = SparseAutoencoder(SAEConfig(d_in=HIDDEN, dict_size=w_fc.shape[0], activation=activation, site=MLP_IN,
                                     output_site=MLP_OUT, **kwargs))
    tc.encoder.weight.copy_(w_fc * n[:, None])
    tc.encoder.bias.copy_(b_fc * n)
    tc.decoder.weight.copy_(w_proj)
    tc.decoder.bias.copy_(b_proj)
    return tc


@pytest.mark.parametrize("activation, kwargs", [("relu", {}), ("topk", {"k": 4 * HIDDEN})])
def test_exact_transcoder_gives_kl_zero_and_explained_variance_one(activation, kwargs):
    base = _relu_gpt2()
    ids = random_ids(4, 16)
    model = SAEPatchedModel(base, [exact_transcoder_of(base, activation, **kwargs)])
    with torch.no_grad():
        with model.saes_disabled():
            clean = model(ids).logits
        patched = model(ids)
    assert float(kl_divergence(clean, patched.logits)) < 1e-6  # float32 rounding only
    with torch.no_grad():  # a random transcoder in the same place is far from it
        random_kl = kl_divergence(clean, SAEPatchedModel(_relu_gpt2(), [transcoder()])(ids).logits)
    assert float(random_kl) > 1e-3
    record = patched.sae_outputs[MLP_IN]
    torch.testing.assert_close(record.reconstruction, record.target, atol=1e-5, rtol=1e-5)
    metrics = evaluate(model, [ids])
    assert metrics[f"explained_variance/{MLP_IN}"] == pytest.approx(1.0, abs=1e-6)
    assert metrics["kl"] < 1e-6 and abs(metrics["ce_loss_increase"]) < 1e-5


def test_local_loss_and_explained_variance_use_the_real_mlp_output():
    base = tiny_model("gpt2")
    ids = random_ids(4, 16)
    store, handles = _capture_mlp(base)
    with torch.no_grad():
        base(ids)
    for h in handles:
        h.remove()
    model = SAEPatchedModel(base, [transcoder()])
    out = model(ids, stop_early=True)  # local training stops after the transcoder's output site
    assert out.logits is None and MLP_IN in out.sae_outputs
    recon = model.sae(MLP_IN)(store["in"]).reconstruction
    _, terms = compute_losses(LossConfig(preset="local"), out.sae_outputs, HIDDEN)
    torch.testing.assert_close(terms["reconstruction"], mse_loss(recon, store["out"]))
    x, x_hat = store["out"].reshape(-1, HIDDEN).double(), recon.detach().reshape(-1, HIDDEN).double()
    expected_ev = 1 - ((x - x_hat) ** 2).sum() / ((x - x.mean(0)) ** 2).sum()
    metrics = evaluate(model, [ids])
    assert metrics[f"explained_variance/{MLP_IN}"] == pytest.approx(float(expected_ev), rel=1e-6)


def test_transcoders_and_saes_patch_together_and_gradients_reach_only_them():
    base = tiny_model("gpt2")
    torch.manual_seed(1)
    sae = SparseAutoencoder(SAEConfig(d_in=HIDDEN, dict_size=64, site="blocks.0.resid_pre"))
    tc = transcoder()
    model = SAEPatchedModel(base, [tc, sae])
    ids = random_ids(2, 12)
    with torch.no_grad(), model.saes_disabled():
        clean = model(ids).logits
    out = model(ids)
    assert set(out.sae_outputs) == {"blocks.0.resid_pre", MLP_IN}
    kl_divergence(clean, out.logits).backward()
    for name, param in [*sae.named_parameters(), *tc.named_parameters()]:
        assert param.grad is not None and param.grad.abs().sum() > 0, name
    assert all(p.grad is None for p in base.parameters())


@pytest.mark.parametrize("kwargs, message", [
    ({"site": MLP_OUT, "output_site": MLP_IN}, "must be computed after"),
    ({"site": None, "output_site": MLP_OUT}, "must be computed after"),
])
def test_bad_output_site_is_an_error(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SAEConfig(d_in=HIDDEN, dict_size=8, **kwargs)


def test_a_transcoder_output_site_taken_by_another_sae_is_an_error():
    sae = SparseAutoencoder(SAEConfig(d_in=HIDDEN, dict_size=8, site=MLP_OUT))
    with pytest.raises(ValueError, match="each site takes at most one dictionary"):
        SAEPatchedModel(tiny_model("gpt2"), [transcoder(), sae])


def test_docs_transcoder_example_runs():
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "docs" / "concepts" / "activations.md").read_text()
    code = re.search(r"```python\n(.*?)```", text, re.S).group(1)
    scope: dict = {}
    exec(compile(code, "README-architectures", "exec"), scope)
    record, metrics = scope["record"], scope["metrics"]
    assert set(scope["out"].sae_outputs) == {"blocks.0.resid_pre", "blocks.2.mlp_in"}
    assert ((record.latents > 0).sum(-1) <= 32).all()
    assert "explained_variance/blocks.2.mlp_in" in metrics and metrics["kl"] > 0
