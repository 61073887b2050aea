"""Training: the config, data, losses, the Accelerate trainer and its checkpoints."""
from .config import TrainConfig, load_train_config
from .losses import LossConfig, compute_losses, kl_divergence, mse_loss, sparsity_loss
from .trainer import train

__all__ = ["LossConfig", "TrainConfig", "compute_losses", "kl_divergence", "load_train_config", "mse_loss",
           "sparsity_loss", "train"]
