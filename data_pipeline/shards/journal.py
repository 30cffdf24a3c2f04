"""Resume journal of `data_pipeline shard`: what a crashed run needs to continue byte for byte.

Layout (DIR/.shard-state/, its files removed once manifest.json is written):
    state.json          {"version", "fingerprint", "records_consumed", "pending_file",
                         "splits": {split: [ShardInfo...]}}, saved atomically after every shard
    pending-NNNNNN.npz  the samples not yet in a shard and the pack-mode carry of each split,
                        written before the state.json that names it

The fingerprint covers the inputs (size + sha256), the tokenizer and every setting that changes the
output, so a journal is only ever resumed by the run that wrote it. The writers and packers are
saved and restored through their own `state()` / `restore(state)` (data_pipeline/shards/writer.py).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Literal, Protocol

import numpy as np
from pydantic import Field

from data_pipeline.errors import UserError
from data_pipeline.io_utils import atomic_path
from data_pipeline.schema import Int, Schema, Str, validate
from data_pipeline.shards.manifest import MANIFEST_NAME, Manifest, ShardInfo, TokenizerInfo

STATE_DIR = ".shard-state"
STATE_VERSION = 1
_SHARD_NAME = re.compile(r"^(train|eval)-\d{6}\.tar$")
_TMP_NAME = re.compile(r"^\.(train|eval)-\d{6}\.tar\..*\.tmp$")  # atomic_path leftovers
# What the journal directory holds: state.json, pending-NNNNNN.npz and their temp files.
_JOURNAL_NAME = re.compile(
    r"^(state\.json|pending-\d{6}\.npz)$|^\.(state\.json|pending-\d{6}\.npz)\..*\.tmp$"
)


class Stateful(Protocol):
    """A split's shard writer or packer (data_pipeline/shards/writer.py, which imports this
    module): the journal reads and sets them through these two methods only."""

    def state(self) -> dict: ...

    def restore(self, state: dict) -> None: ...


class JournalState(Schema):
    """state.json, as `Journal.save` writes it."""

    version: Literal[STATE_VERSION] = Field(description="the journal format")
    fingerprint: Str = Field(description="inputs, tokenizer and settings of the run that wrote it")
    seq: Int = Field(ge=0, description="the journal's save count (names the pending file)")
    records_consumed: Int = Field(ge=0, description="records already in shards or pending")
    pending_file: Str = Field(description="the .npz of pending samples and pack carries")
    splits: dict[Str, list[ShardInfo]] = Field(description="each split's finished shards")


class Journal:
    """DIR/.shard-state: enough writer state to continue after the last finished shard."""

    def __init__(self, directory: Path, fingerprint: str):
        self.dir, self.fingerprint, self.seq = directory / STATE_DIR, fingerprint, 0

    def load(self) -> JournalState | None:
        path = self.dir / "state.json"
        if not path.exists():
            return None
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise UserError(
                f"{path}: unreadable resume journal ({e}); remove {self.dir} to start over"
            ) from None
        try:
            return validate(JournalState, raw, root="state.json", source=str(path))
        except UserError as e:
            raise UserError(f"{e}; remove {self.dir} to start over") from None

    def save(
        self, consumed: int, writers: dict[str, Stateful], packers: dict[str, Stateful]
    ) -> None:
        arrays: dict[str, np.ndarray] = {}
        meta: dict[str, dict] = {}
        shards: dict[str, list[dict]] = {}
        for split, w in writers.items():
            ws = w.state()
            p = packers[split].state() if split in packers else None
            arrays[f"{split}_ids"], arrays[f"{split}_lens"] = ws["ids"], ws["lens"]
            arrays[f"{split}_carry"] = p["carry"] if p else np.zeros(0, np.int32)
            meta[split] = {"metas": ws["metas"], "carry_keys": p["keys"] if p else []}
            shards[split] = [asdict(i) for i in ws["shards"]]
        arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
        self.seq += 1
        name = f"pending-{self.seq:06d}.npz"
        with atomic_path(self.dir / name) as tmp, open(tmp, "wb") as f:
            np.savez(f, **arrays)
        state = {
            "version": STATE_VERSION,
            "fingerprint": self.fingerprint,
            "seq": self.seq,
            "records_consumed": consumed,
            "pending_file": name,
            "splits": shards,
        }
        with atomic_path(self.dir / "state.json") as tmp:
            tmp.write_text(json.dumps(state, sort_keys=True))
        for old in self.dir.glob("pending-*.npz"):
            if old.name != name:
                old.unlink()

    def remove(self) -> None:
        """Delete the journal's own files (and its directory, once empty); a file someone else
        put there stays."""
        if not self.dir.is_dir():
            return
        for f in self.dir.iterdir():
            if _JOURNAL_NAME.match(f.name) and f.is_file():
                f.unlink()
        with contextlib.suppress(OSError):
            self.dir.rmdir()

    def restore(
        self, state: JournalState, writers: dict[str, Stateful], packers: dict[str, Stateful]
    ) -> int:
        self.seq = state.seq
        with np.load(self.dir / state.pending_file, allow_pickle=False) as z:
            meta = json.loads(z["meta"].tobytes())
            for split, w in writers.items():
                w.restore(
                    {
                        "shards": list(state.splits[split]),
                        "ids": z[f"{split}_ids"],
                        "lens": z[f"{split}_lens"],
                        "metas": meta[split]["metas"],
                    }
                )
                if split in packers:
                    carry = z[f"{split}_carry"]
                    packers[split].restore({"carry": carry, "keys": meta[split]["carry_keys"]})
        return state.records_consumed


def fingerprint(inputs_meta: list[dict], tok_json: str, settings: dict) -> str:
    """What a journal belongs to: input checksums, the tokenizer and the output settings."""
    blob = {
        "version": STATE_VERSION,
        "inputs": [[i["bytes"], i["sha256"]] for i in inputs_meta],
        "tokenizer": hashlib.sha256(tok_json.encode()).hexdigest(),
        **settings,
    }
    return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()


def _same_run(m: Manifest, vocab_hash: str, inputs_meta: list[dict], settings: dict) -> bool:
    """Whether an existing manifest is what this run would write (text_field is not recorded)."""
    if (m.tokenizer.vocab_hash, m.max_len, m.mode, m.eval_fraction) != (
        vocab_hash,
        settings["max_len"],
        settings["mode"],
        settings["eval_fraction"],
    ):
        return False
    if [(i.get("bytes"), i.get("sha256")) for i in m.inputs] != [
        (i["bytes"], i["sha256"]) for i in inputs_meta
    ]:
        return False
    per_shard = settings["samples_per_shard"]
    for split in m.splits.values():
        counts = [s.samples for s in split.shards]
        if any(c != per_shard for c in counts[:-1]) or counts and counts[-1] > per_shard:
            return False
    return True


def complete_run(
    out: Path,
    journal: Journal,
    info: TokenizerInfo,
    inputs_meta: list[dict],
    settings: dict,
    progress: bool,
) -> Manifest:
    """The existing manifest when it is what this run would write; an error otherwise."""
    existing = Manifest.load(out)
    if not _same_run(existing, info.vocab_hash, inputs_meta, settings):
        raise UserError(
            f"{out}: holds a complete shard run made with different settings (inputs, tokenizer, "
            "max_len, mode, eval fraction or shard size); choose a new --output or remove it"
        )
    journal.remove()  # a crash can leave it after the manifest
    if progress:
        print(f"shard: {out} already complete ({MANIFEST_NAME} matches)", file=sys.stderr)
    return existing


def _unjournaled(writers: dict[str, Stateful]) -> set[str]:
    """The shard files a crash can leave after the journal's last save: each shard is written,
    then journalled, so at most the next shard of each split."""
    return {f"{split}-{len(w.state()['shards']):06d}.tar" for split, w in writers.items()}


def _clean_output(out: Path, writers: dict[str, Stateful]) -> None:
    """Drop what a crashed run left past its journal: the next shard of a split, temp files.
    NOTE: no other file is touched, a user's shard-like file included."""
    crashed = _unjournaled(writers)
    for f in out.iterdir():
        if f.name in crashed and f.is_file() or _TMP_NAME.match(f.name):
            f.unlink()


def resume(
    out: Path, journal: Journal, writers: dict[str, Stateful], packers: dict[str, Stateful]
) -> int:
    """Restore the writers from the journal (if any) and return the records already consumed."""
    state = journal.load()
    ours = state is not None  # shard files here are a crashed run's, not someone else's
    if ours and state.fingerprint != journal.fingerprint and not any(state.splits.values()):
        state = None  # a run that stopped before its first shard: nothing worth keeping
        journal.remove()
    if state is not None and state.fingerprint != journal.fingerprint:
        raise UserError(
            f"{out}: holds a partial shard run made with different settings; rerun it with its "
            "own arguments to resume it, or choose a new --output or remove that directory"
        )
    if not ours and any(_SHARD_NAME.match(f.name) for f in out.iterdir()):
        raise UserError(
            f"{out}: holds shard files but neither a manifest nor a resume journal; choose a "
            "new --output or remove them"
        )
    consumed = journal.restore(state, writers, packers) if state else 0
    journaled = {i.name for w in writers.values() for i in w.state()["shards"]}
    if gone := sorted(n for n in journaled if not (out / n).is_file()):
        raise UserError(
            f"{out}: shards named by the resume journal are gone ({', '.join(gone[:3])}); "
            "remove the directory to start over"
        )
    _clean_output(out, writers)
    if state is None:
        journal.save(0, writers, packers)  # claims the directory for these settings
    return consumed


def clear_run(out: Path) -> None:
    """Clear `out` for another shard run: delete the run's own files, complete or stopped (the
    shards its manifest or journal lists, those a crash can leave past the journal and the
    writers' temp files), then the manifest and the journal's files. The journal directory
    stays, empty, so that `out` is still this command's to write into.
    NOTE: only names the run recorded go; a user's file in `out` stays."""
    if not out.is_dir():
        return
    names = {f.name for f in out.iterdir() if _TMP_NAME.match(f.name)}
    if (out / MANIFEST_NAME).is_file():
        manifest = Manifest.load(out)
        names |= {s.name for split in manifest.splits.values() for s in split.shards}
    journal = Journal(out, "")
    if (state := journal.load()) is not None:
        for split, shards in state.splits.items():
            names |= {i.name for i in shards} | {f"{split}-{len(shards):06d}.tar"}
    for name in sorted(names):
        if _SHARD_NAME.match(name) or _TMP_NAME.match(name):
            (out / name).unlink(missing_ok=True)
    (out / MANIFEST_NAME).unlink(missing_ok=True)
    journal.remove()
    journal.dir.mkdir(exist_ok=True)
