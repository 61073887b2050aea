"""Stopping a run that stops making sense: non-finite losses or gradients, and JSON that stays valid.

The trainer already moves each step's metrics to the host in one `.tolist()`; `check_step_finite` reads those
host values, so the check costs no extra device sync. A non-finite value stops the run before anything of
that step is saved: the last good checkpoint stays the newest, and no final/ is written.
"""
from __future__ import annotations

import json
import math
from typing import Any, Mapping

_NOT_LOSS_TERMS = ("loss", "grad_norm", "lr", "tokens_per_s")
_FLOAT32_MAX = 3.4028234663852886e38


class NonFiniteTrainingError(RuntimeError):
    """The loss or the gradient became NaN or inf: the run stops (one-line message naming the step and term)."""


def _culprit(metrics: Mapping[str, float], bad: list, loss_config: Any) -> str:
    terms = [k for k in bad if k not in _NOT_LOSS_TERMS and "/" not in k]
    if terms:
        return f"loss term '{terms[0]}' is {metrics[terms[0]]}"
    if "loss" in bad:  # every term finite: a coefficient times its term overflowed float32
        weighted = {}
        for name, value in metrics.items():
            coeff = getattr(getattr(loss_config, name, None), "coeff", None)
            if coeff is not None and name not in _NOT_LOSS_TERMS and math.isfinite(value):
                weighted[name] = (abs(coeff * value), coeff, value)
        if weighted:
            name, (product, coeff, value) = max(weighted.items(), key=lambda item: item[1][0])
            overflow = " overflows float32" if product > _FLOAT32_MAX else ""
            return (f"the total loss is {metrics['loss']}: loss term '{name}' weighted by "
                    f"loss.{name}.coeff={coeff:g} is {coeff:g} x {value:.4g}{overflow}")
        return f"the total loss is {metrics['loss']}"
    if "grad_norm" in bad:
        return f"the gradient norm is {metrics['grad_norm']} (a non-finite gradient)"
    return f"{bad[0]} is {metrics[bad[0]]}"


def check_step_finite(step: int, metrics: Mapping[str, float], loss_config: Any = None) -> None:
    """Raise `NonFiniteTrainingError` when a step's host-side metrics hold NaN or inf.

    Args:
        step: the optimizer step that produced `metrics` (1-based).
        metrics: {"loss", loss terms ("sparsity", "kl", ...), "grad_norm", "l0/<site>": float}.
        loss_config: the run's `LossConfig`, to name the coefficient when a weighted term overflows.
    """
    bad = [name for name, value in metrics.items() if isinstance(value, float) and not math.isfinite(value)]
    if bad:
        raise NonFiniteTrainingError(
            f"Non-finite training at step {step}: {_culprit(metrics, bad, loss_config)}. Stopped; the last good "
            "checkpoint is kept and no final/ was written (lower lr or the loss coefficients, then resume).")


def finite_or_none(value: Any) -> Any:
    """A copy of a JSON-like tree with NaN / inf floats replaced by None (JSON has no such numbers)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {k: finite_or_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_none(v) for v in value]
    return value


def json_text(data: Any) -> str:
    """Strictly valid JSON (never a bare NaN / Infinity: those become null), indented, with a final newline."""
    return json.dumps(finite_or_none(data), indent=2, allow_nan=False) + "\n"
