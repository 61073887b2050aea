"""hf_e2e_sae: end-to-end sparse dictionary learning for Hugging Face causal LMs."""

__version__ = "0.1.0"
