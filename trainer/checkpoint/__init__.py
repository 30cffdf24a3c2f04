"""Checkpoints: the store (save, verify, load, the COMPLETE.json marker) and elastic resume on
another number of ranks."""
