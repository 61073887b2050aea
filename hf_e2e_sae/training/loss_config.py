"""The loss config: presets and coefficients of the paper's terms (sparsity, reconstruction, KL, downstream) and
AuxK. Free of torch, so that `hf-e2e-sae train --help` and config errors answer before torch loads."""
from __future__ import annotations

from typing import Any, Literal, Optional

from pydantic import BaseModel, Field, model_validator

from ..config.arguments import ConfigModel


def check_kl_balance(loss_config) -> None:
    """`loss.kl.balance` needs an MSE to balance against (its preset default is resolved by `LossConfig`)."""
    if loss_config.kl.balance and (loss_config.reconstruction.coeff <= 0 or loss_config.kl.coeff <= 0):
        raise ValueError("loss.kl.balance needs loss.reconstruction.coeff > 0 and loss.kl.coeff > 0 "
                         f"(got {loss_config.reconstruction.coeff} and {loss_config.kl.coeff})")



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

    @model_validator(mode="wrap")
    @classmethod
    def _fill_coefficients_from_preset(cls, data: Any, handler) -> "LossConfig":
        """Coefficients not given take the preset's values, once, before validation (the model is frozen).

        The filled values stay *unset* (`model_dump(exclude_unset=True)` omits them), so a sweep over
        `loss.preset` gives each variant its own preset's coefficients, not the base config's."""
        if not isinstance(data, dict) or data.get("preset", "e2e") not in LOSS_PRESETS:
            return handler(data)  # an unknown preset is reported by the Literal check
        defaults = LOSS_PRESETS[data.get("preset", "e2e")]
        data, filled = dict(data), []
        for name in _TERMS:
            term = data.get(name) or {}
            if isinstance(term, BaseModel):
                term = term.model_dump(exclude_unset=True)
            elif isinstance(term, dict):
                term = dict(term)
            if isinstance(term, dict) and term.get("coeff") is None:
                term["coeff"] = defaults[name]
                filled.append((name, "coeff"))
            data[name] = term
        if isinstance(data["kl"], dict) and data["kl"].get("balance") is None:
            data["kl"]["balance"] = data.get("preset") == "finetune"  # finetune balances the KL to the MSE
            filled.append(("kl", "balance"))
        model = handler(data)
        for name, field in filled:  # in place: the frozen model's fields-set bookkeeping, not its values
            getattr(model, name).__pydantic_fields_set__.discard(field)
            if not getattr(model, name).__pydantic_fields_set__:
                model.__pydantic_fields_set__.discard(name)
        return model

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
