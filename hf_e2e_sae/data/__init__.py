"""Data: corpora (built-in and local files), tokenization and packing into chunks, and the activation cache.

Submodules are imported where used (`data.pipeline` imports `datasets`), so `import hf_e2e_sae` stays cheap.
"""
