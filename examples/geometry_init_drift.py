"""How far each SAE's dictionary moved from its initialisation, and the geometry of the initial dictionaries.

Short runs can leave decoders close to where they started; then "geometry" mostly measures the (seeded)
initialisation. For each saved run this re-creates the SAE the trainer started from (same seed, same config:
`set_seed(seed + site index)` then `SparseAutoencoder(config)`, as `build_patched_model` does) and reports
the mean cosine between each trained dictionary element and its initial self, plus the within-SAE and
cross-seed max cosine of the initial dictionaries (the baseline a trained SAE should be read against).

    python examples/geometry_init_drift.py outputs/geo/*/final --out docs/results/geometry/init_drift.json
"""
import argparse
import json
from pathlib import Path

import torch
import yaml
from transformers import set_seed

from hf_e2e_sae import SAEConfig, SparseAutoencoder
from hf_e2e_sae.evaluation.geometry import nearest_features, summarise


def initial_dictionary(run: Path, site_index: int = 0) -> torch.Tensor:
    config = SAEConfig.from_pretrained(run)
    seed = int((yaml.safe_load((run / "train_config.yaml").read_text()) or {}).get("seed", 0))
    set_seed(seed + site_index)
    fresh = SAEConfig(d_in=config.d_in, dict_size=config.dict_size, activation=config.activation, site=config.site,
                      init_decoder_orthogonal=config.init_decoder_orthogonal)
    return SparseAutoencoder(fresh).dictionary.detach(), seed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="+")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    result, inits = {"drift": {}, "init_within": {}, "init_cross_seed": None}, {}
    for run in map(Path, args.runs):
        trained = SparseAutoencoder.from_pretrained(run).dictionary.detach()
        init, seed = initial_dictionary(run)
        cos = (trained * init).sum(-1)
        result["drift"][str(run)] = {"seed": seed, "mean_cos_to_init": round(cos.mean().item(), 4),
                                     "frac_cos_to_init>0.9": round((cos > 0.9).double().mean().item(), 4)}
        inits[seed] = init
    for seed, init in sorted(inits.items()):
        result["init_within"][f"seed {seed}"] = summarise(nearest_features(init)[0])
    if len(inits) >= 2:
        (s1, a), (s2, b) = sorted(inits.items())[:2]
        result["init_cross_seed"] = {f"seed {s1} -> seed {s2}": summarise(nearest_features(a, b)[0])}
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
