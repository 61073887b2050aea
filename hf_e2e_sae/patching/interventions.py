"""Feature steering and ablation on the SAE path of an `SAEPatchedModel`.

    with model.steer({"blocks.2.resid_pre": {123: 4.0}}):     # add 4 x (unit-norm) dictionary element 123
        model.generate(ids, max_new_tokens=20)
    with model.ablate({"blocks.2.resid_pre": [5, 17]}):       # latents 5 and 17 forced to zero
        out = model(ids)

Both act where the SAE output is produced: ablation zeroes latents before decoding (so the spliced-in
reconstruction and the recorded `sae_outputs[...].latents` both lack them), steering adds
`coeff * dictionary[i]` to the reconstruction at every position. Contexts nest (coefficients add, ablated
sets unite) and compose with `saes_disabled()` (with the SAEs disabled there is no SAE path, so nothing is
applied; the base model runs untouched). Every request is validated before anything changes, and the
previous state is restored on exit, whether the block ends normally or raises.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Iterable, Iterator, Mapping, Optional

import torch

from ..sae.model import SAEOutput, SparseAutoencoder
from ..sae.sites import parse_site


@dataclass(frozen=True)
class SiteIntervention:
    """What to do to one SAE's output: latents to zero, and dictionary elements to add (index -> coeff)."""

    ablate: frozenset = frozenset()
    steer: Mapping = field(default_factory=dict)

    def merged(self, ablate: Iterable[int] = (), steer: Optional[Mapping] = None) -> "SiteIntervention":
        coeffs = dict(self.steer)
        for index, coeff in (steer or {}).items():
            coeffs[index] = coeffs.get(index, 0.0) + float(coeff)
        return SiteIntervention(self.ablate | frozenset(ablate), coeffs)


def _checked_indices(sae: SparseAutoencoder, site: str, indices: Iterable) -> list:
    out = []
    for index in indices:
        is_int = isinstance(index, int) or (isinstance(index, torch.Tensor) and index.ndim == 0 and not index.is_floating_point())
        if isinstance(index, bool) or not is_int:
            raise TypeError(f"Feature indices for {site!r} must be ints, got {index!r}")
        index = int(index)
        if not 0 <= index < sae.config.dict_size:
            raise IndexError(f"Feature {index} out of range for {site!r} (dict_size {sae.config.dict_size}).")
        out.append(index)
    return out


def apply_intervention(sae: SparseAutoencoder, out: SAEOutput, intervention: SiteIntervention) -> SAEOutput:
    """The SAE output with `intervention` applied (re-decodes only when latents are ablated)."""
    latents, reconstruction = out.latents, out.reconstruction
    if intervention.ablate:
        keep = torch.ones(latents.shape[-1], dtype=latents.dtype, device=latents.device)
        keep[list(intervention.ablate)] = 0
        latents = latents * keep  # not in-place: autograd may still need the original latents
        reconstruction = sae.decode(latents)
    if intervention.steer:
        indices = list(intervention.steer)
        coeffs = torch.tensor([intervention.steer[i] for i in indices], dtype=reconstruction.dtype,
                              device=reconstruction.device)
        directions = sae.dictionary[indices]  # (k, d_in), unit norm
        reconstruction = reconstruction + coeffs @ directions
    return SAEOutput(latents=latents, reconstruction=reconstruction)


class InterventionsMixin:
    """`steer` / `ablate` context managers for `SAEPatchedModel` (reads `self.sae(site)`)."""

    _interventions: Optional[dict] = None  # {canonical site: SiteIntervention}; None = none active

    def intervene(self, site: str, out: SAEOutput) -> SAEOutput:
        """Called where the SAE output is produced: applies the active intervention for `site`, if any."""
        active = self._interventions
        if not active or site not in active:
            return out
        return apply_intervention(self.sae(site), out, active[site])

    @contextlib.contextmanager
    def _push(self, requests: Mapping, kind: str) -> Iterator[None]:
        previous = self._interventions
        updated = dict(previous or {})
        for site, request in requests.items():
            name = str(parse_site(site))
            sae = self.sae(name)  # KeyError for a site without an SAE, before anything changes
            current = updated.get(name, SiteIntervention())
            if kind == "steer":
                if not isinstance(request, Mapping):
                    raise TypeError(f"steer() wants {{site: {{feature: coeff}}}}; got {type(request).__name__} for {site!r}")
                indices = _checked_indices(sae, name, request.keys())
                updated[name] = current.merged(steer={i: float(c) for i, c in zip(indices, request.values())})
            else:
                updated[name] = current.merged(ablate=_checked_indices(sae, name, request))
        self._interventions = updated
        try:
            yield
        finally:
            self._interventions = previous

    def steer(self, steering: Mapping) -> contextlib.AbstractContextManager:
        """Add `coeff` times the unit-norm dictionary element to the SAE reconstruction, at every position.

        Args:
            steering: `{site: {feature_index: coeff}}`.
        """
        return self._push(steering, "steer")

    def ablate(self, ablation: Mapping) -> contextlib.AbstractContextManager:
        """Zero the given latents in the SAE path (before decoding).

        Args:
            ablation: `{site: [feature_index, ...]}`.
        """
        return self._push(ablation, "ablate")
