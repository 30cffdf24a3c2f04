"""`python -m data_pipeline extract`: PubMed XML (baseline + update files) -> DIR/*.jsonl.gz.

    python -m data_pipeline extract --input baseline/ updatefiles/ --output data/pubmed --workers 8

Three phases, each restartable; memory stays flat for the full 37M-citation corpus:

1. Parse (parallel over files): every input `<stem>.xml[.gz]` becomes DIR/.parts/<stem>.part.gz
   (all valid records of the file, in file order, one JSON a line, citations without an abstract
   included) and DIR/.parts/<stem>.index.npz (PMIDs, versions, which have an abstract,
   DeleteCitation PMIDs and the file's stats). The index is written last and is the completion
   marker; it records the input's size and mtime and the parser version, so a rerun reuses exactly
   the parts whose input is unchanged.
2. Resolve updates (main process, numpy arrays indexed by PMID): a keep mask per file.
3. Write DIR/<stem>.jsonl.gz with the kept records (a hard link to the part when all are kept),
   then DIR/report.json, last. An output whose part and keep mask are those of the previous run's
   report is left as it is, so a rerun rewrites nothing that has not changed.

report.json is the completion record: each `files` entry of a readable input names its `output`
with `output_bytes` and `output_sha256` (hashed from the file on disk once every output is in
place), and `shard` refuses a directory whose *.jsonl.gz do not match it exactly
(data_pipeline/records.py). A killed run leaves outputs that look complete and no report.

Update rule. Files are ordered by name (never by argument order), and each record occurrence has
a position (file index, record index in the file). Among the occurrences of a PMID, the winner is
the one with the highest version, and at equal version the latest position: a record replaces an
earlier one when its version is >= the earlier's. A DeleteCitation for PMID p in file f removes
every occurrence of p in files up to and including f; occurrences in later files are kept (and
compete as above). Occurrences that lose are counted as `superseded`, those removed as `deleted`.
The result depends neither on argument order nor on --workers.

Citations without an abstract take part in the resolution and are dropped afterwards (unless
--keep-no-abstract): a revision that removes the abstract removes the citation, instead of letting
the stale earlier version with an abstract survive.

Parts are kept after a successful run so that adding the next update file only parses that file.
They are named `.part.gz`, not `.jsonl.gz`, so that a directory scan for record files never picks
them up.

On a cluster (slurm/preprocess.sbatch) phase 1 is split over an array job and the rest is one
final run over all inputs, which reuses every part:

    python -m data_pipeline extract --input baseline/ updatefiles/ --output DIR \
        --parts-only --slice I/N        # task I of N: parse only every N-th input from the I-th
    python -m data_pipeline extract --input baseline/ updatefiles/ --output DIR     # the merge

`--parts-only` stops after phase 1 (no resolution, no outputs, no report.json); `--slice I/N`
(only with --parts-only, since resolving updates needs every file) takes every N-th input, in name
order, from the I-th. Concurrent slices share DIR/.parts safely: each touches only its own
inputs' files (temp files included). The final run's output is byte-identical to a run that parsed
everything itself, whatever N was.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import multiprocessing
import os
import shutil
import sys
import time
from array import array
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from data_pipeline.io_utils import (
    UserError,
    atomic_path,
    atomic_write_json,
    claim_output_dir,
    disk_full_is_an_error,
    expand_inputs,
    out_of_space,
    parse_slice,
    read_json,
    sha256_file,
    take_slice,
)
from data_pipeline.progress import progress_line
from data_pipeline.pubmed import PARSER_VERSION, Deletions, PubmedReader, Skip

SUFFIXES = (".xml", ".xml.gz")
PARTS_DIR = ".parts"
REPORT = "report.json"
EXAMPLES_PER_REASON = 100
# Resolution packs (version, file index, record index) into one int64 so that one comparison
# orders occurrences; the bit widths bound the corpus shape (15 + 20 + 28 = 63 bits).
_REC_BITS, _FILE_BITS = 28, 20
TEXT_TITLE, TEXT_ABSTRACT = 1, 2  # per record in the index: 0 = no text at all
GZIP_LEVEL = 6  # level 9 costs ~2x the time for ~2% smaller files


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--input",
        nargs="+",
        required=True,
        metavar="PATH",
        help="PubMed XML files (.xml, .xml.gz) or directories of them",
    )
    parser.add_argument("--output", required=True, metavar="DIR", help="output directory")
    parser.add_argument("--workers", type=int, default=1, metavar="N", help="parallel processes")
    parser.add_argument(
        "--keep-no-abstract",
        action="store_true",
        help='keep citations without an abstract (abstract "")',
    )
    parser.add_argument(
        "--skip-bad-files",
        action="store_true",
        help="write the output without unreadable inputs instead of failing",
    )
    parser.add_argument(
        "--parts-only",
        action="store_true",
        help="only parse the inputs into DIR/.parts (an array task); a run without it merges",
    )
    parser.add_argument(
        "--slice",
        metavar="I/N",
        help="with --parts-only: parse every N-th input (name order) from the I-th",
    )


def main(args: argparse.Namespace) -> int:
    run_extract(
        args.input,
        args.output,
        args.workers,
        args.keep_no_abstract,
        args.skip_bad_files,
        parts_only=args.parts_only,
        slice_spec=parse_slice(args.slice) if args.slice else None,
    )
    return 0


def _gzip_writer(raw) -> gzip.GzipFile:
    # filename="" and mtime=0 keep the temp file's name and the clock out of the header.
    return gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=GZIP_LEVEL)


def input_stem(path: Path) -> str:
    """The name an input's part, output and token-cache entry share: its name less .xml[.gz]."""
    name = path.name
    for suffix in (".gz", ".xml"):
        name = name.removesuffix(suffix)
    return name


def _signature(path: Path) -> dict:
    st = path.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "parser_version": PARSER_VERSION}


def completed_part(path: Path, parts: Path) -> dict | None:
    """The stats of a complete part of this exact input in DIR/.parts (same size, mtime, parser),
    else None."""
    stem = input_stem(path)
    try:
        with np.load(parts / f"{stem}.index.npz") as z:
            stats = json.loads(str(z["stats"]))
        part_size = (parts / f"{stem}.part.gz").stat().st_size
    except (OSError, ValueError, KeyError):
        return None
    if stats.get("signature") != _signature(path):
        return None
    return stats if stats.get("part_size") == part_size else None


def extract_part(task: tuple[str, str]) -> dict:
    """Phase 1 for one input file (runs in a worker process). Returns the file's stats."""
    path, parts = Path(task[0]), Path(task[1])
    stem, start = input_stem(path), time.perf_counter()
    part, index = parts / f"{stem}.part.gz", parts / f"{stem}.index.npz"
    stats: dict = {"name": path.name, "path": str(path), "stem": stem, "status": "error"}
    pmids, versions, deletions = array("i"), array("i"), array("i")
    text_kind = array("b")  # per record: 0, TEXT_TITLE or TEXT_ABSTRACT
    skipped: Counter[str] = Counter()
    examples: list[list] = []
    records_in = 0
    try:
        signature = _signature(path)
        index.unlink(missing_ok=True)  # NOTE: the part is stale from here until the index is back
        with atomic_path(part) as tmp, open(tmp, "wb") as raw, _gzip_writer(raw) as gz:
            lines = []
            for item in PubmedReader(path, keep_no_abstract=True, keep_empty=True):
                if isinstance(item, dict):
                    records_in += 1
                    pmids.append(item["pmid"])
                    versions.append(item["version"])
                    text_kind.append(
                        TEXT_ABSTRACT if item["abstract"] else TEXT_TITLE if item["title"] else 0
                    )
                    lines.append(json.dumps(item, ensure_ascii=False, separators=(",", ":")))
                    if len(lines) >= 1000:  # one compressor call per batch, not per line
                        gz.write(("\n".join(lines) + "\n").encode())
                        lines.clear()
                elif isinstance(item, Skip):
                    records_in += item.reason != "bad_delete_pmid"
                    skipped[item.reason] += 1
                    if skipped[item.reason] <= EXAMPLES_PER_REASON:
                        examples.append([item.reason, item.pmid])
                elif isinstance(item, Deletions):
                    deletions.extend(item.pmids)
            if lines:
                gz.write(("\n".join(lines) + "\n").encode())
    except UserError as e:
        return {**stats, "error": str(e)}
    except OSError as e:
        if out_of_space(e, parts):
            raise  # not this input's fault: the whole run stops (run_extract says so)
        return {**stats, "error": f"{path}: {e.strerror or e}"}
    stats.update(
        status="ok",
        error=None,
        signature=signature,
        part_size=part.stat().st_size,
        records_in=records_in,
        records_kept=len(pmids),
        skipped=dict(sorted(skipped.items())),
        examples=examples,
        deletions=len(deletions),
        max_pmid=max(pmids, default=0),
        seconds=round(time.perf_counter() - start, 3),
    )
    with atomic_path(index) as tmp, open(tmp, "wb") as f:  # np.savez(path) would add ".npz"
        np.savez(
            f,
            pmids=np.asarray(pmids, np.int32),
            versions=np.asarray(versions, np.int32),
            deletions=np.asarray(deletions, np.int32),
            text_kind=np.asarray(text_kind, np.int8),
            stats=np.array(json.dumps(stats)),
        )
    return stats


def load_index(parts: Path, stem: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    with np.load(parts / f"{stem}.index.npz") as z:
        return z["pmids"].astype(np.int64), z["versions"].astype(np.int64), z["deletions"]


def load_text_kind(parts: Path, stem: str) -> tuple[np.ndarray, np.ndarray]:
    """(pmids, text kind) of a part's records, in one read of its index."""
    with np.load(parts / f"{stem}.index.npz") as z:
        return z["pmids"], z["text_kind"]


def resolve_updates(
    load: Callable[[int], tuple[np.ndarray, np.ndarray, np.ndarray]], n_files: int, size: int
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Phase 2: per file (in order) a keep mask and a deleted mask over its records.

    `load(f)` gives file f's (pmids, versions, deleted pmids); `size` exceeds every record PMID.
    Two passes over the indexes, memory O(max PMID) in numpy arrays, no per-PMID Python objects.
    """
    if n_files >= 1 << _FILE_BITS:
        raise UserError(f"too many input files ({n_files}); at most {(1 << _FILE_BITS) - 1}")
    best = np.full(size, -1, np.int64)  # packed key of the current winner, -1 = none
    last_delete = np.full(size, -1, np.int32)  # last file index with a DeleteCitation
    for f in range(n_files):
        pmids, versions, deleted = load(f)
        if len(pmids) >= 1 << _REC_BITS:
            raise UserError(f"file {f} has too many records ({len(pmids)})")
        if len(pmids):
            keys = _keys(versions, f)
            # Per-PMID maximum within the file first, so each PMID is assigned once below.
            order = np.lexsort((keys, pmids))
            p_sorted, k_sorted = pmids[order], keys[order]
            last = np.append(p_sorted[1:] != p_sorted[:-1], True)
            p_last = p_sorted[last]
            best[p_last] = np.maximum(best[p_last], k_sorted[last])
        deleted = deleted[deleted < size]
        best[deleted] = -1  # NOTE: also drops occurrences later in this same file
        last_delete[deleted] = f
    for f in range(n_files):
        pmids, versions, _ = load(f)
        keep = best[pmids] == _keys(versions, f)
        yield keep, ~keep & (last_delete[pmids] >= f)


def _keys(versions: np.ndarray, f: int) -> np.ndarray:
    rec = np.arange(len(versions), dtype=np.int64)
    return (versions << (_FILE_BITS + _REC_BITS)) | (f << _REC_BITS) | rec


def write_output(task: tuple[str, str, np.ndarray | None]) -> None:
    """Phase 3 for one file: the kept lines of the part (all of it when `keep` is None)."""
    part, out, keep = Path(task[0]), Path(task[1]), task[2]
    with atomic_path(out) as tmp:
        if keep is None:  # everything kept: same bytes as the part, so share them
            tmp.unlink()
            try:
                os.link(part, tmp)
            except OSError:
                shutil.copyfile(part, tmp)
            return
        n = 0
        with gzip.open(part, "rb") as src, open(tmp, "wb") as raw, _gzip_writer(raw) as dst:
            for n, line in enumerate(src, 1):
                if n <= len(keep) and keep[n - 1]:
                    dst.write(line)
        if n != len(keep):
            raise UserError(
                f"{part}: {n} records but the index has {len(keep)}; delete {part.parent} and rerun"
            )


def output_checksum(path: str) -> tuple[str, int, str]:
    """(file name, size in bytes, SHA-256) of one output, as report.json lists it."""
    return Path(path).name, os.stat(path).st_size, sha256_file(path)


class _InProcess:
    """Stands in for a Pool when workers == 1 (no start-up cost, same code path)."""

    def imap_unordered(self, fn, items):
        return map(fn, items)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _progress(enabled: bool, msg: str) -> None:
    if enabled:
        print(msg, file=sys.stderr, flush=True)


def run_extract(
    inputs: list[str],
    output: str,
    workers: int = 1,
    keep_no_abstract: bool = False,
    skip_bad_files: bool = False,
    progress: bool = True,
    parts_only: bool = False,
    slice_spec: tuple[int, int] | None = None,
) -> dict:
    """Extract PubMed XML `inputs` into `output`; returns the report (also DIR/report.json).

    With `parts_only`, stop after parsing (into DIR/.parts) the inputs of `slice_spec` (I, N), or
    all of them when it is None; the return value is then {"files": [...], "bad_files": [...]}.
    """
    if workers < 1:
        raise UserError(f"--workers must be at least 1, got {workers}")
    if slice_spec is not None and not parts_only:
        raise UserError(
            "--slice needs --parts-only: resolving updates needs every file, so only parsing is "
            "split (then run extract over all inputs, without --slice, to merge)"
        )
    files = expand_inputs(inputs, SUFFIXES)
    if not files:
        raise UserError(f"no PubMed XML files (.xml, .xml.gz) found in: {' '.join(inputs)}")
    by_stem: dict[str, Path] = {}
    for path in files:
        if (other := by_stem.setdefault(input_stem(path), path)) != path:
            raise UserError(f"two inputs would share an output name: {other} and {path}")
    # NOTE: .parts is what a killed run (or an array task of --parts-only) leaves before the
    # report exists; either marks the directory as this command's.
    out = claim_output_dir(output, (REPORT, PARTS_DIR), "use a new or empty directory as --output")
    parts = out / PARTS_DIR
    parts.mkdir(exist_ok=True)
    if parts_only:
        files = take_slice(files, slice_spec)
    try:
        with disk_full_is_an_error(out, "extracting", _FULL_ADVICE):
            if parts_only:
                return _parse_only(files, parts, workers, skip_bad_files, progress)
            return _extract(files, out, workers, keep_no_abstract, skip_bad_files, progress)
    except BaseException:
        # NOTE: leaving the pool terminates its other workers mid-write, past their own clean-up.
        for stray in _temp_files(out, files):
            stray.unlink(missing_ok=True)
        raise


def _temp_files(out: Path, files: list[Path]) -> list[Path]:
    """The temp files the inputs `files` leave when their writers die (atomic_path's)."""
    parts = out / PARTS_DIR
    kinds = ("part.gz", "index.npz")
    prefixes = tuple(f".{input_stem(p)}.{kind}." for p in files for kind in kinds)
    found = [p for p in parts.iterdir() if p.name.startswith(prefixes)]
    outputs = tuple(f".{input_stem(p)}.jsonl.gz." for p in files) + (f".{REPORT}.",)
    found += [p for p in out.iterdir() if p.name.startswith(outputs)]
    return [p for p in found if p.name.endswith(".tmp")]


# Every file is written atomically and report.json last, so a full disk leaves complete files.
_FULL_ADVICE = (
    f"no {REPORT} was written, so shard will refuse this directory; free space and rerun the "
    "same command: the inputs parsed so far are kept"
)


def _extract(
    files: list[Path],
    out: Path,
    workers: int,
    keep_no_abstract: bool,
    skip_bad_files: bool,
    progress: bool,
) -> dict:
    parts = out / PARTS_DIR
    # Temp files of a crashed run are never trusted, just litter.
    for stray in [
        *parts.glob(".*.tmp"),
        *out.glob(".*.jsonl.gz.*.tmp"),
        *out.glob(".report.*.tmp"),
    ]:
        stray.unlink(missing_ok=True)

    stats, todo = _plan_parts(files, parts, progress)
    n_files = len(files)
    ctx = multiprocessing.get_context("spawn")
    pool = ctx.Pool(min(workers, n_files)) if workers > 1 else _InProcess()
    with pool:
        _parse_parts(pool, todo, stats, n_files, progress)
        ordered = [stats[input_stem(p)] for p in files]
        bad = [s for s in ordered if s["status"] != "ok"]
        good = [s for s in ordered if s["status"] == "ok"]
        if bad and (not skip_bad_files or not good):
            raise _bad_files_error(bad, good, n_files)

        size = max(s["max_pmid"] for s in good) + 1
        masks = list(resolve_updates(lambda f: load_index(parts, good[f]["stem"]), len(good), size))
        previous = _remove_previous_outputs(out, {f"{s['stem']}.jsonl.gz" for s in good})
        tasks = []
        for s, (winner, deleted) in zip(good, masks, strict=True):
            # Citations without abstract (or without any text) competed as updates; drop them now.
            pmids, kind = load_text_kind(parts, s["stem"])
            keep = winner & (kind >= (TEXT_TITLE if keep_no_abstract else TEXT_ABSTRACT))
            reason = "empty_text" if keep_no_abstract else "no_abstract"
            _count_dropped(s, reason, winner & ~keep, pmids)
            s.update(
                records_out=int(keep.sum()),
                deleted=int(deleted.sum()),
                superseded=int((~winner & ~deleted).sum()),
                output_digest=_digest(s, keep),
            )
            part, dest = parts / f"{s['stem']}.part.gz", out / f"{s['stem']}.jsonl.gz"
            if previous.get(dest.name) == s["output_digest"] and dest.exists():
                continue  # same part, same keep mask: the file on disk is already this output
            tasks.append((str(part), str(dest), None if keep.all() else keep))
        _progress(progress, f"writing {len(tasks)} output files to {out}")
        for _ in pool.imap_unordered(write_output, tasks):
            pass
        # NOTE: hashed from disk after every write, reused outputs included: the report vouches
        # for the bytes shard will read, not for what this run meant to write.
        outputs = [str(out / f"{s['stem']}.jsonl.gz") for s in good]
        for name, size, digest in pool.imap_unordered(output_checksum, outputs):
            stats[name.removesuffix(".jsonl.gz")].update(output_bytes=size, output_sha256=digest)
    report = _report(ordered, keep_no_abstract)
    atomic_write_json(out / REPORT, report)
    _progress(
        progress,
        f"wrote {report['records_out']:,} records from {len(good)} files to {out} "
        f"(skipped {sum(report['skipped'].values()):,}, superseded {report['duplicates']:,}, "
        f"deleted {report['deleted']:,}, bad files {len(bad)})",
    )
    return report


def _plan_parts(files: list[Path], parts: Path, progress: bool) -> tuple[dict[str, dict], list]:
    """The stats of the inputs whose parts are complete, and the (input, parts) tasks to parse."""
    stats: dict[str, dict] = {}
    todo = []
    for path in files:
        if (done := completed_part(path, parts)) is not None:
            stats[done["stem"]] = done
        else:
            todo.append((str(path), str(parts)))
    if stats:
        _progress(progress, f"reusing {len(stats)} of {len(files)} completed parts in {parts}")
    return stats, todo


def _parse_parts(pool, todo: list, stats: dict[str, dict], n_files: int, progress: bool) -> None:
    """Phase 1 for the `todo` inputs; their stats go into `stats` (by stem)."""
    n_done, start = len(stats), time.perf_counter()
    for k, st in enumerate(pool.imap_unordered(extract_part, todo), 1):
        stats[st["stem"]] = st
        if st["status"] != "ok":
            _progress(progress, f"extract: file {n_done + k}/{n_files} | {st['error']}")
            continue
        # the rate counts this run's files only: reused parts took no time
        meter = progress_line(
            n_done + k, n_files, "files", elapsed=time.perf_counter() - start, initial=n_done
        )
        _progress(
            progress,
            f"extract: file {meter} | {st['name']}: "
            f"{st['records_kept']:,} records ({st['seconds']:.1f} s)",
        )


def _bad_files_error(bad: list[dict], good: list[dict], n_files: int) -> UserError:
    errors = "; ".join(s["error"] for s in bad[:5]) + ("; ..." if len(bad) > 5 else "")
    hint = " (rerun with --skip-bad-files to write the output without them)"
    return UserError(
        f"{len(bad)} of {n_files} input files could not be read{hint if good else ''}: {errors}"
    )


def _parse_only(
    files: list[Path], parts: Path, workers: int, skip_bad_files: bool, progress: bool
) -> dict:
    """`--parts-only`: phase 1 for `files` (one slice), touching no other input's files."""
    if not files:
        _progress(progress, "no inputs in this slice (more slices than inputs): nothing to do")
        return {"files": [], "bad_files": []}
    # NOTE: other slices may be writing into the same .parts right now: remove only the temp
    # files of this slice's inputs (an earlier attempt of this slice left them).
    for stray in _temp_files(parts.parent, files):
        stray.unlink(missing_ok=True)
    stats, todo = _plan_parts(files, parts, progress)
    ctx = multiprocessing.get_context("spawn")
    pool = ctx.Pool(min(workers, len(todo))) if workers > 1 and todo else _InProcess()
    with pool:
        _parse_parts(pool, todo, stats, len(files), progress)
    ordered = [stats[input_stem(p)] for p in files]
    bad = [s for s in ordered if s["status"] != "ok"]
    if bad and not skip_bad_files:
        raise _bad_files_error(bad, [s for s in ordered if s["status"] == "ok"], len(files))
    _progress(
        progress,
        f"parsed {len(files) - len(bad)} of {len(files)} inputs into {parts} "
        f"({len(files) - len(todo)} reused, bad files {len(bad)})",
    )
    return {
        "files": [{k: s.get(k) for k in ("name", "stem", "status", "error")} for s in ordered],
        "bad_files": [s["name"] for s in bad],
    }


def _count_dropped(stats: dict, reason: str, dropped: np.ndarray, pmids: np.ndarray) -> None:
    """Count winners dropped for lack of text as skipped for `reason`, with PMID examples."""
    n = int(dropped.sum())
    if n:
        skipped = dict(stats.get("skipped", {}))
        skipped[reason] = skipped.get(reason, 0) + n
        stats["skipped"] = dict(sorted(skipped.items()))
        examples = pmids[dropped][:EXAMPLES_PER_REASON].tolist()
        stats["examples"] = [*stats.get("examples", []), *([reason, p] for p in examples)]


def _digest(stats: dict, keep: np.ndarray) -> str:
    h = hashlib.sha256(json.dumps([stats["signature"], stats["part_size"]]).encode())
    h.update(np.packbits(keep).tobytes())
    return h.hexdigest()


def _remove_previous_outputs(out: Path, keep: set[str]) -> dict[str, str]:
    """Drop outputs a previous run listed that this run won't write, then its report.

    Returns the previous run's output digests by output name, for the outputs that are kept.
    NOTE: only what the report lists as an output (a `<stem>.jsonl.gz` in this directory) is ever
    deleted; any other file here is not this command's.
    """
    if not (out / REPORT).exists():
        return {}
    try:
        previous = read_json(out / REPORT).get("files", [])
    except UserError:
        previous = []
    digests = {}
    for entry in previous:
        name = entry.get("output") if isinstance(entry, dict) else None
        if not isinstance(name, str) or Path(name).name != name or not name.endswith(".jsonl.gz"):
            continue
        if name in keep:
            digests[name] = entry.get("output_digest")
        else:
            (out / name).unlink(missing_ok=True)
    # NOTE: the report goes before any output changes, so a crash leaves no report that lies.
    (out / REPORT).unlink()
    return digests


def _report(ordered: list[dict], keep_no_abstract: bool) -> dict:
    counts = ("records_in", "records_out", "deleted", "superseded", "deletions")
    files, skipped, examples, per_reason = [], Counter(), [], Counter()
    for s in ordered:
        output = f"{s['stem']}.jsonl.gz" if s["status"] == "ok" else None
        entry = {k: s[k] for k in ("name", "path", "status", "error")}
        entry.update({k: s.get(k, 0) for k in counts}, output=output, skipped=s.get("skipped", {}))
        entry["output_digest"] = s.get("output_digest")
        entry["output_bytes"] = s.get("output_bytes")
        entry["output_sha256"] = s.get("output_sha256")
        files.append(entry)
        skipped.update(entry["skipped"])
        for reason, pmid in s.get("examples", []):
            per_reason[reason] += 1
            if per_reason[reason] <= EXAMPLES_PER_REASON:
                examples.append({"file": s["name"], "pmid": pmid, "reason": reason})
    totals = {k: sum(f[k] for f in files) for k in counts}
    return {
        "files": files,
        "records_in": totals["records_in"],
        "records_out": totals["records_out"],
        "skipped": dict(sorted(skipped.items())),
        "skipped_examples": examples,
        "duplicates": totals["superseded"],
        "deletions": totals["deletions"],
        "deleted": totals["deleted"],
        "bad_files": [s["name"] for s in ordered if s["status"] != "ok"],
        "keep_no_abstract": keep_no_abstract,
    }
