"""PEFT adapters (LoRA) on the base model of an `SAEPatchedModel`, trained around its SAEs.

The adapter is injected into the base model in place (`peft.get_peft_model` / `PeftModel.from_pretrained`), so
the patched model's hooks and sites are unchanged; the `PeftModel` wrapper is kept beside the patched model (not
as a submodule: its parameters are the base model's) for `disable_adapter()` and `save_pretrained`.

"The original model" is the base without adapters and without SAEs: `SAEPatchedModel.saes_disabled()` also
disables the adapter, so the KL target, the clean evaluation pass and the CE-loss increase all compare with it.

    peft_model = apply_lora(patched, LoraConfig(r=8, lora_alpha=16, target_modules=["c_attn"]))
    with patched.saes_disabled():
        clean = patched(ids)      # the unadapted base model, bit for bit
"""
from __future__ import annotations

import contextlib
from typing import Iterator, Optional

from torch import nn

ADAPTER_FOLDER = "lora"
_ATTRIBUTE = "_peft_model"


def lora_adapter(model) -> Optional[nn.Module]:
    """The `PeftModel` attached to a patched model, or None."""
    return model.__dict__.get(_ATTRIBUTE)


def attach_adapter(model, peft_model: nn.Module, trainable: bool = True) -> nn.Module:
    """Record `peft_model` (wrapping `model.base_model`, adapters injected in place) on the patched model; with
    `trainable`, its adapter parameters are the only trainable ones of the base model (the patched model froze all)."""
    inner = peft_model.get_base_model()
    if inner is not model.base_model:
        raise ValueError("the PeftModel must wrap the patched model's own base model (apply it to model.base_model)")
    model.__dict__[_ATTRIBUTE] = peft_model  # not a submodule: the parameters are already the base model's
    for name, param in model.base_model.named_parameters():
        param.requires_grad_(trainable and "lora_" in name)
    return peft_model


def apply_lora(model, peft_config) -> nn.Module:
    """Inject new LoRA adapters (a `peft.LoraConfig`) into the patched model's base model; returns the `PeftModel`."""
    from peft import get_peft_model

    if lora_adapter(model) is not None:
        raise ValueError("this patched model already carries an adapter")
    return attach_adapter(model, get_peft_model(model.base_model, peft_config))


def adapter_parameters(model) -> list:
    """The trainable adapter parameters of a patched model ([] without an adapter)."""
    if lora_adapter(model) is None:
        return []
    return [p for name, p in model.base_model.named_parameters() if "lora_" in name]


@contextlib.contextmanager
def adapters_disabled(model) -> Iterator[None]:
    """Run with the adapter switched off (nothing to do without one)."""
    peft_model = lora_adapter(model)
    if peft_model is None:
        yield
        return
    with peft_model.disable_adapter():
        yield
