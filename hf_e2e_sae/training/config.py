"""`TrainConfig`: one validated config for a training run (YAML file + command-line overrides).

Field defaults are the paper's GPT-2 small recipe (Braun et al. 2024): Adam lr 5e-4, 1,250 warmup
steps (20k samples), cosine decay to 10%, grad-norm clip 10, batch 8 x 2 accumulation, 400k samples
of 1,024 tokens. `examples/configs/` holds ready-made runs.

    cfg = load_train_config("examples/configs/tiny-e2e.yaml", ["--loss.sparsity.coeff", "3"])
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Optional, Union

from pydantic import Field, field_validator, model_validator

from ..sae.sites import parse_site
from ..config.arguments import ConfigError, ConfigModel, iter_fields, load_config
from ..data.config import DataConfig
from .lora_config import LoRAConfig, check_lora_train_config
from .loss_config import LossConfig
from .sweep_config import check_sweep, expand_sweep, normalize_sweep


class BaseModelConfig(ConfigModel):
    name_or_path: str = "gpt2"
    """Hub id, local folder, or built-in name (builtin:tiny-shakespeare-gpt2) of the causal LM to train SAEs on."""
    revision: Optional[str] = None
    """Branch, tag or commit of the base model (recorded in the SAE configs)."""
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """dtype the frozen base model is loaded in (SAEs are kept in float32)."""
    shard: bool = False
    """Shard the frozen base model's weights over the processes with FSDP2 (each holds 1/N of every block, embedding
    and head; the SAEs stay whole on every process), for base models larger than one device. Needs 2+ processes."""


class TrainConfig(ConfigModel):
    base_model: BaseModelConfig = Field(default_factory=BaseModelConfig)
    """The frozen model the SAEs are spliced into."""
    sites: list[str] = Field(default_factory=lambda: ["blocks.6.resid_pre"])
    """SAE sites, e.g. blocks.6.resid_pre (several train together)."""
    dict_size_ratio: float = 60.0
    """Dictionary size as a multiple of the base model's hidden size (paper: 60)."""
    dict_size: Optional[int] = None
    """Dictionary size; overrides dict_size_ratio when given."""
    activation: str = "relu"
    """Latent activation: relu, topk, batchtopk, jumprelu, matryoshka_topk, matryoshka_batchtopk (see
    hf_e2e_sae.sae.activations)."""
    k: Optional[int] = None
    """topk / batchtopk / matryoshka_*: latents kept per token (default 32)."""
    jumprelu_init_threshold: Optional[float] = None
    """jumprelu: initial threshold of every latent (default 0.001)."""
    jumprelu_bandwidth: Optional[float] = None
    """jumprelu: width of the straight-through rectangle kernel (default 0.001)."""
    matryoshka_prefixes: Optional[list[int]] = None
    """matryoshka_topk / matryoshka_batchtopk: sizes of the nested dictionary prefixes, strictly increasing, each <
    dict_size (the whole dictionary is the last level), e.g. [128, 512, 2048]; required for those activations."""
    matryoshka_weights: Optional[list[float]] = None
    """matryoshka_*: the weight of each prefix's loss, one per entry of matryoshka_prefixes (default 1 each)."""
    output_sites: list[str] = Field(default_factory=list)
    """Transcoders: one site per entry of sites whose activation the reconstruction replaces (e.g. sites
    [blocks.2.mlp_in], output_sites [blocks.2.mlp_out]); empty = SAEs that reconstruct their own site."""
    skip_connection: bool = False
    """Skip transcoders: add a zero-initialised affine skip term `W_skip x` to each reconstruction (SAEConfig)."""
    cross_layer: bool = False
    """One cross-layer transcoder instead of one dictionary per site: sites are `blocks.<l>.mlp_in` (increasing l),
    output_sites the matching `blocks.<l>.mlp_out` (or empty); dict_size(_ratio) is per layer."""
    init_decoder_orthogonal: bool = True
    """Orthogonal decoder init (reference default)."""
    init_from: Optional[str] = None
    """Start from this SAE (folder or Hub repo, any format hf_e2e_sae.load_sae reads); its site and width are used."""
    loss: LossConfig = Field(default_factory=LossConfig)
    """Loss preset and coefficients."""
    lora: Optional[LoRAConfig] = None
    """LoRA adapters on the base model, trained around the (frozen) SAEs (training/lora_config.py); null: none."""
    data: DataConfig = Field(default_factory=lambda: DataConfig(
        path="apollo-research/Skylion007-openwebtext-tokenizer-gpt2", streaming=True, context_length=1024,
        n_eval_samples=500))
    """Training and held-out evaluation data."""
    activation_cache: Optional[str] = None
    """Local runs only: a folder of the base model's activations at the SAE site (`datasets` Arrow, memory-mapped).
    Missing: built first (one no-grad pass over the training samples, stopped at the site), then trained from;
    present: checked against this run (model, site, data) and reused. Pays off when several runs (a sweep) or
    epochs read the same samples; a run with it reaches the same SAE as without (one site per run)."""
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
    recompute_suffix: bool = False
    """e2e: recompute the activations of the blocks after the last SAE in the backward instead of keeping them
    (activation checkpointing): less memory for one more forward of those blocks."""
    resume_from_checkpoint: Optional[str] = None
    """'latest' or a checkpoint path to continue from."""
    overwrite_output_dir: bool = False
    """Delete another run's checkpoints and final/ in output_dir and start afresh (otherwise that is an error)."""
    stop_after_steps: Optional[int] = None
    """Stop early after N optimizer steps, as if interrupted (for testing resumption)."""
    push_to_hub: bool = False
    """Publish final/ to the Hub at the end of the run."""
    hub_repo_id: Optional[str] = None
    """Repo to publish to (e.g. org/gpt2-e2e-l6)."""
    hub_private: bool = False
    """Create the Hub repo as private."""
    sweep: dict[str, list[Any]] = Field(default_factory=dict)
    """Train several SAE variants in one run, sharing data and the base model's passes: {dotted field: [values]},
    e.g. {loss.sparsity.coeff: [0.5, 1, 2]} (several fields: their product); output in output_dir/variants/<name>/
    (see docs/guides/sweeps.md)."""

    @field_validator("sweep", mode="before")
    @classmethod
    def _flat_sweep(cls, value):
        return normalize_sweep(value)

    @model_validator(mode="before")
    @classmethod
    def _activation_defaults(cls, data):
        """TopK-like activations get no sparsity penalty unless the config asks for one (before validation)."""
        if not isinstance(data, dict) or "activation" not in data:
            return data  # the default activation, relu, fixes no sparsity (tested); no need to load the registry
        from .architecture_config import apply_activation_defaults  # the activation registry: torch

        return apply_activation_defaults(data)

    @model_validator(mode="after")
    def _check(self) -> "TrainConfig":
        check_train_config(self)
        return self

    @property
    def total_samples(self) -> int:
        """Training samples, rounded down to whole optimizer steps."""
        samples = self.n_samples if self.n_samples is not None else self.n_tokens // self.data.context_length
        return samples // self.effective_batch_size * self.effective_batch_size

    @property
    def total_steps(self) -> int:
        return self.total_samples // self.effective_batch_size


def check_train_config(config: TrainConfig) -> None:
    """Cross-field checks that need no base model and no data (those are in `training.preflight`)."""
    if not config.sites:
        raise ValueError("sites must list at least one site")
    canonical = [str(parse_site(s)) for s in config.sites]  # raises naming the bad site
    if len(set(canonical)) != len(canonical):
        raise ValueError(f"sites lists a site twice: {config.sites}")
    _check_positive(config, "batch_size", "effective_batch_size", "lr", "alive_window_tokens", "log_every_steps",
                    "keep_checkpoints")
    if config.effective_batch_size % config.batch_size:
        raise ValueError(f"batch_size={config.batch_size} must divide effective_batch_size={config.effective_batch_size}")
    if (config.n_samples is None) == (config.n_tokens is None):
        raise ValueError("give exactly one of n_samples and n_tokens (set the other to null)")
    if not 0 <= config.min_lr_factor <= 1:
        raise ValueError(f"min_lr_factor must be in [0, 1], got {config.min_lr_factor}")
    if config.warmup_samples < 0:
        raise ValueError(f"warmup_samples must be >= 0, got {config.warmup_samples}")
    if config.total_samples < config.effective_batch_size:
        raise ValueError(f"the run is shorter than one optimizer step ({config.total_samples} samples)")
    last_sae = max(parse_site(s).position for s in config.sites)
    for site in config.loss.downstream.sites:
        if parse_site(site).position <= last_sae:
            raise ValueError(f"loss.downstream.sites: {site!r} is not after the last SAE site {canonical}")
    from .architecture_config import check_architecture  # imported here: torch, after the cheap checks
    from .finetune import check_init_from

    check_init_from(config)
    check_lora_train_config(config)
    check_architecture(config)
    if config.cross_layer:
        from .cross_layer_setup import check_cross_layer  # imported here: torch

        check_cross_layer(config)
    if config.activation_cache is not None:
        _check_activation_cache(config)
    if config.push_to_hub and not config.hub_repo_id:
        raise ValueError("push_to_hub is true but hub_repo_id is not set")
    if config.sweep:
        _check_sweep(config)
    if config.resume_from_checkpoint is not None and config.resume_from_checkpoint != "latest" \
            and not Path(config.resume_from_checkpoint).is_dir():
        raise ValueError(f"resume_from_checkpoint={config.resume_from_checkpoint!r}: not 'latest' nor a directory")


def _check_sweep(config: TrainConfig) -> None:
    check_sweep(config.sweep, [name for name, _ in iter_fields(type(config))])
    if config.mixed_precision == "fp16":
        raise ValueError("sweep with mixed_precision=fp16: one loss scaler cannot serve several variants; use bf16")
    if config.push_to_hub:
        raise ValueError("sweep with push_to_hub: push the chosen variant's final/ afterwards (hf-e2e-sae push)")
    expand_sweep(config)  # every variant must be a valid run of its own


def _check_activation_cache(config: TrainConfig) -> None:
    """A cache holds activations at the SAE site only: for one local SAE (no logits, no later activations)."""
    loss = config.loss
    if loss.needs_logits:
        raise ValueError(f"activation_cache is only for local runs: loss.preset={loss.preset} needs the model's logits "
                         f"or later activations (loss.kl.coeff={loss.kl.coeff}, loss.downstream.coeff="
                         f"{loss.downstream.coeff}); remove activation_cache or use loss.preset=local")
    if len(config.sites) > 1 or config.output_sites:
        raise ValueError("activation_cache trains one SAE (not a transcoder) per run: in a live run later SAEs read "
                         f"the earlier ones' reconstructions, which a cache cannot replay; got sites={config.sites}"
                         + (f", output_sites={config.output_sites}" if config.output_sites else ""))


def _check_positive(config: TrainConfig, *names: str) -> None:
    for name in names:
        if getattr(config, name) <= 0:
            raise ValueError(f"{name} must be > 0, got {getattr(config, name)}")


def load_train_config(path: Optional[Union[str, Path]] = None, overrides: Optional[list] = None) -> TrainConfig:
    """Build a `TrainConfig` from a YAML file and `--a.b value` / `a.b=value` overrides."""
    return load_config(TrainConfig, path, overrides)


__all__ = ["BaseModelConfig", "ConfigError", "TrainConfig", "load_train_config"]
