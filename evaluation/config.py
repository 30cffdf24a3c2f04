"""Fine-tuning settings per task, the speed probe's settings, and `section.key=value` overrides.

    python -m evaluation run ... ner.lr=3e-5 re.epochs=5 qa.max_length=512 speed.batch_size=64

Defaults and where they come from:
- ner: the paper's code (ner.py): lr 5e-5, batch 16, 5 epochs, weight decay 0.01, cosine decay
  without warmup (HF Trainer `lr_scheduler_type="cosine"`), inputs up to 512 tokens.
- qa: the paper's code (qa.py): lr 3e-5, batch 16, 5 epochs, max length 384, stride 128 (HF
  tokenizer semantics: 128 tokens of overlap between windows), weight decay 0.01, cosine.
- re: the paper's code has none; BioBERT's RE recipe (biobert-pytorch relation-extraction
  README: lr 5e-5, batch 32, 3 epochs, max length 128) with the paper's weight decay and schedule.
- everywhere: AdamW (0.9, 0.999, eps 1e-8) and gradient clipping at 1.0 (HF Trainer defaults,
  which the paper's code ran with); QA answers at most 30 tokens, 20-best spans per snippet and
  questions cut to 64 tokens (BERT's run_squad defaults, as BioBERT used them).
A model whose position table is shorter than max_length gets its own limit (recorded per cell).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

SCHEDULES = ("cosine", "linear", "constant")


@dataclass
class TaskSettings:
    lr: float
    batch_size: int
    epochs: int
    max_length: int
    weight_decay: float = 0.01
    warmup_ratio: float = 0.0
    schedule: str = "cosine"
    grad_clip: float = 1.0
    eval_batch_size: int = 64


@dataclass
class QaSettings(TaskSettings):
    stride: int = 128
    max_query_length: int = 64
    max_answer_length: int = 30
    n_best: int = 20


@dataclass
class SpeedSettings:
    """Inference speed probe: forward passes of the bare encoder on one fixed batch."""

    batch_size: int = 32
    seq_len: int = 128
    warmup: int = 2
    iters: int = 10


@dataclass
class EvalSettings:
    ner: TaskSettings = field(
        default_factory=lambda: TaskSettings(lr=5e-5, batch_size=16, epochs=5, max_length=512)
    )
    re: TaskSettings = field(
        default_factory=lambda: TaskSettings(lr=5e-5, batch_size=32, epochs=3, max_length=128)
    )
    qa: QaSettings = field(
        default_factory=lambda: QaSettings(lr=3e-5, batch_size=16, epochs=5, max_length=384)
    )
    speed: SpeedSettings = field(default_factory=SpeedSettings)


def build_settings(overrides: Sequence[str] = ()) -> EvalSettings:
    """Defaults with `section.key=value` overrides applied, validated."""
    settings = EvalSettings()
    for item in overrides:
        key, sep, value = item.partition("=")
        section_name, dot, name = key.partition(".")
        if not sep or not dot:
            raise ValueError(f"override {item!r}: expected section.key=value, e.g. ner.lr=3e-5")
        sections = {f.name for f in dataclasses.fields(settings)}
        if section_name not in sections:
            raise ValueError(
                f"override {item!r}: unknown section {section_name!r}; "
                f"allowed: {', '.join(sorted(sections))}"
            )
        section = getattr(settings, section_name)
        types = {f.name: f.type for f in dataclasses.fields(section)}
        if name not in types:
            raise ValueError(
                f"override {item!r}: unknown key {key!r}; allowed: "
                + ", ".join(f"{section_name}.{n}" for n in types)
            )
        setattr(section, name, _coerce(value, types[name], key))
    validate(settings)
    return settings


def _coerce(value: str, tp: Any, key: str) -> Any:
    try:
        if tp in (int, "int"):
            return int(value)
        if tp in (float, "float"):
            return float(value)
    except ValueError:
        kind = tp if isinstance(tp, str) else tp.__name__
        raise ValueError(f"{key}={value!r}: expected {kind}") from None
    return value


def validate(settings: EvalSettings) -> None:
    for section in ("ner", "re", "qa"):
        s: TaskSettings = getattr(settings, section)
        _require(math.isfinite(s.lr) and s.lr > 0, f"{section}.lr", s.lr, "a positive number")
        for name in ("batch_size", "epochs", "eval_batch_size"):
            _require(getattr(s, name) >= 1, f"{section}.{name}", getattr(s, name), ">= 1")
        _require(s.max_length >= 16, f"{section}.max_length", s.max_length, ">= 16")
        _require(0 <= s.weight_decay < 1, f"{section}.weight_decay", s.weight_decay, "in [0, 1)")
        _require(0 <= s.warmup_ratio < 1, f"{section}.warmup_ratio", s.warmup_ratio, "in [0, 1)")
        _require(s.grad_clip > 0, f"{section}.grad_clip", s.grad_clip, "> 0")
        _require(s.schedule in SCHEDULES, f"{section}.schedule", s.schedule, " | ".join(SCHEDULES))
    qa = settings.qa
    _require(0 < qa.stride < qa.max_length, "qa.stride", qa.stride, "in (0, qa.max_length)")
    for name in ("max_query_length", "max_answer_length", "n_best"):
        _require(getattr(qa, name) >= 1, f"qa.{name}", getattr(qa, name), ">= 1")
    sp = settings.speed
    for name in ("batch_size", "seq_len", "iters"):
        _require(getattr(sp, name) >= 1, f"speed.{name}", getattr(sp, name), ">= 1")
    _require(sp.warmup >= 0, "speed.warmup", sp.warmup, ">= 0")


def _require(ok: bool, key: str, value: Any, expected: str) -> None:
    if not ok:
        raise ValueError(f"{key}={value!r}: expected {expected}")


def as_dict(section: Any) -> dict[str, Any]:
    return dataclasses.asdict(section)
