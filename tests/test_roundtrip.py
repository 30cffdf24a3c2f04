"""End to end: PubMed XML -> extract -> shard -> stock webdataset -> the source text's token ids.

.venv/bin/python -m pytest tests/test_roundtrip.py -q
"""

from __future__ import annotations

import json

import numpy as np
import webdataset as wds
from transformers import AutoTokenizer

from data_pipeline.__main__ import main as cli
from data_pipeline.extract import run_extract
from data_pipeline.shards.manifest import Manifest
from data_pipeline.shards.writer import run_shard


def test_xml_to_shards_roundtrip(small_corpus, tokenizer_dir, tmp_path):
    records, shards = tmp_path / "records", tmp_path / "shards"
    report = run_extract([str(p) for p in small_corpus.files], str(records), progress=False)
    with_abstract = {p: a for p, a in small_corpus.expected.items() if a.expected_abstract}
    assert report["records_out"] == len(with_abstract)

    run_shard(
        [str(records)],
        str(tokenizer_dir),
        str(shards),
        max_len=64,
        eval_fraction=0.1,
        samples_per_shard=100,
        progress=False,
    )
    manifest = Manifest.load(shards)
    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))

    seen: dict[int, np.ndarray] = {}
    for info in manifest.splits.values():
        urls = [str(shards / s.name) for s in info.shards]
        # NOTE: stock webdataset, no project code, reads the shards.
        for sample in wds.WebDataset(urls, shardshuffle=False, empty_check=False).decode():
            meta = sample["json"]
            ids = sample["input_ids.npy"]
            assert ids.dtype == np.uint16 and len(ids) == meta["n_tokens"] <= 64
            assert meta["pmid"] not in seen, f"pmid {meta['pmid']} in two samples"
            seen[meta["pmid"]] = ids
    assert set(seen) == set(with_abstract)
    assert 0 < manifest.splits["eval"].samples < manifest.splits["train"].samples

    for pmid, article in with_abstract.items():
        text = f"{article.expected_title} {article.expected_abstract}"
        want = tok(text, truncation=True, max_length=64)["input_ids"]
        assert seen[pmid].tolist() == want, f"pmid {pmid}: ids differ from the source text's"
    # Revised citations carry the update file's text, deleted ones are gone.
    assert small_corpus.revised & set(seen) and not small_corpus.deleted & set(seen)


def test_cli_runs_the_pipeline_and_reports_errors(small_corpus, tokenizer_dir, tmp_path, capsys):
    records, shards = tmp_path / "records", tmp_path / "shards"
    xml = [str(p) for p in small_corpus.files]
    assert cli(["extract", "--input", *xml, "--output", str(records), "--workers", "2"]) == 0
    report = json.loads((records / "report.json").read_text())
    assert report["deletions"] == len(small_corpus.deleted)
    args = [
        "shard",
        "--input",
        str(records),
        "--tokenizer",
        str(tokenizer_dir),
        "--output",
        str(shards),
        "--max-len",
        "32",
        "--mode",
        "pack",
        "--samples-per-shard",
        "50",
    ]
    assert cli(args) == 0
    assert Manifest.load(shards).mode == "pack"
    assert cli(["inspect", str(shards), "--samples", "1"]) == 0
    assert "pack" in capsys.readouterr().out

    capsys.readouterr()
    assert cli(["inspect", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "nowhere" in err and len(err.splitlines()) == 1
