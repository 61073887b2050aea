"""`hf-e2e-sae geometry RUN RUN [RUN...] --out DIR`: the paper's decoder-geometry comparison of saved SAEs.

Each run's SAE type is its loss preset (train_config.yaml) and its seed the run's seed. Dead features (no
firing on `--alive-tokens` held-out tokens) are left out, as dead dictionary elements have no meaning;
`--alive-tokens 0` keeps every feature. Writes within.png, cross_type.png, cross_seed.png, geometry.md and
geometry.json under DIR.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Optional

import torch

from ..evaluation.geometry import geometry_report, plot_geometry, report_table, write_report
from .browse import batch_size_for
from .runs import held_out_batches, held_out_config, load_run

logger = logging.getLogger(__name__)


@torch.no_grad()
def firing_counts(model, batches, site: str, max_tokens: int) -> torch.Tensor:
    """How often each feature of the SAE at `site` fires on up to `max_tokens` tokens of `batches`."""
    counts, seen = None, 0
    for batch in batches:
        if seen >= max_tokens:
            break
        ids = batch["input_ids"] if isinstance(batch, dict) else batch
        latents = model(ids.to(model.device), stop_early=True).sae_outputs[site].latents
        fired = (latents > 0).reshape(-1, latents.shape[-1]).sum(0).cpu()
        counts = fired if counts is None else counts + fired
        seen += ids.numel()
    return counts


def run_dictionary(run: str, site: Optional[str], alive_tokens: int) -> tuple:
    """`(name, (directions of alive features, type, seed), n_dead)` for one saved run."""
    model, tokenizer, train_config = load_run(run)
    site = site or model.sites[0]
    directions = model.sae(site).dictionary.detach().float().cpu()
    n_dead = 0
    if alive_tokens > 0:
        data = held_out_config(train_config, alive_tokens)
        batches = held_out_batches(data, tokenizer, batch_size_for(directions.shape[0], data.context_length))
        alive = firing_counts(model, batches, site, alive_tokens) > 0
        n_dead = int((~alive).sum())
        directions = directions[alive]
    kind = (train_config.get("loss") or {}).get("preset") or Path(run).name
    seed = int(train_config.get("seed", 0))
    return f"{kind} (seed {seed})", (directions, kind, seed), n_dead


def geometry_main(argv: Optional[list] = None) -> int:
    parser = argparse.ArgumentParser(prog="hf-e2e-sae geometry", description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="+", metavar="RUN_OR_REPO")
    parser.add_argument("--out", required=True, help="folder for the plots and the table")
    parser.add_argument("--site", help="SAE site (default: each run's first)")
    parser.add_argument("--alive-tokens", type=int, default=32_768, help="held-out tokens to find dead features (0: keep all)")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if len(args.runs) < 2:
        parser.error("give at least two runs")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    dictionaries = {}
    for run in args.runs:
        try:
            name, entry, n_dead = run_dictionary(run, args.site, args.alive_tokens)
        except (ValueError, OSError, KeyError) as error:
            sys.stderr.write(f"hf-e2e-sae geometry: {run}: {error}\n")
            return 2
        if name in dictionaries:
            name = f"{name} [{run}]"
        dictionaries[name] = entry
        logger.info("%s: %s, %d alive features (%d dead left out)", run, name, entry[0].shape[0], n_dead)
    report = geometry_report(dictionaries)
    write_report(report, args.out)
    plot_geometry(report, args.out)
    sys.stdout.write(report_table(report))
    return 0
