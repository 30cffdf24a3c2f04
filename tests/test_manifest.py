"""The shard manifest's schema (data_pipeline/shards/manifest.py): what loads, what is refused.

.venv/bin/python -m pytest -q tests/test_manifest.py
"""

from __future__ import annotations

import copy
import json

import pytest

from data_pipeline.errors import UserError
from data_pipeline.shards.manifest import Manifest, ShardInfo

HIST = [0] * 15 + [3]

# A manifest as `data_pipeline shard` writes it (format_version 1); the eval shard is as a writer
# older than the checksums wrote it (no "bytes", no "sha256").
WRITTEN = {
    "format": "biodistill-shards",
    "format_version": 1,
    "tokenizer": {
        "name": "dmis-lab/biobert-base-cased-v1.2",
        "vocab_size": 28996,
        "vocab_hash": "ab" * 32,
        "cls_id": 101,
        "sep_id": 102,
        "pad_id": 0,
        "mask_id": 103,
        "special_ids": [0, 100, 101, 102, 103],
    },
    "max_len": 256,
    "mode": "truncate",
    "dtype": "uint16",
    "eval_fraction": 0.001,
    "splits": {
        "train": {
            "samples": 5,
            "tokens": 1200,
            "shards": [
                {
                    "name": "train-000000.tar",
                    "samples": 3,
                    "tokens": 700,
                    "length_hist": HIST,
                    "bytes": 10240,
                    "sha256": "cd" * 32,
                },
                {
                    "name": "train-000001.tar",
                    "samples": 2,
                    "tokens": 500,
                    "length_hist": HIST,
                    "bytes": 8192,
                    "sha256": "ef" * 32,
                },
            ],
        },
        "eval": {
            "samples": 1,
            "tokens": 90,
            "shards": [
                {
                    "name": "eval-000000.tar",
                    "samples": 1,
                    "tokens": 90,
                    "length_hist": HIST,
                    "bytes": None,
                    "sha256": None,
                }
            ],
        },
    },
    "inputs": [{"path": "records/part-0000.jsonl.gz", "bytes": 4096, "sha256": "01" * 32}],
}


def test_a_written_manifest_loads_and_writes_back_the_same_json(tmp_path):
    m = Manifest.from_dict(copy.deepcopy(WRITTEN), "manifest.json")
    assert m.to_dict() == WRITTEN
    assert m.tokenizer.special_ids == (0, 100, 101, 102, 103) and m.dtype == "uint16"
    assert m.splits["eval"].shards[0].sha256 is None  # read unverified
    m.save(tmp_path)
    assert json.loads((tmp_path / "manifest.json").read_text()) == WRITTEN
    assert Manifest.load(tmp_path) == m


def test_keys_it_does_not_know_are_ignored():
    """A key a later writer adds (optional, as bytes and sha256 were) does not stop a reader."""
    d = copy.deepcopy(WRITTEN)
    d["created_by"] = "a later version"
    d["splits"]["train"]["shards"][0]["compression"] = None
    del d["splits"]["eval"]["shards"][0]["bytes"]  # absent, not only null
    assert Manifest.from_dict(d).to_dict() == WRITTEN


def test_the_writer_keeps_building_shard_records_positionally():
    info = ShardInfo("train-000000.tar", 3, 0)
    info.tokens += 5
    info.length_hist[2] += 1
    assert (info.samples, info.tokens, info.length_hist[2], info.sha256) == (3, 5, 1, None)


def _set(path: str, value):
    def change(d: dict) -> None:
        *parents, last = path.split("/")
        for p in parents:
            d = d[int(p)] if p.isdigit() else d[p]
        if value is DELETE:
            del d[last]
        else:
            d[last] = value

    return change


DELETE = object()
SHARD = "splits/train/shards/1"


@pytest.mark.parametrize(
    "change, message",
    [
        (_set("tokenizer/name", DELETE), "'tokenizer.name' is required"),
        (
            _set("tokenizer/vocab_size", "28996"),
            "tokenizer.vocab_size='28996': expected an integer",
        ),
        (_set("tokenizer/pad_id", True), "tokenizer.pad_id=True: expected an integer >= 0"),
        (_set("tokenizer/special_ids", "0 100"), "tokenizer.special_ids='0 100': expected a list"),
        (
            _set("tokenizer", [1]),
            "tokenizer=\\[1\\]: expected a mapping with keys name, vocab_size",
        ),
        (_set("max_len", 256.5), "max_len=256.5: expected an integer >= 2"),
        (_set("mode", "zip"), "mode='zip': expected one of 'truncate', 'pack'"),
        (_set("eval_fraction", "0.1"), "eval_fraction='0.1': expected a number in \\[0, 1\\]"),
        (
            _set("splits/dev", {"shards": []}),
            "unknown key 'splits.dev'; allowed in 'splits': train",
        ),
        (
            _set(f"{SHARD}/samples", -2),
            "splits.train.shards\\[1\\].samples=-2: expected an integer",
        ),
        (_set(f"{SHARD}/sha256", 7), "splits.train.shards\\[1\\].sha256=7: expected a string or"),
        (_set(f"{SHARD}/name", DELETE), "'splits.train.shards\\[1\\].name' is required"),
        (_set("inputs", {}), "inputs={}: expected a list"),
    ],
)
def test_a_bad_manifest_is_one_line_naming_the_file_and_the_key(tmp_path, change, message):
    d = copy.deepcopy(WRITTEN)
    change(d)
    (tmp_path / "manifest.json").write_text(json.dumps(d))
    with pytest.raises(UserError, match=message) as e:
        Manifest.load(tmp_path)
    assert str(e.value).startswith(f"{tmp_path / 'manifest.json'}: ")
    assert "\n" not in str(e.value)


@pytest.mark.parametrize(
    "d, message",
    [
        ([1, 2], "not a biodistill shard manifest \\(format=None\\)"),
        ({**WRITTEN, "format": "other"}, "not a biodistill shard manifest \\(format='other'\\)"),
        ({**WRITTEN, "format_version": 2}, "format_version 2 is not supported"),
    ],
)
def test_other_files_are_refused_before_the_schema(d, message):
    with pytest.raises(UserError, match=f"^m.json: {message}"):
        Manifest.from_dict(d, "m.json")
