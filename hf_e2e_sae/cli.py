"""Console entry point: `hf-e2e-sae train [CONFIG] [overrides]`, `hf-e2e-sae push OUTPUT_DIR REPO_ID`."""
from __future__ import annotations

import sys
from typing import Optional

USAGE = """usage: hf-e2e-sae COMMAND [ARGS]

commands:
  train [CONFIG.yaml] [overrides]   train SAEs (see `hf-e2e-sae train --help`)
  push OUTPUT_DIR REPO_ID [opts]    publish a saved run to the Hub (see `hf-e2e-sae push --help`)
  browse RUN [RUN...] --out DIR     static feature browser for saved SAEs (see `hf-e2e-sae browse --help`)
  geometry RUN RUN [RUN...] --out DIR  decoder geometry (within SAE, across types, across seeds)
"""


def main(argv: Optional[list] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        sys.stdout.write(USAGE)
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command == "train":
        from .training.trainer import train_main

        return train_main(rest)
    if command == "push":
        from .hub.push import push_main

        return push_main(rest)
    if command in ("browse", "geometry"):  # hf_e2e_sae/analysis/
        from .analysis.commands import COMMANDS

        return COMMANDS[command](rest)
    sys.stderr.write(f"unknown command {command!r}\n{USAGE}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
