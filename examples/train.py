"""Train end-to-end sparse autoencoders with Accelerate: the same command as `hf-e2e-sae train`.

Run from anywhere (the offline demo's model and config ship in the package):

    python examples/train.py                                            # offline demo, one process
    python examples/train.py examples/configs/gpt2-l6-e2e-similar-ce.yaml  # the paper's GPT-2 layer-6 e2e run
    python examples/train.py CONFIG.yaml --loss.sparsity.coeff 3 lr=1e-3   # overrides, dotted keys
    python examples/train.py --config_file examples/accelerate/cpu_2proc.yaml CONFIG.yaml   # 2 processes
    python examples/train.py --multi_gpu --num_processes 8 CONFIG.yaml     # 8 GPUs (accelerate launch options first)
    python examples/train.py CONFIG.yaml --resume_from_checkpoint latest
    python examples/train.py --help                              # every field, with its meaning and its default

A config mistake is one line on stderr and exit code 2, also with launch options: they are checked here before
any process starts (hf_e2e_sae/launcher.py). `accelerate launch examples/train.py CONFIG.yaml` works too, but then
accelerate's launcher adds its own traceback to a failure.
"""
import sys

from hf_e2e_sae.cli import run_train
from hf_e2e_sae.training.config import TrainConfig
from hf_e2e_sae.training.sweep import train_any


def training_function(config: TrainConfig) -> dict:
    """Train the SAEs `config` describes (every variant of a `sweep:`); returns the final held-out metrics ({} if
    stopped early; a sweep: {variant name: metrics})."""
    return train_any(config)


def main() -> int:
    return run_train(sys.argv[1:], prog="examples/train.py", train=training_function)


if __name__ == "__main__":
    sys.exit(main())
