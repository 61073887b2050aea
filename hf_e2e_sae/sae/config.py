"""`SAEConfig`: everything needed to rebuild one sparse autoencoder and to find where it goes."""
from __future__ import annotations

import logging
from typing import Any, Optional

from transformers import PretrainedConfig

from .activations import ACTIVATIONS, activation_option_owners, resolve_activation_options
from .basis import check_basis_options
from .sites import parse_site

logger = logging.getLogger(__name__)

# Bumped when the saved format changes incompatibly; loaders refuse newer versions.
SAE_FORMAT_VERSION = 1
DEFAULT_DICT_SIZE_RATIO = 60.0

_STANDARD_KEYS: Optional[frozenset] = None


def _standard_config_keys() -> frozenset:
    """Keys any `PretrainedConfig` writes (transformers_version, architectures, dtype, ...)."""
    global _STANDARD_KEYS
    if _STANDARD_KEYS is None:
        _STANDARD_KEYS = frozenset(PretrainedConfig().to_dict()) | {"torch_dtype", "dtype", "_name_or_path", "name_or_path"}
    return _STANDARD_KEYS


class SAEConfig(PretrainedConfig):
    r"""Configuration of a [`SparseAutoencoder`].

    Args:
        d_in (`int`):
            Width of the activation the SAE reads and writes (the base model's hidden size).
        dict_size (`int`, *optional*):
            Number of dictionary elements (latents); takes precedence over `dict_size_ratio`.
        dict_size_ratio (`float`, *optional*):
            `dict_size = round(dict_size_ratio * d_in)` when `dict_size` is not given (default 60, as the paper).
        activation (`str`, *optional*, defaults to `"relu"`):
            Latent activation; one of the names registered in `hf_e2e_sae.activations.ACTIVATIONS`.
        site (`str`, *optional*):
            Where the SAE sits, e.g. `"blocks.6.resid_pre"` (TransformerLens spelling
            `"blocks.6.hook_resid_pre"` is accepted and stored in canonical form).
        base_model_name_or_path (`str`, *optional*):
            Hub id or path of the causal LM this SAE was trained on.
        base_model_revision (`str`, *optional*):
            Revision (branch, tag or commit) of that base model.
        base_model_config_hash (`str`, *optional*):
            Hash of the base model's config (`hf_e2e_sae.patching.base_models.config_hash`): its identity when
            the name alone does not pin it (a local model).
        init_decoder_orthogonal (`bool`, *optional*, defaults to `True`):
            Orthogonal decoder init (as the reference); otherwise PyTorch's Linear default.
        output_site (`str`, *optional*):
            Makes this dictionary a transcoder: it reads `site` (e.g. `"blocks.3.mlp_in"`, the MLP's normed input)
            and its reconstruction replaces `output_site` (e.g. `"blocks.3.mlp_out"`). None: an SAE that
            reconstructs `site` itself.
        skip_connection (`bool`, *optional*, defaults to `False`):
            Add an affine skip term: the reconstruction is `decode(latents) + W_skip x` with `W_skip` `(d_in, d_in)`
            zero-initialised (a skip transcoder, Paulo et al. 2025; sparsify's `skip_connection`). `x` is the input
            as the dictionary receives it, before any basis option (`input_scale`, `center_input`, ...).
        **activation options:
            Keys declared by the chosen activation (`ActivationSpec.options`), e.g. `k` for `"topk"`,
            `jumprelu_init_threshold` and `jumprelu_bandwidth` for `"jumprelu"`; defaults come from the spec.
        format_version (`int`, *optional*):
            Version of the hf_e2e_sae save format; newer than this library understands is an error.
        k (`int`, *optional*):
            Latents kept per token by the `"topk"` activation.
        apply_b_dec_to_input (`bool`, *optional*, defaults to `False`):
            Encode `x - b_dec` (SAELens `apply_b_dec_to_input`, sparsify); see `hf_e2e_sae.sae.basis`.
        input_scale (`float`, *optional*, defaults to 1.0):
            Constant the input is multiplied by before encoding (reconstructions are divided by it).
        center_input (`bool`, *optional*, defaults to `False`):
            Subtract each token's mean over features before encoding (TransformerLens `center_writing_weights`
            basis); a patched model adds the mean back to the reconstruction.
        normalize_decoder (`bool`, *optional*, defaults to `True`):
            Divide each dictionary element by its L2 norm in the forward pass (the paper); False decodes with the
            stored weights (SAEs imported from libraries that do not).
    """

    model_type = "hf_e2e_sae"

    def __init__(
        self,
        d_in: int = 768,
        dict_size: Optional[int] = None,
        dict_size_ratio: Optional[float] = None,
        activation: str = "relu",
        site: Optional[str] = None,
        base_model_name_or_path: Optional[str] = None,
        base_model_revision: Optional[str] = None,
        base_model_config_hash: Optional[str] = None,
        init_decoder_orthogonal: bool = True,
        format_version: int = SAE_FORMAT_VERSION,
        apply_b_dec_to_input: bool = False,
        input_scale: float = 1.0,
        center_input: bool = False,
        normalize_decoder: bool = True,
        output_site: Optional[str] = None,
        skip_connection: bool = False,
        **kwargs: Any,
    ):
        option_values = {key: kwargs.pop(key) for key in activation_option_owners() if key in kwargs}
        unknown = sorted(set(kwargs) - _standard_config_keys())
        if unknown:
            logger.warning("SAEConfig: ignoring unknown keys %s (saved by a newer hf_e2e_sae?)", unknown)
        if format_version > SAE_FORMAT_VERSION:
            raise ValueError(
                f"SAEConfig.format_version={format_version} is newer than this hf_e2e_sae understands "
                f"({SAE_FORMAT_VERSION}); upgrade with `pip install -U hf_e2e_sae`."
            )
        if not isinstance(d_in, int) or d_in <= 0:
            raise ValueError(f"SAEConfig.d_in must be a positive int, got {d_in!r}")
        if dict_size is None:
            # Paper default; also lets transformers build SAEConfig() with no arguments (4.x to_diff_dict).
            dict_size_ratio = DEFAULT_DICT_SIZE_RATIO if dict_size_ratio is None else dict_size_ratio
            if dict_size_ratio <= 0:
                raise ValueError(f"SAEConfig.dict_size_ratio must be > 0, got {dict_size_ratio!r}")
            dict_size = max(1, round(dict_size_ratio * d_in))
        if not isinstance(dict_size, int) or dict_size <= 0:
            raise ValueError(f"SAEConfig.dict_size must be a positive int, got {dict_size!r}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"SAEConfig.activation={activation!r} is unknown; valid choices: {sorted(ACTIVATIONS)}")
        self.d_in = d_in
        self.dict_size = dict_size
        self.dict_size_ratio = dict_size_ratio
        self.activation = activation
        for key, value in resolve_activation_options(activation, option_values).items():
            setattr(self, key, value)  # e.g. self.k: saved in config.json with the rest
        self.site = str(parse_site(site)) if site is not None else None
        self.base_model_name_or_path = base_model_name_or_path
        self.base_model_revision = base_model_revision
        self.base_model_config_hash = base_model_config_hash
        self.init_decoder_orthogonal = init_decoder_orthogonal
        self.format_version = format_version
        self.apply_b_dec_to_input = apply_b_dec_to_input
        self.input_scale = input_scale
        self.center_input = center_input
        self.normalize_decoder = normalize_decoder
        check_basis_options(self)
        if not isinstance(skip_connection, bool):
            raise ValueError(f"SAEConfig.skip_connection must be true or false, got {skip_connection!r}")
        self.skip_connection = skip_connection
        self.output_site = str(parse_site(output_site)) if output_site is not None else None
        if self.output_site is not None and (self.site is None or not parse_site(self.output_site).is_after(parse_site(self.site))):
            raise ValueError(f"SAEConfig.output_site={self.output_site!r} must be computed after site={self.site!r} "
                             "(a transcoder reads site, then replaces output_site).")
        super().__init__(**{k: v for k, v in kwargs.items() if k not in unknown})
