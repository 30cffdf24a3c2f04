"""The cohort: one frozen teacher and the students, each student its own DeepSpeed engine.

    teacher, students = build_cohort(cfg, ds, rt, vocab_size=info.vocab_size)

Each student gets its own engine from `deepspeed.initialize` with the run's DeepSpeed JSON plus its
own AdamW and warmup/decay schedule (trainer/config/ds_json.py): its own optimizer state, ZeRO
partitioning and step count. Weight decay applies to weight matrices and embeddings only, not to
biases and LayerNorm weights (the usual BERT practice; the 1-D parameters).

With train.compile (default: on a GPU only), students are compiled through DeepSpeed's
`engine.compile()` and the teacher's encoder with torch.compile; compiled dropout draws from
other random streams, so losses in training mode differ from the uncompiled run's (the math does
not: with dropout off they agree to rounding).

The teacher is loaded only when some selected student needs it (to copy layers from, or for a loss
term), in fp32 on the CPU first so students copy exact weights, then moved to the device: bf16 on
a GPU when the DeepSpeed JSON trains in bf16, fp32 on CPU. It is kept only if some student's
objective reads its signals.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from data_pipeline.errors import UserError
from trainer.config.ds_json import ds_config_for_student
from trainer.config.recipe import RunConfig, StudentSection
from trainer.distill.kinds import KINDS
from trainer.distill.objectives import Objective, cohort_teacher_need
from trainer.models.families import family_of
from trainer.models.parameters import count_parameters, param_groups
from trainer.models.pooler import Pooler
from trainer.models.students import build_student
from trainer.models.teacher import Teacher, load_teacher_model
from trainer.runtime import startup
from trainer.runtime.distributed import Runtime
from trainer.train.rng import RngStream, derive_seed

if TYPE_CHECKING:
    from deepspeed import DeepSpeedEngine

logger = logging.getLogger(__name__)


@dataclass
class Student:
    spec: StudentSection
    engine: DeepSpeedEngine
    objective: Objective
    rng: RngStream  # its dropout stream
    tokenizer: str | None  # its own tokenizer (continual students); None: the run's
    base_model: str | None
    pooler: Pooler | None  # exported with it (trainer/models/pooler.py), not trained
    parameters: int  # exported parameters (fit_dense excluded)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def budget(self) -> int:
        return self.spec.optimizer.max_steps

    @property
    def steps(self) -> int:
        """Optimizer steps taken (skipped non-finite steps included, as DeepSpeed counts)."""
        return self.engine.global_steps

    @property
    def done(self) -> bool:
        return self.steps >= self.budget

    @property
    def module(self) -> nn.Module:
        return self.engine.module


def teacher_dtype(ds: dict, rt: Runtime) -> torch.dtype:
    if not rt.on_gpu:
        return torch.float32
    if ds.get("bf16", {}).get("enabled"):
        return torch.bfloat16
    if ds.get("fp16", {}).get("enabled"):
        return torch.float16
    return torch.float32


def _check_positions(cfg: RunConfig, teacher_model: nn.Module | None, built: list) -> None:
    """Every model must have positions for the shards' sequences, or training fails later with a
    shape error deep in the embeddings."""
    models = [("the teacher", teacher_model)] if teacher_model is not None else []
    students = zip(cfg.students, built, strict=True)
    models += [(f"student {s.name}", b.module.mlm) for s, b in students]
    for who, model in models:
        positions = family_of(model).max_positions(model.config)
        if positions < cfg.data.max_len:
            raise UserError(
                f"data.max_len={cfg.data.max_len}: longer than {who}'s {positions} positions; "
                f"re-shard with `--max-len {positions}` (or less)"
            )


def _check_kinds(cfg: RunConfig, teacher_model: nn.Module | None, built: list) -> None:
    """Each kind's own check of the built models (objectives.Kind.check_models), before the
    first step would fail on it."""
    for spec, b in zip(cfg.students, built, strict=True):
        check = KINDS[spec.objective.kind].check_models
        if check is None or teacher_model is None:
            continue
        problem = check(b.objective, b.module.mlm.config, teacher_model.config)
        if problem is not None:
            raise UserError(f"students.{spec.name}.{problem}")


def _engine_phase(name: str, rt: Runtime) -> str:
    if not rt.on_gpu:
        return f"student {name}: initialising its DeepSpeed engine"
    return (
        f"student {name}: initialising its DeepSpeed engine (its Adam op is loaded from "
        f"{startup.extensions_root()}, JIT-built there the first time: minutes)"
    )


def _teacher_used(cfg: RunConfig) -> bool:
    for s in cfg.students:
        if s.init.from_teacher_layers is not None or KINDS[s.objective.kind].needs_teacher:
            return True
    return False


def build_cohort(
    cfg: RunConfig, ds: dict, rt: Runtime, *, vocab_size: int
) -> tuple[Teacher | None, list[Student]]:
    import deepspeed

    seed = cfg.train.seed
    teacher_model = None
    if cfg.teacher is not None and _teacher_used(cfg):
        source = cfg.teacher.path or "teacher.config"
        with startup.phase(f"loading the teacher from {source}", log=rt.is_main):
            teacher_model = load_teacher_model(
                cfg.teacher,
                seed=derive_seed(seed, "teacher"),
                vocab_size=vocab_size,
            )
    elif cfg.teacher is not None:
        logger.info("teacher: not loaded (no selected student uses it)")

    built = [
        build_student(
            s,
            teacher_model=teacher_model,
            vocab_size=vocab_size,
            seed=seed,
            teacher_path=cfg.teacher.path if cfg.teacher is not None else None,
        )
        for s in cfg.students
    ]
    _check_positions(cfg, teacher_model, built)
    _check_kinds(cfg, teacher_model, built)
    need = cohort_teacher_need(b.objective for b in built)
    compile_models = rt.on_gpu if cfg.train.compile is None else cfg.train.compile
    teacher = None
    if teacher_model is not None and not need.empty:
        teacher = Teacher(teacher_model.to(rt.device, teacher_dtype(ds, rt)), need)
        if compile_models:
            teacher.model.base_model.compile()  # in place: parameter names stay as they are
        logger.info(
            "teacher: %s parameters, computes %s",
            f"{count_parameters(teacher_model):,}",
            need.describe(),
        )
    del teacher_model

    students = []
    for spec, b in zip(cfg.students, built, strict=True):
        params = count_parameters(b.module.mlm)  # NOTE: before ZeRO-3 partitions the weights
        with startup.phase(_engine_phase(spec.name, rt), log=rt.is_main):
            engine, *_ = deepspeed.initialize(
                model=b.module,
                model_parameters=param_groups(b.module, spec.optimizer.weight_decay),
                # NOTE: torch's AdamW off the GPU: DeepSpeed's CPU Adam kernels keep beta**t as
                # a float32 running product, so a resumed run (which starts from pow(beta, t))
                # drifts from the uninterrupted one by an ulp at some steps; torch derives it
                # from the step each time, as the CUDA FusedAdam does. And nothing to JIT-build.
                config=ds_config_for_student(ds, spec, torch_adam=not rt.on_gpu),
            )
        if compile_models:
            engine.compile()  # DeepSpeed's: knows ZeRO-3's parameter hooks
        rng = RngStream(derive_seed(seed, "dropout", spec.seed_name), rt.device)
        students.append(
            Student(spec, engine, b.objective, rng, b.tokenizer, b.base_model, b.pooler, params)
        )
        logger.info(
            "student %s: %s parameters, %s, budget %d steps",
            spec.name,
            f"{params:,}",
            spec.objective.kind,
            spec.optimizer.max_steps,
        )
    return teacher, students
