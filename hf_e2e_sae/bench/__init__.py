"""`hf-e2e-sae bench`: our training steps side by side with a plain-torch lower bound and the peers."""
