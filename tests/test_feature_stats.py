"""Streaming feature statistics and direct logit effects against brute force on tiny models."""
import math

import pytest
import torch

from hf_e2e_sae import SAEConfig, SAEPatchedModel, SparseAutoencoder
from hf_e2e_sae.evaluation.feature_stats import HIST_BINS, HIST_LOG10_RANGE, FeatureStats, compute_feature_stats
from hf_e2e_sae.evaluation.logit_effects import direct_logit_effects, final_norm_scale

from tiny_models import ARCHS, HIDDEN, VOCAB, random_ids, tiny_model

SITE = "blocks.1.resid_pre"
WINDOW = (3, 2)
TOP_N = 5


def patched(arch: str = "gpt2", dict_size: int = 48) -> SAEPatchedModel:
    torch.manual_seed(0)
    sae = SparseAutoencoder(SAEConfig(d_in=HIDDEN, dict_size=dict_size, site=SITE))
    with torch.no_grad():
        sae.encoder.bias.sub_(0.12)  # sparser: some features fire fewer than TOP_N times
    return SAEPatchedModel(tiny_model(arch), sae)


def brute_force(model, ids: torch.Tensor, mask: torch.Tensor) -> dict:
    """Everything from one tensor of all latents (what the streaming pass must not keep)."""
    with torch.no_grad():
        lat = model(ids, attention_mask=mask).sae_outputs[SITE].latents
    lat = lat * mask.unsqueeze(-1)
    flat = lat.reshape(-1, lat.shape[-1])
    ranked = flat.masked_fill(~mask.reshape(-1, 1).bool(), -1.0)
    values, index = ranked.topk(TOP_N, dim=0)
    lo, hi = HIST_LOG10_RANGE
    hist = torch.zeros(flat.shape[1], HIST_BINS, dtype=torch.int64)
    for t, f in (flat > 0).nonzero().tolist():
        b = math.floor((math.log10(flat[t, f].item()) - lo) / (hi - lo) * HIST_BINS)
        hist[f, min(max(b, 0), HIST_BINS - 1)] += 1
    return {"lat": lat, "count": (flat > 0).sum(0), "sum": flat.double().sum(0), "max": flat.max(0).values,
            "top_values": values.T, "top_index": index.T, "hist": hist}


@pytest.mark.parametrize("with_mask", [False, True])
def test_streaming_stats_equal_brute_force(with_mask, tmp_path):
    model = patched()
    ids = random_ids(batch=6, seq=10, seed=3)
    mask = torch.ones_like(ids)
    if with_mask:
        mask[1, 7:] = 0
        mask[4, 2:] = 0
    batches = [{"input_ids": ids[i:i + 2], "attention_mask": mask[i:i + 2]} for i in range(0, 6, 2)]
    stats = compute_feature_stats(model, batches, top_n=TOP_N, window=WINDOW, progress=False)[SITE]
    ref = brute_force(model, ids, mask)
    assert stats.n_tokens == int(mask.sum()) and stats.seq_len == 10 and torch.equal(stats.tokens, ids.reshape(-1).int())
    assert torch.equal(stats.fire_count, ref["count"])
    torch.testing.assert_close(stats.act_sum, ref["sum"], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(stats.max_act, ref["max"], rtol=1e-6, atol=1e-7)
    assert torch.equal(stats.hist, ref["hist"])
    fired = ref["top_values"] > 0
    assert 0 < int(fired.sum()) < fired.numel(), "need features that fire fewer than top_n times"
    torch.testing.assert_close(stats.top_values, torch.where(fired, ref["top_values"], 0.0), rtol=1e-6, atol=1e-7)
    assert torch.equal(stats.top_index, torch.where(fired, ref["top_index"], -1))
    lat = ref["lat"]
    for f, j in fired.nonzero().tolist():  # windows: the feature's activations around the token, within its row
        row, pos = divmod(int(stats.top_index[f, j]), 10)
        for o in range(-WINDOW[0], WINDOW[1] + 1):
            expect = lat[row, pos + o, f].item() if 0 <= pos + o < 10 else 0.0
            assert stats.top_window[f, j, o + WINDOW[0]].item() == pytest.approx(expect, abs=1e-6)
    assert (stats.top_window[~fired] == 0).all()

    stats.save(tmp_path)
    back = FeatureStats.load(tmp_path, SITE)
    for name in ("fire_count", "act_sum", "max_act", "hist", "top_values", "top_index", "top_window", "tokens"):
        assert torch.equal(getattr(back, name), getattr(stats, name)), name
    assert (back.n_tokens, back.seq_len, back.window) == (stats.n_tokens, stats.seq_len, WINDOW)


def test_max_tokens_stops_early_and_vocab_is_recorded():
    class Tok:
        def decode(self, ids):
            return f"<{ids[0]}>"

    model = patched()
    batches = [random_ids(batch=2, seq=8, seed=s) for s in range(5)]
    stats = compute_feature_stats(model, batches, top_n=3, max_tokens=30, tokenizer=Tok(), progress=False)[SITE]
    assert stats.n_tokens == 32 and stats.tokens.numel() == 32
    assert set(stats.vocab) == set(stats.tokens.tolist()) and stats.vocab[int(stats.tokens[0])] == f"<{int(stats.tokens[0])}>"
    assert torch.all(stats.density <= 1) and torch.all(stats.mean_act[stats.fire_count == 0] == 0)


@pytest.mark.parametrize("arch", ARCHS)
def test_final_norm_scale_is_the_norms_elementwise_scale(arch):
    """Recover the scale from the norm module itself: norm(x) - norm(0-mean part) ... on a large input."""
    model = tiny_model(arch)
    with torch.no_grad():
        for module in model.modules():
            if hasattr(module, "weight") and module.weight is not None and module.weight.ndim == 1:
                module.weight.normal_()
    scale = final_norm_scale(model)
    norm = dict(model.named_modules())[{"gpt2": "transformer.ln_f", "gpt_neox": "gpt_neox.final_layer_norm"}.get(arch, "model.norm")]
    x = torch.randn(HIDDEN) * 100
    bias = getattr(norm, "bias", None)
    out = norm(x.unsqueeze(0))[0] - (bias if bias is not None else 0)
    centred = x - x.mean() if isinstance(norm, torch.nn.LayerNorm) else x
    unit = centred / centred.pow(2).mean().sqrt()
    torch.testing.assert_close(out / unit, scale, rtol=1e-3, atol=1e-3)


def test_direct_logit_effects_match_the_matrix_product():
    model = patched(dict_size=40)
    effects = direct_logit_effects(model, SITE, k=4, chunk=16)  # several chunks
    sae = model.sae(SITE)
    full = (sae.dictionary * model.base_model.transformer.ln_f.weight) @ model.base_model.lm_head.weight.T
    assert full.shape == (40, VOCAB)
    top, bottom = full.topk(4, dim=1), full.topk(4, dim=1, largest=False)
    assert torch.equal(effects["logit_top_ids"].long(), top.indices)
    torch.testing.assert_close(effects["logit_top_values"], top.values)
    assert torch.equal(effects["logit_bottom_ids"].long(), bottom.indices)
    torch.testing.assert_close(effects["logit_bottom_values"], bottom.values)


def test_save_refuses_non_finite_values(tmp_path):
    stats = compute_feature_stats(patched(), [random_ids(batch=1, seq=8)], top_n=2, progress=False)[SITE]
    stats.act_sum[0] = float("nan")
    with pytest.raises(ValueError, match="non-finite"):
        stats.save(tmp_path)
    assert not list(tmp_path.iterdir())
