"""Tests of `data_pipeline shard` (records -> token shards) and `data_pipeline inspect`.

    .venv/bin/pytest tests/test_shard.py -q

Shards are read back with stock `webdataset` only, and token ids are compared with the Hugging Face
tokenizer's own `tokenizer(text, truncation=True, max_length=...)`, so nothing here trusts the code
under test to check itself.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import re
import tarfile
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds

from data_pipeline import token_ids
from data_pipeline.errors import UserError
from data_pipeline.io_utils import sha256_file
from data_pipeline.records import resolve_inputs
from data_pipeline.shards import writer as shards
from data_pipeline.shards.inspect_shards import inspect
from data_pipeline.shards.manifest import Manifest, length_bin, load_tokenizer

# Extra records where the prefix cut is hard: one long word across the budget, no whitespace at
# all, whitespace runs and odd spaces, control characters, CJK, combining marks.
ODD = {
    1: ("Long word.", "alpha " * 30 + "x" * 3000 + " tail words here"),
    2: ("", "nowhitespace" * 400),
    3: ("Runs", ("gene  \t\n  expression   " * 60) + "\u3000end\xa0of\x1ctext"),
    4: ("CJK", "肿瘤 细胞 " * 200 + "cafe\u0301 " * 50),
    5: ("Only a title with [SEP] and [CLS] inside.", ""),
}


def doc_text(title: str, abstract: str) -> str:
    return f"{title} {abstract}" if title and abstract else title or abstract


def eval_side(key: str, fraction: float) -> bool:
    return int.from_bytes(hashlib.blake2b(key.encode()).digest()[:8], "big") / 2**64 < fraction


def write_jsonl_gz(path: Path, rows: list[dict]) -> Path:
    with gzip.open(path, "wt", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    return path


@pytest.fixture(scope="module")
def docs(small_corpus) -> dict[int, str]:
    out = {pmid: doc_text(*ODD[pmid]) for pmid in ODD}
    for pmid, a in small_corpus.expected.items():
        out[pmid] = doc_text(a.expected_title, a.expected_abstract)
    return out


@pytest.fixture(scope="module")
def jsonl(tmp_path_factory, small_corpus) -> Path:
    rows = [{"pmid": p, "version": 1, "title": t, "abstract": a} for p, (t, a) in ODD.items()]
    rows += [
        {
            "pmid": a.pmid,
            "version": a.version,
            "title": a.expected_title,
            "abstract": a.expected_abstract,
        }
        for a in small_corpus.expected.values()
    ]
    return write_jsonl_gz(tmp_path_factory.mktemp("records") / "records.jsonl.gz", rows)


@pytest.fixture(scope="module")
def hf_tok(tokenizer_dir):
    return load_tokenizer(str(tokenizer_dir))


def read_split(directory: Path, split: str) -> list[tuple[str, np.ndarray, dict]]:
    """Every sample of a split, read by stock webdataset from the tar files on disk."""
    urls = [str(p) for p in sorted(directory.glob(f"{split}-*.tar"))]
    if not urls:
        return []
    ds = wds.WebDataset(urls, shardshuffle=False).decode()
    return [(s["__key__"], s["input_ids.npy"], s["json"]) for s in ds]


def all_bytes(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def shard(inputs, tok_dir, out, **kw) -> Manifest:
    kw.setdefault("progress", False)
    return shards.run_shard([str(i) for i in inputs], str(tok_dir), str(out), **kw)


def test_truncate_round_trip_with_stock_webdataset(tmp_path, jsonl, docs, hf_tok, tokenizer_dir):
    m = shard(
        [jsonl], tokenizer_dir, tmp_path, max_len=64, eval_fraction=0.1, samples_per_shard=100
    )
    seen = {}
    for split in ("train", "eval"):
        samples = read_split(tmp_path, split)
        assert [k for k, _, _ in samples] == [f"{i:012d}" for i in range(len(samples))]
        for _, ids, meta in samples:
            pmid = meta["pmid"]
            assert eval_side(f"pmid:{pmid}", 0.1) == (split == "eval")
            assert ids.dtype == np.uint16 and meta["n_tokens"] == len(ids)
            expected = hf_tok(docs[pmid], truncation=True, max_length=64)["input_ids"]
            assert ids.tolist() == expected, pmid
            seen[pmid] = split
        # The manifest says exactly what the tars hold.
        info = m.splits[split]
        assert [s.name for s in info.shards] == [
            f"{split}-{i:06d}.tar" for i in range(len(info.shards))
        ]
        assert info.samples == len(samples) and info.tokens == sum(len(i) for _, i, _ in samples)
        hist = [0] * 16
        for _, ids, _ in samples:
            hist[length_bin(len(ids), 64)] += 1
        assert [sum(h) for h in zip(*(s.length_hist for s in info.shards), strict=True)] == hist
        assert all(s.samples == 100 for s in info.shards[:-1]) and info.shards[-1].samples <= 100
    assert set(seen) == set(docs) and 0 < list(seen.values()).count("eval") < len(docs) / 4
    assert Manifest.load(tmp_path).to_dict() == m.to_dict() and m.dtype == "uint16"
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_prefix_trick_gives_the_ids_of_full_tokenization(docs, hf_tok):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    texts = list(docs.values()) + ["a  " * 900, "x" * 5000, " lead " * 400, "tab\tsep\n" * 500]
    bpe = Tokenizer(models.BPE())  # byte-level BPE: groups whitespace runs, unlike WordPiece
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.train_from_iterator(texts[:200], trainers.BpeTrainer(vocab_size=500, show_progress=False))
    for tok in (token_ids.backend_tokenizer(hf_tok), bpe):
        full = [e.ids for e in tok.encode_batch(texts, add_special_tokens=False)]
        # budget = the real one, and budgets so small that most prefixes fall short (fallback).
        for keep, budget in [(62, 64 * 8), (254, 256 * 8), (30, 40), (126, 300), (6, 3)]:
            flat, offsets = token_ids.tokenize_texts(tok, texts, keep, budget)
            got = [flat[a:b].tolist() for a, b in zip(offsets[:-1], offsets[1:], strict=True)]
            assert got == [ids[:keep] for ids in full], (keep, budget)
    assert token_ids.prefix_end("abc def", 3) == 3 and token_ids.prefix_end("ab  cd", 3) is None


@pytest.mark.parametrize("max_len", [64, 128, 256])
def test_adaptive_prefix_gives_the_ids_of_full_tokenization(docs, hf_tok, max_len):
    keep = max_len - 2
    # Generated abstracts (real-sized), the odd records, long and whitespace-free texts, and texts
    # with far more characters a token than abstracts: once the budget has learnt the abstracts,
    # their prefixes come out short and must fall back to the whole text.
    sparse = ("a" + " " * 15) * 400
    extra = ["word " * 2000, "x" * 6000, "肿瘤细胞" * 1500, sparse, "nowhitespace" * 800]
    texts = list(docs.values())
    texts = texts[:300] + extra + texts[300:] + extra
    tok, budget = token_ids.backend_tokenizer(hf_tok), token_ids.PrefixBudget(keep)
    got = []
    for start in range(0, len(texts), 50):  # many batches: the budget learns from the first
        flat, offsets = token_ids.tokenize_texts(tok, texts[start : start + 50], keep, budget)
        got += [flat[a:b].tolist() for a, b in zip(offsets[:-1], offsets[1:], strict=True)]
    for text, ids in zip(texts, got, strict=True):
        assert ids == hf_tok(text, truncation=True, max_length=max_len)["input_ids"][1:-1], text
    assert budget.chars < keep * token_ids.CHARS_PER_TOKEN * 0.9  # tighter than the start
    assert budget.cut > len(texts) // 5 and 2 <= budget.short <= 0.1 * budget.cut


def test_pack_round_trip(tmp_path, jsonl, docs, hf_tok, tokenizer_dir):
    max_len, content_len = 32, 30
    m = shard([jsonl], tokenizer_dir, tmp_path, max_len=max_len, mode="pack", eval_fraction=0.2)
    sep, cls = hf_tok.sep_token_id, hf_tok.cls_token_id
    for split in ("train", "eval"):
        # Expected stream: docs of this split in input order, [SEP] between them, except where a
        # separator would open a sequence; tracked with who owns each position.
        stream, owner = [], []
        for pmid, text in docs.items():
            ids = hf_tok(text, add_special_tokens=False)["input_ids"]
            if not ids or eval_side(f"pmid:{pmid}", 0.2) != (split == "eval"):
                continue
            if len(stream) % content_len:
                stream.append(sep)
                owner.append(None)
            stream += ids
            owner += [pmid] * len(ids)
        samples = read_split(tmp_path, split)
        content = []
        for n, (_, ids, meta) in enumerate(samples):
            ids = ids.tolist()
            assert (
                ids[0] == cls and ids[-1] == sep and ids[1] != sep and meta["n_tokens"] == len(ids)
            )
            assert len(ids) == max_len or n == len(samples) - 1
            start = len(content)
            content += ids[1:-1]
            owners = [p for p in owner[start : len(content)] if p is not None]
            assert meta["pmids"] == list(dict.fromkeys(owners))
        assert content == stream
        assert m.splits[split].tokens == sum(len(i) for _, i, _ in samples)


def test_eval_split_is_stable_and_independent_of_order(tmp_path, jsonl, tokenizer_dir):
    with gzip.open(jsonl, "rt") as f:
        rows = [json.loads(line) for line in f]
    backwards = write_jsonl_gz(tmp_path / "backwards.jsonl.gz", rows[::-1])
    half = write_jsonl_gz(tmp_path / "half.jsonl.gz", rows[::2])
    evals = []
    for name, src in [("a", jsonl), ("b", backwards), ("c", half)]:
        shard([src], tokenizer_dir, tmp_path / name, max_len=8, eval_fraction=0.3)
        evals.append({meta["pmid"] for _, _, meta in read_split(tmp_path / name, "eval")})
    assert evals[0] == evals[1] == {r["pmid"] for r in rows if eval_side(f"pmid:{r['pmid']}", 0.3)}
    assert evals[2] == evals[0] & {r["pmid"] for r in rows[::2]}


@pytest.mark.parametrize("mode", ["truncate", "pack"])
def test_workers_and_tokenizer_paths_give_byte_identical_output(
    tmp_path, monkeypatch, jsonl, docs, tokenizer_dir, mode
):
    monkeypatch.setattr(token_ids, "CHUNK", 37)  # many chunks in flight, so order really matters
    txt = tmp_path / "docs.txt"
    txt.write_text("\n\n".join(list(docs.values())[:150]) + "\n", encoding="utf-8")
    kw = dict(max_len=24, mode=mode, eval_fraction=0.05, samples_per_shard=200)
    shard([jsonl, txt], tokenizer_dir, tmp_path / "w1", workers=1, **kw)
    shard([jsonl, txt], tokenizer_dir, tmp_path / "w2", workers=2, **kw)
    monkeypatch.setenv("BIODISTILL_TOKENIZE", "plain")  # the prefix path, not the piece cache
    shard([jsonl, txt], tokenizer_dir, tmp_path / "plain", workers=2, **kw)
    one, two = all_bytes(tmp_path / "w1"), all_bytes(tmp_path / "w2")
    plain = all_bytes(tmp_path / "plain")
    assert one.keys() == two.keys() == plain.keys() and len(one) >= 6
    assert all(one[name] == two[name] == plain[name] for name in one)


class Crash(RuntimeError):
    pass


def crash_at_shard(monkeypatch, n: int) -> list[str]:
    """Make the n-th shard write crash right after its file is renamed into place (before the
    journal names it), the worst moment for resume; returns the names of the shards written."""
    real_write = shards.SplitWriter.write_shard
    written: list[str] = []

    def write_then_crash(self):
        info = real_write(self)
        written.append(info.name)
        if len(written) == n:
            raise Crash(info.name)
        return info

    monkeypatch.setattr(shards.SplitWriter, "write_shard", write_then_crash)
    return written


@pytest.mark.parametrize("cut", [0, 1, 3, 5])
def test_writer_and_packer_restored_from_state_go_on_as_the_originals(tmp_path, cut):
    """The journal saves and restores the writer and the packer only through state()/restore():
    a pair restored from the state after `cut` documents writes what the original pair writes."""
    rng = np.random.default_rng(cut)
    stream = [
        (rng.integers(5, 99, rng.integers(1, 12)).astype(np.int32), ["pmid", i]) for i in range(8)
    ]

    def feed(packer, writer, docs) -> None:
        for ids, key in docs:
            for content, keys in packer.add(ids, key):
                writer.add(content.astype(np.uint16), {"pmids": [k[1] for k in keys]})
            while len(writer.pending) >= 2:
                writer.write_shard()

    def pair(directory: Path):
        directory.mkdir()
        return shards.Packer(6, [102]), shards.SplitWriter(directory, "train", 2, 8, "uint16")

    packer, writer = pair(tmp_path / "a")
    feed(packer, writer, stream[:cut])
    p_state, w_state = packer.state(), writer.state()
    feed(packer, writer, stream[cut:])
    again_packer, again_writer = pair(tmp_path / "b")
    again_packer.restore(p_state)
    again_writer.restore(w_state)
    for name in [s.name for s in w_state["shards"]]:  # the shards written before the state
        (tmp_path / "b" / name).write_bytes((tmp_path / "a" / name).read_bytes())
    feed(again_packer, again_writer, stream[cut:])
    assert again_writer.state()["shards"] == writer.state()["shards"]
    assert all_bytes(tmp_path / "b") == all_bytes(tmp_path / "a")
    for (ids, meta), (ids2, meta2) in zip(writer.pending, again_writer.pending, strict=True):
        assert np.array_equal(ids, ids2) and meta == meta2
    assert [len(x) for x in (writer.pending, again_writer.pending)] == [len(writer.pending)] * 2
    last, again_last = packer.flush(), again_packer.flush()
    assert (last is None) == (again_last is None)
    if last is not None:
        assert np.array_equal(last[0], again_last[0]) and last[1] == again_last[1]


@pytest.mark.parametrize("mode", ["truncate", "pack"])
def test_resume_after_crash_is_byte_identical(tmp_path, monkeypatch, jsonl, tokenizer_dir, mode):
    kw = dict(max_len=32, mode=mode, eval_fraction=0.1, samples_per_shard=120)
    clean = shard([jsonl], tokenizer_dir, tmp_path / "clean", **kw)
    out = tmp_path / "crashed"
    calls = crash_at_shard(monkeypatch, 3)
    with pytest.raises(Crash):
        shard([jsonl], tokenizer_dir, out, **kw)
    monkeypatch.undo()
    assert not (out / "manifest.json").exists() and (out / calls[2]).exists()
    state = json.loads((out / ".shard-state" / "state.json").read_text())
    kept = {p.name: p.stat() for p in out.glob("*.tar") if p.name in calls[:2]}
    assert len(kept) == 2

    tokenized = []
    real_call = token_ids.TextIds.__call__

    def counting(self, texts):
        tokenized.extend(texts)
        return real_call(self, texts)

    monkeypatch.setattr(token_ids.TextIds, "__call__", counting)
    resumed = shard([jsonl], tokenizer_dir, out, **kw)
    assert resumed.to_dict()["splits"] == clean.to_dict()["splits"]
    assert all_bytes(out) == all_bytes(tmp_path / "clean")  # journal gone, same files, same bytes
    with gzip.open(jsonl) as f:
        total = sum(1 for _ in f)
    assert 0 < state["records_consumed"] and len(tokenized) == total - state["records_consumed"]
    for name, before in kept.items():  # finished shards were not rewritten
        after = (out / name).stat()
        assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


def test_rerun_complete_and_conflicting_runs(tmp_path, monkeypatch, jsonl, tokenizer_dir, capsys):
    m = shard([jsonl], tokenizer_dir, tmp_path / "a", max_len=16)
    stamp = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "a").iterdir()}
    again = shard([jsonl], tokenizer_dir, tmp_path / "a", max_len=16, progress=True)
    assert again.to_dict() == m.to_dict()
    assert "already complete" in capsys.readouterr().err
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "a").iterdir()} == stamp
    with pytest.raises(UserError, match="complete shard run made with different settings"):
        shard([jsonl], tokenizer_dir, tmp_path / "a", max_len=17)
    # A partial run with a finished shard and other settings is refused; one that never finished
    # a shard (say, it stopped at a malformed input line) is simply started over.
    crash_at_shard(monkeypatch, 2)
    with pytest.raises(Crash):
        shard([jsonl], tokenizer_dir, tmp_path / "b", max_len=16, samples_per_shard=10)
    crash_at_shard(monkeypatch, 1)
    with pytest.raises(Crash):
        shard([jsonl], tokenizer_dir, tmp_path / "c", max_len=16, samples_per_shard=10)
    monkeypatch.undo()
    with pytest.raises(UserError, match="partial shard run made with different settings"):
        shard([jsonl], tokenizer_dir, tmp_path / "b", max_len=16, mode="pack")
    shard([jsonl], tokenizer_dir, tmp_path / "c", max_len=16, mode="pack")
    assert (tmp_path / "c" / "manifest.json").exists()
    assert not (tmp_path / "c" / ".shard-state").exists()
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "train-000000.tar").write_bytes(b"")
    with pytest.raises(UserError, match="holds train-000000.tar and no manifest.json"):
        shard([jsonl], tokenizer_dir, tmp_path / "d", max_len=16)
    (tmp_path / "d" / ".shard-state").mkdir()  # a journal that never saved a state
    with pytest.raises(UserError, match="neither a manifest nor a resume journal"):
        shard([jsonl], tokenizer_dir, tmp_path / "d", max_len=16)


def test_input_kinds(tmp_path, jsonl, docs, hf_tok, tokenizer_dir, small_corpus, capsys):
    import datasets

    pmids = list(small_corpus.expected)[:40]
    texts = [docs[p] for p in pmids]
    # extract output: report.json + sorted *.jsonl.gz; the hidden .parts/ work area is ignored.
    ext = tmp_path / "extract"
    (ext / ".parts").mkdir(parents=True)
    rows = [{"pmid": p, "title": docs[p], "abstract": ""} for p in pmids]
    write_jsonl_gz(ext / "b.jsonl.gz", rows[20:])
    write_jsonl_gz(ext / "a.jsonl.gz", rows[:20])
    write_jsonl_gz(ext / ".parts" / "a.part.jsonl.gz", [{"pmid": 1, "title": "junk"}])
    outputs = [ext / "a.jsonl.gz", ext / "b.jsonl.gz"]
    listed = [
        {"output": f.name, "output_bytes": f.stat().st_size, "output_sha256": sha256_file(f)}
        for f in outputs
    ]
    (ext / "report.json").write_text(json.dumps({"records_out": 40, "files": listed}))
    assert resolve_inputs([str(ext)]).total_records == 40  # gives progress its ETA
    txt = tmp_path / "docs.txt"
    txt.write_text("\n  \n".join(texts) + "\n\n", encoding="utf-8")
    plain = write_jsonl_gz(tmp_path / "plain.jsonl.gz", [{"text": t} for t in texts])
    named = tmp_path / "named.jsonl"
    named.write_text("".join(json.dumps({"pmid": str(p), "body": docs[p]}) + "\n" for p in pmids))
    hf = tmp_path / "hf"
    datasets.Dataset.from_dict({"pmid": pmids, "title": texts, "abstract": [""] * 40}).save_to_disk(
        str(hf)
    )
    hashes = [hashlib.blake2b(f"text:{t}".encode()).digest()[:8].hex() for t in texts]
    cases = [(ext, None, "pmid", pmids), (txt, None, "id", hashes), (plain, None, "id", hashes)]
    cases += [(named, "body", "pmid", pmids), (hf, None, "pmid", pmids)]
    for n, (src, field, key, expected_keys) in enumerate(cases):
        out = tmp_path / f"out{n}"
        m = shard([src], tokenizer_dir, out, max_len=48, eval_fraction=0.0, text_field=field)
        samples = read_split(out, "train")
        assert [meta[key] for _, _, meta in samples] == expected_keys, src
        want = [hf_tok(t, truncation=True, max_length=48)["input_ids"] for t in texts]
        assert [ids.tolist() for _, ids, _ in samples] == want, src
        assert m.splits["eval"].samples == 0 and len(m.inputs) >= 1
    assert [i["path"] for i in Manifest.load(tmp_path / "out0").inputs] == [
        str(ext / "a.jsonl.gz"),
        str(ext / "b.jsonl.gz"),
    ]


def test_progress_reports_rates_and_eta(tmp_path, monkeypatch, jsonl, tokenizer_dir, capsys):
    monkeypatch.setattr(shards, "PROGRESS_EVERY_S", 0.0)
    monkeypatch.setattr(token_ids, "CHUNK", 100)
    shard([jsonl], tokenizer_dir, tmp_path, max_len=16, progress=True)
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) >= 3 and "ETA" in lines[0] and "done in" in lines[-1]
    assert all("records/s" in line and "tokens/s" in line for line in lines)
    # counts, rate and ETA as every progress line has them (data_pipeline/progress.py)
    assert re.match(r"shard: records [\d,]+ \| \S+ records/s \| ETA (\d+:)?\d\d:\d\d \| ", lines[0])


def test_inspect_prints_summary_and_decoded_samples(tmp_path, jsonl, docs, tokenizer_dir):
    shard([jsonl], tokenizer_dir, tmp_path, max_len=32, mode="pack", eval_fraction=0.1)
    out = io.StringIO()
    inspect(tmp_path, samples=2, split="eval", out=out)
    text = out.getvalue()
    m = Manifest.load(tmp_path)
    assert f"vocab {m.tokenizer.vocab_size:,}" in text and "mode: pack, max_len: 32" in text
    assert "padding share" in text and "first 2 eval samples:" in text
    assert text.count("[CLS]") == 2 and text.count("- 0000000000") == 2
    # A manifest whose tokenizer cannot be loaded: ids are shown, with the reason.
    raw = json.loads((tmp_path / "manifest.json").read_text())
    raw["tokenizer"]["name"] = str(tmp_path / "gone")
    (tmp_path / "manifest.json").write_text(json.dumps(raw))
    out = io.StringIO()
    inspect(tmp_path, samples=1, out=out)
    assert "cannot decode them" in out.getvalue() and "[CLS]" not in out.getvalue()
    with pytest.raises(UserError, match="no shard manifest"):
        inspect(tmp_path / "nowhere")


def test_int32_shards_are_plain_tar_read_by_stock_webdataset(tmp_path):
    writer = shards.SplitWriter(tmp_path, "train", 2, 8, "int32")
    metas = [{"pmid": n, "n_tokens": n} for n in (3, 8, 5)]
    for meta in metas:
        writer.add(np.arange(70_000, 70_000 + meta["n_tokens"], dtype=np.int32), meta)
    writer.write_shard()
    writer.write_shard()
    samples = read_split(tmp_path, "train")
    assert [ids.dtype for _, ids, _ in samples] == [np.int32] * 3
    assert samples[2][1].tolist() == list(range(70_000, 70_005))
    assert [s.samples for s in writer.shards] == [2, 1]
    # The hand-built tar is byte for byte what tarfile writes for the same members.
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for i, meta in enumerate(metas[:2]):
            arr = io.BytesIO()
            np.save(arr, np.arange(70_000, 70_000 + meta["n_tokens"], dtype=np.int32))
            for name, data in [
                ("input_ids.npy", arr.getvalue()),
                ("json", json.dumps(meta, separators=(",", ":"))),
            ]:
                data = data.encode() if isinstance(data, str) else data
                info = tarfile.TarInfo(f"{i:012d}.{name}")
                info.size, info.mode, info.mtime = len(data), 0o444, 0
                tar.addfile(info, io.BytesIO(data))
    assert (tmp_path / "train-000000.tar").read_bytes() == buf.getvalue()


def cli(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    shards.add_arguments(parser)
    return parser.parse_args(list(argv))


def test_bad_inputs_fail_with_one_clear_line(tmp_path, jsonl, tokenizer_dir):
    tok, out = str(tokenizer_dir), str(tmp_path / "out")
    bad_json = tmp_path / "bad.jsonl"
    bad_json.write_text('{"pmid": 1, "title": "ok"}\n{"pmid": 2, "title": \n')
    no_text = tmp_path / "no_text.jsonl"
    no_text.write_text('{"pmid": 1, "body": "x"}\n')
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    cases = [
        ([], tok, out, {}, "no inputs"),
        ([str(tmp_path / "missing.jsonl")], tok, out, {}, "no such file"),
        ([str(bad_json)], tok, out, {}, r"bad.jsonl:2: malformed JSON"),
        ([str(no_text)], tok, out, {}, r"no_text.jsonl:1: .*--text-field"),
        ([str(empty)], tok, out, {}, "no records with text in .*empty.txt"),
        ([str(jsonl)], str(tmp_path / "no_tokenizer"), out, {}, "tokenizer .*cannot load"),
        ([str(jsonl)], tok, str(a_file / "out"), {}, "not writable"),
        ([str(jsonl)], tok, out, {"max_len": 0}, "--max-len must be at least 3"),
        ([str(jsonl)], tok, out, {"samples_per_shard": 0}, "--samples-per-shard must be positive"),
        ([str(jsonl)], tok, out, {"eval_fraction": 1.0}, r"--eval-fraction must be in \[0, 1\)"),
        ([str(jsonl)], tok, out, {"eval_fraction": -0.1}, r"--eval-fraction must be in"),
        ([str(jsonl)], tok, out, {"workers": 0}, "--workers must be at least 1"),
        (
            [str(jsonl)],
            tok,
            out,
            {"max_len": 100000},
            r"--max-len 100000: longer than the 512 positions tokenizer .* is made for "
            r"\(its model_max_length\); use --max-len 512 or less",
        ),
    ]
    for inputs, tok_arg, out_arg, kw, pattern in cases:
        with pytest.raises(UserError, match=pattern) as e:
            shards.run_shard(inputs, tok_arg, out_arg, progress=False, **kw)
        assert "\n" not in str(e.value)
    args = cli("--input", str(bad_json), "--tokenizer", tok, "--output", out, "--max-len", "-5")
    with pytest.raises(UserError, match="--max-len"):
        shards.main(args)
    args = cli("--input", str(empty), "--tokenizer", tok, "--output", out)
    with pytest.raises(UserError, match="no records"):
        shards.main(args)
    assert not (tmp_path / "out" / ".shard-state").exists()


def test_full_disk_stops_with_one_line_and_the_rerun_finishes_byte_identical(
    tmp_path, jsonl, tokenizer_dir, small_disk
):
    """The disk fills after a few shards: one line naming the directory, no manifest, only
    complete shards; with room made, the same command goes on from the journal to the clean
    run's bytes."""
    kw = dict(max_len=32, eval_fraction=0.1, samples_per_shard=40)
    clean = shard([jsonl], tokenizer_dir, tmp_path / "clean", **kw)
    disk = small_disk("160k")
    out = disk / "shards"
    with pytest.raises(UserError) as err:
        shard([jsonl], tokenizer_dir, out, **kw)
    assert str(err.value).startswith(
        f"{out}: no space left on device while writing shards ("
    ) and str(err.value).endswith(
        "bytes free now); the shards written so far are complete and journalled, and there is "
        "no manifest yet: free space and rerun the same command to go on from the last shard"
    )
    assert not (out / "manifest.json").exists() and not list(out.rglob("*.tmp"))
    written = {p.name: sha256_file(p) for p in out.glob("*.tar")}
    expected = {s.name: s.sha256 for split in clean.splits.values() for s in split.shards}
    assert 0 < len(written) < len(expected)
    assert all(expected[name] == digest for name, digest in written.items())  # none partial
    small_disk.resize(disk, "4m")
    resumed = shard([jsonl], tokenizer_dir, out, **kw)
    assert resumed.to_dict()["splits"] == clean.to_dict()["splits"]
    assert all_bytes(out) == all_bytes(tmp_path / "clean")


@pytest.mark.parametrize(
    "change, named",
    [
        ({"records_consumed": "12"}, "records_consumed='12': expected an integer"),
        ({"version": 2}, "version=2: expected"),
        ({"splits": {"train": [{"name": "train-000000.tar"}]}}, "splits.train[0].samples"),
        ({"pending_file": None}, "pending_file=None: expected a string"),
    ],
    ids=["consumed", "version", "shard-info", "pending"],
)
def test_a_bad_journal_is_named_by_its_key(tmp_path, change, named):
    """The resume journal's state.json is read through its schema: one line naming the key."""
    from data_pipeline.shards.journal import STATE_DIR, STATE_VERSION, Journal

    state = {
        "version": STATE_VERSION,
        "fingerprint": "f",
        "seq": 1,
        "records_consumed": 12,
        "pending_file": "pending-000001.npz",
        "splits": {"train": []},
    }
    (tmp_path / STATE_DIR).mkdir()
    (tmp_path / STATE_DIR / "state.json").write_text(json.dumps(state | change))
    with pytest.raises(UserError, match=re.escape(named) + ".*remove .* to start over"):
        Journal(tmp_path, "f").load()
