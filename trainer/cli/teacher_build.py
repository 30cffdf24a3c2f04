"""`teacher.build`: a teacher the product makes itself, trained and exported on first use.

    rc = ensure_teacher(cfg, ds, rt, preempt)     # main.py, before building the run itself

recipes/demo.yaml has `teacher: {path: data/demo/teacher, build: recipes/demo_teacher.yaml}`.
When `teacher.path` holds no teacher built from that recipe on these shards, the build recipe is
trained first, in this process and on these ranks, through the same trainer as any run (its run
directory is <run.output_dir>/<its run.name>, resumable like any other), and its one student's
export is copied to `teacher.path` with BUILT.json beside the weights: the recipe, a digest of
its resolved content (run section excluded) and a digest of the shards' manifest. Later runs find
it and load it like any teacher (`teacher.path`, as a user loads BioBERT); a changed recipe or
changed shards (a new generator makes new shards) retrain it, and the console says why. BUILT.json
also records the global batch the teacher was trained with and every file it installed.

The build writes only into what it owns: `teacher.path` absent, an empty directory, or a teacher
it built (BUILT.json), holding nothing besides the files BUILT.json lists. Any other directory
(the user's own teacher, a model of any kind) is loaded as the teacher, like any teacher, and the
build is not used; the console says so. A hub name is never built into either.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import tempfile
from pathlib import Path

from data_pipeline.errors import UserError
from data_pipeline.io_utils import (
    atomic_write_json,
    fsync_dir,
    fsync_tree,
    read_json,
    share_tree,
)
from trainer.cli.teacher_cache import BUILT, ownership, read_or_none, stale_reason
from trainer.config.ds_json import fit_global_batch
from trainer.config.recipe import RunConfig, load_config, to_dict
from trainer.runtime import run_lock
from trainer.runtime.distributed import Runtime
from trainer.train.inputs import ensure_demo, manifest_of

logger = logging.getLogger(__name__)

TEACHER_MARK = "TEACHER.json"  # in a run directory: the teacher fingerprint it was made with


def build_config(cfg: RunConfig) -> RunConfig:
    """The build recipe, its run directory beside the run's; it must have exactly one student."""
    section = cfg.teacher
    try:
        build = load_config(section.build)
    except UserError as e:
        raise UserError(f"teacher.build={section.build!r}: {e}") from None
    if len(build.students) != 1:
        names = [s.name for s in build.students]
        raise UserError(
            f"teacher.build={section.build!r}: expected a recipe with one student (the "
            f"teacher to export), found {names}"
        )
    run = build.run.model_copy(update={"output_dir": cfg.run.output_dir})
    return build.model_copy(update={"run": run})


def fingerprint(cfg: RunConfig, build: RunConfig, ds: dict, world_size: int) -> dict:
    """What a built teacher must match: the build recipe's resolved content, the shards' manifest
    and the global batch this start would train it with."""
    recipe = {k: v for k, v in to_dict(build).items() if k != "run"}
    manifest = manifest_of(build).to_dict()
    fitted, _ = fit_global_batch(ds, world_size, build.train.global_batch)
    return {
        "recipe": cfg.teacher.build,
        "recipe_sha256": _digest(recipe),
        "shards_manifest_sha256": _digest(manifest),
        "global_batch": fitted["train_batch_size"],
    }


def ensure_teacher(cfg: RunConfig, ds: dict, rt: Runtime, preempt=None) -> int:
    """Train and export the teacher when `teacher.build` says how and it is missing or stale,
    into a `teacher.path` the build owns; a path it does not own is the user's teacher.
    Returns the build run's exit code (0 also when nothing had to be done). NOTE: collective."""
    if cfg.teacher is None or cfg.teacher.build is None:
        return 0
    from trainer.train.builder import build_trainer  # NOTE: assemble builds runs; this precedes one

    path = Path(cfg.teacher.path)
    foreign = ownership(path)
    if foreign is not None:
        logger.info(
            "teacher: %s %s: loading it as the teacher; teacher.build=%s is not used (it "
            "installs only into a directory of its own)", path, foreign, cfg.teacher.build,
        )  # fmt: skip
        # NOTE: a run directory distilled from another teacher is set aside, as below
        claim_run_dir(cfg.run_dir, {"teacher": str(path.resolve())}, rt)
        return 0
    build = build_config(cfg)
    ensure_demo(build, rt)  # the demo's shards, which the fingerprint reads
    expected = fingerprint(cfg, build, ds, rt.world_size)
    reason = stale_reason(path, expected)
    if reason is None:
        logger.info("teacher: %s (built by %s, reused)", path, cfg.teacher.build)
    else:
        logger.info(
            "teacher: %s %s: training it with %s in %s first",
            path,
            reason,
            cfg.teacher.build,
            build.run_dir,
        )
        # NOTE: a build run left by another recipe or other shards would resume (or, finished,
        # re-export) the old teacher: it is set aside and this one starts afresh.
        claim_run_dir(build.run_dir, expected, rt)
        trainer = build_trainer(build, ds, rt, preempt)
        try:
            rc = trainer.fit()
        finally:
            trainer.metrics.close()
        if rc != 0:
            return rc
        if rt.is_main:
            export = build.run_dir / "export" / build.students[0].name
            _install(export, path, {**expected, "run_dir": str(build.run_dir)})
            logger.info("teacher: exported to %s", path)
        rt.barrier()
    # NOTE: the same for the run itself: checkpoints distilled from another teacher are not
    # resumed as if they came from this one.
    claim_run_dir(cfg.run_dir, read_json(path / BUILT), rt)
    return 0


def claim_run_dir(run_dir: Path, stamp: dict, rt: Runtime) -> None:
    """Hold `run_dir` (trainer/runtime/run_lock.py) and mark it as made with `stamp` (a teacher's
    fingerprint) in TEACHER.json; a run directory marked with another is renamed to
    <run_dir>.stale-<n> first, and that is said.
    NOTE: collective; rank 0 touches the file system."""

    def claim() -> None:
        run_lock.hold(run_dir)
        mark = run_dir / TEACHER_MARK
        found = read_or_none(mark)
        if found is not None and found != stamp:
            n = 1
            while run_dir.with_name(f"{run_dir.name}.stale-{n}").exists():
                n += 1
            aside = run_dir.with_name(f"{run_dir.name}.stale-{n}")
            run_dir.rename(aside)  # held: no other trainer is inside it
            run_lock.release(run_dir)
            run_lock.hold(run_dir)  # the new, empty one
            found = None
            logger.warning(
                "teacher: %s was made with another teacher (or another build of it); moved "
                "to %s and starting afresh",
                run_dir,
                aside,
            )
        if found != stamp:
            atomic_write_json(mark, stamp)

    rt.on_main(claim)


def _install(export: Path, path: Path, stamp: dict) -> None:
    """Copy the export to `path` with its BUILT.json (listing the files), atomically: a temp dir
    renamed into place. The teacher it replaces is one of the build's own (`ownership`)."""
    problem = ownership(path)
    if problem is not None:  # NOTE: checked at start-up too; the build ran in between
        raise UserError(f"teacher: {path} {problem}: not replaced")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        shutil.copytree(export, tmp, dirs_exist_ok=True)
        files = sorted(p.name for p in tmp.iterdir())
        atomic_write_json(tmp / BUILT, {**stamp, "files": files})
        share_tree(tmp)
        fsync_tree(tmp)
        if path.exists():
            old = path.with_name(f".{path.name}.replaced")
            shutil.rmtree(old, ignore_errors=True)  # NOTE: a replaced teacher of a crashed install
            path.rename(old)
            tmp.rename(path)
            shutil.rmtree(old)  # the build's own teacher, nothing else (ownership above)
        else:
            tmp.rename(path)
        fsync_dir(path.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()
