"""Registering `SAEConfig` / `SparseAutoencoder` with transformers' Auto classes without importing transformers.

`import hf_e2e_sae` must stay cheap (the CLI answers `--help` before torch loads), yet after it
`AutoModel.from_pretrained(saved_sae)` must work as if the classes had been registered eagerly. So: if transformers
is already imported, register now; otherwise register the moment transformers' top-level import finishes, through
a one-shot import hook (a meta-path finder that wraps transformers' loader and removes itself). When it is one of
our own modules that imports transformers, `sae/model.py` and `sae/cross_layer.py` register at the end of their
import instead (registering
in the middle of our own import chain would import half-initialised modules).
"""
from __future__ import annotations

import importlib.abc
import importlib.util
import logging
import sys

logger = logging.getLogger(__name__)


def register_auto_classes() -> None:
    """`AutoConfig.register` / `AutoModel.register` under our namespaced model type (no trust_remote_code)."""
    from transformers import AutoConfig, AutoModel

    from .sae.config import SAEConfig
    from .sae.cross_layer import CLTConfig, CrossLayerTranscoder
    from .sae.model import SparseAutoencoder

    AutoConfig.register(SAEConfig.model_type, SAEConfig, exist_ok=True)
    AutoModel.register(SAEConfig, SparseAutoencoder, exist_ok=True)
    AutoConfig.register(CLTConfig.model_type, CLTConfig, exist_ok=True)
    AutoModel.register(CLTConfig, CrossLayerTranscoder, exist_ok=True)


class _RegisterAfterLoad(importlib.abc.Loader):
    def __init__(self, loader: importlib.abc.Loader):
        self._loader = loader

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module) -> None:
        self._loader.exec_module(module)
        if _importing_hf_e2e_sae():
            return  # transformers was imported by one of our modules: `sae/model.py` registers when it is done
        try:
            register_auto_classes()
        except Exception as error:  # never break the user's `import transformers`
            logger.warning("hf_e2e_sae: could not register with transformers' Auto classes: %s", error)


def _importing_hf_e2e_sae() -> bool:
    """Whether one of our modules is being imported right now (importlib marks its spec `_initializing`)."""
    return any(getattr(getattr(module, "__spec__", None), "_initializing", False)
               for name, module in list(sys.modules.items()) if name.split(".")[0] == "hf_e2e_sae")


class _TransformersImportHook(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        if fullname != "transformers":
            return None
        sys.meta_path.remove(self)  # one shot; find_spec below asks the remaining finders
        spec = importlib.util.find_spec(fullname)
        if spec is not None and spec.loader is not None:
            spec.loader = _RegisterAfterLoad(spec.loader)
        return spec


def register_when_transformers_loads() -> None:
    """Register now if transformers is loaded, else as soon as it is (idempotent)."""
    if "transformers" in sys.modules:
        register_auto_classes()
    elif not any(isinstance(f, _TransformersImportHook) for f in sys.meta_path):
        sys.meta_path.insert(0, _TransformersImportHook())
