"""Train end-to-end sparse autoencoders with Accelerate.

Run from the repository root:

    accelerate launch examples/train.py                          # offline demo: e2e SAE on the tiny Shakespeare GPT-2
    accelerate launch examples/train.py examples/configs/gpt2-l6-e2e-similar-ce.yaml   # the paper's GPT-2 layer-6 e2e run
    accelerate launch examples/train.py CONFIG.yaml --loss.sparsity.coeff 3 lr=1e-3   # overrides, dotted keys
    accelerate launch --multi_gpu --num_processes 2 examples/train.py CONFIG.yaml      # 2 processes (gloo on CPU)
    accelerate launch examples/train.py CONFIG.yaml --resume_from_checkpoint latest
    python examples/train.py --help                              # every field, with its meaning

Same as the console command `hf-e2e-sae train [CONFIG.yaml] [overrides]`.
"""
import logging
import sys

from accelerate import PartialState

from hf_e2e_sae.training.config import TrainConfig
from hf_e2e_sae.training.run_errors import RUN_ERRORS
from hf_e2e_sae.training.trainer import config_from_argv, final_report, train


def training_function(config: TrainConfig) -> dict:
    """Train the SAEs `config` describes; returns the final held-out metrics ({} if stopped early)."""
    return train(config)


def main() -> None:
    try:
        config = config_from_argv(sys.argv[1:], prog="accelerate launch examples/train.py")
    except ValueError as error:  # ConfigError: names the field and the valid choices
        sys.exit(f"examples/train.py: {error}")
    if config is None:  # --help was printed
        return
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        metrics = training_function(config)
    except RUN_ERRORS as error:  # non-finite loss, output_dir in use, disk full, bad checkpoint: one line
        sys.exit(f"\nexamples/train.py: {error}")
    if metrics and PartialState().is_main_process:
        print(final_report(config, metrics))


if __name__ == "__main__":
    main()
