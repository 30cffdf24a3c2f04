"""Shared pieces of the benchmarks: timing, and one generated corpus + tokenizer per run."""

from __future__ import annotations

import json
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from data_pipeline.demo.synth import generate_corpus, train_wordpiece


class Skipped(Exception):  # noqa: N818 - a benchmark's outcome, not an error
    """Raised by a benchmark's `run` when it cannot measure on this machine (the reason as its
    message); benchmarks/run.py reports it as skipped, not as a benchmark that gave nothing."""


@contextmanager
def timed(label: str, box: dict):
    """Wall time of the block into box[label], reported on stderr."""
    t0 = time.perf_counter()
    yield
    box[label] = time.perf_counter() - t0
    print(f"   {label}: {box[label]:.2f} s", file=sys.stderr, flush=True)


def corpus_with_tokenizer(
    root: Path, n_articles: int, vocab_size: int = 8000, long_tail: bool = False
) -> tuple[Path, Path]:
    """Generated PubMed XML (baseline files only) and a cased WordPiece tokenizer trained on it
    (`long_tail`: with rare terms and non-ASCII measurements, see synth.make_article)."""
    xml = root / "xml"
    corpus = generate_corpus(
        xml, n_articles=n_articles, n_files=8, seed=11, update=False, long_tail=long_tail
    )
    texts = (f"{a.expected_title} {a.expected_abstract}" for a in corpus.expected.values())
    tok = root / "tokenizer"
    train_wordpiece(texts, tok, vocab_size=vocab_size)
    return xml, tok


def count_records(records_dir: Path) -> int:
    return json.loads((records_dir / "report.json").read_text())["records_out"]
