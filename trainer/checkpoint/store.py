"""Checkpoints: collective, self-describing, complete only when their marker says so.

Layout, one directory per save:

    runs/<name>/checkpoints/step-00002500/
        <student>/             DeepSpeed save_dir of that student's engine: `latest` + tag dir
                               global_step<N>/ (model, ZeRO optimizer partitions, LR schedule;
                               client_state {run_step, student}); the teacher is never saved
            hf/                config.json, tokenizer, README.md: `python -m trainer.export`
                               turns the checkpoint into a Hugging Face model with these
        rank-00000.pt ...      per rank: loader position, random streams, counters
        COMPLETE.json          written last, by rank 0, after every rank finished and the files
                               were fsynced: step, world size, students and their steps, and
                               every other file of the checkpoint with its size and SHA-256

- Start-up reads the checkpoint it resumes from once, into a `ResumePlan`
  (`Checkpointer.plan_resume`, before the engines exist): which checkpoint, the ranks that saved
  it, its global batch (from the ds_config.json saved in it) and whether it is elastic (saved on
  another number of ranks). The batch fitting and the load read the plan
  (trainer/checkpoint/elastic.py); `Checkpointer.load` loads a checkpoint saved on as many ranks.
- Every rank calls `save` (DeepSpeed's save is collective). A directory without COMPLETE.json is
  a save that did not finish: it is never loaded, and the next save removes it.
- Start-up resumes from the newest complete checkpoint whose files all match their sizes and
  SHA-256s (`Checkpointer.newest_verified`); one that does not (a flipped bit, a truncated or
  missing file) is named with the first file that fails, and the next older one is tried. The
  newest `keep` are kept; older ones are deleted after a new one is complete.
- DeepSpeed's own tools read a student's directory as it is:
  `python -m deepspeed.utils.zero_to_fp32 .../step-00002500/<student> OUT_DIR`.
"""

from __future__ import annotations

import logging
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from pydantic import ConfigDict, Field

from data_pipeline.errors import UserError
from data_pipeline.io_utils import (
    atomic_path,
    atomic_write_json,
    fsync_tree,
    no_space_message,
    out_of_space,
    read_json,
    sha256_file,
)
from data_pipeline.schema import Int, Schema, Str, validate
from trainer.config.ds_json import micro_batch_size
from trainer.runtime.distributed import Runtime

logger = logging.getLogger(__name__)

MARKER = "COMPLETE.json"
DS_RECORD = "ds_config.json"  # the run's DeepSpeed JSON, saved in every checkpoint
FORMAT_VERSION = 1
_STEP_DIR = re.compile(r"^step-(\d{8,})$")  # {step:08d}: 8 digits, more past 10^8


def step_dir(root: Path, step: int) -> Path:
    return root / f"step-{step:08d}"


def _step_dirs(root: Path) -> list[tuple[int, Path]]:
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _STEP_DIR.match(p.name))]
    return sorted(found)


def complete_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoints under `root`, oldest first."""
    return [p for _, p in _step_dirs(root) if (p / MARKER).is_file()]


def latest_complete(root: Path) -> Path | None:
    done = complete_checkpoints(root)
    return done[-1] if done else None


def newest_complete_marker(root: Path) -> tuple[Path, Marker] | None:
    """The newest complete checkpoint under `root` and its marker (not verified: for a look at
    how it was made before the engines exist; the resume verifies what it loads)."""
    newest = latest_complete(root)
    return None if newest is None else (newest, read_marker(newest))


class FileRecord(Schema):
    size: Int = Field(ge=0, description="bytes")
    sha256: Str = Field(description="SHA-256 of the file")


class Marker(Schema):
    """COMPLETE.json as read (`Checkpointer._write` writes it). The run's summary beside these
    keys is kept as it is; markers from before checksums have no `files`."""

    model_config = ConfigDict(extra="allow")

    format: Int | None = Field(None, description="the checkpoint format (FORMAT_VERSION)")
    step: Int | None = Field(None, ge=0, description="the run's step it was saved at")
    world_size: Int | None = Field(None, ge=1, description="ranks that saved it")
    students: dict[Str, Int] = Field(default_factory=dict, description="student: its steps")
    files: dict[Str, FileRecord] = Field(
        default_factory=dict, description="every other file of the checkpoint: size, SHA-256"
    )


def read_marker(directory: Path) -> Marker:
    """The COMPLETE.json of `directory`, checked; UserError naming the file and the key."""
    path = directory / MARKER
    return validate(Marker, read_json(path), root=MARKER, source=str(path))


@dataclass(frozen=True)
class ResumePlan:
    """The checkpoint a start resumes from, as its COMPLETE.json (read once) says it was saved.

    plan = checkpointer.plan_resume(["DistilBioBERT"])   # None: nothing to resume
    plan.directory, plan.world_size, plan.global_batch, plan.elastic
    """

    directory: Path
    step: int
    world_size: int  # the ranks that saved it
    students: dict[str, int]  # each student's optimizer steps (its engine's tag global_step<N>)
    micro_batch: int | None  # per rank, from its ds_config.json (None: it has none)
    accumulation: int | None
    elastic: bool  # saved on another number of ranks than this start has

    @property
    def global_batch(self) -> int | None:
        if self.micro_batch is None or self.accumulation is None:
            return None
        return self.world_size * self.micro_batch * self.accumulation


def read_plan(directory: Path, world_size: int, students: list[str]) -> ResumePlan:
    """The plan to resume `students` on `world_size` ranks from the complete checkpoint
    `directory` (not verified here: `Checkpointer.plan_resume` verifies first)."""
    marker = read_marker(directory)
    if marker.format != FORMAT_VERSION:
        raise UserError(f"{directory}: checkpoint format {marker.format} unsupported")
    missing = [name for name in students if name not in marker.students]
    if missing:
        raise UserError(
            f"{directory}: holds no state for student(s) {missing}; it has "
            f"{sorted(marker.students)}. Start a new run (run.name) for other students"
        )
    saved_world = marker.world_size
    micro = accumulation = None
    if (directory / DS_RECORD).is_file():
        ds = read_json(directory / DS_RECORD)
        micro = micro_batch_size(ds, saved_world)
        accumulation = int(ds.get("gradient_accumulation_steps", 1))
    return ResumePlan(
        directory=directory,
        step=marker.step,
        world_size=saved_world,
        students=dict(marker.students),
        micro_batch=micro,
        accumulation=accumulation,
        elastic=saved_world != world_size,
    )


def rank_file(directory: Path, rank: int) -> Path:
    return directory / f"rank-{rank:05d}.pt"


def file_records(directory: Path) -> dict[str, dict]:
    """{relative path: {"size", "sha256"}} of every file under `directory` but the marker."""
    out = {}
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        rel = path.relative_to(directory).as_posix()
        if rel != MARKER:
            out[rel] = {"size": path.stat().st_size, "sha256": sha256_file(path)}
    return out


def verify(directory: Path) -> str | None:
    """None when every file COMPLETE.json lists is there with its size and SHA-256; otherwise
    the first problem, for a message. A marker from before checksums (no "files") passes."""
    try:
        files = read_marker(directory).files
    except UserError as e:
        return str(e)
    for rel, want in files.items():
        path = directory / rel
        if not path.is_file():
            return f"{rel} is missing"
        size = path.stat().st_size
        if size != want.size:
            return f"{rel} has {size:,} bytes where {MARKER} says {want.size:,}"
        if sha256_file(path) != want.sha256:
            return f"{rel}: its SHA-256 differs from the one in {MARKER} (corrupted)"
    return None


class Checkpointer:
    def __init__(self, root: Path, rt: Runtime, keep: int) -> None:
        self.root, self.rt, self.keep = Path(root), rt, keep

    def save(
        self,
        step: int,
        students: list,
        rank_state: dict,
        summary: dict,
        main_rank_files: Callable[[Path], None] | None = None,
    ) -> Path:
        """Save every student's engine, this rank's `rank_state`, then (rank 0) the files
        `main_rank_files(directory)` writes and the marker.

        NOTE: collective; every rank must call it with the same step.
        """
        directory = step_dir(self.root, step)
        if (directory / MARKER).is_file():
            return directory  # already saved at this step (a periodic save that was also the last)
        self.rt.barrier()
        if self.rt.is_main and directory.exists():
            shutil.rmtree(directory)  # an unfinished save at this step from a crashed run
        self.rt.barrier()
        try:
            self._write(directory, step, students, rank_state, summary, main_rank_files)
        except (OSError, RuntimeError) as e:
            if not out_of_space(e, self.root):
                raise
            shutil.rmtree(directory, ignore_errors=True)  # partial (no marker): frees its space
            raise UserError(self._full_message(directory)) from None
        logger.info("checkpoint: step %d saved to %s", step, directory)
        return directory

    def _full_message(self, directory: Path) -> str:
        newest = latest_complete(self.root)
        if newest is None:
            return no_space_message(
                directory,
                "saving a checkpoint",
                None,
                "there is no complete checkpoint yet: free space and start again",
            )
        need = sum(f["size"] for f in read_json(newest / MARKER).get("files", {}).values())
        return no_space_message(
            directory,
            "saving a checkpoint",
            need,
            f"{newest.name} is complete and intact: free space and start again to resume from it",
        )

    def _write(self, directory, step, students, rank_state, summary, main_rank_files) -> None:
        for s in students:
            s.engine.save_checkpoint(
                str(directory / s.name),
                tag=f"global_step{s.steps}",
                client_state={"run_step": step, "student": s.name, "format": FORMAT_VERSION},
            )
        with atomic_path(rank_file(directory, self.rt.rank)) as tmp:
            torch.save(rank_state, tmp)
        self.rt.barrier()
        if self.rt.is_main:
            if main_rank_files is not None:
                main_rank_files(directory)
            fsync_tree(directory)
            marker = {
                "format": FORMAT_VERSION,
                "step": step,
                "world_size": self.rt.world_size,
                "students": {s.name: s.steps for s in students},
                **summary,
                "files": file_records(directory),
            }
            atomic_write_json(directory / MARKER, marker)
            self._prune(directory)
        self.rt.barrier()

    def _prune(self, newest: Path) -> None:
        done = complete_checkpoints(self.root)
        stale = set(done[: max(0, len(done) - self.keep)])
        stale |= {p for _, p in _step_dirs(self.root) if not (p / MARKER).is_file()}
        for p in sorted(stale - {newest}):
            shutil.rmtree(p, ignore_errors=True)

    def newest_verified(self) -> Path | None:
        """The newest complete checkpoint that passes `verify`, said when it is not the newest.
        NOTE: collective; rank 0 reads the files and every rank gets its choice."""
        done = complete_checkpoints(self.root)
        chosen = -1
        if self.rt.is_main:
            for i in range(len(done) - 1, -1, -1):
                problem = verify(done[i])
                if problem is None:
                    chosen = i
                    break
                logger.warning("checkpoint %s fails verification: %s; skipped", done[i], problem)
            if done and chosen != len(done) - 1:
                fallback = done[chosen].name if chosen >= 0 else "none (starting afresh)"
                logger.warning("checkpoint: resuming from the newest that verifies: %s", fallback)
        chosen = self.rt.from_main(chosen)
        return done[chosen] if chosen >= 0 else None

    def plan_resume(self, students: list[str]) -> ResumePlan | None:
        """The plan to resume `students` from the newest checkpoint that verifies; None when
        there is none. NOTE: collective (`newest_verified`)."""
        directory = self.newest_verified()
        return None if directory is None else read_plan(directory, self.rt.world_size, students)

    def load(self, plan: ResumePlan, students: list) -> dict:
        """Restore every student's engine from the plan's checkpoint, saved on as many ranks as
        this run has; returns this rank's saved state. (One saved on another number of ranks is
        loaded by trainer/checkpoint/elastic.py.)"""
        directory = plan.directory
        if plan.world_size != self.rt.world_size:
            raise RuntimeError(
                f"{directory}: saved by {plan.world_size} ranks, loading on {self.rt.world_size}: "
                "an elastic resume (trainer/checkpoint/elastic.py restore)"
            )
        for s in students:
            path, client = s.engine.load_checkpoint(
                str(directory / s.name), load_optimizer_states=True, load_lr_scheduler_states=True
            )
            if path is None or client.get("student") != s.name:
                raise UserError(f"{directory / s.name}: not a checkpoint of student {s.name}")
        return torch.load(rank_file(directory, self.rt.rank), weights_only=False)
