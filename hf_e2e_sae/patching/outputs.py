"""What `SAEPatchedModel.forward` returns (`SAEPatchedOutput`, one `SiteOutput` per site) and the errors and
signals of patching (`SiteNotPatchedError`, `StopForward`)."""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Optional

import torch
from transformers.utils import ModelOutput


class SiteNotPatchedError(KeyError):
    """A site that carries no SAE was asked for (`sae()`, `steer()`, `ablate()`); its message is one line."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


@dataclass
class SiteOutput(ModelOutput):
    """What one SAE saw and produced in a forward pass.

    Args:
        target (`(batch, seq, d_in)`): the real activation the reconstruction replaced and is compared with. For
            an SAE it is the activation it read; for a transcoder, the real output at its `output_site` (e.g. the
            MLP's output), while it read `source`.
        latents (`(batch, seq, dict_size)`): its sparse code.
        reconstruction (`(batch, seq, d_in)`): what was spliced in instead.
        pre_activations (`(batch, seq, dict_size)`): the encoder output before the activation.
        code_values, code_indices (`(batch, seq, k)`): a TopK-like code's kept values and their indices; inside
            `sparse_records()` the only form of the code (`latents` and `pre_activations` are None).
        source (`(batch, seq, d_in)`): what the dictionary read (`target` for an SAE; the activation at `site` for
            a transcoder).

    `input`, this record's old name for `target`, still reads but warns: it named a transcoder's target wrongly.
    """

    target: Optional[torch.Tensor] = None
    latents: Optional[torch.Tensor] = None
    reconstruction: Optional[torch.Tensor] = None
    pre_activations: Optional[torch.Tensor] = None
    code_values: Optional[torch.Tensor] = None
    code_indices: Optional[torch.Tensor] = None
    source: Optional[torch.Tensor] = None

    @property
    def input(self) -> Optional[torch.Tensor]:
        warnings.warn("SiteOutput.input is deprecated and will be removed; use SiteOutput.target (the activation the "
                      "reconstruction replaces) or SiteOutput.source (what the dictionary read).", FutureWarning,
                      stacklevel=2)
        return self.target


@dataclass
class SAEPatchedOutput(ModelOutput):
    """Output of [`SAEPatchedModel.forward`].

    Args:
        loss: next-token cross-entropy when `labels` were given.
        logits (`(batch, seq, vocab)`): None when the forward stopped early.
        sae_outputs: per SAE site (canonical name), a [`SiteOutput`]; empty with SAEs disabled.
        cached_activations: per requested `cache_sites` entry, the activation `(batch, seq, d)`.
    """

    loss: Optional[torch.Tensor] = None
    logits: Optional[torch.Tensor] = None
    sae_outputs: Optional[dict] = None
    cached_activations: Optional[dict] = None


class StopForward(Exception):
    """Raised by a hook to end a forward pass once every needed activation is recorded."""
