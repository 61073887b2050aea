"""Activation sites: the names of the places an SAE reads and writes, `blocks.{i}.{kind}`.

    resid_pre   input of block i (= resid_post of block i-1); TransformerLens `blocks.i.hook_resid_pre`
    attn_out    what block i's attention adds to the residual stream
    mlp_in      the (normed) input block i's MLP sees; a transcoder reads it and replaces mlp_out
    mlp_out     what block i's MLP adds to the residual stream
    resid_post  output of block i (before any final norm)

Only the grammar and the order of sites live here; `hf_e2e_sae.patching.architectures` resolves a site
to a module of a particular model family.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Union

SITE_KINDS = ("resid_pre", "attn_out", "mlp_in", "mlp_out", "resid_post")
_SITE_RE = re.compile(r"^blocks\.(\d+)\.(?:hook_)?([a-z_]+)$")
# Order within a block; resid_post of block i shares a position with resid_pre of block i+1.
_OFFSETS = {"resid_pre": 0, "attn_out": 2, "mlp_in": 3, "mlp_out": 4, "resid_post": 6}
_BLOCK_STRIDE = 6


@dataclass(frozen=True, order=False)
class Site:
    """A parsed activation site. `str(site)` is the canonical spelling."""

    block: int
    kind: str

    def __str__(self) -> str:
        return f"blocks.{self.block}.{self.kind}"

    @property
    def position(self) -> int:
        """Order in the forward pass; resid_post of block i shares a position with resid_pre of i+1."""
        return _BLOCK_STRIDE * self.block + _OFFSETS[self.kind]

    def is_after(self, other: "Site") -> bool:
        """True if this activation is computed strictly after `other`'s."""
        return self.position > other.position


def parse_site(site: Union[str, Site]) -> Site:
    """Parse `"blocks.6.resid_pre"` or the TransformerLens alias `"blocks.6.hook_resid_pre"`."""
    if isinstance(site, Site):
        return site
    match = _SITE_RE.match(str(site).strip())
    if match is None or match.group(2) not in SITE_KINDS:
        raise ValueError(
            f"Unknown site {site!r}: expected 'blocks.<i>.<kind>' with kind one of {list(SITE_KINDS)} "
            "(TransformerLens 'blocks.<i>.hook_<kind>' is accepted too)."
        )
    return Site(int(match.group(1)), match.group(2))
