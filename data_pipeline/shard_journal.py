"""Resume journal of `data_pipeline shard`: what a crashed run needs to continue byte for byte.

Layout (DIR/.shard-state/, removed once manifest.json is written):
    state.json          {"version", "fingerprint", "records_consumed", "pending_file",
                         "splits": {split: [ShardInfo...]}}, saved atomically after every shard
    pending-NNNNNN.npz  the samples not yet in a shard and the pack-mode carry of each split,
                        written before the state.json that names it

The fingerprint covers the inputs (size + sha256), the tokenizer and every setting that changes the
output, so a journal is only ever resumed by the run that wrote it.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import sys
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from data_pipeline.io_utils import PipelineError, atomic_path
from data_pipeline.manifest import MANIFEST_NAME, Manifest, ShardInfo, TokenizerInfo

if TYPE_CHECKING:  # shards imports this module
    from data_pipeline.shards import Packer, SplitWriter

STATE_DIR = ".shard-state"
STATE_VERSION = 1
_SHARD_NAME = re.compile(r"^(train|eval)-\d{6}\.tar$")
_TMP_NAME = re.compile(r"^\.(train|eval)-\d{6}\.tar\..*\.tmp$")  # atomic_path leftovers


class Journal:
    """DIR/.shard-state: enough writer state to continue after the last finished shard."""

    def __init__(self, directory: Path, fingerprint: str):
        self.dir, self.fingerprint, self.seq = directory / STATE_DIR, fingerprint, 0

    def load(self) -> dict | None:
        path = self.dir / "state.json"
        if not path.exists():
            return None
        try:
            state = json.loads(path.read_text(encoding="utf-8"))
            if state.get("version") != STATE_VERSION:
                raise ValueError(f"version {state.get('version')!r}")
        except (OSError, ValueError, AttributeError) as e:
            raise PipelineError(
                f"{path}: unreadable resume journal ({e}); remove {self.dir} to start over"
            ) from None
        return state

    def save(
        self, consumed: int, writers: dict[str, SplitWriter], packers: dict[str, Packer]
    ) -> None:
        arrays: dict[str, np.ndarray] = {}
        meta: dict[str, dict] = {}
        for split, w in writers.items():
            lens = np.array([len(ids) for ids, _ in w.pending], np.int64)
            arrays[f"{split}_ids"] = (
                np.concatenate([ids for ids, _ in w.pending]) if w.pending else np.zeros(0, w.dtype)
            )
            arrays[f"{split}_lens"] = lens
            p = packers.get(split)
            carry = np.concatenate(p.parts) if p and p.n else np.zeros(0, np.int32)
            arrays[f"{split}_carry"] = carry
            meta[split] = {"metas": [m for _, m in w.pending], "carry_keys": p.keys if p else []}
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
            "splits": {s: [asdict(i) for i in w.shards] for s, w in writers.items()},
        }
        with atomic_path(self.dir / "state.json") as tmp:
            tmp.write_text(json.dumps(state, sort_keys=True))
        for old in self.dir.glob("pending-*.npz"):
            if old.name != name:
                old.unlink()

    def restore(
        self, state: dict, writers: dict[str, SplitWriter], packers: dict[str, Packer]
    ) -> int:
        self.seq = state["seq"]
        with np.load(self.dir / state["pending_file"], allow_pickle=False) as z:
            meta = json.loads(z["meta"].tobytes())
            for split, w in writers.items():
                w.shards = [ShardInfo(**i) for i in state["splits"][split]]
                metas = meta[split]["metas"]
                cut = np.cumsum(z[f"{split}_lens"])[:-1]
                samples = np.split(z[f"{split}_ids"], cut) if metas else []
                w.pending = list(zip(samples, metas, strict=True))
                carry = z[f"{split}_carry"]
                if split in packers and len(carry):
                    p = packers[split]
                    p.parts, p.n, p.keys = [carry], len(carry), meta[split]["carry_keys"]
        return state["records_consumed"]


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
        raise PipelineError(
            f"{out}: holds a complete shard run made with different settings (inputs, tokenizer, "
            "max_len, mode, eval fraction or shard size); choose a new --output or remove it"
        )
    shutil.rmtree(journal.dir, ignore_errors=True)  # a crash can leave it after the manifest
    if progress:
        print(f"shard: {out} already complete ({MANIFEST_NAME} matches)", file=sys.stderr)
    return existing


def _clean_output(out: Path, journaled: set[str]) -> None:
    """Drop shard files (and temp files) that the journal does not list: a crash left them."""
    for f in out.iterdir():
        if _SHARD_NAME.match(f.name) and f.name not in journaled or _TMP_NAME.match(f.name):
            f.unlink()


def resume(
    out: Path, journal: Journal, writers: dict[str, SplitWriter], packers: dict[str, Packer]
) -> int:
    """Restore the writers from the journal (if any) and return the records already consumed."""
    state = journal.load()
    ours = state is not None  # shard files here are a crashed run's, not someone else's
    if ours and state["fingerprint"] != journal.fingerprint and not any(state["splits"].values()):
        state = None  # a run that stopped before its first shard: nothing worth keeping
        shutil.rmtree(journal.dir)
    if state is not None and state["fingerprint"] != journal.fingerprint:
        raise PipelineError(
            f"{out}: holds a partial shard run made with different settings; rerun it with its "
            "own arguments to resume it, or choose a new --output or remove that directory"
        )
    if not ours and any(_SHARD_NAME.match(f.name) for f in out.iterdir()):
        raise PipelineError(
            f"{out}: holds shard files but neither a manifest nor a resume journal; choose a "
            "new --output or remove them"
        )
    consumed = journal.restore(state, writers, packers) if state else 0
    journaled = {i.name for w in writers.values() for i in w.shards}
    if gone := sorted(n for n in journaled if not (out / n).is_file()):
        raise PipelineError(
            f"{out}: shards named by the resume journal are gone ({', '.join(gone[:3])}); "
            "remove the directory to start over"
        )
    _clean_output(out, journaled)
    if state is None:
        journal.save(0, writers, packers)  # claims the directory for these settings
    return consumed
