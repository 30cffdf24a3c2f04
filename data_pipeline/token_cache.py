"""`python -m data_pipeline tokenize`: token ids of extract's parts, made ahead of `shard`.

    python -m data_pipeline tokenize --input baseline/ updatefiles/ --records DIR \
        --tokenizer NAME_OR_DIR --cache CACHE [--max-len 256] [--mode truncate|pack] \
        [--text-field NAME] [--slice I/N] [--workers N] [--skip-bad-files]
    python -m data_pipeline shard --input DIR ... --token-cache CACHE      # reads it

Why: on a cluster the two costly steps, parsing XML and tokenizing, run in an array job, one task
per slice of the input files (slurm/preprocess.sbatch). But the records `shard` reads exist only
once updates are resolved across ALL files, and shard names and sample keys count every sample
of the earlier files. So each task parses its inputs (`extract --parts-only --slice I/N`) and then
tokenizes every record of those parts, before resolution; the final `extract` + `shard` over all
inputs then take each record's ids from this cache instead of tokenizing.

CACHE/token-cache.json marks the directory as a token cache (a directory without it that holds
anything is refused). One entry per input, CACHE/<stem>.npz, written atomically (present means
complete):
    hashes   uint8 [n, 16]   blake2b-128 of each part record's text (shard's rule for the text)
    offsets  int64 [n + 1]   the ids of record k are ids[offsets[k]:offsets[k + 1]]
    ids      uint16 | int32  token ids without [CLS]/[SEP], cut to max_len - 2 in truncate mode
    meta     JSON: format, fingerprint (tokenizer + truncation), the part's size and mtime

NOTE: the cache can never change shard's output. `shard` takes ids from an entry only for a text
that hashes to it, and the ids of a text depend only on the text, the tokenizer and the cut (the
fingerprint); records without an entry (another input kind, a stale or missing entry) are
tokenized as usual. A rerun of a slice skips the inputs whose entry matches their part and the
settings, so only unfinished work is redone.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import itertools
import json
import sys
import time
import zipfile
from collections import deque
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from data_pipeline.extract import (
    PARTS_DIR,
    SUFFIXES,
    completed_part,
    input_stem,
)
from data_pipeline.io_utils import (
    UserError,
    atomic_path,
    atomic_write_json,
    claim_output_dir,
    expand_inputs,
    parse_slice,
    take_slice,
)
from data_pipeline.records import Record, RecordReader, Source, record_text
from data_pipeline.shards.manifest import MODES, load_tokenizer, tokenizer_info
from data_pipeline.token_ids import (
    CHUNK,
    ChunkTokenizer,
    TextIds,
    TokenizeStats,
    backend_tokenizer,
    kept_ids,
    path_name,
    ragged_offsets,
    tokenized_chunks,
)

FORMAT = 1
_HASH_BYTES = 16
# The cache directory's record: written when a run first claims the directory, so that the next
# run (another array task, a rerun) knows it as this command's; entries are <stem>.npz.
RECORD = "token-cache.json"


def text_hash(text: str) -> bytes:
    return hashlib.blake2b(text.encode("utf-8"), digest_size=_HASH_BYTES).digest()


def fingerprint(tok, keep: int | None) -> str:
    """What the ids depend on besides the text: the tokenizer and the cut (None in pack mode)."""
    blob = {"format": FORMAT, "tokenizer": hashlib.sha256(tok.to_str().encode()).hexdigest()}
    blob["keep"] = keep
    return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()


def _read_meta(path: Path) -> dict | None:
    try:
        with np.load(path) as z:
            return json.loads(str(z["meta"]))
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return None


# ---- tokenize: parts -> cache entries ---------------------------------------------------------


def _part_source(part: Path) -> dict:
    st = part.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _part_texts(todo: list[tuple], text_field: str | None) -> Iterator[Record]:
    """Every record of the parts in `todo`, in order, as (None, text); empty texts included so
    that each part yields exactly as many records as its index counts."""
    for stem, part, n, _ in todo:
        count = 0
        with gzip.open(part, "rb") as f:
            for count, line in enumerate(f, 1):
                rec = json.loads(line)
                yield Record(None, record_text(rec, text_field, f"{part}:{count}"))
        if count != n:
            raise UserError(
                f"{part}: {count} records but its index has {n}; rerun "
                f"`extract --parts-only` for {stem}"
            )


def _write_entry(path: Path, hashes: list[bytes], ids: list, dtype, meta: dict) -> None:
    offsets = ragged_offsets(ids)
    flat = np.concatenate(ids).astype(dtype) if ids else np.zeros(0, dtype)
    digest = np.frombuffer(b"".join(hashes), np.uint8).reshape(-1, _HASH_BYTES)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:  # np.savez(path) would add ".npz"
        np.savez(f, hashes=digest, offsets=offsets, ids=flat, meta=np.array(json.dumps(meta)))


def run_tokenize(
    inputs: list[str],
    records: str,
    tokenizer: str,
    cache: str,
    max_len: int = 256,
    mode: str = "truncate",
    text_field: str | None = None,
    slice_spec: tuple[int, int] | None = None,
    workers: int = 1,
    skip_bad_files: bool = False,
    progress: bool = True,
) -> dict:
    """Tokenize the parts of `inputs` (slice `slice_spec`) in RECORDS/.parts into CACHE."""
    if max_len < 3:
        raise UserError(f"--max-len must be at least 3, got {max_len}")
    if mode not in MODES:
        raise UserError(f"--mode must be one of {', '.join(MODES)}, got {mode!r}")
    if workers < 1:
        raise UserError(f"--workers must be at least 1, got {workers}")
    files = expand_inputs(inputs, SUFFIXES)
    if not files:
        raise UserError(f"no PubMed XML files (.xml, .xml.gz) found in: {' '.join(inputs)}")
    files = take_slice(files, slice_spec)
    parts = Path(records) / PARTS_DIR
    hf_tok = load_tokenizer(tokenizer)
    tok = backend_tokenizer(hf_tok)
    keep = kept_ids(max_len, mode)
    fp, dtype = fingerprint(tok, keep), np.dtype(tokenizer_info(hf_tok, tokenizer).dtype)
    out = claim_output_dir(cache, (RECORD,), "use a new or empty directory as --cache")
    if not (out / RECORD).exists():
        atomic_write_json(
            out / RECORD, {"format": FORMAT, "written_by": "python -m data_pipeline tokenize"}
        )
    stems = {input_stem(p) for p in files}
    for stray in out.glob(".*.npz.*.tmp"):  # NOTE: only this slice's, others may be writing
        if stray.name[1:].split(".npz.", 1)[0] in stems:
            stray.unlink(missing_ok=True)

    todo, missing, reused = [], [], 0
    for path in files:
        stem = input_stem(path)
        if (stats := completed_part(path, parts)) is None:
            missing.append(path.name)
            continue
        part = parts / f"{stem}.part.gz"
        source = _part_source(part)
        meta = _read_meta(out / f"{stem}.npz") or {}
        if [meta.get(k) for k in ("format", "fingerprint", "source")] == [FORMAT, fp, source]:
            reused += 1
            continue
        todo.append((stem, part, stats["records_kept"], source))
    if missing and not skip_bad_files:
        raise UserError(
            f"{len(missing)} of {len(files)} inputs have no complete part in {parts} (run "
            f"`extract --parts-only` over them first): {', '.join(missing[:5])}"
        )
    start, n_records, n_tokens = time.perf_counter(), 0, 0
    pending = deque(todo)
    hashes: list[bytes] = []
    ids: list[np.ndarray] = []

    def finish_files() -> None:  # write every leading file whose records are all in
        nonlocal hashes, ids
        while pending and len(hashes) == pending[0][2]:
            stem, _, n, source = pending.popleft()
            meta = {"format": FORMAT, "fingerprint": fp, "source": source, "records": n}
            _write_entry(out / f"{stem}.npz", hashes, ids, dtype, meta)
            if progress:
                print(f"tokenize: {stem}: {n:,} records", file=sys.stderr, flush=True)
            hashes, ids = [], []

    finish_files()  # parts without records
    texts = _part_texts(todo, text_field)
    stats = TokenizeStats(path_name(tok), workers)
    for chunk, (flat, offsets) in tokenized_chunks(texts, tok, workers, keep, stats):
        for i, rec in enumerate(chunk):
            hashes.append(text_hash(rec.text))
            ids.append(flat[offsets[i] : offsets[i + 1]])
            finish_files()
        n_records, n_tokens = n_records + len(chunk), n_tokens + int(offsets[-1])
    seconds = time.perf_counter() - start
    if progress:
        print(
            f"tokenize: {len(todo)} of {len(files)} inputs tokenized into {out} ({reused} reused, "
            f"{len(missing)} without a part), {n_records:,} records, {n_tokens:,} tokens "
            f"in {seconds:.1f} s" + (f" | {stats.line()}" if stats.texts else ""),
            file=sys.stderr,
            flush=True,
        )
    return {"tokenized": len(todo), "reused": reused, "missing": missing, "records": n_records}


# ---- shard --token-cache: cache entries -> ids of records -------------------------------------


class TokenCache:
    """The ids `tokenize` cached, served to `shard` record by record, matched by text hash."""

    def __init__(self, directory: str | Path, tok, keep: int | None) -> None:
        self.dir = Path(directory)
        if not self.dir.is_dir():
            raise UserError(
                f"{self.dir}: no token cache there (--token-cache names the --cache directory "
                "of `python -m data_pipeline tokenize`)"
            )
        self.tok, self.keep, self.fp = tok, keep, fingerprint(tok, keep)
        self.hits = self.misses = 0

    def _entry(self, source: Source | None) -> tuple[dict[bytes, tuple[int, int]], np.ndarray]:
        """(text hash -> id range, ids) of the entry for `source`; empty when there is none."""
        name = source.path.name if source is not None else ""
        if source is None or source.kind != "jsonl" or not name.endswith(".jsonl.gz"):
            return {}, np.zeros(0, np.int32)
        try:
            with np.load(self.dir / f"{name.removesuffix('.jsonl.gz')}.npz") as z:
                if json.loads(str(z["meta"])).get("fingerprint") != self.fp:
                    return {}, np.zeros(0, np.int32)  # other tokenizer or cut: tokenize here
                raw, offsets, ids = z["hashes"].tobytes(), z["offsets"].tolist(), z["ids"]
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
            return {}, np.zeros(0, np.int32)
        keys = [raw[k : k + _HASH_BYTES] for k in range(0, len(raw), _HASH_BYTES)]
        return dict(zip(keys, zip(offsets[:-1], offsets[1:], strict=True), strict=True)), ids

    def tokenized_chunks(
        self, reader: RecordReader, skip: int, workers: int, stats: TokenizeStats | None = None
    ):
        """Like token_ids.tokenized_chunks over the reader's records after the first `skip`: yields
        (chunk of records, (flat int32 ids, offsets)) in input order, ids from the cache; what is
        tokenized here adds up in `stats`."""
        records = itertools.islice(iter(reader), skip, None)
        # One pool for every file.
        with ChunkTokenizer(self.tok, workers, self.keep, stats) as tokenize:
            # NOTE: the key is read right after the reader yields a record: that record's file.
            for source, group in itertools.groupby(records, key=lambda _: reader.source):
                index, cached = self._entry(source)
                if not index:  # no usable entry: the normal path, with its worker processes
                    for chunk, result in tokenize.chunks(group):
                        self.misses += len(chunk)
                        yield chunk, result
                    continue
                for chunk in iter(lambda g=group: list(itertools.islice(g, CHUNK)), []):
                    yield chunk, self._ids(chunk, index, cached, tokenize.local())

    def _ids(self, chunk: list[Record], index: dict, cached: np.ndarray, text_ids: TextIds):
        """(flat int32 ids, offsets) of a chunk: from the entry, tokenizing what it lacks here."""
        spans = [index.get(text_hash(r.text)) for r in chunk]
        ids = [cached[s[0] : s[1]] if s else None for s in spans]
        if miss := [i for i, s in enumerate(spans) if s is None]:
            flat, offsets = text_ids([chunk[i].text for i in miss])
            for j, i in enumerate(miss):
                ids[i] = flat[offsets[j] : offsets[j + 1]]
        self.hits, self.misses = self.hits + len(chunk) - len(miss), self.misses + len(miss)
        return np.concatenate(ids).astype(np.int32, copy=False), ragged_offsets(ids)

    def summary(self) -> str:
        total = self.hits + self.misses
        return (
            f"shard: token cache {self.dir}: {self.hits:,} of {total:,} records from the cache, "
            f"{self.misses:,} tokenized here"
        )


# ---- the command ------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--input",
        nargs="+",
        required=True,
        metavar="PATH",
        help="the PubMed XML inputs given to extract (files or directories)",
    )
    parser.add_argument(
        "--records", required=True, metavar="DIR", help="extract's --output (holds .parts/)"
    )
    parser.add_argument("--tokenizer", required=True, metavar="NAME_OR_DIR")
    parser.add_argument("--cache", required=True, metavar="DIR", help="token cache directory")
    parser.add_argument("--max-len", type=int, default=256, help="as shard's --max-len")
    parser.add_argument("--mode", choices=MODES, default="truncate", help="as shard's --mode")
    parser.add_argument("--text-field", metavar="NAME", help="as shard's --text-field")
    parser.add_argument("--slice", metavar="I/N", help="every N-th input, in name order, from I")
    parser.add_argument("--workers", type=int, default=1, help="tokenizer processes (cores)")
    parser.add_argument(
        "--skip-bad-files",
        action="store_true",
        help="skip inputs without a complete part (extract --skip-bad-files left them out)",
    )


def main(args: argparse.Namespace) -> int:
    run_tokenize(
        args.input,
        args.records,
        args.tokenizer,
        args.cache,
        max_len=args.max_len,
        mode=args.mode,
        text_field=args.text_field,
        slice_spec=parse_slice(args.slice) if args.slice else None,
        workers=args.workers,
        skip_bad_files=args.skip_bad_files,
    )
    return 0
