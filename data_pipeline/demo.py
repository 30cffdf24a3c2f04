"""The embedded demo corpus: generated PubMed XML -> extract -> WordPiece tokenizer -> shards.

    python -m data_pipeline demo [--output data/demo] [--articles 4000] [--workers 2]

Everything is made offline by the pipeline's own commands, so the demo exercises exactly the code a
real PubMed run does. Each step is skipped when its output is already complete, so `make demo`
builds the corpus once. Layout under --output:

    xml/        pubmed26n0001.xml.gz ... (baseline) + one update file (revisions, deletions)
    records/    extract output (*.jsonl.gz, report.json)
    tokenizer/  cased BERT-style WordPiece tokenizer (Hugging Face directory)
    shards/     train-*.tar, eval-*.tar, manifest.json
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

from data_pipeline.extract import run_extract
from data_pipeline.io_utils import atomic_write_json, check_writable_dir
from data_pipeline.manifest import MANIFEST_NAME, Manifest
from data_pipeline.records import iter_records, resolve_inputs
from data_pipeline.shards import run_shard
from data_pipeline.synth import generate_corpus, train_wordpiece

DEFAULT_OUTPUT = "data/demo"
DEMO_MAX_LEN = 128  # the demo's tiny models train in minutes on 2 CPU cores at this length
DEMO_VOCAB = 4096


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--output", default=DEFAULT_OUTPUT, help="demo directory (default: %(default)s)")
    p.add_argument("--articles", type=int, default=4000, help="citations in the baseline")
    p.add_argument("--files", type=int, default=8, help="baseline files (plus one update file)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--seed", type=int, default=2023)


def build_demo(
    output: str | Path = DEFAULT_OUTPUT,
    articles: int = 4000,
    files: int = 8,
    workers: int = 2,
    seed: int = 2023,
    log=print,
) -> Path:
    """Build (or complete) the demo corpus; returns the shard directory."""
    root = check_writable_dir(output)
    xml_dir, records, tok_dir, shards = (
        root / d for d in ("xml", "records", "tokenizer", "shards")
    )

    xml_done = xml_dir / ".complete.json"
    settings = {"articles": articles, "files": files, "seed": seed}
    if not xml_done.exists() or json.loads(xml_done.read_text()) != settings:
        log(f"demo: generating {articles} PubMed citations in {files} files + 1 update file")
        shutil.rmtree(xml_dir, ignore_errors=True)
        generate_corpus(xml_dir, n_articles=articles, n_files=files, seed=seed)
        atomic_write_json(xml_done, settings)

    log("demo: extract")
    run_extract([str(xml_dir)], str(records), workers=workers, progress=False)

    if not (tok_dir / "tokenizer.json").exists():
        log(f"demo: training a cased WordPiece tokenizer (vocab {DEMO_VOCAB})")
        # NOTE: trained into a temporary directory renamed into place, so a crash mid-save never
        # leaves a tokenizer directory that looks complete.
        tmp = Path(tempfile.mkdtemp(prefix=".tokenizer.", dir=root))
        texts = (r.text for r in iter_records(resolve_inputs([str(records)])))
        train_wordpiece(texts, tmp, vocab_size=DEMO_VOCAB)
        shutil.rmtree(tok_dir, ignore_errors=True)
        tmp.rename(tok_dir)

    if not (shards / MANIFEST_NAME).exists():
        log("demo: shard")
    run_shard(
        [str(records)],
        str(tok_dir),
        str(shards),
        max_len=DEMO_MAX_LEN,
        eval_fraction=0.05,
        workers=workers,
        samples_per_shard=256,
        progress=False,
    )
    manifest = Manifest.load(shards)
    train, held = manifest.splits["train"], manifest.splits["eval"]
    log(
        f"demo: ready in {shards}: {train.samples} train samples in {len(train.shards)} shards, "
        f"{held.samples} eval samples, {train.tokens + held.tokens:,} tokens"
    )
    return shards


def main(args: argparse.Namespace) -> int:
    build_demo(args.output, args.articles, args.files, args.workers, args.seed)
    return 0


if __name__ == "__main__":
    from data_pipeline.__main__ import main as cli

    sys.exit(cli(["demo", *sys.argv[1:]]))
