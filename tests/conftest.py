"""Shared fixtures: generated PubMed corpora and a WordPiece tokenizer trained on them."""

from __future__ import annotations

from pathlib import Path

import pytest

from data_pipeline.synth import generate_corpus, train_wordpiece


@pytest.fixture(scope="session")
def small_corpus(tmp_path_factory):
    """About 600 citations in 3 baseline files and 1 update file (revisions and deletions)."""
    return generate_corpus(tmp_path_factory.mktemp("xml"), n_articles=600, n_files=3, seed=7)


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory, small_corpus) -> Path:
    """A cased BERT-style WordPiece tokenizer (vocab 2000) trained on the small corpus."""
    out = tmp_path_factory.mktemp("tokenizer")
    texts = [f"{a.expected_title} {a.expected_abstract}" for a in small_corpus.expected.values()]
    train_wordpiece(texts, out, vocab_size=2000)
    return out
