"""Resume a checkpoint saved by N ranks on M != N ranks (elastic resume).

    plan = checkpointer.plan_resume(names)          # builder: COMPLETE.json, read once
    ds, line = keep_global_batch(ds, plan, world_size, keep=True)   # before the engines
    state = restore(plan, checkpointer, students)    # Trainer.resume: as saved, or converted

The plan (trainer/checkpoint/store.py `ResumePlan`) says which checkpoint, the ranks that saved
it, its global batch and whether it is elastic; this module reads it and nothing else of the
checkpoint's record.

- Global batch: the plan says how the checkpoint was trained (N x micro x accumulation, from
  the ds_config.json saved in it). With train.keep_global_batch (default) M ranks go on with the
  same global batch: the accumulation makes it up, and where none does, a smaller micro-batch
  per rank (the largest divisor of a rank's share that the JSON's micro-batch allows); refused
  only where M does not divide it. Without it this start's own global batch is taken, with a
  warning. The LR schedule counts optimizer steps either way.
- Students' engines: each student's DeepSpeed checkpoint is converted to a universal checkpoint
  (DeepSpeed's `ds_to_universal`, with `inject_missing_state`: a model without Megatron-style
  tensor parallelism carries no universal-checkpoint info) by rank 0, into
  run_dir/universal/step-N/ (removed after the load), then loaded by every rank with the engine's
  universal loader: fp32 master weights, Adam moments and step, LR schedule, counters. Two repairs
  after a ZeRO-3 universal load (DeepSpeed 0.19.8): every param group gets group 0's settings
  (the no-decay group would decay), and all share one `step` tensor (AdamW would count it once a
  group per step); each group's settings are put back from the converted optimizer state and each
  state gets its own step.
- Rank state: the loader positions of every saved rank joined (data_pipeline/slots.py), so every
  sample of the epoch in progress is still taken exactly once; tokens and samples summed (rank 0
  carries them); the random streams (global and each student's dropout stream) are rank 0's, on
  every rank. The resumed run is then a pure function of (checkpoint, M).
"""

from __future__ import annotations

import argparse
import logging
import shutil
from pathlib import Path

import torch

from data_pipeline.errors import UserError
from data_pipeline.slots import merge_states
from trainer.checkpoint.store import Checkpointer, ResumePlan, rank_file
from trainer.config.ds_json import fit_global_batch, micro_batch_size
from trainer.runtime.distributed import Runtime

logger = logging.getLogger(__name__)

UNIVERSAL = "universal"  # run_dir/universal/step-N/<student>/global_stepK: the converted state


def keep_global_batch(
    ds: dict,
    plan: ResumePlan | None,
    world_size: int,
    *,
    keep: bool,
    global_batch: int | None = None,
) -> tuple[dict, str]:
    """`ds` fitted to the global batch this start trains (ds_config.fit_global_batch), and the
    line that says it: `global_batch` (the recipe's), except when the checkpoint `plan` resumes
    from was saved on another number of ranks and `keep`: then the checkpoint's, made up by
    the accumulation or, where none does, a smaller micro-batch."""
    if plan is None or not plan.elastic:
        return fit_global_batch(ds, world_size, global_batch)
    directory, saved_global = plan.directory, plan.global_batch
    if saved_global is None:
        raise UserError(
            f"{directory}: saved by {plan.world_size} ranks, this run has {world_size}, and "
            "the checkpoint does not say its batch (no ds_config.json): resume on "
            f"{plan.world_size} ranks"
        )
    what = (
        f"{directory.name} was trained on {plan.world_size} ranks x micro-batch "
        f"{plan.micro_batch} x accumulation {plan.accumulation} = global batch {saved_global}"
    )
    if not keep:
        out, line = fit_global_batch(ds, world_size, global_batch)
        logger.warning("%s; this run: %s (train.keep_global_batch=false)", what, line)
        return out, line
    if global_batch is not None and global_batch != saved_global:
        logger.warning(
            "%s; train.global_batch=%d is not used on this resume (train.keep_global_batch=false "
            "takes it)", what, global_batch,
        )  # fmt: skip
    mine = {k: v for k, v in ds.items() if k != "train_batch_size"}  # the checkpoint's instead
    try:
        out, line = fit_global_batch(mine, world_size, saved_global)
    except UserError as e:
        raise UserError(
            f"{what}, {e}, or train.keep_global_batch=false to go on with another global batch"
        ) from None
    micro = micro_batch_size(ds, world_size)
    accumulation = int(ds.get("gradient_accumulation_steps", 1))
    if out["gradient_accumulation_steps"] != accumulation:
        logger.warning(
            "%s: gradient_accumulation_steps %d -> %d keeps the global batch",
            what, accumulation, out["gradient_accumulation_steps"],
        )  # fmt: skip
    if out["train_micro_batch_size_per_gpu"] != micro:
        logger.warning(
            "%s: train_micro_batch_size_per_gpu %d -> %d keeps the global batch on %d ranks",
            what, micro, out["train_micro_batch_size_per_gpu"], world_size,
        )  # fmt: skip
    return out, line


def restore(plan: ResumePlan, checkpointer: Checkpointer, students: list) -> dict:
    """Restore every student's engine from the plan's checkpoint and return the rank state this
    rank goes on with: as saved (`Checkpointer.load`) when saved on as many ranks, else
    converted (`load_elsewhere`). NOTE: collective."""
    if not plan.elastic:
        return checkpointer.load(plan, students)
    return load_elsewhere(plan, students, checkpointer.rt, checkpointer.root.parent)


def load_elsewhere(plan: ResumePlan, students: list, rt: Runtime, run_dir: Path) -> dict:
    """Restore every student's engine from a checkpoint saved on another number of ranks (the
    plan says how many), and return the rank state this rank goes on with.
    NOTE: collective."""
    directory, saved_world = plan.directory, plan.world_size
    logger.warning(
        "%s: saved by %d ranks, resuming on %d: converting each student's state to a universal "
        "checkpoint (DeepSpeed ds_to_universal)", directory, saved_world, rt.world_size,
    )  # fmt: skip
    target = run_dir / UNIVERSAL / directory.name

    def convert() -> None:
        shutil.rmtree(target, ignore_errors=True)  # a conversion that did not finish
        for s in students:
            tag = f"global_step{plan.students[s.name]}"
            to_universal(directory / s.name / tag, target / s.name / tag)

    rt.on_main(convert)
    for s in students:
        tag = f"global_step{plan.students[s.name]}"
        _load_universal(s.engine, target / s.name, tag)
    rt.barrier()
    if rt.is_main:
        shutil.rmtree(run_dir / UNIVERSAL, ignore_errors=True)
    return _joined_rank_state(directory, saved_world, rt)


def to_universal(source: Path, out: Path) -> None:
    from deepspeed.checkpoint import ds_to_universal

    args = argparse.Namespace(
        input_folder=str(source),
        output_folder=str(out),
        num_extract_workers=1,
        num_merge_workers=1,
        keep_temp_folder=False,
        strict=True,
        inject_missing_state=True,
    )
    ds_to_universal.main(args)


def _load_universal(engine, load_dir: Path, tag: str) -> None:
    engine._config.load_universal_checkpoint = True  # NOTE: read at load time only
    try:
        path, _ = engine.load_checkpoint(
            str(load_dir), tag=tag, load_optimizer_states=True, load_lr_scheduler_states=True
        )
    finally:
        engine._config.load_universal_checkpoint = False
    if path is None:
        raise UserError(f"{load_dir / tag}: the universal checkpoint did not load")
    if engine.zero_optimization_stage() == 3:
        _repair_zero3(engine, load_dir / tag)


def _repair_zero3(engine, folder: Path) -> None:
    saved = torch.load(folder / "zero" / "optimizer_state.pt", weights_only=False)["param_groups"]
    base = engine.optimizer.optimizer
    for group, settings in zip(base.param_groups, saved, strict=True):
        group.update({k: v for k, v in settings.items() if k != "params"})
    for state in base.state.values():
        if torch.is_tensor(state.get("step")):
            state["step"] = state["step"].clone()


def _joined_rank_state(directory: Path, saved_world: int, rt: Runtime) -> dict:
    states = [torch.load(rank_file(directory, r), weights_only=False) for r in range(saved_world)]
    first = states[0]
    state = dict(first, loader=merge_states([s["loader"] for s in states]))
    if not rt.is_main:  # the totals are carried by rank 0 (the cards sum them over ranks)
        state.update(tokens=0, samples=0)
    else:
        state.update(tokens=sum(s["tokens"] for s in states))
        state.update(samples=sum(s["samples"] for s in states))
    logger.info(
        "resumed on %d ranks from %d: loader positions of %d slots joined",
        rt.world_size, saved_world, len(state["loader"]["slot_batches"]),
    )  # fmt: skip
    return state
