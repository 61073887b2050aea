"""Held-out evaluation of a patched model: the paper's metrics, token-weighted over all batches.

    metrics = evaluate(model, eval_dataloader)
    metrics["ce_loss_increase"], metrics["kl"], metrics["l0/blocks.6.resid_pre"], ...

Keys: ce_loss_orig, ce_loss_sae, ce_loss_increase (sae - orig), kl (KL(P_orig || P_sae)),
top1_agreement, total_variation (0.5 sum |p - q|), n_tokens; per SAE site: l0, alive (elements
that fired at least once over the evaluated tokens), explained_variance (1 - SSE/SST with the
original activation as the target), mse, norm_ratio (mean ||x_hat|| / mean ||x||); and
downstream_mse/{site} for every resid_post site after the first SAE. Padding (attention_mask 0)
is excluded everywhere. Logit statistics are computed in chunks of tokens to bound memory.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Iterable, Optional

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..sae.sites import Site, parse_site
from ..patching.architectures import num_blocks


def downstream_eval_sites(sae_sites: list, n_blocks: int) -> list:
    """Every resid_post site computed after the first SAE site."""
    first = min(parse_site(s).position for s in sae_sites)
    return [str(Site(j, "resid_post")) for j in range(n_blocks) if Site(j, "resid_post").position > first]


def _logit_sums(orig: torch.Tensor, sae: torch.Tensor, input_ids, mask, chunk_tokens: int) -> dict:
    """Sums over tokens of CE (both runs), KL, top-1 agreement and total variation."""
    sums: dict = defaultdict(float)
    # Next-token CE: position t predicts t+1; both must be real tokens.
    ce_mask = (mask[:, :-1] * mask[:, 1:]).reshape(-1).bool()
    targets = input_ids[:, 1:].reshape(-1)
    vocab = orig.shape[-1]
    flat = {
        "orig": orig.reshape(-1, vocab), "sae": sae.reshape(-1, vocab),
        "orig_ce": orig[:, :-1].reshape(-1, vocab), "sae_ce": sae[:, :-1].reshape(-1, vocab),
    }
    tok_mask = mask.reshape(-1).bool()
    for start in range(0, flat["orig"].shape[0], chunk_tokens):
        sl = slice(start, start + chunk_tokens)
        m = tok_mask[sl]
        log_p = F.log_softmax(flat["orig"][sl][m].float(), dim=-1)
        log_q = F.log_softmax(flat["sae"][sl][m].float(), dim=-1)
        p = log_p.exp()
        sums["kl"] += (p * (log_p - log_q)).sum().item()
        sums["total_variation"] += 0.5 * (p - log_q.exp()).abs().sum().item()
        sums["top1_agreement"] += (log_p.argmax(-1) == log_q.argmax(-1)).sum().item()
        sums["n_tokens"] += int(m.sum())
    for start in range(0, targets.shape[0], chunk_tokens):
        sl = slice(start, start + chunk_tokens)
        m = ce_mask[sl]
        for run in ("orig", "sae"):
            logits = flat[f"{run}_ce"][sl][m].float()
            sums[f"ce_loss_{run}"] += F.cross_entropy(logits, targets[sl][m], reduction="sum").item()
        sums["n_ce_tokens"] += int(m.sum())
    return sums


def _site_sums(out, mask: torch.Tensor) -> dict:
    """Per-SAE-site sums over real tokens (float64 where they feed a variance)."""
    m = mask.reshape(-1).bool()
    x = out.target.reshape(-1, out.target.shape[-1])[m].double()
    x_hat = out.reconstruction.reshape(-1, out.reconstruction.shape[-1])[m].double()
    latents = out.latents.reshape(-1, out.latents.shape[-1])[m]
    return {
        "l0": (latents > 0).sum().item(),
        "fired": (latents > 0).any(dim=0),
        "sse": (x - x_hat).pow(2).sum().item(),
        "sum_x": x.sum(dim=0),
        "sum_x2": x.pow(2).sum().item(),
        "norm_x": x.norm(dim=-1).sum().item(),
        "norm_x_hat": x_hat.norm(dim=-1).sum().item(),
        "n": int(m.sum()),
        "d": x.shape[-1],
    }


def _merge_site(acc: dict, new: dict) -> None:
    for key, value in new.items():
        if key == "fired":
            acc[key] = value if key not in acc else acc[key] | value
        elif key == "d":
            acc[key] = value
        else:
            acc[key] = acc.get(key, 0) + value


def _site_metrics(site: str, acc: dict) -> dict:
    n, d = acc["n"], acc["d"]
    sst = acc["sum_x2"] - (acc["sum_x"].pow(2).sum().item() / n)
    return {
        f"l0/{site}": acc["l0"] / n,
        f"alive/{site}": int(acc["fired"].sum()),
        f"explained_variance/{site}": 1.0 - acc["sse"] / sst if sst > 0 else float("nan"),
        f"mse/{site}": acc["sse"] / (n * d),
        f"norm_ratio/{site}": acc["norm_x_hat"] / acc["norm_x"] if acc["norm_x"] > 0 else float("nan"),
    }


def _as_batch(batch, device) -> tuple:
    if isinstance(batch, torch.Tensor):
        batch = {"input_ids": batch}
    input_ids = batch["input_ids"].to(device)
    mask = batch.get("attention_mask")
    mask = torch.ones_like(input_ids) if mask is None else mask.to(device)
    return input_ids, mask


@torch.no_grad()
def evaluate(
    model,
    batches: Iterable,
    max_batches: Optional[int] = None,
    chunk_tokens: int = 1024,
    progress: bool = False,
) -> dict:
    """Run `batches` through `model` (an `SAEPatchedModel`) with and without SAEs; return metrics.

    Args:
        batches: tensors `(batch, seq)` of input ids, or dicts with `input_ids` and optionally
            `attention_mask`.
        max_batches: stop after this many batches.
        chunk_tokens: tokens per chunk for the vocabulary-sized statistics.
        progress: show a tqdm bar.
    Returns:
        A flat `{name: float}` dict (see the module docstring for the keys).
    """
    was_training = model.training
    model.eval()
    ds_sites = downstream_eval_sites(model.sites, num_blocks(model.config))
    logit_sums: dict = defaultdict(float)
    site_acc: dict = {site: {} for site in model.sites}
    ds_sse: dict = defaultdict(float)
    for i, batch in enumerate(tqdm(batches, desc="evaluate", disable=not progress, total=max_batches)):
        if max_batches is not None and i >= max_batches:
            break
        input_ids, mask = _as_batch(batch, model.device)
        with model.saes_disabled():
            clean = model(input_ids, attention_mask=mask, cache_sites=ds_sites)
        patched = model(input_ids, attention_mask=mask, cache_sites=ds_sites)
        for key, value in _logit_sums(clean.logits, patched.logits, input_ids, mask, chunk_tokens).items():
            logit_sums[key] += value
        for site, out in patched.sae_outputs.items():
            _merge_site(site_acc[site], _site_sums(out, mask))
        m = mask.reshape(-1).bool()
        for site in ds_sites:
            diff = patched.cached_activations[site] - clean.cached_activations[site]
            ds_sse[site] += diff.reshape(-1, diff.shape[-1])[m].double().pow(2).mean(-1).sum().item()
    model.train(was_training)
    if logit_sums["n_tokens"] == 0:
        raise ValueError("evaluate() saw no (unmasked) tokens.")
    return _finalise(logit_sums, site_acc, ds_sse)


def _finalise(logit_sums: dict, site_acc: dict, ds_sse: dict) -> dict:
    n, n_ce = logit_sums["n_tokens"], max(logit_sums["n_ce_tokens"], 1)
    metrics = {
        "ce_loss_orig": logit_sums["ce_loss_orig"] / n_ce,
        "ce_loss_sae": logit_sums["ce_loss_sae"] / n_ce,
        "kl": logit_sums["kl"] / n,
        "top1_agreement": logit_sums["top1_agreement"] / n,
        "total_variation": logit_sums["total_variation"] / n,
        "n_tokens": int(n),
    }
    metrics["ce_loss_increase"] = metrics["ce_loss_sae"] - metrics["ce_loss_orig"]
    for site, acc in site_acc.items():
        metrics.update(_site_metrics(site, acc))
    for site, sse in ds_sse.items():
        metrics[f"downstream_mse/{site}"] = sse / n
    return metrics
