"""The fast e2e step equals the reference step: loss, every term and every SAE gradient (1e-5 relative, fp32),
for every preset, several sites and families, several SAEs, padding masks and downstream sites; and it really
shares the prefix and never keeps tokens x vocab logits for backward."""
import pytest
import torch

from hf_e2e_sae import SAEPatchedModel
from hf_e2e_sae.sae.activations import ACTIVATION_SPECS
from hf_e2e_sae.patching.architectures import architecture_for
from hf_e2e_sae.patching.shared_prefix import lm_head, prefix_blocks
from hf_e2e_sae.training.fused_kl import clean_probabilities, fused_unembed_kl
from hf_e2e_sae.training.losses import LossConfig, default_downstream_sites, kl_divergence
from hf_e2e_sae.training.step import micro_batch_loss, reference_micro_batch_loss

from dictionary_families import FAMILIES, FAMILY_NAMES
from test_patching import make_sae
from tiny_models import HIDDEN, LAYERS, VOCAB, random_ids, tiny_model


def _both(model, ids, loss, mask=None, downstream=None):
    """(loss, terms, grads) of the reference and of the fast path on the same weights."""
    downstream = downstream if downstream is not None else (
        default_downstream_sites(model.sites, LAYERS) if loss.downstream.coeff > 0 else [])
    results = []
    for step in (reference_micro_batch_loss, micro_batch_loss):
        model.zero_grad(set_to_none=True)
        total, terms, _ = step(model, model, ids, loss, downstream, HIDDEN, attention_mask=mask)
        total.backward()
        grads = {name: p.grad.clone() for name, p in model.saes.named_parameters()}
        results.append((total.detach(), terms, grads))
    return results


def _assert_equal(reference, fast):
    (total_r, terms_r, grads_r), (total_f, terms_f, grads_f) = reference, fast
    torch.testing.assert_close(total_f, total_r, rtol=1e-5, atol=1e-8)
    assert terms_f.keys() == terms_r.keys()
    for name in terms_r:
        torch.testing.assert_close(terms_f[name], terms_r[name], rtol=1e-5, atol=1e-8)
    for name in grads_r:
        scale = grads_r[name].abs().max()
        assert scale > 0, name  # the comparison is not vacuous
        # 1e-5 relative to the gradient's size: single elements near zero differ by float32 rounding only
        torch.testing.assert_close(grads_f[name], grads_r[name], rtol=1e-5, atol=1e-5 * float(scale))


@pytest.mark.parametrize("preset", ["e2e", "e2e+ds", "local"])
@pytest.mark.parametrize("site", ["blocks.1.resid_pre", "blocks.1.attn_out", "blocks.1.mlp_out",
                                  "blocks.0.resid_post"])
def test_fast_step_equals_reference(preset, site):
    model = SAEPatchedModel(tiny_model("gpt2"), make_sae(site))
    _assert_equal(*_both(model, random_ids(), LossConfig(preset=preset)))


@pytest.mark.parametrize("arch", ["llama", "gpt_neox", "gemma2"])
def test_fast_step_equals_reference_across_families(arch):
    model = SAEPatchedModel(tiny_model(arch), make_sae("blocks.1.resid_pre"))
    _assert_equal(*_both(model, random_ids(), LossConfig(preset="e2e+ds")))


def test_several_saes_padding_and_explicit_downstream_sites():
    model = SAEPatchedModel(tiny_model("llama"), [make_sae("blocks.0.mlp_out", seed=1),
                                                  make_sae("blocks.1.resid_pre", seed=2)])
    ids = random_ids(batch=3)
    mask = torch.ones_like(ids)
    mask[0, 8:] = 0
    mask[2, 3:] = 0
    loss = LossConfig(preset="e2e+ds", downstream={"sites": ["blocks.2.attn_out", "blocks.2.resid_post"]})
    _assert_equal(*_both(model, ids, loss, mask=mask, downstream=list(loss.downstream.sites)))


def test_small_chunks_give_the_same_fused_kl():
    model = SAEPatchedModel(tiny_model("gpt2"), make_sae("blocks.2.resid_pre"))
    loss = LossConfig(preset="e2e", kl={"chunk_tokens": 5})  # 24 tokens: chunks of 5, the last one short
    _assert_equal(*_both(model, random_ids(), loss))


def test_fused_kl_matches_kl_on_logits_with_bias_and_weights():
    torch.manual_seed(0)
    h_sae, h_orig = torch.randn(10, 16, requires_grad=True), torch.randn(10, 16)
    weight, bias = torch.randn(50, 16), torch.randn(50)
    mask = torch.tensor([[1] * 7 + [0] * 3], dtype=torch.float32)
    fused = fused_unembed_kl(h_sae, h_orig, weight, bias, mask.reshape(-1) / 7, chunk_tokens=3)
    fused.backward()
    h_ref = h_sae.detach().clone().requires_grad_(True)
    ref = kl_divergence((h_orig @ weight.T + bias)[None], (h_ref @ weight.T + bias)[None], mask=mask)
    ref.backward()
    torch.testing.assert_close(fused, ref, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(h_sae.grad, h_ref.grad, rtol=1e-5, atol=1e-5 * float(h_ref.grad.abs().max()))
    assert h_sae.grad[7:].abs().max() == 0  # padding gets no gradient


@pytest.mark.parametrize("compile", [False, True])
def test_fused_kl_reading_shared_clean_probabilities_equals_making_them(compile):
    """A sweep makes the clean probabilities once (`clean_probabilities`) and every variant's KL reads them: the
    KL and its gradient equal the KL that makes them chunk by chunk itself, and the shared tensors are unchanged."""
    torch.manual_seed(0)
    h_orig, weight, bias = torch.randn(10, 16), torch.randn(50, 16), torch.randn(50)
    weights = torch.full((10,), 0.1)
    probs = clean_probabilities(h_orig, weight, bias, 3)
    assert [p.shape for p in probs] == [(3, 50)] * 3 + [(1, 50)]
    before = [p.clone() for p in probs]
    for variant in range(2):  # two variants read the same probabilities
        h_sae = (h_orig + 0.3 * torch.randn(10, 16)).requires_grad_(True)
        h_ref = h_sae.detach().clone().requires_grad_(True)
        shared = fused_unembed_kl(h_sae, h_orig, weight, bias, weights, 3, compile=compile, clean_probs=probs)
        own = fused_unembed_kl(h_ref, h_orig, weight, bias, weights, 3, compile=compile)
        shared.backward()
        own.backward()
        torch.testing.assert_close(shared, own, rtol=1e-6, atol=0)
        torch.testing.assert_close(h_sae.grad, h_ref.grad, rtol=1e-5, atol=1e-6 * float(h_ref.grad.abs().max()))
    assert all(torch.equal(p, b) for p, b in zip(probs, before))
    with pytest.raises(ValueError, match="clean_probs has 4 chunks"):
        fused_unembed_kl(h_sae, h_orig, weight, bias, weights, 5, clean_probs=probs)


def test_prefix_blocks_run_once_per_step():
    model = SAEPatchedModel(tiny_model("gpt2"), make_sae("blocks.2.resid_pre"))
    blocks = model.base_model.get_submodule(architecture_for(model.config).layers)
    calls = [0] * LAYERS  # the blocks' MLPs: a replayed block's hooks still fire, its insides do not run
    handles = [b.mlp.register_forward_pre_hook(lambda m, a, i=i: calls.__setitem__(i, calls[i] + 1))
               for i, b in enumerate(blocks)]
    micro_batch_loss(model, model, random_ids(), LossConfig(preset="e2e"), [], HIDDEN)[0].backward()
    for h in handles:
        h.remove()
    assert calls == [1, 1, 2]  # blocks 0-1 shared; block 2 runs clean and with the SAE
    assert prefix_blocks(["blocks.2.resid_pre", "blocks.1.mlp_out"]) == 1
    assert prefix_blocks(["blocks.1.resid_post"]) == 2


def test_fast_step_keeps_no_tokens_x_vocab_tensor_for_backward():
    model = SAEPatchedModel(tiny_model("gpt2"), make_sae("blocks.2.resid_pre"))
    ids = random_ids(batch=2, seq=12)
    saved = []

    def pack(tensor):
        saved.append(tuple(tensor.shape))
        return tensor

    for step, expect_vocab in ((reference_micro_batch_loss, True), (micro_batch_loss, False)):
        saved.clear()
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            step(model, model, ids, LossConfig(preset="e2e"), [], HIDDEN)
        has_vocab = any(VOCAB in shape for shape in saved)
        assert has_vocab is expect_vocab, saved


def test_unusual_heads_fall_back_to_logits():
    model = SAEPatchedModel(tiny_model("gpt2"), make_sae("blocks.1.resid_pre"))
    assert lm_head(model) is model.base_model.lm_head
    gemma2 = SAEPatchedModel(tiny_model("gemma2"), make_sae("blocks.1.resid_pre"))
    assert gemma2.config.final_logit_softcapping and lm_head(gemma2) is None  # soft-capped: logits as usual


def _topk_sae(site: str, seed: int) -> "SparseAutoencoder":
    from hf_e2e_sae.sae.config import SAEConfig
    from hf_e2e_sae.sae.model import SparseAutoencoder

    torch.manual_seed(seed)
    return SparseAutoencoder(SAEConfig(d_in=HIDDEN, dict_size=4 * HIDDEN, site=site, activation="topk", k=5))


@pytest.mark.parametrize("preset", ["e2e", "e2e+ds", "local"])
def test_fast_step_with_sparse_topk_records_equals_reference_with_auxk_and_l1(preset):
    """The fast step keeps TopK codes sparse (no dense latents or pre-activations); with an L1 term and AuxK (which
    then recomputes the pre-activations) its loss, terms, gradients, L0 and fired latents equal the dense path's."""
    from hf_e2e_sae.sae.sparse_code import firing
    from hf_e2e_sae.training.loss_terms import add_loss_terms, build_loss_terms

    model = SAEPatchedModel(tiny_model("gpt2"), [_topk_sae("blocks.0.mlp_out", 1), _topk_sae("blocks.1.resid_pre", 2)])
    loss = LossConfig(preset=preset, sparsity={"coeff": 0.5}, auxk={"coeff": 0.3, "dead_after_tokens": 0})
    downstream = default_downstream_sites(model.sites, LAYERS) if loss.downstream.coeff > 0 else []
    ids, results = random_ids(), []
    for step in (reference_micro_batch_loss, micro_batch_loss):
        model.zero_grad(set_to_none=True)
        total, terms, outputs = step(model, model, ids, loss, downstream, HIDDEN)
        saes = {site: model.sae(site) for site in outputs}
        total, terms = add_loss_terms(build_loss_terms(loss), total, terms, outputs, saes, HIDDEN)
        total.backward()
        grads = {name: p.grad.clone() for name, p in model.saes.named_parameters()}
        results.append((total.detach(), terms, grads, {s: firing(o, 4 * HIDDEN) for s, o in outputs.items()}, outputs))
    (*reference, fired_r, outs_r), (*fast, fired_f, outs_f) = results
    assert all(o.latents is None and o.pre_activations is None for o in outs_f.values())  # really sparse
    assert all(o.latents is not None for o in outs_r.values())
    assert float(reference[1]["auxk"]) > 0
    _assert_equal(reference, fast)
    for site in fired_r:
        assert torch.equal(fired_f[site][0], fired_r[site][0]) and torch.equal(fired_f[site][1], fired_r[site][1])


def test_kl_terms_compiled_and_eager_equal_the_direct_formula_and_really_compile():
    from hf_e2e_sae.training import fused_kl

    torch.manual_seed(0)
    logits_p, delta, weights = torch.randn(6, 50), torch.randn(6, 50), torch.rand(6)
    log_p, log_q = torch.log_softmax(logits_p, -1), torch.log_softmax(logits_p + delta, -1)
    direct = ((log_p.exp() * (log_p - log_q)).sum(-1) * weights).sum(), (log_q.exp() - log_p.exp()) * weights[:, None]
    eager = fused_kl.kl_terms(logits_p, delta.clone(), weights, compile=False)  # (eager consumes delta)
    compiled = fused_kl.kl_terms(logits_p, delta.clone(), weights, compile=True)
    assert fused_kl._COMPILED["logits"] is not None  # compiled, not the silent eager fallback
    for a, b, c in zip(compiled, eager, direct):
        torch.testing.assert_close(a, c, rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(b, c, rtol=1e-5, atol=1e-7)


def test_a_failing_compiler_warns_once_and_falls_back_to_eager(monkeypatch, caplog):
    from hf_e2e_sae.training import fused_kl

    def broken(*_args):
        raise RuntimeError("no C++ compiler found\nlong trace")

    monkeypatch.setitem(fused_kl._COMPILED, "logits", broken)
    torch.manual_seed(0)
    logits_p, delta, weights = torch.randn(4, 30), torch.randn(4, 30), torch.rand(4)
    with caplog.at_level("WARNING", logger="hf_e2e_sae.training.fused_kl"):
        result = fused_kl.kl_terms(logits_p.clone(), delta.clone(), weights, compile=True)
        fused_kl.kl_terms(logits_p.clone(), delta.clone(), weights, compile=True)
    assert [r.getMessage() for r in caplog.records] == [
        "torch.compile of the KL failed (no C++ compiler found); using eager mode (loss.kl.compile=false silences this)"]
    expected = fused_kl.kl_terms(logits_p.clone(), delta.clone(), weights, compile=False)
    for a, b in zip(result, expected):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("preset", ["e2e", "e2e+ds"])
@pytest.mark.parametrize("arch,sites", [("gpt2", ["blocks.0.mlp_out"]), ("llama", ["blocks.0.resid_pre", "blocks.1.attn_out"])])
def test_recomputed_suffix_gives_the_same_loss_and_gradients_and_really_recomputes(preset, arch, sites):
    from hf_e2e_sae.patching.shared_prefix import _blocks, suffix_start

    model = SAEPatchedModel(tiny_model(arch), [make_sae(site, seed=i) for i, site in enumerate(sites)])
    loss = LossConfig(preset=preset)
    downstream = default_downstream_sites(model.sites, LAYERS) if loss.downstream.coeff > 0 else []
    ids, results, calls = random_ids(), [], []
    # inside the block's forward, so it runs again when the block is recomputed (a pre-hook: recomputation stops
    # once the last tensor backward needs exists, before the MLP's forward hooks)
    handle = _blocks(model)[LAYERS - 1].mlp.register_forward_pre_hook(lambda *_: calls.append(1))
    for recompute in (False, True):
        model.zero_grad(set_to_none=True)
        calls.clear()
        total, terms, _ = micro_batch_loss(model, model, ids, loss, downstream, HIDDEN, recompute_suffix=recompute)
        total.backward()
        results.append((total.detach(), terms, {n: p.grad.clone() for n, p in model.saes.named_parameters()}))
        # the last block runs in the clean pass and the SAE pass, and once more in the backward when recomputing
        assert len(calls) == (3 if recompute else 2)
    handle.remove()
    assert suffix_start(model) == 2 if arch == "llama" else 1
    _assert_equal(*results)


@pytest.mark.parametrize("preset", ["e2e", "e2e+ds", "local"])
@pytest.mark.parametrize("activation", sorted(ACTIVATION_SPECS))
def test_fast_step_equals_reference_for_every_activation(activation, preset):
    """Every registered activation (with its test options), two SAEs, the registered loss terms included: the fast
    step's loss, terms and gradients equal the reference's (Matryoshka SAEs: one more pass per prefix in each)."""
    from hf_e2e_sae.training.loss_terms import add_loss_terms, build_loss_terms
    from test_activations import make_sae as make_activation_sae

    saes = {site: make_activation_sae(activation, dict_size=4 * HIDDEN, seed=i)
            for i, site in enumerate(["blocks.0.mlp_out", "blocks.1.resid_pre"])}
    model = SAEPatchedModel(tiny_model("gpt2"), saes).train()
    loss = LossConfig(preset=preset, sparsity={"coeff": 0.5}, auxk={"coeff": 0.3, "dead_after_tokens": 0})
    downstream = default_downstream_sites(model.sites, LAYERS) if loss.downstream.coeff > 0 else []
    results = []
    for step in (reference_micro_batch_loss, micro_batch_loss):
        model.zero_grad(set_to_none=True)
        total, terms, outputs = step(model, model, random_ids(), loss, downstream, HIDDEN)
        total, terms = add_loss_terms(build_loss_terms(loss), total, terms, outputs,
                                      {site: model.sae(site) for site in outputs}, HIDDEN)
        total.backward()
        results.append((total.detach(), terms, {n: p.grad.clone() for n, p in model.saes.named_parameters()}))
    if activation.startswith("matryoshka"):  # the prefixes' terms are there and not vacuous
        names = {"local": ["matryoshka_reconstruction"], "e2e": ["matryoshka_kl"],
                 "e2e+ds": ["matryoshka_kl", "matryoshka_downstream"]}[preset]
        assert all(float(results[0][1][name]) > 0 for name in names), results[0][1]
    _assert_equal(*results)


@pytest.mark.parametrize("preset", ["e2e", "e2e+ds", "local"])
@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_fast_step_equals_reference_for_every_dictionary_family(family, preset):
    model = FAMILIES[family](tiny_model("gpt2"), "topk", k=4)
    _assert_equal(*_both(model, random_ids(), LossConfig(preset=preset)))
