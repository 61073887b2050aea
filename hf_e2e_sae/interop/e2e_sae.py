"""ApolloResearch e2e_sae, the paper's reference code (`samples_N.pt` + `final_config.yaml`).

`samples_N.pt` is a `torch.save`d state dict of every SAE of a run, keyed by the site with dots as dashes:
`blocks-6-hook_resid_pre.encoder.0.weight` `(n_dict, d_in)`, `.encoder.0.bias`, `.decoder.weight`
`(d_in, n_dict)`, `.decoder.bias`. Its SAE is ours (ReLU, decoder columns normalised in the forward pass), but
the reference runs GPT-2 in TransformerLens with `center_writing_weights`, so its inputs are residuals minus
their per-token mean: the import sets `center_input`. It is unpickled with `weights_only=True` only.
"""
from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Optional

import yaml

from ..sae.model import SparseAutoencoder
from ..config.safe_yaml import safe_load
from .checked import check_tensors, optional_str
from .registry import build_sae, load_torch_weights, register_format
from .sites import hub_model_name, site_from_hook_name

logger = logging.getLogger(__name__)
_CHECKPOINT = re.compile(r"^samples_(\d+)\.pt$")


def _checkpoints(folder: Path) -> list:
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _CHECKPOINT.match(p.name))]
    return [p for _, p in sorted(found)]


def detect(folder: Path) -> bool:
    return bool(_checkpoints(folder))


def _model_name(folder: Path) -> Optional[str]:
    config_file = folder / "final_config.yaml"
    if not config_file.is_file():
        return None
    try:
        config = safe_load(config_file.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise ValueError(f"{config_file}: cannot be read as YAML ({' '.join(str(e).split())})"[:500]) from None
    return hub_model_name(optional_str(config.get("tlens_model_name"))) if isinstance(config, dict) else None


def load(folder: Path, site: Optional[str] = None, checkpoint: Optional[str] = None) -> SparseAutoencoder:
    """The SAE at `site` (needed when the checkpoint holds several) from the last `samples_N.pt` (or `checkpoint`)."""
    checkpoints = _checkpoints(folder)
    path = folder / checkpoint if checkpoint else (checkpoints[-1] if checkpoints else folder / "samples_N.pt")
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing")
    state = load_torch_weights(path)
    prefixes = sorted({key.split(".", 1)[0] for key in state if key.endswith(".encoder.0.weight")})
    if not prefixes:
        raise ValueError(f"{path}: no '<site>.encoder.0.weight' keys; not an e2e_sae checkpoint")
    by_site = {site_from_hook_name(prefix) or prefix: prefix for prefix in prefixes}
    if site is None and len(prefixes) > 1:
        raise ValueError(f"{path} holds SAEs at {sorted(by_site)}: pass site= to choose one")
    if site is not None and (site_from_hook_name(site) or site) not in by_site:
        raise ValueError(f"{path} holds no SAE at site {site!r}; it holds {sorted(by_site)}")
    chosen = by_site[site_from_hook_name(site) or site] if site is not None else prefixes[0]
    names = {f"{chosen}.{part}": symbols for part, symbols in (
        ("encoder.0.weight", ("n_dict", "d_in")), ("encoder.0.bias", ("n_dict",)),
        ("decoder.weight", ("d_in", "n_dict")), ("decoder.bias", ("d_in",)))}
    check_tensors(path, state, names)
    config = {"activation": "relu", "site": site_from_hook_name(chosen), "center_input": True,
              "normalize_decoder": True, "base_model_name_or_path": _model_name(folder)}
    return build_sae(config, state[f"{chosen}.encoder.0.weight"].float(), state[f"{chosen}.encoder.0.bias"].float(),
                     state[f"{chosen}.decoder.weight"].float(), state[f"{chosen}.decoder.bias"].float())


register_format("e2e_sae", detect, load)
