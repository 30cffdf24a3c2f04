"""`python -m data_pipeline shard`: records -> WebDataset token shards + manifest.json.

    python -m data_pipeline shard --input DIR --tokenizer NAME_OR_DIR --output SHARDS \
        [--max-len 256] [--mode truncate|pack] [--eval-fraction 0.001] [--workers N] \
        [--samples-per-shard N] [--text-field NAME] [--token-cache CACHE] [--allow-partial]

Each sample is `KEY.input_ids.npy` ([CLS] ... [SEP], uint16 when the vocabulary fits, else int32)
and `KEY.json` ({"pmid"} or {"id"} in truncate mode, {"pmids"} in pack mode, always "n_tokens"),
KEY being the 12-digit index of the sample in its split. The eval split is a hash of the PMID (or
of the text), so a record's side never depends on the worker count or on the other records.

NOTE: the output is byte-identical whatever --workers is and whether or not the run was resumed:
workers only tokenize, one writer in the main process consumes their results in input order, tars
have fixed mtime/owner, and a resumed run restores the exact writer state of its last journal.

A crashed run resumes from its journal in DIR/.shard-state/ (data_pipeline/shards/journal.py).

Integrity: an extract output is read only when its report.json vouches for every file in it
(--allow-partial: warn and read what is there; data_pipeline/records.py), and the manifest lists
each shard's size and SHA-256, hashed from the bytes as they are written, for the loader and
`inspect --verify` to check.

`--token-cache CACHE` takes token ids from what `python -m data_pipeline tokenize` made of the
inputs' parts (array jobs tokenize slices of the corpus in parallel: data_pipeline/token_cache.py)
and tokenizes only what the cache does not hold; the output is byte-identical either way.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import itertools
import json
import sys
import time
from pathlib import Path

import numpy as np

from data_pipeline.io_utils import (
    UserError,
    atomic_path,
    claim_output_dir,
    disk_full_is_an_error,
    sha256_file,
)
from data_pipeline.progress import duration, eta, progress_line, si
from data_pipeline.records import RecordReader, resolve_inputs, sample_identity, split_of
from data_pipeline.shards.journal import STATE_DIR, Journal, complete_run, fingerprint, resume
from data_pipeline.shards.manifest import (
    MANIFEST_NAME,
    MODES,
    SPLITS,
    Manifest,
    ShardInfo,
    SplitInfo,
    length_bin,
    load_tokenizer,
    tokenizer_info,
)
from data_pipeline.token_cache import TokenCache
from data_pipeline.token_ids import (
    TokenizeStats,
    backend_tokenizer,
    kept_ids,
    pair_separator,
    path_name,
    tokenized_chunks,
)

PROGRESS_EVERY_S = 5.0


# ---- samples, packing and shard writing -------------------------------------------------------


class Packer:
    """Cuts one split's stream doc1 SEP doc2 SEP ... into contents of `length` tokens, SEP being
    what the tokenizer's pair template puts between two texts ([SEP]; </s> </s> for RoBERTa).

    A separator, or the part of one, that would open a sequence is dropped ([CLS] already marks
    the boundary).
    """

    def __init__(self, length: int, separator: list[int]):
        self.length, self.sep = length, np.array(separator, np.int32)
        self.parts: list[np.ndarray] = []
        self.keys: list[list] = []
        self.n = 0

    def add(self, ids: np.ndarray, key: list) -> list[tuple[np.ndarray, list[list]]]:
        out: list[tuple[np.ndarray, list[list]]] = []
        if self.n:
            self._push(self.sep[: self.length - self.n], None, out)
        pos = 0
        while pos < len(ids):
            take = min(self.length - self.n, len(ids) - pos)
            self._push(ids[pos : pos + take], key, out)
            pos += take
        return out

    def _push(self, piece: np.ndarray, key: list | None, out: list) -> None:
        self.parts.append(piece)
        self.n += len(piece)
        if key is not None and (not self.keys or self.keys[-1] != key):
            self.keys.append(key)
        if self.n == self.length:
            out.append(self.flush())

    def flush(self) -> tuple[np.ndarray, list[list]] | None:
        if not self.n:
            return None
        done = (np.concatenate(self.parts), self.keys)
        self.parts, self.keys, self.n = [], [], 0
        return done

    def state(self) -> dict:
        """What `restore` needs to go on cutting where this packer is: {"carry": the tokens of
        the sequence begun (int32 when empty), "keys": the keys of the documents in it}."""
        carry = np.concatenate(self.parts) if self.n else np.zeros(0, np.int32)
        return {"carry": carry, "keys": list(self.keys)}

    def restore(self, state: dict) -> None:
        """Continue from a `state()`, as the packer that gave it would."""
        carry = state["carry"]
        self.parts, self.n = ([carry] if len(carry) else []), len(carry)
        self.keys = list(state["keys"]) if len(carry) else []


def _meta(keys: list[list], n_tokens: int, pack: bool) -> dict:
    if not pack:
        return {keys[0][0]: keys[0][1], "n_tokens": n_tokens}
    meta: dict = {"pmids": [v for k, v in keys if k == "pmid"]}
    hashes = [v for k, v in keys if k == "id"]
    if hashes:
        meta["ids"] = hashes
    meta["n_tokens"] = n_tokens
    return meta


_NPY_HEADERS: dict[tuple[str, int], bytes] = {}  # at most 2 dtypes x max_len lengths


def _npy(arr: np.ndarray) -> bytes:
    """np.save's bytes for a 1-D array; the header is cached per (dtype, length)."""
    head = _NPY_HEADERS.get((arr.dtype.str, len(arr)))
    if head is None:
        buf = io.BytesIO()
        np.save(buf, arr, allow_pickle=False)
        head = _NPY_HEADERS[arr.dtype.str, len(arr)] = buf.getvalue()[: -arr.nbytes or None]
    return head + arr.tobytes()


_BLOCK, _RECORD = 512, 20 * 512  # tar block, and the record size tar pads an archive to
_NUL = b"\x00"
# The USTAR header fields that never change here, around the name (100 bytes), size (12) and
# checksum (8): mode 0444, uid/gid 0, mtime 0 (fixed, so the same samples give the same bytes),
# then a regular file's type flag, an empty link name, the magic and the zero padding.
_MODE_UID_GID = b"0000444" + _NUL + b"0000000" + _NUL + b"0000000" + _NUL
_MTIME = b"00000000000" + _NUL
_AFTER_CHECKSUM = (b"0" + _NUL * 100 + b"ustar" + _NUL + b"00").ljust(_BLOCK - 156, _NUL)
# NOTE: the checksum sums the header with its own field as 8 spaces.
_FIXED_SUM = sum(_MODE_UID_GID) + sum(_MTIME) + sum(b" " * 8) + sum(_AFTER_CHECKSUM)
_JSON = json.JSONEncoder(separators=(",", ":"))  # json.dumps would build one per call


def _tar_member(name: str, data: bytes) -> bytes:
    """A USTAR member, byte for byte what tarfile writes for a regular file with mode 0444,
    uid/gid 0, no owner names and mtime 0. Built directly because tarfile.addfile costs ~70 us a
    member, the writer's main cost; only the name and size bytes are summed for the checksum."""
    raw, size = name.encode(), b"%011o" % len(data) + _NUL
    checksum = b"%06o" % (_FIXED_SUM + sum(raw) + sum(size)) + _NUL + b" "
    head = b"".join((raw.ljust(100, _NUL), _MODE_UID_GID, size, _MTIME, checksum, _AFTER_CHECKSUM))
    return head + data + _NUL * (-len(data) % _BLOCK)


class SplitWriter:
    """One split's pending samples and finished shards; writes a shard every `per_shard` samples."""

    def __init__(self, directory: Path, split: str, per_shard: int, max_len: int, dtype: str):
        self.directory, self.split, self.per_shard = directory, split, per_shard
        self.max_len, self.dtype = max_len, np.dtype(dtype)
        self.shards: list[ShardInfo] = []
        self.pending: list[tuple[np.ndarray, dict]] = []

    def add(self, ids: np.ndarray, meta: dict) -> None:
        self.pending.append((ids, meta))

    def state(self) -> dict:
        """What `restore` needs to go on where this writer is: {"shards": the finished shards
        (ShardInfo), "ids": the pending samples' ids end to end (the writer's dtype), "lens":
        their lengths (int64), "metas": their metadata}."""
        pending = self.pending
        ids = np.concatenate([i for i, _ in pending]) if pending else np.zeros(0, self.dtype)
        return {
            "shards": list(self.shards),
            "ids": ids,
            "lens": np.array([len(i) for i, _ in pending], np.int64),
            "metas": [m for _, m in pending],
        }

    def restore(self, state: dict) -> None:
        """Continue from a `state()`, as the writer that gave it would."""
        self.shards = list(state["shards"])
        metas = state["metas"]
        samples = np.split(state["ids"], np.cumsum(state["lens"])[:-1]) if metas else []
        self.pending = list(zip(samples, metas, strict=True))

    @property
    def samples(self) -> int:
        return sum(s.samples for s in self.shards) + len(self.pending)

    @property
    def tokens(self) -> int:
        return sum(s.tokens for s in self.shards) + sum(len(ids) for ids, _ in self.pending)

    def write_shard(self) -> ShardInfo:
        batch, self.pending = self.pending[: self.per_shard], self.pending[self.per_shard :]
        info = ShardInfo(f"{self.split}-{len(self.shards):06d}.tar", len(batch), 0)
        first = sum(s.samples for s in self.shards)
        parts = []
        for i, (ids, meta) in enumerate(batch):
            key = f"{first + i:012d}"
            parts.append(_tar_member(f"{key}.input_ids.npy", _npy(ids)))
            parts.append(_tar_member(f"{key}.json", _JSON.encode(meta).encode()))
            info.tokens += len(ids)
            info.length_hist[length_bin(len(ids), self.max_len)] += 1
        size = sum(map(len, parts)) + 2 * _BLOCK
        parts.append(_NUL * (2 * _BLOCK + -size % _RECORD))  # end-of-archive, padded like tar
        data = b"".join(parts)
        # Hashed as written, not re-read: the manifest vouches for what the writer produced, and
        # every later read (the loader, inspect --verify) is compared with it.
        info.bytes, info.sha256 = len(data), hashlib.sha256(data).hexdigest()
        with atomic_path(self.directory / info.name) as tmp, open(tmp, "wb") as f:
            f.write(data)
        self.shards.append(info)
        return info


# ---- the command ------------------------------------------------------------------------------


class _Progress:
    """One line on stderr every PROGRESS_EVERY_S seconds and at the end."""

    def __init__(self, enabled: bool, total: int | None, reader: RecordReader, start: tuple):
        self.enabled, self.total, self.reader = enabled, total, reader
        self.t0 = self.last = time.monotonic()
        self.records0, self.tokens0 = start  # a resumed run's rates count only its own work

    def update(
        self, records: int, samples: int, tokens: int, final: bool = False, note: str = ""
    ) -> None:
        now = time.monotonic()
        if not self.enabled or not final and now - self.last < PROGRESS_EVERY_S:
            return
        self.last, dt = now, max(now - self.t0, 1e-9)
        meter = progress_line(
            records, self.total or None, "records", elapsed=dt, initial=self.records0
        )
        line = f"shard: records {meter}"
        if not self.total and self.reader.bytes_read:  # no count known up front: input bytes
            line += f" | ETA {eta(self.reader.bytes_read, max(1, self.reader.bytes_total), dt)}"
        token_rate = si((tokens - self.tokens0) / dt)
        line += f" | {samples:,} samples, {tokens:,} tokens, {token_rate} tokens/s"
        if final:
            line += f" | done in {duration(dt)}" + (f" | {note}" if note else "")
        print(line, file=sys.stderr, flush=True)


def _validate(max_len: int, mode: str, eval_fraction: float, workers: int, per_shard: int) -> None:
    if max_len < 3:
        raise UserError(
            f"--max-len must be at least 3 (room for [CLS], a token and [SEP]), got {max_len}"
        )
    if mode not in MODES:
        raise UserError(f"--mode must be one of {', '.join(MODES)}, got {mode!r}")
    if not 0.0 <= eval_fraction < 1.0:
        raise UserError(f"--eval-fraction must be in [0, 1), got {eval_fraction}")
    if workers < 1:
        raise UserError(f"--workers must be at least 1, got {workers}")
    if per_shard < 1:
        raise UserError(f"--samples-per-shard must be positive, got {per_shard}")


# Shards are written atomically, the journal after each and the manifest last (shard_journal.py).
_FULL_ADVICE = (
    "the shards written so far are complete and journalled, and there is no manifest yet: free "
    "space and rerun the same command to go on from the last shard"
)


def run_shard(
    inputs: list[str],
    tokenizer: str,
    output: str,
    max_len: int = 256,
    mode: str = "truncate",
    eval_fraction: float = 0.001,
    workers: int = 1,
    samples_per_shard: int = 10000,
    text_field: str | None = None,
    progress: bool = True,
    token_cache: str | None = None,
    allow_partial: bool = False,
) -> Manifest:
    """Tokenize `inputs` into DIR/{train,eval}-NNNNNN.tar + manifest.json; resumes a crashed run.

    With `token_cache`, ids come from that `tokenize` cache where it holds them (same output).
    An extract output whose report.json does not vouch for its files is refused unless
    `allow_partial` (data_pipeline/records.py).
    """
    _validate(max_len, mode, eval_fraction, workers, samples_per_shard)
    eval_fraction = float(eval_fraction)  # 0 and 0.0 must fingerprint (and record) the same
    input_set = resolve_inputs([str(i) for i in inputs], allow_partial)
    if not input_set.files:
        raise UserError(f"no record files found in {', '.join(map(str, inputs))}")
    # NOTE: the journal is what a stopped run leaves before its manifest; either marks the
    # directory as this command's.
    out = claim_output_dir(
        output, (MANIFEST_NAME, STATE_DIR), "use a new or empty directory as --output"
    )
    hf_tok = load_tokenizer(tokenizer)
    name = str(Path(tokenizer).resolve()) if Path(tokenizer).is_dir() else tokenizer
    positions = getattr(hf_tok, "model_max_length", None)
    if isinstance(positions, int) and max_len > positions:  # a tokenizer without one says 1e30
        raise UserError(
            f"--max-len {max_len}: longer than the {positions} positions tokenizer {name} is "
            f"made for (its model_max_length); use --max-len {positions} or less"
        )
    info = tokenizer_info(hf_tok, name)
    tok = backend_tokenizer(hf_tok)
    keep = kept_ids(max_len, mode)
    cache = TokenCache(token_cache, tok, keep) if token_cache is not None else None
    # The extract check already hashed what it verified; the rest is hashed here.
    digest = {f: input_set.sha256.get(f) or sha256_file(f) for f in input_set.files}
    inputs_meta = [
        {"path": str(f), "bytes": f.stat().st_size, "sha256": digest[f]} for f in input_set.files
    ]
    settings = {
        "vocab_hash": info.vocab_hash,
        "max_len": max_len,
        "mode": mode,
        "eval_fraction": eval_fraction,
        "samples_per_shard": samples_per_shard,
        "text_field": text_field,
    }
    with disk_full_is_an_error(out, "writing shards", _FULL_ADVICE):
        journal = Journal(out, fingerprint(inputs_meta, tok.to_str(), settings))
        if (out / MANIFEST_NAME).exists():
            return complete_run(out, journal, info, inputs_meta, settings, progress)
        writers = {s: SplitWriter(out, s, samples_per_shard, max_len, info.dtype) for s in SPLITS}
        pack = mode == "pack"
        separator = pair_separator(tok, info.sep_id)
        packers = {s: Packer(max_len - 2, separator) for s in SPLITS} if pack else {}
        consumed = resume(out, journal, writers, packers)

        reader = RecordReader(input_set, text_field)
        samples = sum(w.samples for w in writers.values())
        tokens = sum(w.tokens for w in writers.values())
        meter = _Progress(progress, input_set.total_records, reader, (consumed, tokens))

        def emit(split: str, content: np.ndarray, keys: list[list]) -> None:
            nonlocal samples, tokens
            ids = np.empty(len(content) + 2, writers[split].dtype)
            ids[0], ids[1:-1], ids[-1] = info.cls_id, content, info.sep_id
            writers[split].add(ids, _meta(keys, len(ids), pack))
            samples, tokens = samples + 1, tokens + len(ids)

        def write_full(split: str, final: bool = False) -> None:
            w = writers[split]
            while len(w.pending) >= samples_per_shard or final and w.pending:
                w.write_shard()
                journal.save(consumed, writers, packers)

        stats = TokenizeStats(path_name(tok), workers)
        if cache is None:
            records = itertools.islice(
                iter(reader), consumed, None
            )  # NOTE: skipped, never tokenized
            batches = tokenized_chunks(records, tok, workers, keep, stats)
        else:
            batches = cache.tokenized_chunks(reader, consumed, workers, stats)
        for chunk, (flat, offsets) in batches:
            for i, record in enumerate(chunk):
                consumed += 1
                ids = flat[offsets[i] : offsets[i + 1]]
                if not len(ids):
                    continue  # nothing to learn from, and pack mode would get a bare [SEP]
                h, key = sample_identity(record)
                split = split_of(h, eval_fraction)
                pieces = packers[split].add(ids, key) if pack else [(ids, [key])]
                for content, keys in pieces:
                    emit(split, content, keys)
                write_full(split)
            meter.update(consumed, samples, tokens)
        for split, p in packers.items():
            if last := p.flush():
                emit(split, *last)
        for split in SPLITS:
            write_full(split, final=True)
        if samples == 0:
            journal.remove()
            raise UserError(f"no records with text in {', '.join(map(str, inputs))}")
        manifest = Manifest(
            tokenizer=info,
            max_len=max_len,
            mode=mode,
            eval_fraction=eval_fraction,
            splits={s: SplitInfo(shards=list(w.shards)) for s, w in writers.items()},
            inputs=inputs_meta,
        )
        manifest.save(out)  # NOTE: last, and only once every shard it lists is in place
        journal.remove()
        meter.update(consumed, samples, tokens, final=True, note=stats.line())
        if cache is not None and progress:
            print(cache.summary(), file=sys.stderr, flush=True)
        return manifest


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--input",
        nargs="+",
        required=True,
        metavar="PATH",
        help="extract output dirs, .jsonl[.gz], .txt files or saved HF datasets",
    )
    parser.add_argument(
        "--tokenizer",
        required=True,
        metavar="NAME_OR_DIR",
        help="Hugging Face tokenizer (hub name or local directory)",
    )
    parser.add_argument("--output", required=True, metavar="DIR", help="shard directory")
    parser.add_argument("--max-len", type=int, default=256, help="sequence length with [CLS]/[SEP]")
    parser.add_argument(
        "--mode",
        choices=MODES,
        default="truncate",
        help="truncate: one document a sequence (the paper); pack: fill sequences",
    )
    parser.add_argument(
        "--eval-fraction",
        type=float,
        default=0.001,
        help="share of records (by PMID hash) in the eval split",
    )
    parser.add_argument("--workers", type=int, default=1, help="tokenizer processes (cores)")
    parser.add_argument("--samples-per-shard", type=int, default=10000)
    parser.add_argument("--text-field", metavar="NAME", help="JSON/dataset field holding the text")
    parser.add_argument(
        "--token-cache",
        metavar="CACHE",
        help="take token ids from this `tokenize` cache where it has them (same output)",
    )
    parser.add_argument(
        "--allow-partial",
        action="store_true",
        help="use an extract output its report.json does not vouch for (warns; default: refuse)",
    )


def main(args: argparse.Namespace) -> int:
    run_shard(
        args.input,
        args.tokenizer,
        args.output,
        max_len=args.max_len,
        mode=args.mode,
        eval_fraction=args.eval_fraction,
        workers=args.workers,
        samples_per_shard=args.samples_per_shard,
        text_field=args.text_field,
        token_cache=args.token_cache,
        allow_partial=args.allow_partial,
    )
    return 0
