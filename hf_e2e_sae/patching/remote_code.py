"""Loading a base model without ever running code that a file names.

A saved SAE (ours, SAELens, sparsify, e2e_sae, dictionary_learning) names the base model it was trained on. If
that model's `config.json` maps its classes to Python files (`auto_map`), transformers runs those files when
`trust_remote_code=True`, and when it is left unset it asks "[y/N]" on stdin, so one typed "y" would run code
that the SAE's author chose. Every load here passes `trust_remote_code` explicitly: `True` only for a base model
the caller named (`base_model="org/model"`) together with `base_model_kwargs={"trust_remote_code": True}`,
otherwise `False`; a model that needs its own code then fails in one line that names the remedy.
"""
from __future__ import annotations

from typing import Any, Optional

from transformers import AutoConfig

TRUST_KEY = "trust_remote_code"


class RemoteCodeError(ValueError):
    """The base model needs Python code of its own, and nobody who may trust it asked for it."""


def trusts_remote_code(base_model: Any, base_model_kwargs: Optional[dict]) -> bool:
    """Whether the base model's own code may run: only when the caller named it (`base_model=` a Hub id or folder)
    and asked for it (`base_model_kwargs={"trust_remote_code": True}`), never for the one a file names."""
    return base_model is not None and bool((base_model_kwargs or {}).get(TRUST_KEY))


def _needs_remote_code(error: BaseException) -> bool:
    return isinstance(error, ValueError) and TRUST_KEY in str(error)


def remote_code_message(name: str, where: Optional[str] = None, remedy: Optional[str] = None) -> str:
    """One line: `name` needs its own code, which was not run, and what to do instead."""
    remedy = remedy or (f"if you trust it, load the model yourself and pass base_model=, or pass "
                        f"base_model={name!r} with base_model_kwargs={{'{TRUST_KEY}': True}}")
    prefix = f"{where}: " if where else ""
    return (f"{prefix}the base model {name!r} needs Python code of its own (its config.json maps classes to files: "
            f"{TRUST_KEY}), and hf_e2e_sae never runs code that a file names: {remedy}.")


def load_base_config(name: str, trust_remote_code: bool = False, where: Optional[str] = None,
                     remedy: Optional[str] = None, **hub_kwargs):
    """`AutoConfig.from_pretrained(name)` with `trust_remote_code` passed explicitly (never a stdin prompt).

    Raises:
        RemoteCodeError: (one line) the model needs its own code and `trust_remote_code` is False.
    """
    try:
        return AutoConfig.from_pretrained(name, trust_remote_code=bool(trust_remote_code), **hub_kwargs)
    except ValueError as error:
        if not trust_remote_code and _needs_remote_code(error):
            raise RemoteCodeError(remote_code_message(name, where, remedy)) from None
        raise


def with_trust(kwargs: Optional[dict], trust_remote_code: bool) -> dict:
    """`kwargs` for a `from_pretrained` call with `trust_remote_code` set explicitly to the decision made."""
    return {**(kwargs or {}), TRUST_KEY: bool(trust_remote_code)}
