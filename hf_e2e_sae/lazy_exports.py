"""PEP 562 lazy exports for the package and its subpackages: a name is imported from its module on first use, so
importing a light submodule (`hf_e2e_sae.sae.sites`, `hf_e2e_sae.config.arguments`) does not load torch."""
from __future__ import annotations

from importlib import import_module
from typing import Callable


def lazy_exports(package: str, namespace: dict, exports: dict) -> tuple[Callable, Callable]:
    """`(__getattr__, __dir__)` for `package` whose public `exports` map name -> relative module."""

    def __getattr__(name: str):
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(import_module(exports[name], package), name)
        namespace[name] = value  # later lookups skip __getattr__
        return value

    def __dir__() -> list:
        return sorted(set(namespace) | set(exports))

    return __getattr__, __dir__
