"""`export_sae`, `hf-e2e-sae convert SRC DST [--to FORMAT]`, and patching a foreign SAE into its base model.

    hf-e2e-sae convert path/to/sparsify-run DST --subfolder layers.6      # -> our format (AutoModel loads it)
    hf-e2e-sae convert outputs/run/final DST --to saelens                  # -> SAE.load_from_disk(DST)
"""
from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path
from typing import Optional, Union

from torch import nn
from transformers import AutoModelForCausalLM

from ..patching.base_models import resolve_base_model
from ..patching.patched_model import validate_sae_configs
from ..patching.remote_code import load_base_config, trusts_remote_code, with_trust
from ..sae.model import SparseAutoencoder
from . import saelens, sparsify
from .registry import FORMATS, detect_format, load_sae, resolve_folder

logger = logging.getLogger(__name__)

EXPORTERS = {"hf_e2e_sae": lambda sae, directory: sae.save_pretrained(directory) or Path(directory),
             "saelens": saelens.export, "sparsify": sparsify.export}


def export_sae(sae: SparseAutoencoder, directory: Union[str, os.PathLike], format: str = "saelens") -> Path:
    """Write `sae` in another library's format (`"saelens"`, `"sparsify"`) or ours (`"hf_e2e_sae"`); returns the
    folder written (for sparsify, the hookpoint folder inside `directory`)."""
    if format not in EXPORTERS:
        raise ValueError(f"format={format!r} cannot be written; valid choices: {sorted(EXPORTERS)}")
    return EXPORTERS[format](sae, directory)


def convert(source: Union[str, os.PathLike], destination: Union[str, os.PathLike], to: str = "hf_e2e_sae",
            subfolder: Optional[str] = None, revision: Optional[str] = None, format: str = "auto", **options) -> Path:
    """Load an SAE in any known format and write it in format `to`."""
    sae = load_sae(source, subfolder=subfolder, revision=revision, format=format, **options)
    return export_sae(sae, destination, format=to)


def load_foreign_patched_model(cls, path: str, native_error: Exception, base_model=None, subfolder: str = "",
                               revision: Optional[str] = None, dtype=None, base_model_kwargs: Optional[dict] = None,
                               **hub_kwargs):
    """`SAEPatchedModel.from_pretrained` for a folder / repo in a foreign format (`native_error` if it is none)."""
    try:
        folder = resolve_folder(path, subfolder or None, revision)
        name = detect_format(folder)
    except (ValueError, OSError) as error:
        raise native_error from error
    if name == "hf_e2e_sae":
        raise native_error  # our own format, with a problem the native loader has explained
    sae = load_sae(folder, format=name)
    if sae.config.site is None:
        raise ValueError(f"{path}: the SAE's hook has no hf_e2e_sae site; load it with hf_e2e_sae.load_sae and pass "
                         "SAEPatchedModel a {site: sae} mapping")
    if not isinstance(base_model, nn.Module):
        name = str(base_model) if base_model is not None else sae.config.base_model_name_or_path
        if not name:
            raise ValueError(f"{path}: the SAE does not name its base model; pass base_model=")
        name = resolve_base_model(name)
        trust = trusts_remote_code(base_model, base_model_kwargs)  # never for the name the SAE's files give
        base_config = load_base_config(name, trust_remote_code=trust, where=path, token=hub_kwargs.get("token"))
        validate_sae_configs(base_config, {sae.config.site: sae.config})  # before loading any weights
        extra = dict(with_trust(base_model_kwargs, trust), **({"dtype": dtype} if dtype is not None else {}))
        base_model = AutoModelForCausalLM.from_pretrained(name, config=base_config, token=hub_kwargs.get("token"), **extra)
    return cls(base_model, [sae.to(next(base_model.parameters()).device)])


def convert_main(argv: Optional[list] = None) -> int:
    """`hf-e2e-sae convert SRC DST [--to FORMAT] [--subfolder S] [--revision R] [--from FORMAT] [--site SITE]`."""
    import sys

    parser = argparse.ArgumentParser(prog="hf-e2e-sae convert",
                                     description="Convert an SAE between hf_e2e_sae and other libraries' formats.")
    parser.add_argument("source", help="folder or Hub repo id of the SAE")
    parser.add_argument("destination", help="folder to write")
    parser.add_argument("--to", default="hf_e2e_sae", choices=sorted(EXPORTERS), help="format to write")
    parser.add_argument("--from", dest="format", default="auto", choices=["auto", *sorted(FORMATS)],
                        help="format of the source (default: detect)")
    parser.add_argument("--subfolder", default=None, help="folder inside the source (e.g. layers.6)")
    parser.add_argument("--revision", default=None, help="Hub revision of the source")
    parser.add_argument("--site", default=None, help="which SAE of an e2e_sae checkpoint holding several")
    args = parser.parse_args(argv)
    options = {"site": args.site} if args.site else {}
    try:
        written = convert(args.source, args.destination, to=args.to, subfolder=args.subfolder,
                          revision=args.revision, format=args.format, **options)
    except (ValueError, NotImplementedError, OSError) as error:
        sys.stderr.write(f"hf-e2e-sae convert: {error}\n")
        return 2
    sys.stdout.write(f"wrote {args.to} SAE to {written}\n")
    return 0
