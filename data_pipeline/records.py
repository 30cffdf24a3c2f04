"""Record inputs of `data_pipeline shard`: every accepted input kind as one stream of (pmid, text).

Accepted inputs (files or directories, in the order given):

- `extract` output: a directory holding report.json and *.jsonl.gz records; its files are read in
  sorted name order and hidden entries (the .parts/ work area, temp files) are ignored. A directory
  with report.json or .parts/ is taken as extract output and must match its report exactly: every
  listed output present with the listed size and SHA-256, no record file the report does not list.
  Anything else (an interrupted extract leaves complete-looking outputs and no report) is one
  error naming the directory and each problem, unless `allow_partial` (shard --allow-partial),
  which prints them as a warning and reads what is there;
- any other directory: its *.jsonl.gz, *.jsonl and *.txt files, same order and rules;
- .jsonl / .jsonl.gz: one JSON object a line; text = title + " " + abstract when those keys exist
  (the paper's text, docs/objectives.md), else the "text" field, or the field named by --text-field;
- .txt (optionally .txt.gz): one document a line, blank lines skipped;
- a saved Hugging Face `datasets` Dataset (a `save_to_disk` directory with state.json and
  dataset_info.json), rows read like JSON records.

Records whose text is empty are skipped. The stream is deterministic: the same inputs always give
the same records in the same order, which is what lets a resumed run skip records by count.

Token ids of records are data_pipeline/token_ids.py's concern; `sample_identity` (the
split hash and identity key of a record) is here, beside the records it names.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import sys
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from data_pipeline.errors import UserError
from data_pipeline.extract import PARTS_DIR, REPORT
from data_pipeline.io_utils import read_json, sha256_file

RECORD_SUFFIXES = (".jsonl.gz", ".jsonl", ".txt", ".txt.gz")
_HF_MARKERS = ("state.json", "dataset_info.json")
_HF_BATCH = 1024


class Record(NamedTuple):
    pmid: int | None  # None for inputs without PMIDs (plain text, text-only JSON)
    text: str


@dataclass(frozen=True)
class Source:
    kind: str  # "jsonl" | "txt" | "hf"
    path: Path
    files: tuple[Path, ...]  # what the manifest checksums (the dataset's files for "hf")
    records: int | None = None  # known in advance for "hf"


@dataclass
class InputSet:
    sources: list[Source]
    total_records: int | None  # known when every input says how many records it holds
    sha256: dict[Path, str] = field(default_factory=dict)  # digests the extract check computed

    @property
    def files(self) -> list[Path]:
        return [f for s in self.sources for f in s.files]


def _is_hf_dataset(d: Path) -> bool:
    return all((d / m).is_file() for m in _HF_MARKERS)


def _file_kind(p: Path) -> str:
    name = p.name
    if name.endswith((".txt", ".txt.gz")):
        return "txt"
    return "jsonl"  # a named file of any other suffix is taken as JSON lines


def _dir_files(d: Path) -> list[Path]:
    found = []
    for child in d.rglob("*"):
        rel = child.relative_to(d)
        if any(part.startswith(".") for part in rel.parts):
            continue
        if child.is_file() and child.name.endswith(RECORD_SUFFIXES):
            found.append(child)
    return sorted(found, key=lambda q: str(q.relative_to(d)))


def _report_records(d: Path) -> int | None:
    """Records an `extract` run wrote, from its report.json (None when it does not say)."""
    try:
        report = json.loads((d / REPORT).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    value = report.get("records_out") if isinstance(report, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _is_extract_dir(d: Path) -> bool:
    return (d / REPORT).is_file() or (d / PARTS_DIR).is_dir()


def check_extract_dir(d: Path, files: list[Path]) -> tuple[list[str], dict[Path, str]]:
    """What is wrong with extract output `d` (its record `files`) against its report.json, one
    line per problem (none when complete), and the SHA-256 of every file it hashed."""
    if not (d / REPORT).is_file():
        return [f"no {REPORT} (extract writes it last: an interrupted run leaves none)"], {}
    try:
        entries = read_json(d / REPORT).get("files")
    except UserError as e:
        return [str(e)], {}
    if not isinstance(entries, list):
        return [f"{REPORT} has no 'files' list"], {}
    listed: dict[str, dict] = {}
    for entry in entries:
        name = entry.get("output") if isinstance(entry, dict) else None
        if isinstance(name, str):
            listed[name] = entry
    problems, digests = [], {}
    for name, entry in sorted(listed.items()):
        path, size, want = d / name, entry.get("output_bytes"), entry.get("output_sha256")
        if not isinstance(want, str) or not isinstance(size, int):
            problems.append(f"{name}: {REPORT} lists no size and SHA-256 (an older extract)")
        elif not path.is_file():
            problems.append(f"{name}: listed in {REPORT} but missing")
        elif (got_size := path.stat().st_size) != size:
            problems.append(f"{name}: {got_size} bytes, {REPORT} lists {size}")
        elif (got := digests.setdefault(path, sha256_file(path))) != want:
            problems.append(f"{name}: SHA-256 {got[:12]}... differs from {REPORT}'s {want[:12]}...")
    for f in files:
        rel = str(f.relative_to(d))
        if rel not in listed:
            problems.append(f"{rel}: not listed in {REPORT}")
    return problems, digests


def _extract_files(d: Path, allow_partial: bool) -> tuple[list[Path], dict[Path, str], bool]:
    """The record files of extract output `d`, their digests, and whether the report vouches
    for them (see the module docstring)."""
    files = _dir_files(d)
    problems, digests = check_extract_dir(d, files)
    if not problems:
        return files, digests, True
    listing = "; ".join(problems[:5])
    if len(problems) > 5:
        listing += f"; ... ({len(problems)} problems)"
    if not allow_partial:
        raise UserError(
            f"{d}: incomplete or changed extract output: {listing}. Rerun `python -m "
            "data_pipeline extract` into it (complete parts are reused), or pass --allow-partial "
            "to use the files that are there"
        )
    warning = f"warning: {d}: using a partial extract output (--allow-partial): {listing}"
    print(warning, file=sys.stderr, flush=True)
    return files, {}, False


def resolve_inputs(inputs: list[str], allow_partial: bool = False) -> InputSet:
    """Turn --input paths into sources; missing paths and DatasetDict directories are errors,
    and so is an extract output that its report.json does not vouch for, unless `allow_partial`."""
    if not inputs:
        raise UserError("no inputs given (pass --input PATH [PATH ...])")
    sources: list[Source] = []
    total: int | None = 0
    sha256: dict[Path, str] = {}
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            if _is_hf_dataset(p):
                rows = _hf_rows(p)
                sources.append(Source("hf", p, _hf_files(p), rows))
                total = None if total is None else total + rows
                continue
            if (p / "dataset_dict.json").is_file():
                raise UserError(
                    f"{p}: a saved DatasetDict; pass one split's directory (e.g. {p / 'train'})"
                )
            if _is_extract_dir(p):
                files, digests, complete = _extract_files(p, allow_partial)
                sha256.update(digests)
            else:
                files, complete = _dir_files(p), False
            sources += [Source(_file_kind(f), f, (f,)) for f in files]
            known = _report_records(p) if complete else None
            total = None if total is None or known is None else total + known
        elif p.is_file():
            sources.append(Source(_file_kind(p), p, (p,)))
            total = None
        else:
            raise UserError(f"{p}: no such file or directory")
    return InputSet(sources, total, sha256)


def _hf_files(d: Path) -> tuple[Path, ...]:
    return tuple(sorted((f for f in d.rglob("*") if f.is_file()), key=lambda q: str(q)))


def _hf_rows(d: Path) -> int:
    try:
        import datasets

        return len(datasets.load_from_disk(str(d)))
    except Exception as e:  # noqa: BLE001 - any loading failure is the user's input problem
        raise UserError(f"{d}: cannot load the saved dataset ({e})") from None


def record_text(rec: dict[str, Any], text_field: str | None, where: str) -> str:
    """The text of one JSON record or dataset row (see the module docstring for the rule)."""
    if text_field is not None:
        if text_field not in rec:
            raise UserError(f"{where}: record has no field '{text_field}'")
        value = rec[text_field]
    elif "title" in rec or "abstract" in rec:
        title = rec.get("title") or ""
        abstract = rec.get("abstract") or ""
        if not isinstance(title, str) or not isinstance(abstract, str):
            raise UserError(f"{where}: 'title' and 'abstract' must be strings")
        return f"{title} {abstract}" if title and abstract else title or abstract
    elif "text" in rec:
        value = rec["text"]
    else:
        raise UserError(
            f"{where}: record has neither title/abstract nor text "
            "(name the text field with --text-field NAME)"
        )
    if value is None:
        return ""
    if not isinstance(value, str):
        raise UserError(f"{where}: field value {value!r} is not a string")
    return value


def _pmid(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.isdigit():
        return int(value)
    return None


class RecordReader:
    """Iterates the records of an InputSet and tracks how many input bytes it has read."""

    def __init__(self, inputs: InputSet, text_field: str | None = None):
        self.inputs = inputs
        self.text_field = text_field
        self.bytes_total = sum(f.stat().st_size for f in inputs.files)
        self._bytes_done = 0
        self._raw = None  # the open raw file, whose position measures progress through it
        self.source: Source | None = None  # the source of the record yielded last

    @property
    def bytes_read(self) -> int:
        current = 0
        if self._raw is not None and not self._raw.closed:
            current = self._raw.tell()
        return self._bytes_done + current

    def __iter__(self) -> Iterator[Record]:
        for src in self.inputs.sources:
            self.source = src
            if src.kind == "hf":
                yield from self._hf(src)
            else:
                yield from self._lines(src)
            self._bytes_done += sum(f.stat().st_size for f in src.files)

    def _lines(self, src: Source) -> Iterator[Record]:
        path = src.path
        with open(path, "rb") as raw:
            self._raw = raw
            f = gzip.GzipFile(fileobj=raw, mode="rb") if path.name.endswith(".gz") else raw
            try:
                for lineno, line in enumerate(f, 1):
                    if src.kind == "txt":
                        text = line.decode("utf-8", errors="replace").strip()
                        if text:
                            yield Record(None, text)
                    elif line.strip():
                        rec = self._json_record(line, path, lineno)
                        if rec is not None:
                            yield rec
            except (EOFError, OSError, zlib.error) as e:
                raise UserError(f"{path}: cannot read it (truncated or corrupt: {e})") from None
            finally:
                self._raw = None

    def _json_record(self, line: bytes, path: Path, lineno: int) -> Record | None:
        where = f"{path}:{lineno}"
        try:
            rec = json.loads(line)
        except ValueError as e:
            raise UserError(f"{where}: malformed JSON ({e})") from None
        if not isinstance(rec, dict):
            raise UserError(f"{where}: expected a JSON object, found {type(rec).__name__}")
        text = record_text(rec, self.text_field, where)
        return Record(_pmid(rec.get("pmid")), text) if text.strip() else None

    def _hf(self, src: Source) -> Iterator[Record]:
        import datasets

        ds = datasets.load_from_disk(str(src.path))
        row = 0
        for batch in ds.iter(batch_size=_HF_BATCH):
            columns = list(batch)
            for values in zip(*(batch[c] for c in columns), strict=True):
                row += 1
                rec = dict(zip(columns, values, strict=True))
                text = record_text(rec, self.text_field, f"{src.path} row {row - 1}")
                if text.strip():
                    yield Record(_pmid(rec.get("pmid")), text)


def iter_records(inputs: InputSet, text_field: str | None = None) -> Iterator[Record]:
    """All non-empty records of `inputs`, in order (see RecordReader for progress tracking)."""
    return iter(RecordReader(inputs, text_field))


def split_of(split_hash: int, eval_fraction: float) -> str:
    """ "eval" or "train": the split a record with this `sample_identity` hash lands in."""
    return "eval" if split_hash / 2**64 < eval_fraction else "train"


def sample_identity(record: Record) -> tuple[int, list]:
    """(64-bit split hash, identity key): blake2b of "pmid:<n>", else of "text:<text>"."""
    src = f"pmid:{record.pmid}" if record.pmid is not None else f"text:{record.text}"
    digest = hashlib.blake2b(src.encode("utf-8")).digest()[:8]
    key = ["pmid", record.pmid] if record.pmid is not None else ["id", digest.hex()]
    return int.from_bytes(digest, "big"), key
