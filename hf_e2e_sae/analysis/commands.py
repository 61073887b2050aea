"""The analysis layer's console commands, for `hf_e2e_sae.cli`'s dispatch."""
from __future__ import annotations


def _browse(argv: list) -> int:
    from .browse import browse_main

    return browse_main(argv)


def _geometry(argv: list) -> int:
    from .geometry_cli import geometry_main

    return geometry_main(argv)


COMMANDS = {"browse": _browse, "geometry": _geometry}
