"""FLOPs of BERT masked LMs in the cohort, from their configs alone (no weights are loaded).

    from benchmarks.flops import cohort_flops, shapes_from_recipe
    teacher, students = shapes_from_recipe(load_config("recipes/paper_distilled.yaml"))
    cohort_flops(teacher, students, seq_len=256).ratio        # 0.69: the cohort's FLOP limit

Matmul FLOPs per sequence of s tokens (a multiply-add is 2 FLOPs), for a BERT encoder with L
layers, hidden h, FFN size i and vocabulary V:

    encoder forward   L * (8*s*h^2 + 4*s^2*h + 4*s*h*i)
                      (Q, K, V, output projections; scores and probs x values; FFN up and down)
    MLM head          2*m*(h^2 + h*V) at the m = mask_prob * s masked rows only (transform h x h,
                      decoder h x V): the trainer never builds the [s, V] logits
    fit_dense         2*s*h_student*h_teacher per projected hidden state (TinyBioBERT's HID_MSE)

Training a student costs 3x its forward (forward + backward, the backward ~2x the forward),
fit_dense included; the frozen teacher costs its forward only, and only the parts the students
read (no MLM head when no student has a KD or soft-CE term, nothing when none uses the teacher):

    cohort   = teacher_fwd(union of needs) + sum_k 3 * student_fwd_k
    separate = sum_k (teacher_fwd(needs of k) + 3 * student_fwd_k)
    ratio    = cohort / separate

Left out, each well under 1% at these sizes: embeddings, LayerNorm, GELU, softmax, biases, the loss
math and the optimizer, and the attention maps the teacher computes beside its SDPA attention for
CompactBioBERT and TinyBioBERT (one more QK^T per mapped layer: 2*s^2*h; that shows in measured
time, not here). Any object with num_hidden_layers, hidden_size, intermediate_size and vocab_size
will do as a config (a transformers BertConfig, or a SimpleNamespace), so MFU figures can reuse it.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from trainer.config.recipe import RunConfig

FORMULA = (
    "encoder fwd = L*(8*s*h^2 + 4*s^2*h + 4*s*h*i); MLM head = 2*m*(h^2 + h*V), m = mask_prob*s; "
    "fit_dense = 2*s*h_student*h_teacher per projected hidden state; student train = "
    "3*(fwd + fit_dense); cohort = teacher_fwd + sum 3*student_fwd; separate = sum (teacher_fwd "
    "+ 3*student_fwd); ratio = cohort / separate"
)


class BertShape(Protocol):
    num_hidden_layers: int
    hidden_size: int
    intermediate_size: int
    vocab_size: int


def encoder_forward_flops(config: BertShape, seq_len: float) -> float:
    """L * (8*s*h^2 + 4*s^2*h + 4*s*h*i): one sequence through the encoder layers."""
    s, h, i = seq_len, config.hidden_size, config.intermediate_size
    return config.num_hidden_layers * (8 * s * h * h + 4 * s * s * h + 4 * s * h * i)


def mlm_head_flops(config: BertShape, masked_rows: float) -> float:
    """2*m*(h^2 + h*V): the MLM head's transform and decoder at m rows."""
    h = config.hidden_size
    return 2 * masked_rows * (h * h + h * config.vocab_size)


def fit_dense_flops(student_hidden: int, teacher_hidden: int, seq_len: float, n: int) -> float:
    """2*s*h_student*h_teacher for each of the n projected hidden states."""
    return 2 * seq_len * student_hidden * teacher_hidden * n


@dataclass(frozen=True)
class StudentShape:
    """What a student computes per step, as its objective asks (trainer/distill/objectives.py)."""

    name: str
    config: BertShape
    logits: bool = True  # its own MLM head runs (an MLM, KD or soft-CE term)
    projections: int = 0  # hidden states through fit_dense (TinyBioBERT's hidden_map)
    teacher_encoder: bool = True  # it reads some teacher signal
    teacher_logits: bool = True  # it reads the teacher's MLM logits (KD or soft-CE)


@dataclass(frozen=True)
class CohortFlops:
    """FLOPs per sequence: the teacher's forward in the cohort, each student's training (3x its
    forward) and the separate runs' teacher forwards; `ratio` = cohort / separate."""

    teacher_fwd: float
    student_train: dict[str, float]
    separate_teacher_fwd: dict[str, float]

    @property
    def cohort(self) -> float:
        return self.teacher_fwd + sum(self.student_train.values())

    @property
    def separate(self) -> float:
        return sum(self.separate_teacher_fwd[k] + v for k, v in self.student_train.items())

    @property
    def ratio(self) -> float:
        return self.cohort / self.separate


def teacher_forward_flops(
    teacher: BertShape, seq_len: float, *, encoder: bool, logits: bool, mask_prob: float = 0.15
) -> float:
    if not encoder:
        return 0.0
    head = mlm_head_flops(teacher, mask_prob * seq_len) if logits else 0.0
    return encoder_forward_flops(teacher, seq_len) + head


def student_train_flops(
    student: StudentShape, teacher: BertShape | None, seq_len: float, mask_prob: float = 0.15
) -> float:
    """3 * (encoder + MLM head at the masked rows + fit_dense) for one sequence."""
    c = student.config
    forward = encoder_forward_flops(c, seq_len)
    if student.logits:
        forward += mlm_head_flops(c, mask_prob * seq_len)
    if student.projections:
        forward += fit_dense_flops(c.hidden_size, teacher.hidden_size, seq_len, student.projections)
    return 3 * forward


def cohort_flops(
    teacher: BertShape | None,
    students: list[StudentShape],
    seq_len: float,
    mask_prob: float = 0.15,
) -> CohortFlops:
    """The cohort's and the separate runs' FLOPs per sequence of `seq_len` tokens."""

    def teacher_fwd(group: list[StudentShape]) -> float:
        if teacher is None:
            return 0.0
        return teacher_forward_flops(
            teacher,
            seq_len,
            encoder=any(s.teacher_encoder for s in group),
            logits=any(s.teacher_logits for s in group),
            mask_prob=mask_prob,
        )

    train = {s.name: student_train_flops(s, teacher, seq_len, mask_prob) for s in students}
    return CohortFlops(
        teacher_fwd=teacher_fwd(students),
        student_train=train,
        separate_teacher_fwd={s.name: teacher_fwd([s]) for s in students},
    )


def describe(config: BertShape) -> str:
    """'L12 H768 I3072 V28996': a config's size in one token."""
    return (
        f"L{config.num_hidden_layers} H{config.hidden_size} I{config.intermediate_size} "
        f"V{config.vocab_size}"
    )


def shapes_from_recipe(cfg: RunConfig) -> tuple[BertShape | None, list[StudentShape]]:
    """The teacher's and students' shapes as the trainer would build them, read from configs only.

    A hub name or directory (`teacher.path`, `init.pretrained`) is read with AutoConfig, which
    fetches config.json and no weights. What each student computes comes from the trainer's own
    Objective, so a term switched off (weight 0) is not counted.
    """
    from transformers import AutoConfig

    from trainer.distill.kinds import fill_layer_maps
    from trainer.distill.objectives import Objective
    from trainer.models.families import model_config

    teacher = None
    if cfg.teacher is not None:
        if cfg.teacher.config is not None:
            teacher = model_config(cfg.teacher.config, "teacher.config", cfg.teacher.family)
        else:
            teacher = AutoConfig.from_pretrained(cfg.teacher.path)
    shapes = []
    for spec in cfg.students:
        init = spec.init
        if init.from_teacher_layers is not None:
            config = copy.deepcopy(teacher)
            config.num_hidden_layers = len(init.from_teacher_layers)
        elif init.config is not None:
            config = model_config(init.config, f"students.{spec.name}.init.config", init.family)
        else:
            config = AutoConfig.from_pretrained(init.pretrained)
        t_layers = teacher.num_hidden_layers if teacher is not None else None
        section = copy.deepcopy(spec.objective)  # maps a pretrained student's depth decides
        fill_layer_maps(section, config.num_hidden_layers)
        wider = teacher is not None and config.hidden_size != teacher.hidden_size
        obj = Objective.from_section(section, config.num_hidden_layers, t_layers, wider)
        t_need = obj.teacher_need()
        shapes.append(
            StudentShape(
                name=spec.name,
                config=config,
                logits=obj.student_need().logits,
                projections=len(obj.hidden_map) if obj.project_hidden else 0,
                teacher_encoder=not t_need.empty,
                teacher_logits=t_need.logits,
            )
        )
    return teacher, shapes
