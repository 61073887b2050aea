"""Looking inside saved runs: the feature browser (`browse`) and the paper's geometry comparison (`geometry`).

This layer opens runs (models, tokenizers, held-out data) and drives `hf_e2e_sae.evaluation`'s statistics,
geometry and site writer; it sits above `hub` and below `cli`.
"""
