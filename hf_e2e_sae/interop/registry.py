"""The registry of foreign SAE formats, and `load_sae`, which finds the files and asks each format in turn.

A format is one small module in this folder that calls `register_format(name, detect, load)`:
`detect(folder) -> bool` looks only at file names; `load(folder, **options) -> SparseAutoencoder` builds our
SAE so that its latents and reconstructions equal the source library's on the same input. Nothing here
needs a base model or, for a local folder, the network. Pickled files are read with
`torch.load(weights_only=True)` only (`load_torch_weights`): a file that needs more is refused.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Union

import torch

from ..runs.layout import resolve_saved_path
from ..sae.config import SAEConfig
from ..sae.model import SparseAutoencoder
from .checked import check_tensors

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ForeignFormat:
    name: str
    detect: Callable[[Path], bool]
    load: Callable[..., SparseAutoencoder]


FORMATS: dict[str, ForeignFormat] = {}


def register_format(name: str, detect: Callable[[Path], bool], load: Callable[..., SparseAutoencoder]) -> None:
    """Make `format=name` available to `load_sae` (and to `format="auto"` detection, in registration order)."""
    FORMATS[name] = ForeignFormat(name, detect, load)


def load_torch_weights(path: Union[str, Path]) -> dict:
    """A `torch.save`d state dict, unpickled with `weights_only=True` (tensors and plain containers only)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # UnpicklingError, RuntimeError: anything that is not plain weights
        message = " ".join(str(error).split())[:500]
        raise ValueError(f"{path}: refused to unpickle (not a plain tensor state dict; only weights_only=True "
                         f"loading is allowed): {message}") from None
    if not isinstance(state, dict) or not all(isinstance(key, str) for key in state):
        raise ValueError(f"{path}: not a state dict (a mapping of tensor names to tensors)")
    return state


def resolve_folder(path_or_repo_id: Union[str, os.PathLike], subfolder: Optional[str] = None,
                   revision: Optional[str] = None) -> Path:
    """A local folder holding the SAE's files: the path itself, or a Hub snapshot (only `subfolder` fetched)."""
    local = Path(resolve_saved_path(path_or_repo_id, subfolder or ""))  # a run folder means its final/
    if local.is_dir():
        folder = local / subfolder if subfolder else local
        if not folder.is_dir():
            raise FileNotFoundError(f"{local}: no subfolder {subfolder!r}")
        return folder
    from huggingface_hub import snapshot_download

    patterns = [f"{subfolder.strip('/')}/*"] if subfolder else None
    root = Path(snapshot_download(str(path_or_repo_id), revision=revision, allow_patterns=patterns))
    return root / subfolder if subfolder else root


def detect_format(folder: Path) -> str:
    """The name of the first registered format whose files are in `folder`; a clear error otherwise."""
    for fmt in FORMATS.values():
        if fmt.detect(folder):
            return fmt.name
    listing = sorted(p.name for p in folder.iterdir())[:20] if folder.is_dir() else []
    subfolders = [p.name for p in folder.iterdir() if p.is_dir() and any(f.detect(p) for f in FORMATS.values())] \
        if folder.is_dir() else []
    hint = f" It holds SAEs in subfolders {sorted(subfolders)}: pass subfolder= (on the command line: --subfolder)." if subfolders else ""
    raise ValueError(f"{folder}: no known SAE format ({sorted(FORMATS)}) matches the files {listing}.{hint}")


def load_sae(path_or_repo_id: Union[str, os.PathLike], subfolder: Optional[str] = None,
             revision: Optional[str] = None, format: str = "auto", **options) -> SparseAutoencoder:
    """Load an SAE saved by hf_e2e_sae, SAELens, sparsify, e2e_sae or dictionary_learning.

    Args:
        path_or_repo_id: a local folder or a Hub repo id.
        subfolder: folder inside it (e.g. a sparsify hookpoint `"layers.6"`, a SAELens SAE id).
        revision: Hub revision (branch, tag or commit).
        format: `"auto"` (detect from the file names) or one of `hf_e2e_sae.interop.FORMATS`.
        **options: format-specific choices, e.g. `site=` to pick one SAE of an e2e_sae checkpoint that holds several.

    Returns:
        A [`SparseAutoencoder`] whose `encode` / `decode` equal the source library's, with `config.site` set when
        the source's hook name translates to one of our sites (`hf_e2e_sae.interop.sites`).
    """
    folder = resolve_folder(path_or_repo_id, subfolder, revision)
    name = detect_format(folder) if format == "auto" else format
    if name not in FORMATS:
        raise ValueError(f"format={format!r} is unknown; valid choices: {['auto', *sorted(FORMATS)]}")
    sae = FORMATS[name].load(folder, **options)
    logger.info("Loaded a %s SAE from %s (site %s, %d latents)", name, folder, sae.config.site, sae.config.dict_size)
    return sae


def build_sae(config: dict, encoder_weight: torch.Tensor, encoder_bias: torch.Tensor, decoder_weight: torch.Tensor,
              decoder_bias: torch.Tensor, threshold: Optional[torch.Tensor] = None,
              skip: Optional[torch.Tensor] = None) -> SparseAutoencoder:
    """Our SAE from foreign tensors in our layout: encoder `(dict_size, d_in)`, decoder `(d_in, dict_size)`,
    optional skip connection `(d_in, d_in)` (applied as `x @ skip.T`).

    The loaders check the tensors in their format's names first (`checked.check_tensors`); this checks them again
    in ours, so no tensor is ever broadcast into a parameter of another shape."""
    tensors = {"encoder weight": encoder_weight, "encoder bias": encoder_bias, "decoder weight": decoder_weight,
               "decoder bias": decoder_bias}
    spec = {"encoder weight": ("dict_size", "d_in"), "encoder bias": ("dict_size",),
            "decoder weight": ("d_in", "dict_size"), "decoder bias": ("d_in",)}
    if threshold is not None:
        tensors["threshold"], spec["threshold"] = threshold, ("dict_size",)
    if skip is not None:
        tensors["skip weight"], spec["skip weight"] = skip, ("d_in", "d_in")
    check_tensors("imported SAE", tensors, spec)
    dict_size, d_in = encoder_weight.shape
    sae_config = SAEConfig(d_in=d_in, dict_size=dict_size, init_decoder_orthogonal=False,
                           skip_connection=skip is not None, **config)
    sae = SparseAutoencoder(sae_config)
    with torch.no_grad():
        sae.encoder.weight.copy_(encoder_weight)
        sae.encoder.bias.copy_(encoder_bias)
        sae.decoder.weight.copy_(decoder_weight)
        sae.decoder.bias.copy_(decoder_bias)
        if skip is not None:
            sae.W_skip.copy_(skip)
        if threshold is not None:
            # JumpReLU keeps log(theta) (thresholds of imported SAEs are >= 0; 0 means a plain ReLU)
            sae.activation.log_threshold.copy_(threshold.clamp_min(torch.finfo(threshold.dtype).tiny).log())
    for name, tensor in sae.state_dict().items():
        if not torch.isfinite(tensor).all():
            raise ValueError(f"imported SAE has non-finite values in {name}")
    return sae
