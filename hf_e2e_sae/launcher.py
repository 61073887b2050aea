"""`hf-e2e-sae train [accelerate launch options] [CONFIG] [overrides]`: several processes, still one line per mistake.

`accelerate launch script.py` turns a child's one-line error into a launcher traceback (`CalledProcessError`, or
torchrun's `ChildFailedError` table) and exit 1. So the command checks everything it can here first (the config,
the preflight against the base model's config and the data, the output folder), answers a mistake in one line
with exit 2 before any process starts, and only then runs accelerate's launcher on `python -m hf_e2e_sae.cli
train ...`. A child that still fails on a user mistake writes its line to `$HF_E2E_SAE_ERROR_FILE` before it
exits; the launcher's own report after it is not shown, and the command exits with the child's status.

    hf-e2e-sae train --config_file examples/accelerate/cpu_2proc.yaml CONFIG.yaml --loss.sparsity.coeff 3
    hf-e2e-sae train --multi_gpu --num_processes 8 CONFIG.yaml
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Optional

ERROR_FILE_ENV = "HF_E2E_SAE_ERROR_FILE"


def split_launch_args(argv: list, train_fields: set) -> tuple[list, list]:
    """`(accelerate launch options, the rest)`: the leading arguments that are accelerate launch options (exact
    option names; a name that is also a `TrainConfig` field, like `--mixed_precision`, stays the config's)."""
    from accelerate.commands.launch import launch_command_parser

    actions = {opt: action for action in launch_command_parser()._actions for opt in action.option_strings
               if action.dest not in train_fields and opt not in ("-h", "--help")}
    i = 0
    while i < len(argv):
        name = argv[i].split("=", 1)[0]
        if name not in actions:
            break
        takes_value = actions[name].nargs != 0 and "=" not in argv[i]
        i += 2 if takes_value else 1
    return argv[:i], argv[i:]


def num_processes(launch_args: list) -> int:
    """The process count these options ask for (`--num_processes`, else the accelerate config file's, else 1)."""
    import yaml
    from accelerate.commands.launch import launch_command_parser

    from .config.arguments import ConfigError

    args, _ = launch_command_parser().parse_known_args(launch_args + ["script.py"])
    if args.num_processes:
        return int(args.num_processes)
    if args.config_file:
        try:
            return int((yaml.safe_load(Path(args.config_file).read_text()) or {}).get("num_processes") or 1)
        except (OSError, yaml.YAMLError, TypeError, ValueError) as error:
            raise ConfigError(f"--config_file {args.config_file}: {error}") from None
    return 1


def check_before_launch(config, world_size: int) -> None:
    """What the children would check first, here: preflight, then the output folder (lock taken and released)."""
    from .runs.output_dir import prepare_output_dir
    from .training.preflight import preflight

    preflight(config, world_size)
    prepare_output_dir(config.output_dir, config.resume_from_checkpoint, config.overwrite_output_dir).release()


def report_child_error(code: int, message: str) -> None:
    """In a launched child: record the one-line error for the launching command (first writer wins)."""
    path = os.environ.get(ERROR_FILE_ENV)
    if path:
        with open(path, "a") as f:
            f.write(f"{code}\t{message}\n")


def _first_error(path: str) -> Optional[tuple]:
    try:
        line = Path(path).read_text().splitlines()[0]
    except (OSError, IndexError):
        return None
    code, _, message = line.partition("\t")
    return int(code), message


def launch(launch_args: list, train_args: list, prog: str) -> int:
    """Run accelerate's launcher on the train command; returns the exit status (a child's own, if it reported)."""
    with tempfile.TemporaryDirectory(prefix="hf_e2e_sae_launch_") as tmp:
        error_file = os.path.join(tmp, "error")
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--quiet", *launch_args,
               "-m", "hf_e2e_sae.cli", "train", *train_args]
        process = subprocess.Popen(cmd, env={**os.environ, ERROR_FILE_ENV: error_file}, stderr=subprocess.PIPE)
        forward = threading.Thread(target=_forward_stderr, args=(process, error_file), daemon=True)
        forward.start()
        process.wait()
        forward.join(timeout=10)
        error = _first_error(error_file)
    if process.returncode and error is not None:
        sys.stderr.write(f"\n{prog}: error: {error[1]}\n")
        return error[0]
    return process.returncode


def _forward_stderr(process: subprocess.Popen, error_file: str) -> None:
    """Children's and launcher's stderr, live (progress bars included), until a child has reported an error."""
    while chunk := process.stderr.read1(65536):
        if os.path.exists(error_file) and os.path.getsize(error_file):
            continue  # the child's line is printed once at the end; the launcher's traceback is not shown
        sys.stderr.buffer.write(chunk)
        sys.stderr.flush()
