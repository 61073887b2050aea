"""Refusing non-finite weights: no NaN or inf SAE is ever written or published."""
from __future__ import annotations

from typing import Iterable, Mapping, Union

import torch


class NonFiniteWeightsError(ValueError):
    """Raised instead of writing or publishing weights that hold NaN or inf."""


def non_finite_names(tensors: Union[Mapping[str, torch.Tensor], Iterable]) -> list:
    """Names of the floating-point tensors that hold a NaN or inf (one host sync for all of them)."""
    items = [(k, v) for k, v in (tensors.items() if isinstance(tensors, Mapping) else tensors)
             if torch.is_tensor(v) and v.is_floating_point()]
    if not items:
        return []
    flags = torch.stack([torch.isfinite(v).all().to("cpu") for _, v in items]).tolist()
    return [name for (name, _), ok in zip(items, flags) if not ok]


def check_finite_weights(tensors: Union[Mapping[str, torch.Tensor], Iterable], where: str) -> None:
    """Raise `NonFiniteWeightsError` naming `where` and the tensors when any holds NaN or inf."""
    bad = non_finite_names(tensors)
    if bad:
        raise NonFiniteWeightsError(
            f"{where}: {', '.join(bad)} hold NaN or inf values; refusing to write non-finite weights "
            "(training diverged: lower the learning rate or loss coefficients and resume from a good checkpoint).")
