"""The paper's losses: sparsity, local reconstruction, downstream reconstruction and KL.

All means are over (unmasked) tokens; MSE is the mean over elements. The KL is
KL(P_orig || P_sae) = sum_v p_v (log p_v - log q_v) per token, computed in chunks of tokens with
a hand-written backward (grad wrt SAE logits = q - p) so that no tokens x vocab tensor is kept
beyond the two logits tensors and the gradient itself.
"""
from __future__ import annotations

from typing import Any, Literal, Mapping, Optional

import torch
import torch.nn.functional as F
from pydantic import BaseModel, Field, model_validator

from ..sae.sparse_code import code_values
from ..config.arguments import ConfigModel
from .fused_kl import auto_chunk_tokens

from .finetune import check_kl_balance, kl_scale

# preset -> default coefficients (sparsity: the paper's layer-6 "similar CE" lambdas, Table 2)
LOSS_PRESETS: dict = {
    "local": {"sparsity": 4.0, "reconstruction": 1.0, "kl": 0.0, "downstream": 0.0},
    "e2e": {"sparsity": 3.0, "reconstruction": 0.0, "kl": 1.0, "downstream": 0.0},
    "e2e+ds": {"sparsity": 50.0, "reconstruction": 0.0, "kl": 0.5, "downstream": 2.5},
    # Karvonen (2025): KL + MSE fine-tuning of a trained SAE, KL balanced to the MSE (training/finetune.py)
    "finetune": {"sparsity": 4.0, "reconstruction": 0.5, "kl": 0.5, "downstream": 0.0},
}


class SparsityLossConfig(ConfigModel):
    coeff: Optional[float] = None
    """Sparsity coefficient (the paper's lambda); default from the preset."""
    p: float = 1.0
    """The p of the Lp norm of the latents (paper: 1); 0 = L0 through the activation's straight-through estimator
    (jumprelu)."""


class CoeffConfig(ConfigModel):
    coeff: Optional[float] = None
    """Coefficient of this term; default from the preset."""


class KLLossConfig(ConfigModel):
    coeff: Optional[float] = None
    """Coefficient of KL(P_orig || P_sae); default from the preset."""
    chunk_tokens: Optional[int] = Field(None, ge=1)
    """Tokens per chunk of the KL computation (memory: about 3 x chunk_tokens x vocab floats); null: a budget
    of 128 x 50,257 elements on CPUs and 2,048 x 50,257 on GPUs (`fused_kl.auto_chunk_tokens`)."""
    balance: Optional[bool] = None
    """Rescale the KL each step so its contribution is coeff / reconstruction.coeff times the MSE's (null: on for
    the finetune preset, off otherwise)."""
    backend: Literal["auto", "ours", "liger"] = "auto"
    """Fused unembedding + KL: ours (every device), liger (Liger-Kernel's fused linear JSD at beta 0; CUDA only, falls
    back to ours with a warning elsewhere), auto (ours; on CUDA with liger-kernel installed, the faster of the two,
    timed on the first step). See `training/kl_backends.py`."""
    compile: bool = True
    """Fuse the KL's softmaxes and gradient with torch.compile (compiled once per process, a few seconds; eager
    with a warning where compiling fails)."""


class DownstreamLossConfig(ConfigModel):
    coeff: Optional[float] = None
    """Total coefficient of the downstream MSE, split evenly over the sites; default from the preset."""
    sites: list[str] = Field(default_factory=list)
    """Later sites to reconstruct; empty = the resid_pre of every block after the last SAE (paper)."""


class AuxKLossConfig(ConfigModel):
    coeff: float = 0.0
    """Coefficient of the AuxK dead-latent loss (Gao et al. 2024 use 1/32); 0 = off. Any preset and activation."""
    k_aux: Optional[int] = None
    """Dead latents used to model the residual, per token; default d_in // 2 (Gao et al.: 512 for d_in 768+)."""
    dead_after_tokens: int = 10_000_000
    """A latent is dead after this many training tokens without firing (Gao et al.: 10M)."""


_TERMS = ("sparsity", "reconstruction", "kl", "downstream")


class LossConfig(ConfigModel):
    preset: Literal["local", "e2e", "e2e+ds", "finetune"] = "e2e"
    """One of local, e2e, e2e+ds, finetune; fills every coefficient that is not given."""
    sparsity: SparsityLossConfig = Field(default_factory=SparsityLossConfig)
    """Sparsity term: mean over tokens of ||c||_p / d_in."""
    reconstruction: CoeffConfig = Field(default_factory=CoeffConfig)
    """Local reconstruction term: MSE(x_hat, x) at each SAE site."""
    kl: KLLossConfig = Field(default_factory=KLLossConfig)
    """KL(P_orig || P_sae) of next-token distributions."""
    downstream: DownstreamLossConfig = Field(default_factory=DownstreamLossConfig)
    """e2e+ds term: MSE of later activations between the SAE run and the original run."""
    auxk: AuxKLossConfig = Field(default_factory=AuxKLossConfig)
    """AuxK: the top k_aux dead latents reconstruct the residual x - x_hat (revives dead latents)."""

    @model_validator(mode="before")
    @classmethod
    def _fill_coefficients_from_preset(cls, data: Any) -> Any:
        """Coefficients not given take the preset's values, once, before validation (the model is frozen)."""
        if not isinstance(data, dict) or data.get("preset", "e2e") not in LOSS_PRESETS:
            return data  # an unknown preset is reported by the Literal check
        defaults = LOSS_PRESETS[data.get("preset", "e2e")]
        data = dict(data)
        for name in _TERMS:
            term = data.get(name) or {}
            term = term.model_dump() if isinstance(term, BaseModel) else dict(term) if isinstance(term, dict) else term
            if isinstance(term, dict) and term.get("coeff") is None:
                term["coeff"] = defaults[name]
            data[name] = term
        if isinstance(data["kl"], dict) and data["kl"].get("balance") is None:
            data["kl"]["balance"] = data.get("preset") == "finetune"  # finetune balances the KL to the MSE
        return data

    @model_validator(mode="after")
    def _check(self) -> "LossConfig":
        for name in _TERMS:
            if getattr(self, name).coeff < 0:
                raise ValueError(f"loss.{name}.coeff must be >= 0, got {getattr(self, name).coeff}")
        if self.sparsity.p < 0:
            raise ValueError(f"loss.sparsity.p must be >= 0 (0: L0 through the activation's estimator), got {self.sparsity.p}")
        check_kl_balance(self)
        return self

    @property
    def needs_logits(self) -> bool:
        """False for pure local training: the forward can stop after the last SAE."""
        return self.kl.coeff > 0 or self.downstream.coeff > 0


def token_weights(mask: Optional[torch.Tensor], shape: torch.Size, device) -> torch.Tensor:
    """Flat per-token weights summing to 1 over unmasked tokens."""
    weights = torch.ones(shape, device=device) if mask is None else mask.to(device=device, dtype=torch.float32)
    weights = weights.reshape(-1)
    return weights / weights.sum().clamp_min(1.0)


def sparsity_loss(latents: torch.Tensor, p: float, d_in: int, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Mean over tokens of ||c||_p / d_in. latents: (batch, seq, dict_size)."""
    if p == 1:  # the paper's L1: a plain sum accumulated in float32, without a float32 copy of the latents
        norms = latents.abs().sum(dim=-1, dtype=torch.float32).reshape(-1)  # (tokens,)
    else:
        norms = torch.linalg.vector_norm(latents.float(), ord=p, dim=-1).reshape(-1)
    return (norms * token_weights(mask, latents.shape[:-1], latents.device)).sum() / d_in


def mse_loss(prediction: torch.Tensor, target: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Mean over unmasked tokens and all elements of (prediction - target)^2."""
    per_token = (prediction.float() - target.float()).pow(2).mean(dim=-1).reshape(-1)
    return (per_token * token_weights(mask, prediction.shape[:-1], prediction.device)).sum()


class _ChunkedKL(torch.autograd.Function):
    """sum_t w_t KL(P_orig,t || P_sae,t); gradient only w.r.t. the SAE logits."""

    @staticmethod
    def forward(ctx, sae_logits, orig_logits, weights, chunk_tokens):  # (N, V), (N, V), (N,), int
        total = torch.zeros((), device=sae_logits.device, dtype=torch.float32)
        for start in range(0, sae_logits.shape[0], chunk_tokens):
            end = start + chunk_tokens
            log_q = F.log_softmax(sae_logits[start:end].float(), dim=-1)
            log_p = F.log_softmax(orig_logits[start:end].float(), dim=-1)
            per_token = (log_p.exp() * (log_p - log_q)).sum(dim=-1)  # (chunk,)
            total += (per_token * weights[start:end]).sum()
        ctx.save_for_backward(sae_logits, orig_logits, weights)
        ctx.chunk_tokens = chunk_tokens
        return total

    @staticmethod
    def backward(ctx, grad_output):
        sae_logits, orig_logits, weights = ctx.saved_tensors
        grad = torch.empty_like(sae_logits)
        for start in range(0, sae_logits.shape[0], ctx.chunk_tokens):
            end = start + ctx.chunk_tokens
            q = F.softmax(sae_logits[start:end].float(), dim=-1)
            p = F.softmax(orig_logits[start:end].float(), dim=-1)
            scale = (weights[start:end] * grad_output).unsqueeze(-1)
            grad[start:end] = ((q - p) * scale).to(grad.dtype)
        return grad, None, None, None


def kl_divergence(
    orig_logits: torch.Tensor,
    sae_logits: torch.Tensor,
    mask: Optional[torch.Tensor] = None,
    chunk_tokens: int = 1024,
) -> torch.Tensor:
    """KL(P_orig || P_sae), mean over unmasked tokens. Logits: (batch, seq, vocab).

    `orig_logits` is the fixed target (no gradient flows into it).
    """
    if orig_logits.shape != sae_logits.shape:
        raise ValueError(f"logits shapes differ: {tuple(orig_logits.shape)} vs {tuple(sae_logits.shape)}")
    vocab = sae_logits.shape[-1]
    weights = token_weights(mask, sae_logits.shape[:-1], sae_logits.device)
    return _ChunkedKL.apply(
        sae_logits.reshape(-1, vocab), orig_logits.detach().reshape(-1, vocab), weights, chunk_tokens
    )


def compute_losses(
    config: LossConfig,
    sae_outputs: Mapping,
    d_in: int,
    sae_logits: Optional[torch.Tensor] = None,
    orig_logits: Optional[torch.Tensor] = None,
    sae_downstream: Optional[Mapping] = None,
    orig_downstream: Optional[Mapping] = None,
    mask: Optional[torch.Tensor] = None,
    kl_term: Optional[torch.Tensor] = None,
) -> tuple:
    """Weighted total loss and its unweighted terms.

    Args:
        sae_outputs: {site: SiteOutput} from the patched forward.
        sae_logits, orig_logits: needed when `config.kl.coeff > 0` and `kl_term` is not given.
        kl_term: the KL computed elsewhere (the fused unembedding + KL of the fast step).
        sae_downstream, orig_downstream: {site: activation} when `config.downstream.coeff > 0`.
    Returns:
        `(total, terms)` where terms maps "sparsity", "reconstruction", "kl", "downstream" to
        detached scalars (terms with coefficient 0 are not computed).
    """
    terms: dict = {}
    total = torch.zeros((), device=next(iter(sae_outputs.values())).reconstruction.device)
    with torch.set_grad_enabled(torch.is_grad_enabled() and config.sparsity.coeff > 0):  # logged only at coeff 0
        sparsity = sum(sparsity_loss(code_values(o), config.sparsity.p, d_in, mask) for o in sae_outputs.values())
    terms["sparsity"] = sparsity
    if config.sparsity.coeff > 0:
        total = total + config.sparsity.coeff * sparsity
    if config.reconstruction.coeff > 0:
        terms["reconstruction"] = sum(mse_loss(o.reconstruction, o.target, mask) for o in sae_outputs.values())
        total = total + config.reconstruction.coeff * terms["reconstruction"]
    if config.kl.coeff > 0:
        chunk = config.kl.chunk_tokens or auto_chunk_tokens(sae_logits.shape[-1], sae_logits.device) \
            if kl_term is None else None
        terms["kl"] = kl_term if kl_term is not None else kl_divergence(orig_logits, sae_logits, mask, chunk)
        total = total + config.kl.coeff * kl_scale(config, terms) * terms["kl"]
    if config.downstream.coeff > 0:
        per_site = [mse_loss(sae_downstream[s], orig_downstream[s], mask) for s in orig_downstream]
        if not per_site:
            raise ValueError("loss.downstream.coeff > 0 but there is no downstream site after the last SAE")
        terms["downstream"] = sum(per_site) / len(per_site)
        total = total + config.downstream.coeff * terms["downstream"]
    return total, {name: value.detach() for name, value in terms.items()}


def default_downstream_sites(sae_sites: list, n_blocks: int) -> list:
    """The paper's downstream sites: resid_pre of every block after the last SAE site."""
    from ..sae.sites import Site, parse_site

    last = max(parse_site(s).position for s in sae_sites)
    return [str(Site(j, "resid_pre")) for j in range(n_blocks) if Site(j, "resid_pre").position > last]
