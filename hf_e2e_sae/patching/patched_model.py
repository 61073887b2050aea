"""`SAEPatchedModel`: a causal LM with sparse autoencoders spliced into its forward pass.

    base = AutoModelForCausalLM.from_pretrained("gpt2")
    sae = SparseAutoencoder(SAEConfig(d_in=768, dict_size_ratio=60, site="blocks.6.resid_pre"))
    model = SAEPatchedModel(base, [sae])
    out = model(input_ids)            # logits with the SAE output in place of blocks.6.resid_pre
    out.sae_outputs["blocks.6.resid_pre"].latents   # (batch, seq, dict_size)
    with model.saes_disabled():
        clean = model(input_ids)      # the base model, bit for bit

Every check (sites, block indices, widths, duplicates) runs before the first hook is added, so a
failure leaves the base model untouched. `unpatch()` removes the hooks and restores the base's
`requires_grad` flags and train/eval mode.
"""
from __future__ import annotations

import contextlib
import logging
import os
import re
from pathlib import Path
from typing import Iterable, Iterator, Mapping, Optional, Union

import torch
from huggingface_hub import try_to_load_from_cache
from torch import nn

from .base_models import config_hash, portable_base_name, resolve_base_model
from .adapters import adapters_disabled
from .hooks import add_hook
from .patch_marker import mark_patched, patched_by, unmark_patched  # noqa: F401  (patched_by: public)
from ..sae.basis import restore_token_mean
from .interventions import InterventionsMixin
from ..sae.hub_interface import hub_function
from ..sae.model import SparseAutoencoder
from ..sae.sites import parse_site
from .architectures import check_site, hidden_size, resolve_site
from .outputs import SAEPatchedOutput, SiteNotPatchedError, SiteOutput, StopForward  # noqa: F401  (re-exported)
from .transcoders import add_transcoder_hooks, check_transcoder_config, is_transcoder

logger = logging.getLogger(__name__)

SAEsLike = Union[SparseAutoencoder, Iterable[SparseAutoencoder], Mapping[str, SparseAutoencoder]]


def _module_key(site: str) -> str:
    return site.replace(".", "__")  # nn.ModuleDict keys may not contain dots


def _as_site_dict(saes: SAEsLike) -> dict:
    """Normalise the accepted forms to {canonical site: sae}; checks naming consistency."""
    if isinstance(saes, SparseAutoencoder):
        saes = [saes]
    if isinstance(saes, Mapping):
        items = list(saes.items())
    else:
        items = []
        for sae in saes:
            if sae.config.site is None:
                raise ValueError("An SAE without `config.site` must be passed in a {site: sae} mapping.")
            items.append((sae.config.site, sae))
    result: dict = {}
    for site, sae in items:
        if not isinstance(sae, SparseAutoencoder):
            raise TypeError(f"Expected a SparseAutoencoder for site {site!r}, got {type(sae).__name__}")
        name = str(parse_site(site))
        if sae.config.site is not None and sae.config.site != name:
            raise ValueError(f"SAE configured for site {sae.config.site!r} was given for site {name!r}.")
        if name in result:
            raise ValueError(f"Two SAEs for one site: {name!r}. Each site takes at most one SAE.")
        result[name] = sae
    if not result:
        raise ValueError("SAEPatchedModel needs at least one SAE.")
    return result


def cached_commit(name: str, revision: str = "main") -> Optional[str]:
    """The commit sha the local Hub cache holds for repo `name` at `revision`, if it holds one."""
    cached = try_to_load_from_cache(name, "config.json", revision=revision)
    sha = Path(cached).parent.name if isinstance(cached, str) else None  # .../snapshots/<sha>/config.json
    return sha if sha and re.fullmatch(r"[0-9a-f]{40}", sha) else None


def _loaded_revision(config) -> Optional[str]:
    """Commit the base model was loaded at, if it came from the Hub cache (transformers 5 has no _commit_hash)."""
    name = getattr(config, "_name_or_path", None)
    if getattr(config, "_commit_hash", None) or not name or os.path.isdir(name):
        return getattr(config, "_commit_hash", None)
    return cached_commit(name)


def validate_sae_configs(base_config, sae_configs: Mapping) -> None:
    """Check `{site: SAEConfig}` against a base model config; raises before anything is patched."""
    width = hidden_size(base_config)
    for site, config in sae_configs.items():
        check_site(base_config, site)
        if config.d_in != width:
            raise ValueError(f"SAE for {site!r} has d_in={config.d_in}, but the base model's hidden size is {width}.")
        check_transcoder_config(base_config, site, config, sae_configs)


class SAEPatchedModel(InterventionsMixin, nn.Module):
    """A frozen causal LM plus one or more SAEs at distinct sites.

    Args:
        base_model (`PreTrainedModel`): any `AutoModelForCausalLM` of a registered family.
        saes: one SAE, a list of SAEs (each with `config.site`), or a `{site: sae}` mapping.
    """

    def __init__(self, base_model: nn.Module, saes: SAEsLike):
        super().__init__()
        site_saes = _as_site_dict(saes)
        mark_patched(base_model, self)  # refuses a model another wrapper patched; undone below on any error
        try:
            self._patch(base_model, site_saes)
        except BaseException:
            unmark_patched(base_model, self)
            raise

    def _patch(self, base_model: nn.Module, site_saes: dict) -> None:
        validate_sae_configs(base_model.config, {site: sae.config for site, sae in site_saes.items()})
        resolved = {site: resolve_site(base_model, site) for site in site_saes}  # may raise; nothing patched yet

        self.base_model = base_model
        self.saes = nn.ModuleDict({_module_key(site): sae for site, sae in site_saes.items()})
        self.sites: list = sorted(site_saes, key=lambda s: parse_site(s).position)
        self._freeze_base(base_model)
        self._spliced: dict = {}  # {site: tensor spliced in instead of running its SAE} (`splicing`)
        self._handles = [
            add_hook(r.module, r.rewrite, self._make_sae_rewrite(site)) for site, r in resolved.items()
            if not is_transcoder(site_saes[site])
        ] + [h for site, sae in site_saes.items() if is_transcoder(sae) for h in add_transcoder_hooks(self, site, sae, SiteOutput)]
        # A transcoder writes at its output_site: a forward stopped early must run at least that far.
        self.output_sites: list = [sae.config.output_site for sae in site_saes.values() if is_transcoder(sae)]

    # ------------------------------------------------------------------ patching
    def _freeze_base(self, base_model: nn.Module) -> None:
        """Record the base model's flags (restored by `unpatch`), freeze it, and start with the SAEs enabled."""
        self._fill_base_model_metadata()
        self._saved_requires_grad = {name: p.requires_grad for name, p in base_model.named_parameters()}
        self._saved_training = base_model.training
        base_model.requires_grad_(False)
        base_model.eval()
        self._saes_enabled = True
        self._sparse_records = False
        self._records: Optional[dict] = None

    def _fill_base_model_metadata(self) -> None:
        """Record which base model the SAEs belong to, where the user did not say."""
        name = getattr(self.base_model.config, "_name_or_path", None) or None
        revision = _loaded_revision(self.base_model.config)
        for sae in self.saes.values():
            if sae.config.base_model_name_or_path is None:
                sae.config.base_model_name_or_path = portable_base_name(name) if name else None
                sae.config.base_model_revision = sae.config.base_model_revision or revision
            if sae.config.base_model_config_hash is None:
                sae.config.base_model_config_hash = config_hash(self.base_model.config)

    def sae(self, site: str) -> SparseAutoencoder:
        """The SAE at `site` (any accepted spelling); `SiteNotPatchedError` (a `KeyError`) names the patched sites."""
        key = _module_key(str(parse_site(site)))
        if key not in self.saes:
            raise SiteNotPatchedError(f"no SAE at site {site!r}: this model patches {self.sites}")
        return self.saes[key]

    def _make_sae_rewrite(self, site: str):
        sae_key = _module_key(site)

        def rewrite(x: torch.Tensor) -> Optional[torch.Tensor]:
            if not self._saes_enabled:
                return None
            if site in self._spliced:
                return self._spliced[site].to(x.dtype)
            sae = self.saes[sae_key]
            out = sae(x.to(sae.dtype), sparse_output=self._sparse_records and not self._interventions)
            if self._interventions:  # steer() / ablate() (patching/interventions.py)
                out = self.intervene(site, out)
            reconstruction = restore_token_mean(sae.config, x, out.reconstruction)  # the model's basis
            if self._records is not None:
                self._records[site] = SiteOutput(target=x, latents=out.latents, reconstruction=reconstruction,
                                                 pre_activations=out.pre_activations, code_values=out.code_values,
                                                 code_indices=out.code_indices, source=x)
            return reconstruction.to(x.dtype)

        return rewrite

    def unpatch(self) -> nn.Module:
        """Remove every hook and restore the base model's flags; returns the base model."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
        unmark_patched(self.base_model, self)
        for name, param in self.base_model.named_parameters():
            param.requires_grad_(self._saved_requires_grad.get(name, param.requires_grad))
        self.base_model.train(self._saved_training)
        return self.base_model

    @contextlib.contextmanager
    def saes_disabled(self) -> Iterator[None]:
        """Run the original model: no SAE, no adapter (`patching.adapters`); outputs identical bit for bit."""
        previous, self._saes_enabled = self._saes_enabled, False
        try:
            with adapters_disabled(self):
                yield
        finally:
            self._saes_enabled = previous

    @contextlib.contextmanager
    def sparse_records(self) -> Iterator[None]:
        """Record TopK-like codes only as `code_values` / `code_indices` (no dense `(batch, seq, dict_size)` latents
        or pre-activations): what the trainer's fast step needs, in a fraction of the memory and time."""
        previous, self._sparse_records = self._sparse_records, True
        try:
            yield
        finally:
            self._sparse_records = previous

    @contextlib.contextmanager
    def splicing(self, replacements: Mapping[str, torch.Tensor]) -> Iterator[None]:
        """SAE sites in `replacements` splice the given `(batch, seq, d)` tensor in, without running their SAE (a
        Matryoshka prefix's reconstruction); the other SAEs run as usual, their running statistics (BatchTopK's
        threshold: modules with `track_statistics`) left unchanged."""
        tracking = [m for m in self.saes.modules() if getattr(m, "track_statistics", False)]
        previous, self._spliced = self._spliced, {str(parse_site(s)): t for s, t in replacements.items()}
        for module in tracking:
            module.track_statistics = False
        try:
            yield
        finally:
            self._spliced = previous
            for module in tracking:
                module.track_statistics = True

    def train(self, mode: bool = True) -> "SAEPatchedModel":
        """Train mode applies to the SAEs only; the frozen base always stays in eval mode."""
        super().train(mode)
        self.base_model.eval()
        return self

    # ------------------------------------------------------------------ running
    def forward(
        self,
        input_ids: Optional[torch.Tensor] = None,
        attention_mask: Optional[torch.Tensor] = None,
        labels: Optional[torch.Tensor] = None,
        cache_sites: Optional[Iterable[str]] = None,
        stop_early: bool = False,
        site_inputs: Optional[Mapping[str, torch.Tensor]] = None,
        **kwargs,
    ) -> SAEPatchedOutput:
        """Run the patched model.

        Args:
            input_ids (`(batch, seq)`), attention_mask, labels: as for the base causal LM.
            cache_sites: extra sites (e.g. later `resid_pre`s for e2e+ds) whose activations to return.
            stop_early: stop the forward pass once every SAE and cache site has run (no logits);
                local training needs nothing after the last SAE.
            site_inputs: `{site: activation}` recorded earlier at SAE sites (an activation cache): only those
                SAEs run, each on its activation, exactly as in a patched pass; the base model does not run
                (no logits). Not for transcoders (they read one site and write another).
            **kwargs: passed to the base model (`use_cache` defaults to False).
        """
        if site_inputs is not None:
            return self._forward_site_inputs(site_inputs)
        records: dict = {}
        cached: dict = {}
        handles = [self._add_cache_hook(site, cached) for site in cache_sites or []]
        if stop_early:
            handles.append(self._add_stop_hook(list(cache_sites or [])))
        self._records = records
        kwargs.setdefault("use_cache", False)
        try:
            out = self.base_model(input_ids=input_ids, attention_mask=attention_mask, labels=labels, **kwargs)
            loss, logits = out.loss, out.logits
        except StopForward:
            loss = logits = None
        finally:
            self._records = None
            for handle in handles:
                handle.remove()
        return SAEPatchedOutput(loss=loss, logits=logits, sae_outputs=records, cached_activations=cached)

    def _forward_site_inputs(self, site_inputs: Mapping[str, torch.Tensor]) -> SAEPatchedOutput:
        records: dict = {}
        self._records = records
        try:
            for site, x in site_inputs.items():
                name = str(parse_site(site))
                if is_transcoder(self.sae(name)):
                    raise ValueError(f"site_inputs: the SAE at {name!r} is a transcoder; it needs a full forward pass")
                self._make_sae_rewrite(name)(x)  # records the SiteOutput, as the hook does
        finally:
            self._records = None
        return SAEPatchedOutput(sae_outputs=records, cached_activations={})

    def _add_cache_hook(self, site: str, cached: dict):
        name = str(parse_site(site))
        resolved = resolve_site(self.base_model, name)

        def read(x: torch.Tensor) -> None:
            cached[name] = x

        return add_hook(resolved.module, resolved.rewrite, read)

    def _add_stop_hook(self, cache_sites: list):
        last = max([*self.sites, *self.output_sites, *map(str, map(parse_site, cache_sites))],
                   key=lambda s: parse_site(s).position)
        resolved = resolve_site(self.base_model, last)

        def stop(_x: torch.Tensor) -> None:
            raise StopForward

        return add_hook(resolved.module, resolved.rewrite, stop)  # added last, so it runs after the others

    @torch.no_grad()
    def generate(self, *args, **kwargs):
        """`base_model.generate` with the SAEs in place (see `saes_disabled` for the clean model)."""
        return self.base_model.generate(*args, **kwargs)

    # ------------------------------------------------------------------ properties
    @property
    def config(self):
        """The base model's config."""
        return self.base_model.config

    @property
    def device(self) -> torch.device:
        return next(self.saes.parameters()).device

    def load_tokenizer(self, **kwargs):
        """The base model's tokenizer, found by the name its SAEs were trained on (`builtin:` names resolved);
        `kwargs` go to `AutoTokenizer.from_pretrained` (never `trust_remote_code` unless you pass it)."""
        from transformers import AutoTokenizer

        name = self.sae(self.sites[0]).config.base_model_name_or_path or self.config.name_or_path
        if not name:
            raise ValueError("the SAEs do not name their base model: load its tokenizer with AutoTokenizer yourself")
        return AutoTokenizer.from_pretrained(resolve_base_model(name), **{"trust_remote_code": False, **kwargs})

    def sae_parameters(self) -> Iterator[nn.Parameter]:
        """Only the trainable SAE parameters (what an optimizer should see)."""
        return self.saes.parameters()

    def save_pretrained(self, save_directory, **kwargs) -> None:
        """Write only the SAEs (safetensors + config each, one subfolder per site when several)."""
        hub_function("save_patched_model")(self, save_directory, **kwargs)

    def push_to_hub(self, repo_id: str, **kwargs):
        """Upload the SAEs (no base weights), manifest and a README.md model card to the Hub in one commit.

        See [`hf_e2e_sae.hub.push.push_to_hub`] for the arguments (`private`, `token`, `revision`, `commit_message`,
        `card_data`, `metrics`, `train_config`, ...). Returns the `huggingface_hub.CommitInfo`.
        """
        return hub_function("push_to_hub")(self, repo_id, **kwargs)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, base_model: Optional[nn.Module] = None, **kwargs):
        """Load SAEs from a directory or Hub repo and patch `base_model` or the base model they name.

        See [`hf_e2e_sae.hub.format.load_patched_model`] for the keyword arguments.
        """
        return hub_function("load_patched_model")(cls, pretrained_model_name_or_path, base_model=base_model, **kwargs)
