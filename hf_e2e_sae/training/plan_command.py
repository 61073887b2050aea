"""`hf-e2e-sae plan CONFIG [--num-processes N] [--device-memory 80GB] [overrides]`: the memory a run needs per
device, from the config and the base model's config alone (no weights loaded; `training.memory_plan`)."""
from __future__ import annotations

import argparse
import json
import sys
from typing import Optional

import torch

from ..config.arguments import ConfigError
from .memory_plan import fit_message, format_plan, parse_size, plan_for_config
from .preflight import base_model_config


def plan_main(argv: list) -> int:
    """Print the plan; exit 2 with one line on a config mistake, 1 when `--device-memory` is given and too small."""
    from .config import load_train_config

    prog = "hf-e2e-sae plan"
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    parser.add_argument("config", help="training config (YAML)")
    parser.add_argument("--num-processes", type=int, default=1, help="processes (devices) of the run (default 1)")
    parser.add_argument("--device-memory", default=None, help="memory of one device, e.g. 80GB: say whether it fits")
    parser.add_argument("--device", default=None, choices=["cuda", "cpu"],
                        help="device kind (sets the KL chunk default; default: cuda if present, else cpu)")
    parser.add_argument("--json", action="store_true", help="print the plan as JSON")
    args, overrides = parser.parse_known_args(argv)
    try:
        device_memory: Optional[int] = parse_size(args.device_memory) if args.device_memory else None
        if args.num_processes < 1:
            raise ValueError(f"--num-processes must be >= 1, got {args.num_processes}")
        config = load_train_config(args.config, overrides)
        device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
        plan = plan_for_config(config, base_model_config(config), args.num_processes, device)
    except (ConfigError, ValueError, OSError) as error:
        sys.stderr.write(f"{prog}: error: {' '.join(str(error).split())}\n")
        return 2
    sys.stdout.write((json.dumps(plan, indent=2) if args.json else format_plan(plan, device_memory)) + "\n")
    if device_memory is not None and plan["total"] > device_memory:
        sys.stderr.write(f"{prog}: {fit_message(plan, device_memory, config)}\n")
        return 1
    return 0
