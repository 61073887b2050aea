"""Model card templates for SAEs published by hf_e2e_sae (shipped as package data)."""
