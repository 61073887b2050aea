"""Training: the run config, the losses, the training step and the Accelerate loop.

Data lives in `hf_e2e_sae.data`, run bookkeeping (output folders, checkpoints, redaction) in `hf_e2e_sae.runs`.
Names are imported on first use (PEP 562), so that importing a light submodule (losses) does not
import `datasets` and the trainer: `import hf_e2e_sae` stays cheap and works with the transformers-4.57 stack.
"""
from importlib import import_module

_EXPORTS = {
    "TrainConfig": ".config", "load_train_config": ".config", "train": ".trainer", "LossConfig": ".losses",
    "compute_losses": ".losses", "kl_divergence": ".losses", "mse_loss": ".losses", "sparsity_loss": ".losses",
    "train_sweep": ".sweep", "train_any": ".sweep",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(_EXPORTS[name], __name__), name)
