"""Assemble a run from its config: run directory, inputs, cohort, checkpoints, metrics, resume.

The run directory (`run.output_dir/run.name`) keeps what is needed to know what ran:
recipe.resolved.yaml (every default filled in, a pretrained student's layer maps included: it is
written once the models are built, and the config is frozen then: nothing changes it after),
ds_config.json (the
DeepSpeed JSON as this start trains it) and git.txt (commit and uncommitted diff of the code),
next to tensorboard/, checkpoints/ and export/.
"""

from __future__ import annotations

import json
import logging
import subprocess
from pathlib import Path

import yaml

from data_pipeline.io_utils import atomic_write_bytes, check_writable_dir
from data_pipeline.schema import freeze
from trainer.checkpoint.elastic import keep_global_batch
from trainer.checkpoint.store import Checkpointer
from trainer.config.ds_json import for_device, micro_batch_size
from trainer.config.recipe import ROOT, RunConfig, to_yaml
from trainer.models.cohort import build_cohort
from trainer.runtime import run_lock
from trainer.runtime.distributed import Runtime
from trainer.runtime.logs import attach_run_log
from trainer.runtime.preemption import PreemptionFlag
from trainer.train.inputs import build_inputs, ensure_demo
from trainer.train.loop import Trainer
from trainer.train.metrics import MetricsWriter

logger = logging.getLogger(__name__)


def hold_run_dir(cfg: RunConfig, rt: Runtime) -> Path:
    """Take the run directory (its lock, on rank 0) and send this rank's log there."""
    run_dir = cfg.run_dir

    def hold() -> None:
        check_writable_dir(run_dir)
        run_lock.hold(run_dir)  # NOTE: before anything in it is touched

    rt.on_main(hold)
    attach_run_log(run_dir, rt.rank)
    return run_dir


def write_record(run_dir: Path, name: str, text: str, previous: str, rt: Runtime) -> None:
    """Write run_dir/name (rank 0), keeping a different one of an earlier start as `previous`."""

    def write() -> None:
        _keep_previous(run_dir, name, text, previous)
        atomic_write_bytes(run_dir / name, text.encode())

    rt.on_main(write)


def _keep_previous(run_dir: Path, name: str, text: str, previous: str) -> None:
    """A resumed run with another recipe or DeepSpeed JSON than run_dir/name holds (YAML or
    JSON): say which keys changed, and keep the old file as `previous`."""
    path = run_dir / name
    if not path.is_file() or (old := path.read_text(encoding="utf-8")) == text:
        return
    try:
        changed = changed_keys(yaml.safe_load(old), yaml.safe_load(text))  # JSON is YAML
    except yaml.YAMLError:  # an unreadable old file: it changed, which keys is unknown
        changed = ["?"]
    listing = ", ".join(changed[:8]) + (f" and {len(changed) - 8} more" if len(changed) > 8 else "")
    logger.warning(
        "%s: differs from the one this run directory was started with (%s); resuming with the "
        "new one (the old is kept as %s)",
        path, listing, previous,
    )  # fmt: skip
    path.replace(run_dir / previous)


def changed_keys(old, new, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two nested dicts, as `key old -> new`."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in sorted(set(old) | set(new), key=str):
            out += changed_keys(old.get(key), new.get(key), f"{prefix}{key}.")
        return out
    return [] if old == new else [f"{prefix.rstrip('.')} {old!r} -> {new!r}"]


def _git_state() -> str:
    def git(*args: str) -> str:
        try:
            out = subprocess.run(
                ["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=30, check=True
            )
        except (OSError, subprocess.SubprocessError):
            return ""
        return out.stdout

    commit = git("rev-parse", "HEAD").strip() or "unknown (not a git checkout)"
    return f"commit {commit}\n\n{git('status', '--short')}\n{git('diff', 'HEAD')}"


def build_trainer(
    cfg: RunConfig, ds: dict, rt: Runtime, preempt: PreemptionFlag | None = None
) -> Trainer:
    ds = for_device(ds, rt.device)
    run_dir = hold_run_dir(cfg, rt)
    checkpointer = Checkpointer(run_dir / "checkpoints", rt, cfg.train.keep)
    # NOTE: the resume marker is read here, once; the batch fitting and the resume read the plan
    plan = checkpointer.plan_resume([s.name for s in cfg.students])
    # NOTE: before the engines, which fix the micro-batch and the accumulation
    t = cfg.train
    ds, line = keep_global_batch(
        ds, plan, rt.world_size, keep=t.keep_global_batch, global_batch=t.global_batch
    )
    logger.info("%s", line)
    write_record(run_dir, "ds_config.json", json.dumps(ds, indent=2), "ds_config.previous.json", rt)
    rt.on_main(lambda: atomic_write_bytes(run_dir / "git.txt", _git_state().encode()))
    ensure_demo(cfg, rt)
    micro = micro_batch_size(ds, rt.world_size)
    inputs = build_inputs(cfg, rt, micro, int(ds.get("gradient_accumulation_steps", 1)))
    teacher, students = build_cohort(cfg, ds, rt, vocab_size=inputs.info.vocab_size)
    # NOTE: only now is the config complete: a pretrained student's depth, and so its default
    # layer maps, is known once it is loaded (trainer/models/students.py fills them in). Nothing
    # changes the config from here; the loop logs the same text to TensorBoard.
    write_record(run_dir, "recipe.resolved.yaml", to_yaml(cfg), "recipe.previous.yaml", rt)
    freeze(cfg)  # what the file says is what the run uses
    bf16 = ds.get("bf16", {})
    if bf16.get("enabled") and bf16.get("check_grad_overflow") is False:
        logger.warning(
            "DeepSpeed JSON: bf16.check_grad_overflow is false, so a step with non-finite "
            "gradients is applied (train.on_nonfinite cannot act on it)"
        )
    trainer = Trainer(
        cfg,
        rt,
        teacher,
        students,
        inputs,
        checkpointer,
        MetricsWriter(
            run_dir / "tensorboard",
            enabled=rt.is_main,
            models=[*(s.name for s in students), "teacher"],
        ),
        run_dir,
        preempt,
    )
    trainer.resume(plan)
    return trainer
