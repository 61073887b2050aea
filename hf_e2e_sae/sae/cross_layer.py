"""`CrossLayerTranscoder` (CLT): one encoder per layer, decoders from each layer into it and every later layer.

For layers l_0 < l_1 < ... < l_{n-1} (block indices) with inputs x_i (block l_i's MLP input, `mlp_in`):

    latents        c_i   = act_i(W_enc[i] x_i + b_enc[i])                     (..., dict_size)   per layer
    reconstruction y_j   = b_dec[j] + sum_{i <= j} W_dec[i -> j] c_i          (..., d_in)        block l_j's mlp_out

`decoders[i]` holds `W_dec[i -> j]` for j = i..n-1 as one `(n - i, dict_size, d_in)` tensor. With
`normalize_decoder=True` (default) every latent's decoder vectors, concatenated over all the layers it writes to,
are divided by their joint L2 norm in each forward pass (a reparametrisation, as the SAE's unit-norm dictionary):
a latent's size is its activation, so an L1 penalty on the latents means something.

The CLT is a `PreTrainedModel` of its own (`model_type = "hf_e2e_sae_clt"`, registered with `AutoConfig` /
`AutoModel`); `patching.cross_layer.CLTPatchedModel` splices it into a causal LM. `layer(i)` is a per-layer view
(an `SAEConfig` and the layer's encoder and activation) for what reads one dictionary per site: L0 estimators,
firing counts, the browser, model cards.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoConfig, AutoModel, PretrainedConfig, PreTrainedModel
from transformers.utils import ModelOutput

from .activations import ACTIVATIONS, activation_option_owners, build_activation, resolve_activation_options
from .config import SAE_FORMAT_VERSION, SAEConfig
from .finite import check_finite_weights
from .sites import Site


class CLTConfig(PretrainedConfig):
    r"""Configuration of a [`CrossLayerTranscoder`].

    Args:
        d_in (`int`): the base model's hidden size (width of every MLP input and output).
        dict_size (`int`): latents per layer.
        layers (`list[int]`): the blocks whose MLPs it replaces, e.g. `[0, 1, 2]` (sorted, distinct).
        activation (`str`, defaults to `"relu"`): a registered activation, one per layer (options such as `k`
            as keyword arguments, as for `SAEConfig`).
        normalize_decoder (`bool`, defaults to `True`): joint unit norm of each latent's decoder vectors.
        base_model_name_or_path, base_model_revision, base_model_config_hash: the base model, as `SAEConfig`.
        format_version (`int`): the hf_e2e_sae save format version.
    """

    model_type = "hf_e2e_sae_clt"

    def __init__(self, d_in: int = 768, dict_size: int = 768, layers: Optional[Sequence[int]] = None,
                 activation: str = "relu", normalize_decoder: bool = True,
                 base_model_name_or_path: Optional[str] = None, base_model_revision: Optional[str] = None,
                 base_model_config_hash: Optional[str] = None, format_version: int = SAE_FORMAT_VERSION,
                 **kwargs: Any):
        option_values = {key: kwargs.pop(key) for key in activation_option_owners() if key in kwargs}
        layers = [0] if layers is None else [int(layer) for layer in layers]
        if format_version > SAE_FORMAT_VERSION:
            raise ValueError(f"CLTConfig.format_version={format_version} is newer than this hf_e2e_sae understands "
                             f"({SAE_FORMAT_VERSION}); upgrade with `pip install -U hf_e2e_sae`.")
        if not layers or layers != sorted(set(layers)) or layers[0] < 0:
            raise ValueError(f"CLTConfig.layers must be distinct block indices >= 0 in increasing order, got {layers}")
        for name, value in (("d_in", d_in), ("dict_size", dict_size)):
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"CLTConfig.{name} must be a positive int, got {value!r}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"CLTConfig.activation={activation!r} is unknown; valid choices: {sorted(ACTIVATIONS)}")
        self.d_in, self.dict_size, self.layers, self.activation = d_in, dict_size, layers, activation
        for key, value in resolve_activation_options(activation, option_values).items():
            setattr(self, key, value)
        self.normalize_decoder = normalize_decoder
        self.base_model_name_or_path = base_model_name_or_path
        self.base_model_revision = base_model_revision
        self.base_model_config_hash = base_model_config_hash
        self.format_version = format_version
        super().__init__(**kwargs)

    @property
    def sites(self) -> list:
        """Where each layer's encoder reads: `blocks.<l>.mlp_in`."""
        return [str(Site(layer, "mlp_in")) for layer in self.layers]

    @property
    def output_sites(self) -> list:
        """What each layer's reconstruction replaces: `blocks.<l>.mlp_out`."""
        return [str(Site(layer, "mlp_out")) for layer in self.layers]

    def layer_config(self, i: int) -> SAEConfig:
        """Layer `i`'s dictionary as an `SAEConfig` (a transcoder from its `mlp_in` to its `mlp_out`)."""
        options = {key: getattr(self, key) for key in resolve_activation_options(self.activation, {})}
        return SAEConfig(d_in=self.d_in, dict_size=self.dict_size, activation=self.activation, site=self.sites[i],
                         output_site=self.output_sites[i], base_model_name_or_path=self.base_model_name_or_path,
                         base_model_revision=self.base_model_revision, normalize_decoder=self.normalize_decoder,
                         base_model_config_hash=self.base_model_config_hash, **options)


@dataclass
class CLTOutput(ModelOutput):
    """Output of [`CrossLayerTranscoder.forward`]: per layer, its latents, pre-activations and reconstruction."""

    latents: Optional[list] = None
    reconstructions: Optional[list] = None
    pre_activations: Optional[list] = None


class CLTLayer:
    """Layer `i` of a CLT seen as one dictionary (not a module: its parameters belong to the CLT)."""

    def __init__(self, clt: "CrossLayerTranscoder", i: int):
        self.clt, self.index, self.config = clt, i, clt.config.layer_config(i)
        self.activation = clt.activations[i]

    @property
    def dtype(self) -> torch.dtype:
        return self.clt.dtype

    def pre_activations(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.clt.encoders[self.index](hidden_states)

    def encode(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.activation(self.pre_activations(hidden_states))

    @property
    def dictionary(self) -> torch.Tensor:
        """`(dict_size, d_in)`: the unit-norm direction of each latent's total write into the residual stream (the
        sum of its decoder vectors over every layer it writes to: what its direct logit effect reads)."""
        return F.normalize(self.clt.decoder_weights(self.index).sum(dim=0), dim=-1)


class CrossLayerTranscoder(PreTrainedModel):
    """A cross-layer transcoder: reads the MLP inputs of `config.layers`, writes their MLP outputs."""

    config_class = CLTConfig
    base_model_prefix = "clt"
    main_input_name = "hidden_states"
    _no_split_modules: list = []

    def __init__(self, config: CLTConfig):
        super().__init__(config)
        n, d, m = len(config.layers), config.d_in, config.dict_size
        self.encoders = nn.ModuleList(nn.Linear(d, m) for _ in range(n))
        self.activations = nn.ModuleList(build_activation(config) for _ in range(n))
        self.decoders = nn.ParameterList(nn.Parameter(torch.empty(n - i, m, d)) for i in range(n))
        self.b_dec = nn.Parameter(torch.zeros(n, d))
        self.post_init()

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            module.reset_parameters()
        elif module is self:
            bound = self.config.dict_size ** -0.5  # as a Linear(dict_size, d_in) would
            for decoder in self.decoders:
                nn.init.uniform_(decoder, -bound, bound)
            self.b_dec.zero_()

    def decoder_weights(self, i: int) -> torch.Tensor:
        """`(n - i, dict_size, d_in)`: `W_dec[i -> i..n-1]`, jointly unit-norm per latent if configured."""
        weight = self.decoders[i]
        if not self.config.normalize_decoder:
            return weight
        norm = weight.pow(2).sum(dim=(0, 2), keepdim=True).sqrt().clamp_min(1e-12)
        return weight / norm

    def encode_layer(self, i: int, hidden_states: torch.Tensor) -> tuple:
        """`(pre_activations, latents)` of layer `i` for its MLP input `(..., d_in)`."""
        pre = self.encoders[i](hidden_states)
        return pre, self.activations[i](pre)

    def decode_layer(self, j: int, latents: Sequence[torch.Tensor],
                     weights: Optional[Sequence[torch.Tensor]] = None) -> torch.Tensor:
        """Layer `j`'s reconstruction from the latents of layers `0..j` (`latents[i]` for i <= j). `weights[i]`:
        `decoder_weights(i)` if already computed in this pass (each is normalised once, not once per target)."""
        out = self.b_dec[j]
        for i in range(j + 1):
            weight = weights[i] if weights is not None else self.decoder_weights(i)
            out = out + latents[i] @ weight[j - i]
        return out

    def forward(self, hidden_states: Sequence[torch.Tensor], return_dict: bool = True) -> CLTOutput:
        """Encode each layer's MLP input (`hidden_states[i]`, `(..., d_in)`) and reconstruct every MLP output."""
        if len(hidden_states) != len(self.config.layers):
            raise ValueError(f"CrossLayerTranscoder: {len(hidden_states)} inputs for {len(self.config.layers)} layers")
        pres, latents = zip(*(self.encode_layer(i, x) for i, x in enumerate(hidden_states)))
        weights = [self.decoder_weights(i) for i in range(len(latents))]
        reconstructions = [self.decode_layer(j, latents, weights) for j in range(len(latents))]
        if not return_dict:
            return (list(latents), reconstructions)
        return CLTOutput(latents=list(latents), reconstructions=reconstructions, pre_activations=list(pres))

    def layer(self, i: int) -> CLTLayer:
        """Layer `i` as one dictionary (`CLTLayer`)."""
        return CLTLayer(self, i)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        """`PreTrainedModel.from_pretrained`, refusing missing, unexpected or mis-shaped weights (as the SAE; the
        SAE's check of the header against the config's sizes before allocation is not done for a CLT yet)."""
        from .strict_loading import load_strictly

        return load_strictly(super().from_pretrained, pretrained_model_name_or_path, *args, check_sizes=False,
                             **kwargs)

    def save_pretrained(self, save_directory, *args, **kwargs):
        """`PreTrainedModel.save_pretrained`, refusing (before writing anything) weights that hold NaN or inf."""
        state = kwargs.get("state_dict")
        check_finite_weights(state if state is not None else self.state_dict(), str(save_directory))
        return super().save_pretrained(save_directory, *args, **kwargs)


# Known to the Auto classes as soon as the class exists (see `hf_e2e_sae.auto_registration`).
AutoConfig.register(CLTConfig.model_type, CLTConfig, exist_ok=True)
AutoModel.register(CLTConfig, CrossLayerTranscoder, exist_ok=True)
