"""Held-out evaluation of patched models: fidelity (CE loss increase, KL, ...) and per-site metrics."""
from .metrics import evaluate

__all__ = ["evaluate"]
