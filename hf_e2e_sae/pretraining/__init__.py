"""The built-in base models: pretraining helpers, held-out cross-entropy and baselines, offline tokenizers."""
