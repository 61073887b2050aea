"""Cross-field checks of a `TrainConfig` about the dictionary's architecture, run before any model loads.

* activation options (`k`, `jumprelu_*`) belong to the chosen activation and hold valid values;
* activations with structural sparsity (TopK, BatchTopK) get a sparsity coefficient of 0 unless one is given
  (`apply_activation_defaults`, applied to the raw data before validation: configs are frozen);
* a loss term that means nothing for the activation is an error naming both (`loss.sparsity.p=0`, an L0
  through a straight-through estimator, needs an activation that provides one);
* transcoders: `output_sites` pairs each site with the later site its reconstruction replaces.

What an activation allows is read from its `ActivationSpec` (hf_e2e_sae.sae.activations), never from its name.
"""
from __future__ import annotations

from ..sae.activations import ACTIVATION_SPECS, activation_option_owners, resolve_activation_options
from ..sae.sites import parse_site


def activation_options(config) -> dict:
    """The `SAEConfig` keyword arguments for the activation options a `TrainConfig` sets (None = the default)."""
    return {key: getattr(config, key) for key in activation_option_owners() if getattr(config, key, None) is not None}


def apply_activation_defaults(data):
    """Raw `TrainConfig` data before validation: an activation with structural sparsity (TopK, BatchTopK) gets a
    sparsity coefficient of 0 unless the config gives one (its sparsity is fixed by construction)."""
    if not isinstance(data, dict):
        return data
    spec = ACTIVATION_SPECS.get(data.get("activation", "relu"))
    loss = data.get("loss") if isinstance(data.get("loss"), dict) else {}
    sparsity = loss.get("sparsity") if isinstance(loss.get("sparsity"), dict) else {}
    if spec is not None and spec.structural_sparsity and sparsity.get("coeff") is None:
        data = {**data, "loss": {**loss, "sparsity": {**sparsity, "coeff": 0.0}}}
    return data


def check_architecture(config) -> None:
    """Validate the architecture fields of a `TrainConfig`; raises `ValueError` naming the fields."""
    if config.activation not in ACTIVATION_SPECS:
        raise ValueError(f"activation={config.activation!r} is unknown; valid choices: {sorted(ACTIVATION_SPECS)}")
    resolve_activation_options(config.activation, activation_options(config))
    spec, loss = ACTIVATION_SPECS[config.activation], config.loss
    if loss.sparsity.p == 0 and loss.sparsity.coeff > 0 and not spec.differentiable_l0:
        users = sorted(name for name, s in ACTIVATION_SPECS.items() if s.differentiable_l0)
        raise ValueError(
            f"loss.sparsity.p=0 (an L0 penalty) is meaningless with activation={config.activation!r}: its L0 has no "
            f"gradient. Use an activation with a straight-through L0 ({', '.join(users)}), p > 0, or "
            "loss.sparsity.coeff=0.")
    _check_auxk(loss.auxk)
    _check_output_sites(config)


def _check_auxk(auxk) -> None:
    if auxk.coeff < 0:
        raise ValueError(f"loss.auxk.coeff must be >= 0, got {auxk.coeff}")
    if auxk.k_aux is not None and auxk.k_aux <= 0:
        raise ValueError(f"loss.auxk.k_aux must be > 0 (or null for d_in // 2), got {auxk.k_aux}")
    if auxk.dead_after_tokens <= 0:
        raise ValueError(f"loss.auxk.dead_after_tokens must be > 0, got {auxk.dead_after_tokens}")


def _check_output_sites(config) -> None:
    if not config.output_sites:
        return
    if len(config.output_sites) != len(config.sites):
        raise ValueError(f"output_sites (transcoders) must pair one output site with each of sites {config.sites}; "
                         f"got {config.output_sites}")
    for site, output_site in zip(config.sites, config.output_sites):
        if not parse_site(output_site).is_after(parse_site(site)):
            raise ValueError(f"output_sites: {output_site!r} is not computed after its input site {site!r}")
    last_write = max(parse_site(s).position for s in config.output_sites)
    for site in config.loss.downstream.sites:
        if parse_site(site).position <= last_write:
            raise ValueError(f"loss.downstream.sites: {site!r} is not after the last transcoder output site "
                             f"{config.output_sites}")
