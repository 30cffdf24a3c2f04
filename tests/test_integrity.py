"""Every pipeline output proves itself (docs/design.md, Integrity): extract's report.json and
shard's manifest.json list each file with its size and SHA-256, and every consumer checks them.

Run: .venv/bin/pytest tests/test_integrity.py -q
"""

from __future__ import annotations

import gzip
import json
import logging
import re
import shutil
from pathlib import Path

import pytest
from corrupt import flip_byte, flip_token_bit

from data_pipeline.__main__ import main as cli
from data_pipeline.errors import UserError
from data_pipeline.extract import run_extract
from data_pipeline.io_utils import sha256_file
from data_pipeline.loader import LoaderConfig, MaskedBatchLoader
from data_pipeline.shards.manifest import Manifest
from data_pipeline.shards.reader import read_shard

CORRUPT_SHARD = "train-000001.tar"


# ---------------------------------------------------------------- extract -> report.json -> shard


@pytest.fixture(scope="module")
def extracted(tmp_path_factory, small_corpus) -> Path:
    """A complete extract output of the small corpus (copy it before changing it)."""
    out = tmp_path_factory.mktemp("extract") / "records"
    run_extract([str(f) for f in small_corpus.files], str(out), progress=False)
    return out


def test_report_lists_every_output_with_size_and_sha256(tmp_path, small_corpus):
    out = tmp_path / "records"
    for _ in range(2):  # the rerun rewrites nothing, and its report must still vouch for it all
        run_extract([str(f) for f in small_corpus.files], str(out), progress=False)
        report = json.loads((out / "report.json").read_text())
        listed = {e["output"]: e for e in report["files"]}
        assert set(listed) == {p.name for p in out.glob("*.jsonl.gz")} and len(listed) == 4
        for name, entry in listed.items():
            assert entry["output_bytes"] == (out / name).stat().st_size
            assert entry["output_sha256"] == sha256_file(out / name)


def _rewrite_half(path: Path) -> None:
    """A valid gzip holding the first half of the records: what a cut-off writer leaves."""
    with gzip.open(path, "rb") as f:
        lines = f.readlines()
    with gzip.open(path, "wb") as f:
        f.writelines(lines[: len(lines) // 2])


def _first_output(d: Path) -> Path:
    return sorted(d.glob("*.jsonl.gz"))[0]


# (case, damage, what the error says, whether --allow-partial can still shard what is left)
EXTRACT_DAMAGE = [
    (
        "killed before the report",
        lambda d: (d / "report.json").unlink(),
        r"no report\.json \(extract writes it last: an interrupted run leaves none\)",
        True,
    ),
    (
        "listed output removed",
        lambda d: _first_output(d).unlink(),
        r"{name}: listed in report\.json but missing",
        True,
    ),
    (
        "listed output truncated",
        lambda d: _rewrite_half(_first_output(d)),
        r"{name}: \d+ bytes, report\.json lists \d+",
        True,
    ),
    (
        "listed output changed in place",
        lambda d: flip_byte(_first_output(d)),
        r"{name}: SHA-256 [0-9a-f]{12}\.\.\. differs from report\.json's",
        False,  # a flipped byte in a gzip stream is unreadable: nothing to shard either way
    ),
    (
        "unlisted output",
        lambda d: shutil.copyfile(_first_output(d), d / "extra.jsonl.gz"),
        r"extra\.jsonl\.gz: not listed in report\.json",
        True,
    ),
]


@pytest.mark.parametrize(
    "damage,message,usable", [c[1:] for c in EXTRACT_DAMAGE], ids=[c[0] for c in EXTRACT_DAMAGE]
)
def test_shard_refuses_an_incomplete_extract_output(
    tmp_path, capsys, extracted, tokenizer_dir, damage, message, usable
):
    records = tmp_path / "records"
    shutil.copytree(extracted, records)
    first = _first_output(records).name
    damage(records)
    argv = ["shard", "--input", str(records), "--tokenizer", str(tokenizer_dir)]
    argv += ["--output", str(tmp_path / "shards"), "--max-len", "32", "--samples-per-shard", "64"]
    assert cli(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {records}: incomplete or changed extract output: ")
    assert len(err.strip().splitlines()) == 1
    assert re.search(message.replace("{name}", re.escape(first)), err), err
    assert "or pass --allow-partial to use the files that are there" in err
    assert not (tmp_path / "shards" / "manifest.json").exists()
    if not usable:
        return
    assert cli([*argv, "--allow-partial"]) == 0
    err = capsys.readouterr().err
    assert f"warning: {records}: using a partial extract output (--allow-partial): " in err
    assert Manifest.load(tmp_path / "shards").splits["train"].samples > 0


def test_complete_extract_output_and_other_inputs_need_no_report(tmp_path, extracted, capsys):
    from data_pipeline.records import resolve_inputs

    complete = resolve_inputs([str(extracted)])
    assert complete.total_records == json.loads((extracted / "report.json").read_text())[
        "records_out"
    ] and set(complete.sha256) == set(complete.files)
    # A directory of records that no extract made (no report.json, no .parts/) is read as it is.
    plain = tmp_path / "plain"
    plain.mkdir()
    shutil.copyfile(_first_output(extracted), plain / "a.jsonl.gz")
    assert [f.name for f in resolve_inputs([str(plain)]).files] == ["a.jsonl.gz"]
    assert capsys.readouterr().err == ""


# ---------------------------------------------------------------- shard -> manifest.json -> loader


def test_manifest_lists_each_shard_with_its_size_and_sha256(tiny_shards):
    m = Manifest.load(tiny_shards)
    shards = [s for split in m.splits.values() for s in split.shards]
    assert len(shards) > 2
    for s in shards:
        assert s.bytes == (tiny_shards / s.name).stat().st_size
        assert s.sha256 == sha256_file(tiny_shards / s.name)
    raw = json.loads((tiny_shards / "manifest.json").read_text())
    assert {"bytes", "sha256"} <= set(raw["splits"]["train"]["shards"][0])


def _copy_shards(tiny_shards: Path, tmp_path: Path) -> Path:
    d = tmp_path / "shards"
    shutil.copytree(tiny_shards, d)
    return d


def _loader(d: Path, **kw) -> MaskedBatchLoader:
    return MaskedBatchLoader(d, LoaderConfig(batch_size=4, seed=3, debug_keys=True, **kw))


def test_loader_refuses_a_shard_with_one_flipped_bit(tmp_path, tiny_shards):
    d = _copy_shards(tiny_shards, tmp_path)
    m = Manifest.load(d)
    flip_token_bit(d / CORRUPT_SHARD, m.tokenizer.vocab_size)
    shard = m.splits["train"].shards[1]
    # The one read the loader does: structure, count and ids all look right, the digest does not.
    with pytest.raises(UserError) as e:
        read_shard(str(d / CORRUPT_SHARD), shard.samples, m.tokenizer.vocab_size, shard.sha256)
    assert str(e.value).startswith(
        f"shard {d / CORRUPT_SHARD}: corrupt (SHA-256 differs from manifest.json: the file "
        "hashes to "
    )
    assert f"the manifest lists {shard.sha256[:16]}...); restore or re-make the shard" in str(
        e.value
    )
    assert len(read_shard(str(d / CORRUPT_SHARD), shard.samples, m.tokenizer.vocab_size)) == (
        shard.samples
    )  # unverified, it would have been read as good data
    loader = _loader(d)
    with pytest.raises(UserError, match=rf"shard {d / CORRUPT_SHARD}: corrupt \(SHA-256 "):
        it = iter(loader)
        for _ in range(2 * loader.batches_per_epoch):
            next(it)
    loader.close()


@pytest.mark.parametrize("workers", [0, 1])
def test_skip_corrupt_skips_and_counts_a_flipped_shard(tmp_path, tiny_shards, caplog, workers):
    d = _copy_shards(tiny_shards, tmp_path)
    flip_token_bit(d / CORRUPT_SHARD, Manifest.load(d).tokenizer.vocab_size)
    loader = _loader(d, skip_corrupt=True, num_workers=workers)
    n = loader.batches_per_epoch
    with caplog.at_level(logging.WARNING, logger="data_pipeline.loader"):
        it = iter(loader)
        batches = [next(it) for _ in range(2 * n)]
    loader.close()
    assert len(batches) == 2 * n and all(b["input_ids"].shape[0] == 4 for b in batches)
    assert not any(k.startswith(CORRUPT_SHARD) for b in batches for k in b["keys"])
    assert all("_skipped_corrupt" not in b for b in batches)
    assert loader.skipped_corrupt == 1
    if workers == 0:  # a worker logs in its own process
        assert f"skipping shard {d / CORRUPT_SHARD} (skip_corrupt=True)" in caplog.text
        assert "SHA-256 differs from manifest.json" in caplog.text


def test_manifest_without_checksums_still_loads_and_reads_unverified(tmp_path, tiny_shards, capsys):
    d = _copy_shards(tiny_shards, tmp_path)
    raw = json.loads((d / "manifest.json").read_text())
    for split in raw["splits"].values():
        for s in split["shards"]:
            del s["sha256"], s["bytes"]
    (d / "manifest.json").write_text(json.dumps(raw))
    m = Manifest.load(d)
    assert all(s.sha256 is None and s.bytes is None for s in m.splits["train"].shards)
    flip_token_bit(d / CORRUPT_SHARD, m.tokenizer.vocab_size)
    loader = _loader(d)
    it = iter(loader)
    assert len([next(it) for _ in range(loader.batches_per_epoch)]) == loader.batches_per_epoch
    loader.close()
    assert loader.skipped_corrupt == 0
    assert cli(["inspect", str(d), "--verify", "--samples", "0"]) == 0
    out = capsys.readouterr().out
    assert "shards have no SHA-256 in manifest.json (made before shard recorded checksums" in out
    assert "verified: 0 of" in out


# ---------------------------------------------------------------- inspect --verify


def test_inspect_verify_names_each_bad_shard(tmp_path, tiny_shards, capsys):
    d = _copy_shards(tiny_shards, tmp_path)
    total = sum(len(s.shards) for s in Manifest.load(d).splits.values())
    assert cli(["inspect", str(d), "--samples", "0"]) == 0
    assert cli(["inspect", str(d), "--verify", "--samples", "0"]) == 0
    assert f"verified: {total} of {total} shards match manifest.json" in capsys.readouterr().out
    flip_token_bit(d / CORRUPT_SHARD, Manifest.load(d).tokenizer.vocab_size)
    (d / "train-000002.tar").write_bytes((d / "train-000002.tar").read_bytes()[:-1024])
    (d / "eval-000000.tar").unlink()
    assert cli(["inspect", str(d), "--verify", "--samples", "0"]) == 2
    captured = capsys.readouterr()
    assert captured.err.strip() == (
        f"error: {d}: 3 of {total} shards fail verification: "
        f"{CORRUPT_SHARD} (corrupt: SHA-256 differs from manifest.json), "
        f"train-000002.tar ({(d / 'train-000002.tar').stat().st_size} bytes, manifest.json "
        f"lists {(d / 'train-000002.tar').stat().st_size + 1024}), eval-000000.tar (missing)"
    )
    assert f"  BAD {CORRUPT_SHARD} (corrupt: SHA-256 differs from manifest.json)" in captured.out
