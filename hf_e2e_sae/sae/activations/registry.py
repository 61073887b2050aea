"""The registry of SAE latent activations.

Each activation is a small `nn.Module` built from an `SAEConfig` that maps encoder pre-activations
`(..., dict_size)` to latents `(..., dict_size)`. Adding one is one new small file in this folder that
calls `register_activation`, imported by this package's `__init__`; nothing else in the library branches
on the activation's name. What the rest of the library needs to know about an activation is declared
in its `ActivationSpec`:

* `options`: extra `SAEConfig` keys it reads (e.g. TopK's `k`), with defaults and checks; `SAEConfig`
  validates and stores them generically, and rejects options of other activations;
* `structural_sparsity`: its sparsity is fixed by construction (TopK), so the sparsity penalty
  defaults to 0 in training configs;
* `differentiable_l0`: its module has `l0(pre_activations) -> (...,)`, a per-token L0 with a useful
  gradient (a straight-through estimator), so `loss.sparsity.p = 0` is meaningful.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Mapping

if TYPE_CHECKING:  # types only: config validation reads the registry without loading transformers
    from torch import nn
    from transformers import PretrainedConfig


@dataclass(frozen=True)
class ActivationOption:
    """One extra config key of an activation.

    Args:
        default: value when the key is not given.
        check: `check(value) -> bool`; False makes the config invalid.
        description: what the value means and which values are valid (used in error messages and docs).
    """

    default: Any
    check: Callable[[Any], bool]
    description: str


@dataclass(frozen=True)
class ActivationSpec:
    """How to build an activation and what configs using it may and must say (see the module docstring)."""

    builder: Callable[["PretrainedConfig"], "nn.Module"]
    options: Mapping[str, ActivationOption] = field(default_factory=dict)
    structural_sparsity: bool = False
    differentiable_l0: bool = False
    sparse_code: bool = False


# Builders take the SAE's `SAEConfig` (typed by its base class: the config module imports this registry).
ACTIVATIONS: dict[str, Callable[["PretrainedConfig"], "nn.Module"]] = {}
ACTIVATION_SPECS: dict[str, ActivationSpec] = {}


def register_activation(
    name: str,
    builder: Callable[[PretrainedConfig], nn.Module],
    options: Mapping[str, ActivationOption] = None,
    structural_sparsity: bool = False,
    differentiable_l0: bool = False,
    sparse_code: bool = False,
) -> None:
    """Make `activation=name` available in `SAEConfig`. `builder(config)` returns the module.

    Args:
        options: `{config key: ActivationOption}` this activation reads from the `SAEConfig`.
        structural_sparsity: sparsity fixed by construction; the sparsity penalty defaults to 0.
        differentiable_l0: the module provides `l0(pre_activations)` (needed for `loss.sparsity.p = 0`).
        sparse_code: the module keeps the top `module.k` pre-activations per token; the SAE runs sparsely.
    """
    spec = ActivationSpec(builder, dict(options or {}), structural_sparsity, differentiable_l0, sparse_code)
    ACTIVATIONS[name] = builder
    ACTIVATION_SPECS[name] = spec


def build_activation(config: PretrainedConfig) -> nn.Module:
    """Instantiate the activation named by `config.activation`."""
    return ACTIVATIONS[config.activation](config)


def activation_option_owners() -> dict[str, list]:
    """`{option key: [activations that declare it]}` over the whole registry."""
    owners: dict[str, list] = {}
    for name, spec in ACTIVATION_SPECS.items():
        for key in spec.options:
            owners.setdefault(key, []).append(name)
    return owners


def resolve_activation_options(activation: str, given: Mapping[str, Any]) -> dict:
    """Validate `given` option values for `activation`; return all its options (defaults filled in).

    Raises `ValueError` naming the option and the activation when a key belongs only to other
    activations or a value fails its check. Keys that are no activation's option are ignored here.
    """
    if activation not in ACTIVATION_SPECS:
        raise ValueError(f"activation={activation!r} is unknown; valid choices: {sorted(ACTIVATION_SPECS)}")
    own = ACTIVATION_SPECS[activation].options
    for key, owners in activation_option_owners().items():
        if key in given and given[key] is not None and key not in own:
            raise ValueError(f"{key} is an option of activation {' / '.join(sorted(owners))}, "
                             f"not of activation={activation!r}; remove {key} or change the activation.")
    resolved = {}
    for key, option in own.items():
        value = given.get(key)
        value = option.default if value is None else value
        if not option.check(value):
            raise ValueError(f"{key}={value!r} is invalid for activation={activation!r}: {option.description}")
        resolved[key] = value
    return resolved
