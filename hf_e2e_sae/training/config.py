"""`TrainConfig`: one validated config for a training run (YAML file + command-line overrides).

Field defaults are the paper's GPT-2 small recipe (Braun et al. 2024): Adam lr 5e-4, 1,250 warmup
steps (20k samples), cosine decay to 10%, grad-norm clip 10, batch 8 x 2 accumulation, 400k samples
of 1,024 tokens. `examples/configs/` holds ready-made runs.

    cfg = load_train_config("examples/configs/tiny-e2e.yaml", ["--loss.sparsity.coeff", "3"])
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional, Union

from .architecture_config import check_architecture
from .arguments import ConfigError, load_config
from .data import DataConfig
from .losses import LossConfig
from ..sae.sites import parse_site

@dataclass
class BaseModelConfig:
    name_or_path: str = "gpt2"
    """Hub id or local path of the causal LM to train SAEs on."""
    revision: Optional[str] = None
    """Branch, tag or commit of the base model (recorded in the SAE configs)."""
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """dtype the frozen base model is loaded in (SAEs are kept in float32)."""


@dataclass
class TrainConfig:
    base_model: BaseModelConfig = field(default_factory=BaseModelConfig)
    """The frozen model the SAEs are spliced into."""
    sites: list[str] = field(default_factory=lambda: ["blocks.6.resid_pre"])
    """SAE sites, e.g. blocks.6.resid_pre (several train together)."""
    dict_size_ratio: float = 60.0
    """Dictionary size as a multiple of the base model's hidden size (paper: 60)."""
    dict_size: Optional[int] = None
    """Dictionary size; overrides dict_size_ratio when given."""
    activation: str = "relu"
    """Latent activation: relu, topk, batchtopk, jumprelu (see hf_e2e_sae.sae.activations)."""
    k: Optional[int] = None
    """topk / batchtopk: latents kept per token (default 32)."""
    jumprelu_init_threshold: Optional[float] = None
    """jumprelu: initial threshold of every latent (default 0.001)."""
    jumprelu_bandwidth: Optional[float] = None
    """jumprelu: width of the straight-through rectangle kernel (default 0.001)."""
    output_sites: list[str] = field(default_factory=list)
    """Transcoders: one site per entry of sites whose activation the reconstruction replaces (e.g. sites
    [blocks.2.mlp_in], output_sites [blocks.2.mlp_out]); empty = SAEs that reconstruct their own site."""
    init_decoder_orthogonal: bool = True
    """Orthogonal decoder init (reference default)."""
    loss: LossConfig = field(default_factory=LossConfig)
    """Loss preset and coefficients."""
    data: DataConfig = field(default_factory=lambda: DataConfig(
        path="apollo-research/Skylion007-openwebtext-tokenizer-gpt2", streaming=True, context_length=1024,
        n_eval_samples=500))
    """Training and held-out evaluation data."""
    n_samples: Optional[int] = 400_000
    """Training samples (sequences of data.context_length tokens); give this or n_tokens."""
    n_tokens: Optional[int] = None
    """Training tokens; converted to samples (rounded down to whole effective batches)."""
    batch_size: int = 8
    """Samples per forward pass on each process."""
    effective_batch_size: int = 16
    """Samples per optimizer step over all processes and accumulation steps."""
    lr: float = 5e-4
    """Peak learning rate (Adam, default betas, no weight decay)."""
    warmup_samples: int = 20_000
    """Linear warmup length in samples."""
    min_lr_factor: float = 0.1
    """Cosine decay ends at lr * min_lr_factor."""
    max_grad_norm: Optional[float] = 10.0
    """Gradient-norm clip on SAE parameters (None: no clipping)."""
    seed: int = 0
    """Seed for SAE init and data order."""
    eval_every_samples: Optional[int] = None
    """Evaluate on held-out data every N training samples (always at the end)."""
    eval_batch_size: Optional[int] = None
    """Batch size for evaluation (default: batch_size)."""
    alive_window_tokens: int = 500_000
    """Count dictionary elements that fired at least once in windows of this many tokens."""
    log_every_steps: int = 10
    """Log training metrics every N optimizer steps."""
    save_every_samples: Optional[int] = None
    """Save a resumable checkpoint every N samples (None: only at the end)."""
    keep_checkpoints: int = 2
    """How many checkpoints to keep (oldest deleted first)."""
    output_dir: str = "outputs/run"
    """Where checkpoints, logs and final/ go."""
    tracker: Literal["none", "tensorboard", "wandb"] = "none"
    """Experiment tracker for accelerator.log."""
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"
    """Autocast precision of the forward passes."""
    resume_from_checkpoint: Optional[str] = None
    """'latest' or a checkpoint path to continue from."""
    stop_after_steps: Optional[int] = None
    """Stop early after N optimizer steps, as if interrupted (for testing resumption)."""
    push_to_hub: bool = False
    """Publish final/ to the Hub at the end of the run."""
    hub_repo_id: Optional[str] = None
    """Repo to publish to (e.g. org/gpt2-e2e-l6)."""
    hub_private: bool = False
    """Create the Hub repo as private."""

    def __post_init__(self) -> None:
        if not self.sites:
            raise ValueError("sites must list at least one site")
        canonical = [str(parse_site(s)) for s in self.sites]  # raises naming the bad site
        if len(set(canonical)) != len(canonical):
            raise ValueError(f"sites lists a site twice: {self.sites}")
        _check_positive(self, "batch_size", "effective_batch_size", "lr", "alive_window_tokens", "log_every_steps",
                        "keep_checkpoints")
        if self.effective_batch_size % self.batch_size:
            raise ValueError(f"batch_size={self.batch_size} must divide effective_batch_size={self.effective_batch_size}")
        if (self.n_samples is None) == (self.n_tokens is None):
            raise ValueError("give exactly one of n_samples and n_tokens (set the other to null)")
        if not 0 <= self.min_lr_factor <= 1:
            raise ValueError(f"min_lr_factor must be in [0, 1], got {self.min_lr_factor}")
        if self.warmup_samples < 0:
            raise ValueError(f"warmup_samples must be >= 0, got {self.warmup_samples}")
        if self.total_samples < self.effective_batch_size:
            raise ValueError(f"the run is shorter than one optimizer step ({self.total_samples} samples)")
        last_sae = max(parse_site(s).position for s in self.sites)
        for site in self.loss.downstream.sites:
            if parse_site(site).position <= last_sae:
                raise ValueError(f"loss.downstream.sites: {site!r} is not after the last SAE site {canonical}")
        check_architecture(self)
        if self.push_to_hub and not self.hub_repo_id:
            raise ValueError("push_to_hub is true but hub_repo_id is not set")
        if self.resume_from_checkpoint is not None and self.resume_from_checkpoint != "latest" \
                and not Path(self.resume_from_checkpoint).is_dir():
            raise ValueError(f"resume_from_checkpoint={self.resume_from_checkpoint!r}: not 'latest' nor a directory")

    @property
    def total_samples(self) -> int:
        """Training samples, rounded down to whole optimizer steps."""
        samples = self.n_samples if self.n_samples is not None else self.n_tokens // self.data.context_length
        return samples // self.effective_batch_size * self.effective_batch_size

    @property
    def total_steps(self) -> int:
        return self.total_samples // self.effective_batch_size


def _check_positive(config: TrainConfig, *names: str) -> None:
    for name in names:
        if getattr(config, name) <= 0:
            raise ValueError(f"{name} must be > 0, got {getattr(config, name)}")


def load_train_config(path: Optional[Union[str, Path]] = None, overrides: Optional[list] = None) -> TrainConfig:
    """Build a `TrainConfig` from a YAML file and `--a.b value` / `a.b=value` overrides."""
    return load_config(TrainConfig, path, overrides)


__all__ = ["BaseModelConfig", "ConfigError", "TrainConfig", "load_train_config"]
