"""Assemble a run from its config: run directory, inputs, cohort, checkpoints, metrics, resume.

The run directory (`run.output_dir/run.name`) keeps what is needed to know what ran:
recipe.resolved.yaml (every default filled in), ds_config.json (the DeepSpeed JSON as given) and
git.txt (commit and uncommitted diff of the code), next to tensorboard/, checkpoints/ and export/.
"""

from __future__ import annotations

import json
import logging
import subprocess
from pathlib import Path

from data_pipeline.io_utils import atomic_write_bytes, check_writable_dir
from trainer import run_lock
from trainer.checkpoint import Checkpointer
from trainer.cohort import build_cohort
from trainer.config import ROOT, RunConfig, to_yaml
from trainer.ds_config import for_device, micro_batch_size
from trainer.inputs import build_inputs, ensure_demo
from trainer.logs import attach_run_log
from trainer.loop import Trainer
from trainer.metrics import MetricsWriter
from trainer.preemption import PreemptionFlag
from trainer.runtime import Runtime

logger = logging.getLogger(__name__)


def prepare_run_dir(cfg: RunConfig, ds: dict, rt: Runtime) -> Path:
    run_dir = cfg.run_dir

    def write() -> None:
        check_writable_dir(run_dir)
        run_lock.hold(run_dir)  # NOTE: before anything in it is touched
        resolved = run_dir / "recipe.resolved.yaml"
        text = to_yaml(cfg)
        if resolved.is_file() and resolved.read_text(encoding="utf-8") != text:
            logger.warning(
                "%s: the recipe differs from the one this run directory was started with; "
                "resuming with the new one (the old is kept as recipe.previous.yaml)",
                resolved,
            )
            resolved.replace(run_dir / "recipe.previous.yaml")
        atomic_write_bytes(resolved, text.encode())
        atomic_write_bytes(run_dir / "ds_config.json", json.dumps(ds, indent=2).encode())
        atomic_write_bytes(run_dir / "git.txt", _git_state().encode())

    rt.on_main(write)
    attach_run_log(run_dir, rt.rank)
    return run_dir


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
    run_dir = prepare_run_dir(cfg, ds, rt)
    ensure_demo(cfg, rt)
    inputs = build_inputs(cfg, rt, micro_batch_size(ds, rt.world_size))
    teacher, students = build_cohort(cfg, ds, rt, vocab_size=inputs.info.vocab_size)
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
        Checkpointer(run_dir / "checkpoints", rt, cfg.train.keep),
        MetricsWriter(run_dir / "tensorboard", enabled=rt.is_main),
        run_dir,
        preempt,
    )
    trainer.resume()
    return trainer
