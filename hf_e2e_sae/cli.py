"""Console entry point: `hf-e2e-sae train [CONFIG] [overrides]`, `hf-e2e-sae push OUTPUT_DIR REPO_ID`, ...

Every user mistake (a bad config key or value, a site the base model lacks, a missing data file, no Hub token)
is one line on stderr and exit code 2, never a traceback. `examples/train.py` calls `run_train` too.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Callable, Optional

DEMO_CONFIG = Path(__file__).parent / "assets" / "tiny-e2e.yaml"  # = patching.base_models.ASSETS_DIR (not
# imported: that would load torch before `--help` answers)
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def _usage() -> str:
    lines = ["usage: hf-e2e-sae COMMAND [ARGS]", "", "commands:"]
    lines += [f"  {name:<10} {summary}" for name, (summary, _) in COMMANDS.items()]
    return "\n".join(lines + ["", "`hf-e2e-sae COMMAND --help` describes each command."]) + "\n"


def _fail(prog: str, error: BaseException, code: int = 2) -> int:
    """A user mistake (exit code 2) or a run that stopped (1): one line on stderr."""
    from .launcher import report_child_error

    message = " ".join(str(error).split()) or type(error).__name__
    report_child_error(code, message)  # under `hf-e2e-sae train --config_file ...`: the launching command prints it
    sys.stderr.write(f"{prog}: error: {message}\n")
    return code


# ---------------------------------------------------------------- train
def config_from_argv(argv: list, prog: str = "hf-e2e-sae train"):
    """`[CONFIG.yaml] [overrides]` -> `TrainConfig`; prints the field help and returns None for --help.

    Without CONFIG, the offline demo config that ships in the package (= examples/configs/tiny-e2e.yaml) is used.
    """
    from .config.arguments import format_help, is_help_requested
    from .training.config import TrainConfig, load_train_config

    argv = list(argv)
    if is_help_requested(argv):
        preamble = (f"Train SAEs. CONFIG is a YAML file of the fields below; without CONFIG the offline demo runs "
                    f"(an e2e SAE on the tiny Shakespeare GPT-2 that ships with the package: {DEMO_CONFIG}). "
                    "Overrides set single fields. The defaults shown are what a CONFIG that omits a field gets "
                    "(the paper's GPT-2 small recipe).")
        sys.stdout.write(format_help(TrainConfig, f"{prog} [CONFIG.yaml]", preamble=preamble))
        return None
    path = argv.pop(0) if argv and not argv[0].startswith("-") and "=" not in argv[0] else DEMO_CONFIG
    return load_train_config(path, argv)


def final_report(config, metrics: dict) -> str:
    """Where the outputs went and the final held-out metrics, for the terminal."""
    if getattr(config, "sweep", None):
        table = Path(config.output_dir) / "sweep.md"
        return f"\nSweep of {len(metrics)} variants written to {Path(config.output_dir).resolve()}/variants/\n" + \
            (table.read_text() if table.is_file() else "")
    lines = [f"\nSAEs, metrics and config written to {(Path(config.output_dir) / 'final').resolve()}",
             "Final held-out metrics:"]
    for key, value in metrics.items():
        lines.append(f"  {key:<45} {value:.6g}" if isinstance(value, float) else f"  {key:<45} {value}")
    return "\n".join(lines) + "\n"


def run_train(argv: list, prog: str = "hf-e2e-sae train", train: Optional[Callable] = None) -> int:
    """Parse, check and train; config errors (including the checks against the base model and the data that
    run before any weights load) exit 2 with one line. `train(config) -> metrics` defaults to the trainer's."""
    from .config.arguments import ConfigError

    launch_args, argv = _launch_args(argv)
    try:
        config = config_from_argv(argv, prog)
        if config is not None and launch_args:
            return _launch(config, launch_args, argv, prog)
    except ConfigError as error:
        return _fail(prog, error)
    if config is None:
        return 0
    from accelerate import PartialState

    from .runs.errors import RUN_ERRORS, USER_ERRORS

    if train is None:
        from .training.sweep import train_any as train  # a config with `sweep:` trains all its variants
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    try:
        metrics = train(config)
    except ConfigError as error:  # raised by the preflight checks, before the model loads
        return _fail(prog, error)
    except RUN_ERRORS as error:  # non-finite loss, output_dir in use, disk full, bad checkpoint: one line
        sys.stderr.write("\n")  # on its own line, after any progress bar
        return _fail(prog, error, code=2 if isinstance(error, USER_ERRORS) else 1)
    if metrics and PartialState().is_main_process:
        sys.stdout.write(final_report(config, metrics))
    _close_process_group()
    return 0


def _launch_args(argv: list) -> tuple[list, list]:
    """Leading `accelerate launch` options (none: train in this process); see `hf_e2e_sae.launcher`."""
    from .training.config import TrainConfig

    first = argv[0].lstrip("-").split("=", 1)[0] if argv else ""
    if not argv[0:1] or not argv[0].startswith("-") or "." in first or first in TrainConfig.model_fields \
            or first in ("h", "help") \
            or os.environ.get("LOCAL_RANK") is not None:
        return [], argv  # a CONFIG, an override or a config field first, or already a launched child
    from .launcher import split_launch_args  # accelerate's parser (loads torch): only for a possible launch option

    return split_launch_args(argv, set(TrainConfig.model_fields))


def _launch(config, launch_args: list, argv: list, prog: str) -> int:
    """Check everything a child would check first, here (one line, exit 2), then launch the processes."""
    from .launcher import check_before_launch, launch, num_processes
    from .runs.output_dir import OutputDirError

    try:
        check_before_launch(config, num_processes(launch_args))
    except OutputDirError as error:
        return _fail(prog, error)
    return launch(launch_args, argv, prog)


def _close_process_group() -> None:
    """After a multi-process run: every process passes a last barrier, then the process group is destroyed, so no
    process waits at exit on a peer's collective teardown (an occasional hang of a gloo rank was seen without)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


# ---------------------------------------------------------------- push
def push_main(argv: list) -> int:
    """`hf-e2e-sae push OUTPUT_DIR REPO_ID [--private] [--token T] [--revision R] [--commit-message M]`."""
    prog = "hf-e2e-sae push"
    parser = argparse.ArgumentParser(
        prog=prog, description="Publish trained SAEs (a trainer output folder, its final/ folder, or any "
                               "save_pretrained folder) to the Hugging Face Hub in one commit, with a model card.")
    parser.add_argument("output_dir", help="trainer output folder (containing final/) or the saved folder itself")
    parser.add_argument("repo_id", help="target repo, e.g. your-name/gpt2-e2e-layer6 (created if missing)")
    parser.add_argument("--private", action="store_true", help="create the repo as private")
    parser.add_argument("--token", default=None, help="Hub write token (default: `hf auth login` / HF_TOKEN)")
    parser.add_argument("--revision", default=None, help="branch to push to (default: main)")
    parser.add_argument("--commit-message", default=None, help="commit message")
    parser.add_argument("--license", default="mit", help="license in the model card (default: mit)")
    args = parser.parse_args(argv)
    from huggingface_hub import get_token  # after parsing: `--help` answers before torch loads
    from huggingface_hub.errors import HfHubHTTPError

    from .hub.push import find_saved_folder, push_run_to_hub

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        find_saved_folder(args.output_dir)  # the folder first: a typo should not read as a token problem
    except (FileNotFoundError, ValueError) as error:
        return _fail(prog, error)
    if not (args.token or get_token()):
        return _fail(prog, "no Hugging Face token: pass --token T, run `hf auth login`, or set HF_TOKEN")
    try:
        url = push_run_to_hub(args.output_dir, args.repo_id, private=args.private, token=args.token,
                              commit_message=args.commit_message, revision=args.revision, license=args.license)
    except (ValueError, OSError, HfHubHTTPError) as error:
        return _fail(prog, error)
    sys.stdout.write(url + "\n")
    return 0


COMMANDS: dict = {
    "train": ("train SAEs: train [CONFIG.yaml] [overrides] (no CONFIG: the offline demo)",
              lambda argv: run_train(argv)),
    "push": ("publish a saved run to the Hub: push OUTPUT_DIR REPO_ID [opts]", push_main),
    "convert": ("convert an SAE between formats: convert SRC DST [--to saelens]", lambda argv: _convert(argv)),
    "browse": ("static feature browser for saved SAEs: browse RUN [RUN...] --out DIR", lambda argv: _analysis("browse", argv)),
    "geometry": ("decoder geometry (within SAE, across types and seeds): geometry RUN RUN [RUN...] --out DIR",
                 lambda argv: _analysis("geometry", argv)),
    "plan": ("memory per device from shapes alone: plan CONFIG [--num-processes N] [--device-memory 80GB]",
             lambda argv: _plan(argv)),
    "bench": ("time and measure our training steps against a lower bound and sparsify: bench [--shape A]",
              lambda argv: _bench(argv)),
}


def _convert(argv: list) -> int:
    from .interop.conversion import convert_main

    return convert_main(argv)


def _analysis(command: str, argv: list) -> int:
    from .analysis.commands import COMMANDS as ANALYSIS_COMMANDS

    return ANALYSIS_COMMANDS[command](argv)


def _plan(argv: list) -> int:
    from .training.plan_command import plan_main

    return plan_main(argv)


def _bench(argv: list) -> int:
    from .bench.benchmark import main as bench_main

    return bench_main(argv)


def main(argv: Optional[list] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        sys.stdout.write(_usage())
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        sys.stderr.write(f"hf-e2e-sae: error: unknown command {command!r}; choices: {', '.join(COMMANDS)}\n")
        return 2
    return COMMANDS[command][1](rest)


if __name__ == "__main__":
    sys.exit(main())
