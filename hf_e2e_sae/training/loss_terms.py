"""Loss terms that need the SAE modules or per-run state, beside the paper's terms in `losses.py`.

`compute_losses` (losses.py) computes the paper's terms from the patched forward's outputs alone. The terms
here also need the dictionaries themselves (a JumpReLU threshold, a decoder) or state across steps (which
latents are dead), so they are objects built once per run from the `LossConfig`:

    terms = build_loss_terms(loss_config)                    # only the active ones
    total, logged = add_loss_terms(terms, total, logged, sae_outputs, saes, d_in, mask)

A new term is one `register_loss_term(name, factory)` call: `factory(loss_config)` returns the term (a
callable `term(sae_outputs, saes, d_in, mask) -> (loss added to the total, value to log or None)`) or None
when the config leaves it off. Registered here: `sparsity_l0_ste` (JumpReLU's L0 estimator), `auxk` (dead
latents; its statistics are reduced over data-parallel processes) and `matryoshka_reconstruction` (the local part
of the Matryoshka loss; the KL and downstream parts need extra passes and live in `matryoshka.py`).
"""
from __future__ import annotations

from typing import Callable, Mapping, Optional

import torch

from ..sae.distributed import reduce_sum, world_size
from ..sae.activations.matryoshka import matryoshka_levels, prefix_reconstruction
from ..sae.sparse_code import firing
from .losses import LossConfig, mse_loss, token_weights

LossTerm = Callable[..., tuple]
LOSS_TERMS: dict[str, Callable[[LossConfig], Optional[LossTerm]]] = {}


def register_loss_term(name: str, factory: Callable[[LossConfig], Optional[LossTerm]]) -> None:
    """Add a term: `factory(loss_config)` returns the term object, or None when it is off."""
    LOSS_TERMS[name] = factory


def build_loss_terms(config: LossConfig) -> dict:
    """`{name: term}` of the registered terms that `config` turns on."""
    terms = {name: factory(config) for name, factory in LOSS_TERMS.items()}
    return {name: term for name, term in terms.items() if term is not None}


def add_loss_terms(terms: Mapping, total: torch.Tensor, logged: dict, sae_outputs: Mapping, saes: Mapping,
                   d_in: int, mask: Optional[torch.Tensor] = None) -> tuple:
    """Add each term's loss to `total` and its logged value (detached) to `logged`; returns both."""
    logged = dict(logged)
    for name, term in terms.items():
        loss, value = term(sae_outputs, saes, d_in, mask)
        total = total + loss
        if value is not None:
            logged[name] = value.detach()
    return total, logged


class L0StraightThrough:
    """`loss.sparsity.p = 0`: the gradient of coeff * mean-token L0 / d_in through the activation's `l0`.

    `compute_losses` already adds (and logs) the exact L0 term, whose gradient is zero; this adds
    `coeff * (l0 - l0.detach())`: zero in value, the straight-through gradient in backward.
    """

    def __init__(self, coeff: float):
        self.coeff = coeff

    def __call__(self, sae_outputs, saes, d_in, mask):
        loss = 0.0
        for site, out in sae_outputs.items():
            pre = pre_activations(out, saes[site])
            per_token = saes[site].activation.l0(pre).float().reshape(-1)
            l0 = (per_token * token_weights(mask, pre.shape[:-1], per_token.device)).sum() / d_in
            loss = loss + self.coeff * (l0 - l0.detach())
        return loss, None


class AuxK:
    """AuxK (Gao et al. 2024): the top `k_aux` dead latents reconstruct the residual `x - x_hat`.

    Dead = no firing in the last `dead_after_tokens` training tokens (the count restarts with the run object, e.g.
    on resume). The loss is the residual's unexplained fraction, `||e_hat - e||^2 / ||e - mean(e)||^2` over tokens,
    with `e` detached; 0 while no latent is dead.

    In a data-parallel run the statistics are those of the global batch (`sae/distributed.py`): a latent fired if
    it fired on any process, tokens are counted over all processes, and the residual's mean and variance are the
    global batch's; each process's loss is scaled so that DDP's averaged gradient is the global loss's gradient.
    A 2-process run thus trains exactly as one process with the global batch (tests/test_ddp_statistics.py).
    """

    def __init__(self, coeff: float, k_aux: Optional[int], dead_after_tokens: int):
        self.coeff, self.k_aux, self.dead_after_tokens = coeff, k_aux, dead_after_tokens
        self.tokens_since_fired: dict = {}

    def dead_latents(self, site: str, fired: torch.Tensor, n_tokens: int) -> torch.Tensor:
        """Update the per-latent counters with this batch's firing (`fired`: `(dict_size,)` bool, this process's
        `n_tokens` tokens; both reduced over the processes); the dead mask."""
        fired = reduce_sum(fired.to(torch.int32)) > 0
        n_tokens = n_tokens * world_size()  # every process's micro-batch has the same number of tokens
        count = self.tokens_since_fired.get(site, torch.zeros(fired.shape[0], dtype=torch.long, device=fired.device))
        count = torch.where(fired, torch.zeros_like(count), count + n_tokens)
        self.tokens_since_fired[site] = count
        return count >= self.dead_after_tokens

    def __call__(self, sae_outputs, saes, d_in, mask):
        loss = logged = 0.0
        for site, out in sae_outputs.items():
            sae = saes[site]
            dead = self.dead_latents(site, firing(out, sae.config.dict_size)[1], out.reconstruction[..., 0].numel())
            pre = pre_activations(out, sae)
            pre = pre.reshape(-1, pre.shape[-1])
            k = min(self.k_aux or max(1, d_in // 2), pre.shape[-1])
            values, indices = pre.masked_fill(~dead, float("-inf")).topk(k, dim=-1, sorted=False)
            aux_latents = torch.zeros_like(pre).scatter(-1, indices, torch.relu(values))
            e_hat = sae.decode(aux_latents) - sae.decoder.bias
            e = (out.target - out.reconstruction).detach().reshape(-1, e_hat.shape[-1]).to(e_hat.dtype)
            weights = torch.ones(e.shape[0], device=e.device) if mask is None else mask.reshape(-1).to(e.device, e.dtype)
            sse = (weights * (e_hat - e).pow(2).sum(-1)).sum()
            sst = _residual_variance(e, weights)
            # DDP averages the processes' gradients: world_size * sse_p / sst_global sums to the global loss's
            loss = loss + torch.where(dead.any(), world_size() * sse / sst, torch.zeros_like(sse))
            logged = logged + torch.where(dead.any(), reduce_sum(sse.detach()) / sst, torch.zeros_like(sse))
        return self.coeff * loss, logged


def _residual_variance(e: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """`sum_t w_t ||e_t - mean(e)||^2` over the global batch (`e`: `(tokens, d)`, detached; `weights`: `(tokens,)`)."""
    sums = reduce_sum(torch.cat([weights.sum()[None], (weights[:, None] * e).sum(0)]))
    mean = sums[1:] / sums[0].clamp_min(1)
    return reduce_sum((weights * (e - mean).pow(2).sum(-1)).sum()).clamp_min(1e-12)


class MatryoshkaReconstruction:
    """The local part: `coeff * sum_m w_m MSE(x_hat_m, x)` over every Matryoshka SAE (0 and not logged without one)."""

    def __init__(self, coeff: float):
        self.coeff = coeff

    def __call__(self, sae_outputs, saes, d_in, mask):
        total, seen = 0.0, False
        for site, out in sae_outputs.items():
            for size, weight in matryoshka_levels(saes[site]):
                seen = True
                total = total + weight * mse_loss(prefix_reconstruction(saes[site], out, size), out.target, mask)
        if not seen:
            return 0.0, None
        return self.coeff * total, total


def pre_activations(out, sae) -> torch.Tensor:
    """The encoder outputs of an SAE output; recomputed from what it read when the step kept only a sparse code."""
    if out.pre_activations is not None:
        return out.pre_activations
    source = out.source if out.source is not None else out.target
    return sae.pre_activations(source.to(sae.dtype))


register_loss_term(
    "sparsity_l0_ste",
    lambda c: L0StraightThrough(c.sparsity.coeff) if c.sparsity.p == 0 and c.sparsity.coeff > 0 else None)
register_loss_term(
    "auxk",
    lambda c: AuxK(c.auxk.coeff, c.auxk.k_aux, c.auxk.dead_after_tokens) if c.auxk.coeff > 0 else None)
register_loss_term(
    "matryoshka_reconstruction",
    lambda c: MatryoshkaReconstruction(c.reconstruction.coeff) if c.reconstruction.coeff > 0 else None)
