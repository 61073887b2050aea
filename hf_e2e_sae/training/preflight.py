"""Checks that need the world outside the config (the base model's config, the data files, the process count),
run before any weights or data load, so that a user mistake costs seconds and reads as one line.

    preflight(config, world_size)   # raises ConfigError naming the field or file
"""
from __future__ import annotations

import logging
import os

import torch

from ..patching.architectures import check_site, hidden_size, num_blocks
from ..patching.base_models import resolve_base_model
from ..patching.remote_code import RemoteCodeError, load_base_config
from ..config.arguments import ConfigError
from ..sae.hub_interface import hub_function
from ..data.activation_cache import check_cache
from .config import TrainConfig
from .finetune import check_initial_sae
from ..data.data_check import check_data_source
from ..data.local_files import check_local_files, local_source
from .losses import default_downstream_sites
from .memory_plan import fit_message, plan_for_config
from .sharding import check_sharding

logger = logging.getLogger(__name__)

_NO_REMOTE_CODE = "train on a model that transformers implements itself"


def base_model_config(config: TrainConfig):
    """The base model's config (a `ConfigError` naming base_model.name_or_path when it cannot be read)."""
    name = config.base_model.name_or_path
    try:
        where = resolve_base_model(name)
    except ValueError as e:
        raise ConfigError(f"base_model.name_or_path: {e}") from None
    if where.startswith(("./", "../", "/", "~")) and not os.path.isdir(os.path.expanduser(where)):
        raise ConfigError(f"base_model.name_or_path: {name} does not exist")
    try:
        return load_base_config(where, revision=config.base_model.revision, remedy=_NO_REMOTE_CODE)
    except RemoteCodeError as e:  # training never runs a base model's own code (there is no option for it)
        raise ConfigError(f"base_model.name_or_path: {e}") from None
    except (OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(f"base_model.name_or_path: cannot load the config of {name!r}: {first}") from None


def check_sites(config: TrainConfig, base_config) -> None:
    """Every SAE and downstream site exists in the base model (architecture registered, block in range)."""
    for field, sites in (("sites", config.sites), ("loss.downstream.sites", config.loss.downstream.sites)):
        for site in sites:
            try:
                check_site(base_config, site)
            except ValueError as e:
                raise ConfigError(f"{field}: {e}") from None


def check_downstream(config: TrainConfig, base_config) -> None:
    """e2e+ds needs a later activation to reconstruct: by default the resid_pre of a block after the last SAE."""
    if config.loss.downstream.coeff > 0 and not config.loss.downstream.sites:
        if not default_downstream_sites(config.sites, num_blocks(base_config)):
            raise ConfigError("loss.downstream.coeff > 0, but no block follows the last SAE site "
                              f"{config.sites}: set loss.downstream.sites or move the SAE earlier")


def check_batch_sizes(config: TrainConfig, world_size: int) -> None:
    if config.effective_batch_size % (config.batch_size * world_size):
        raise ConfigError(f"effective_batch_size={config.effective_batch_size} is not a multiple of "
                          f"batch_size={config.batch_size} x {world_size} processes")


def check_data(config: TrainConfig) -> None:
    local = local_source(config.data.path)
    if local is not None:
        check_local_files(*local, config.data.text_column, config.data.tokenized_column)
    check_data_source(config.data)  # splits, columns, enough data for n_eval_samples (where cheap to open)


BYTES_PER_SAE_PARAMETER = 16
"""fp32 parameter + gradient + Adam's two moments."""


def memory_limit() -> tuple:
    """(bytes, what) the SAEs must fit in: the GPU's memory when training on one, else this machine's RAM."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_properties(0).total_memory, "GPU memory"
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"), "RAM"


def check_dictionary_size(config: TrainConfig, base_config) -> None:
    """A dictionary whose parameters, gradients and Adam state cannot fit in memory is refused before it is built."""
    d_in = hidden_size(base_config)
    field = "dict_size" if config.dict_size is not None else "dict_size_ratio"
    dict_size = config.dict_size if config.dict_size is not None else max(1, round(config.dict_size_ratio * d_in))
    needed = len(config.sites) * 2 * dict_size * d_in * BYTES_PER_SAE_PARAMETER
    limit, what = memory_limit()
    if needed > limit:
        raise ConfigError(f"{field}={getattr(config, field)}: {len(config.sites)} SAE(s) of {dict_size} latents x "
                          f"d_in={d_in} need about {needed / 1e9:.3g} GB for parameters, gradients and Adam state, "
                          f"more than this machine's {limit / 1e9:.3g} GB of {what}; choose a smaller {field}")


def check_init_from(config: TrainConfig) -> None:
    """The SAE `init_from` names exists, is readable, and sits where the config trains (site, width)."""
    if config.init_from is None:
        return
    try:
        check_initial_sae(config, hub_function("load_sae")(config.init_from))
    except (OSError, ValueError) as e:
        raise ConfigError(f"init_from: {' '.join(str(e).split())}") from None


def check_activation_cache(config: TrainConfig, base_config) -> None:
    """An existing `activation_cache` folder was built for this model, site and data (a missing one is built)."""
    if config.activation_cache is not None and os.path.exists(config.activation_cache):
        try:
            check_cache(config.activation_cache, config, base_config)
        except ValueError as e:
            raise ConfigError(f"activation_cache: {e}") from None


def preflight(config: TrainConfig, world_size: int = 1) -> None:
    """All checks of a training run that need more than the config itself; raises `ConfigError`."""
    check_batch_sizes(config, world_size)
    check_sharding(config.base_model.shard, world_size)
    check_data(config)
    check_init_from(config)
    base_config = base_model_config(config)
    check_sites(config, base_config)
    check_dictionary_size(config, base_config)
    check_downstream(config, base_config)
    check_activation_cache(config, base_config)
    check_memory(config, base_config, world_size)


def device_memory(world_size: int = 1) -> int:
    """Bytes one process may use: its GPU's memory, or on CPUs the available RAM shared by the processes."""
    if torch.cuda.is_available():
        return torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory
    with open("/proc/meminfo") as meminfo:
        available = next(int(line.split()[1]) * 1024 for line in meminfo if line.startswith("MemAvailable:"))
    return available // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", world_size)))


def check_memory(config: TrainConfig, base_config, world_size: int) -> None:
    """Refuse, in one line naming the remedy, a run whose planned memory (`memory_plan`) exceeds the device's."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        plan = plan_for_config(config, base_config, world_size, device)
    except Exception as error:  # noqa: BLE001 - a model the planner cannot build on meta: train without the check
        logger.warning("Could not plan this run's memory (%s); skipping the memory check", error)
        return
    available = device_memory(world_size)
    if plan["total"] > available:
        raise ConfigError(fit_message(plan, available, config))
