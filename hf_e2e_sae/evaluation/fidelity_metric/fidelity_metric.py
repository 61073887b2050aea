"""The SAE fidelity metrics of `hf_e2e_sae.evaluate` as an `evaluate` module (loadable offline by path).

    import evaluate
    from hf_e2e_sae.evaluation.fidelity import FIDELITY_METRIC_PATH, fidelity_inputs
    metric = evaluate.load(FIDELITY_METRIC_PATH)
    for batch in batches:
        metric.add_batch(**fidelity_inputs(model, batch))      # model: an SAEPatchedModel (one SAE)
    metric.compute()   # same numbers as hf_e2e_sae.evaluate(model, batches), keys without the site suffix

Any SAE can be scored this way, not only hf_e2e_sae ones: give each example's input ids, attention mask,
the logits of the clean and the patched run, and the SAE's input, latents and reconstruction. Note that
`evaluate` stores every added example (logits and latents included) until `compute()`: use it on modest
evaluation sets, or `hf_e2e_sae.evaluate`, which streams.
"""
import datasets
import evaluate
import torch

from hf_e2e_sae.evaluation.metrics import _finalise, _logit_sums, _merge_site, _site_sums

_FLOAT_MATRIX = datasets.Sequence(datasets.Sequence(datasets.Value("float32")))
_FEATURES = datasets.Features({
    "input_ids": datasets.Sequence(datasets.Value("int64")),
    "attention_mask": datasets.Sequence(datasets.Value("int64")),
    "logits_orig": _FLOAT_MATRIX,
    "logits_sae": _FLOAT_MATRIX,
    "sae_input": _FLOAT_MATRIX,
    "latents": _FLOAT_MATRIX,
    "reconstruction": _FLOAT_MATRIX,
})
_KWARGS = """
Args (one example = one sequence of T tokens):
    input_ids (T,), attention_mask (T,): the tokens and which are real (1) or padding (0).
    logits_orig, logits_sae (T, vocab): logits of the clean model and of the model with the SAE spliced in.
    sae_input, reconstruction (T, d_in): the activation the SAE replaced and its reconstruction.
    latents (T, dict_size): the SAE's latents.
Returns: ce_loss_orig, ce_loss_sae, ce_loss_increase, kl (KL(P_orig || P_sae)), top1_agreement,
    total_variation, n_tokens, l0, alive, explained_variance, mse, norm_ratio.
"""


class _Record:
    """One example shaped like `SiteOutput` for the library's own per-site sums."""

    def __init__(self, x, latents, reconstruction):
        self.target, self.latents, self.reconstruction = x, latents, reconstruction


@evaluate.utils.file_utils.add_start_docstrings(__doc__, _KWARGS)
class FidelityMetric(evaluate.Metric):
    """CE loss increase, KL, top-1 agreement, L0, explained variance, ... of a sparse autoencoder."""

    def _info(self):
        return evaluate.MetricInfo(
            description=__doc__, citation="Braun et al. 2024, arXiv:2405.12241", inputs_description=_KWARGS,
            features=_FEATURES, module_type="metric")

    def _compute(self, input_ids, attention_mask, logits_orig, logits_sae, sae_input, latents, reconstruction,
                 chunk_tokens: int = 1024):
        logit_sums: dict = {}
        site: dict = {}
        for i in range(len(input_ids)):
            ids = torch.tensor(input_ids[i]).unsqueeze(0)
            mask = torch.tensor(attention_mask[i]).unsqueeze(0)
            orig, sae = (torch.tensor(t[i]).unsqueeze(0) for t in (logits_orig, logits_sae))
            for key, value in _logit_sums(orig, sae, ids, mask, chunk_tokens).items():
                logit_sums[key] = logit_sums.get(key, 0.0) + value
            record = _Record(*(torch.tensor(t[i]).unsqueeze(0) for t in (sae_input, latents, reconstruction)))
            _merge_site(site, _site_sums(record, mask))
        if not logit_sums.get("n_tokens"):
            raise ValueError("FidelityMetric: no (unmasked) tokens were added")
        metrics = _finalise(logit_sums, {"sae": site}, {})
        return {key.replace("/sae", ""): value for key, value in metrics.items()}
