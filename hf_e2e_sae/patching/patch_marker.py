"""One set of SAE hooks per model: a base model records the `SAEPatchedModel` that patched it.

Wrapping a model that already carries SAE hooks would stack the second wrapper's SAEs on the first's, and the
second wrapper's "original" model (`saes_disabled`, `ce_loss_orig`) would still run the first SAEs. So the
wrapper marks the base model when it patches it, clears the mark in `unpatch()`, and a second wrapper of a
marked model is refused in one line that names the remedy. The one explicit exception is `wrappers_share(model)`,
under which several wrappers may patch one model: a sweep does that and enables one wrapper's SAEs at a time
(`training/sweep.py`).
"""
from __future__ import annotations

import contextlib
import weakref
from typing import Any, Optional

from torch import nn

PATCH_ATTRIBUTE = "_hf_e2e_sae_patched_by"
SHARED_ATTRIBUTE = "_hf_e2e_sae_wrappers_share"


@contextlib.contextmanager
def wrappers_share(model: nn.Module):
    """Let several `SAEPatchedModel`s patch `model` inside this block: their owner must keep all but one wrapper's
    SAEs disabled at any time (a sweep's variants). Wrappers made later are refused again."""
    model.__dict__[SHARED_ATTRIBUTE] = True
    try:
        yield model
    finally:
        model.__dict__.pop(SHARED_ATTRIBUTE, None)


def patched_by(model: nn.Module) -> Optional[Any]:
    """The `SAEPatchedModel` whose hooks `model` carries, or None when it carries none."""
    ref = model.__dict__.get(PATCH_ATTRIBUTE)
    return ref() if ref is not None else None


def mark_patched(model: nn.Module, wrapper: Any) -> None:
    """Record `wrapper` as the one that patched `model` (raises if another already did)."""
    current = patched_by(model)
    if current is not None and model.__dict__.get(SHARED_ATTRIBUTE):
        return  # explicitly shared (`wrappers_share`): the first wrapper keeps the mark
    if current is not None and current is not wrapper:
        sites = ", ".join(getattr(current, "sites", [])) or "?"
        raise ValueError(
            f"this {type(model).__name__} is already patched by an SAEPatchedModel (SAEs at {sites}): call "
            "unpatch() on that wrapper first, or load a fresh copy of the base model; two wrappers would stack "
            "their SAEs and the second's 'original' model would still run the first's.")
    model.__dict__[PATCH_ATTRIBUTE] = weakref.ref(wrapper)  # a weak reference: never a submodule or a cycle


def unmark_patched(model: nn.Module, wrapper: Any) -> None:
    """Clear the mark `wrapper` set on `model` (no-op when another wrapper's or none)."""
    if patched_by(model) is wrapper:
        del model.__dict__[PATCH_ATTRIBUTE]
