"""An export's record, EXPORT.json: what makes a directory an export, and proves it complete.

    seal(tmp, out_dir)            # EXPORT.json (every file, size, SHA-256), then tmp -> out_dir
    verify_export(out_dir)        # None, or the first problem
    not_an_export(out_dir)        # None when an export may (re)write out_dir, else what is there

trainer/export/hf_export.py writes exports and trainer/export/onnx.py adds files to one, both
through `seal`; neither imports the other for it.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from data_pipeline.errors import UserError
from data_pipeline.io_utils import (
    atomic_write_json,
    fsync_dir,
    fsync_tree,
    listing,
    read_json,
    sha256_file,
    share_tree,
)

EXPORT_RECORD = "EXPORT.json"  # in an export: every file it wrote, with size and SHA-256


def seal(tmp: Path, out_dir: Path, record: dict | None = None) -> None:
    """Write `tmp`'s EXPORT.json (every file with its size and SHA-256, plus the entries of
    `record`), then put `tmp` in `out_dir`'s place. NOTE: the caller has checked with
    `not_an_export` that `out_dir` may be replaced, and removes `tmp` if this raises."""
    files = {
        p.relative_to(tmp).as_posix(): {"bytes": p.stat().st_size, "sha256": sha256_file(p)}
        for p in sorted(tmp.rglob("*"))
        if p.is_file() and p.name != EXPORT_RECORD
    }
    atomic_write_json(tmp / EXPORT_RECORD, {**(record or {}), "files": files})
    share_tree(tmp)
    fsync_tree(tmp)
    old = None
    if out_dir.exists():
        old = out_dir.with_name(f".{out_dir.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        out_dir.rename(old)
    tmp.rename(out_dir)
    fsync_dir(out_dir.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)  # an export (not_an_export said so)


def verify_export(directory: Path) -> str | None:
    """None when `directory` holds EXPORT.json and every file it lists, with its size and
    SHA-256; otherwise the first problem, for a message."""
    record = Path(directory) / EXPORT_RECORD
    if not record.is_file():
        return f"no {EXPORT_RECORD}; not an export of this trainer (or one written before it)"
    try:
        files = read_json(record).get("files")
    except UserError as e:
        return str(e)
    if not isinstance(files, dict) or not files:
        return f"{EXPORT_RECORD} lists no files"
    for rel, want in files.items():
        path = Path(directory) / rel
        if not path.is_file():
            return f"{rel} is missing"
        size = path.stat().st_size
        if size != want.get("bytes"):
            return f"{rel} has {size:,} bytes where {EXPORT_RECORD} says {want.get('bytes')}"
        if sha256_file(path) != want.get("sha256"):
            return f"{rel}: its SHA-256 differs from the one in {EXPORT_RECORD} (corrupted)"
    return None


def not_an_export(out_dir: Path) -> str | None:
    """None when `out_dir` may be (re)written by an export; else what is there."""
    if not out_dir.exists():
        return None
    if not out_dir.is_dir():
        return "is a file"
    found = sorted(p.relative_to(out_dir).as_posix() for p in out_dir.rglob("*") if p.is_file())
    if not found:
        return None
    record = out_dir / EXPORT_RECORD
    if record.is_file():
        try:
            listed = set(read_json(record).get("files", {}))
        except UserError:
            return f"holds an unreadable {EXPORT_RECORD}"
        others = [f for f in found if f not in listed and f != EXPORT_RECORD]
        return f"holds {listing(others)} besides the export" if others else None
    card = out_dir / "README.md"
    if (out_dir / "config.json").is_file() and card.is_file():
        if "- biodistill" in card.read_text(encoding="utf-8", errors="replace"):
            return None  # NOTE: an export written before EXPORT.json: its card's tag says so
    return f"holds {listing(found)} and no {EXPORT_RECORD}"


def not_ours(out_dir: Path, problem: str) -> str:
    return (
        f"{out_dir}: {problem}: it is not an export of this trainer, and nothing in it is "
        "replaced; export to another directory (--output) or move it away"
    )
