"""Exports: Hugging Face model directories (hf_export; `python -m trainer.export`), model cards,
pushing to the Hub."""
