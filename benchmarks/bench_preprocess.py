"""Preprocessing speed: our extract + shard against the paper's way, on one generated corpus.

    python benchmarks/run.py --only preprocess [--quick]

The paper's code (its preprocessing.py) tokenized PubMed with Hugging Face `datasets`: load the
records, `Dataset.map` a batched fast-tokenizer call with truncation to 256 and the special-tokens
mask, keep the columns, `save_to_disk`. We time that and our `shard` on the same extract output,
with the same tokenizer, one process each (per-core rates), in the same run; then `shard --workers
2` for scaling. Both sides are timed after importing transformers and datasets and loading the
tokenizer once (a one-off second or two that a 40M-citation job pays once).

The corpus is the generated one with its long tail on (synth.make_article: rare gene symbols,
variant/trial ids, compounds, numbers, non-ASCII measurements). Without it the generated text has
a few thousand distinct words, which would flatter `shard`'s piece cache (token_ids.py): the
share of distinct pieces among all, which sets how often the cache misses, is in the settings.
Figures:
- preprocess/speedup_vs_datasets_map: datasets path time / our shard time, 1 core each (goal >= 2).
- preprocess/extract_records_per_s, shard_records_per_s, shard_tokens_per_s (1 core).
- preprocess/shard_scaling_2_workers: shard time at 1 worker / at 2 workers (linear = 2.0).
- preprocess/full_baseline_hours_16_cores: 40M citations through extract + shard on 16 cores,
  from the measured per-core rates assuming linear scaling (an estimate, stated as one).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from benchmarks.common import corpus_with_tokenizer, count_records, timed
from data_pipeline.extract import run_extract
from data_pipeline.shards.manifest import Manifest
from data_pipeline.shards.writer import run_shard

# NOTE: per-core rates need single-threaded tokenizers on both sides (the Rust tokenizer otherwise
# spreads a batch over every core).
os.environ["TOKENIZERS_PARALLELISM"] = "false"

FULL_BASELINE_CITATIONS = 40_000_000
MAX_LEN = 256


def datasets_map_way(records: Path, tokenizer: Path, out: Path) -> int:
    """The paper's preprocessing (its preprocessing.py): the records as a `datasets` dataset, a
    batched map of the same fast-tokenizer call (title without brackets + " " + abstract,
    truncation 256, special-tokens mask), the columns kept, `save_to_disk`."""
    import datasets
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tokenizer))
    files = sorted(str(p) for p in records.glob("*.jsonl.gz"))
    ds = datasets.load_dataset(
        "json", data_files=files, split="train", cache_dir=str(out / "cache")
    )

    def tokenize(batch):
        texts = [
            (t.replace("[", "").replace("]", "").strip() + " " + a.strip()).strip()
            for t, a in zip(batch["title"], batch["abstract"], strict=True)
        ]
        return tok(texts, truncation=True, max_length=MAX_LEN, return_special_tokens_mask=True)

    ds = ds.map(tokenize, batched=True, num_proc=None)
    ds.save_to_disk(str(out / "tokenized"))
    return len(ds)


def distinct_piece_share(records: Path) -> float:
    """Distinct " "-separated pieces over all pieces of the records' texts (title + abstract)."""
    from data_pipeline.records import iter_records, resolve_inputs

    seen: set[str] = set()
    total = 0
    for rec in iter_records(resolve_inputs([str(records)])):
        pieces = rec.text.split(" ")
        seen.update(pieces)
        total += len(pieces)
    return len(seen) / max(total, 1)


def run(quick: bool) -> Iterator[dict]:
    import datasets  # noqa: F401 - imported before any timing (see the module docstring)
    from transformers import AutoTokenizer

    n = 20_000 if quick else 100_000
    settings = {
        "articles": n,
        "max_len": MAX_LEN,
        "mode": "truncate",
        "tokenizer": "WordPiece 8k",
        "corpus": "generated, long tail",
    }
    with tempfile.TemporaryDirectory(prefix="bench-preprocess-") as tmp:
        root = Path(tmp)
        xml, tok = corpus_with_tokenizer(root, n, long_tail=True)
        AutoTokenizer.from_pretrained(str(tok))  # transformers' lazy imports, before any timing
        t: dict[str, float] = {}
        with timed("extract_1_worker", t):
            run_extract([str(xml)], str(root / "records"), workers=1, progress=False)
        records = count_records(root / "records")
        settings["distinct_piece_share"] = round(distinct_piece_share(root / "records"), 4)
        with timed("shard_1_worker", t):
            run_shard(
                [str(root / "records")],
                str(tok),
                str(root / "s1"),
                max_len=MAX_LEN,
                workers=1,
                progress=False,
            )
        with timed("shard_2_workers", t):
            run_shard(
                [str(root / "records")],
                str(tok),
                str(root / "s2"),
                max_len=MAX_LEN,
                workers=2,
                progress=False,
            )
        with timed("datasets_map_1_proc", t):
            n_ds = datasets_map_way(root / "records", tok, root / "hf")
        m = Manifest.load(root / "s1")
        tokens = sum(s.tokens for s in m.splits.values())
        samples = sum(s.samples for s in m.splits.values())
        if samples != n_ds:
            raise RuntimeError(f"sample counts differ: shard {samples}, datasets {n_ds}")

    def fig(metric: str, value: float, unit: str, **extra) -> dict:
        return {
            "metric": metric,
            "value": round(value, 3),
            "unit": unit,
            "settings": {**settings, **extra},
        }

    extract_rate = n / t["extract_1_worker"]
    shard_rate = records / t["shard_1_worker"]
    yield fig(
        "speedup_vs_datasets_map",
        t["datasets_map_1_proc"] / t["shard_1_worker"],
        "x",
        records=records,
        ours_s=round(t["shard_1_worker"], 2),
        datasets_s=round(t["datasets_map_1_proc"], 2),
    )
    yield fig("extract_records_per_s", extract_rate, "records/s", workers=1)
    yield fig("shard_records_per_s", shard_rate, "records/s", workers=1)
    yield fig("shard_tokens_per_s", tokens / t["shard_1_worker"], "tokens/s", workers=1)
    yield fig("shard_scaling_2_workers", t["shard_1_worker"] / t["shard_2_workers"], "x", ideal=2.0)
    hours = (
        (FULL_BASELINE_CITATIONS / extract_rate + FULL_BASELINE_CITATIONS / shard_rate) / 16 / 3600
    )
    yield fig(
        "full_baseline_hours_16_cores",
        hours,
        "h",
        citations=FULL_BASELINE_CITATIONS,
        assumption="linear scaling over 16 cores from the 1-core rates; every citation "
        "counted in both stages (an upper bound: citations without abstract are dropped)",
    )
