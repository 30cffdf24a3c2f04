"""Downstream evaluation of compact biomedical models: NER, RE and QA on BioBERT's benchmarks.

python -m evaluation run --models DIR_OR_NAME [...] --tasks ner,re,qa --data DIR --output DIR
"""
