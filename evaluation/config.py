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

Overrides are parsed as the recipe's are (trainer/config/overrides.py: the value is YAML, `3e-5`
a number); each key's type, limits and meaning are its Field below (data_pipeline/schema.py), and
a bad key or value is a UserError of one line naming it (`ner.epochs='five': expected an integer
>= 1`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from pydantic import BaseModel, Field, model_validator

from data_pipeline.schema import Float, Int, Invalid, Schema, validate
from trainer.config.overrides import apply_overrides


class TaskSettings(Schema):
    lr: Float = Field(gt=0, description="AdamW peak learning rate")
    batch_size: Int = Field(ge=1, description="training examples per step")
    epochs: Int = Field(ge=1, description="passes over the training split")
    max_length: Int = Field(ge=16, description="tokens per input (cut to the model's positions)")
    weight_decay: Float = Field(0.01, ge=0, lt=1, description="AdamW weight decay")
    warmup_ratio: Float = Field(0.0, ge=0, lt=1, description="fraction of the steps warming up")
    schedule: Literal["cosine", "linear", "constant"] = Field("cosine", description="LR decay")
    grad_clip: Float = Field(1.0, gt=0, description="gradient norm clipped to this")
    eval_batch_size: Int = Field(64, ge=1, description="examples per evaluation batch")


class QaSettings(TaskSettings):
    stride: Int = Field(128, gt=0, description="tokens of overlap between a context's windows")
    max_query_length: Int = Field(64, ge=1, description="question tokens kept")
    max_answer_length: Int = Field(30, ge=1, description="tokens of the longest answer predicted")
    n_best: Int = Field(20, ge=1, description="candidate spans per window")

    @model_validator(mode="after")
    def _stride_below_max_length(self) -> QaSettings:
        if self.stride >= self.max_length:
            raise Invalid(
                f"an integer in (0, qa.max_length={self.max_length})", "stride", self.stride
            )
        return self


class SpeedSettings(Schema):
    """Inference speed probe: forward passes of the bare encoder on one fixed batch."""

    batch_size: Int = Field(32, ge=1, description="sequences per forward pass")
    seq_len: Int = Field(128, ge=1, description="tokens per sequence")
    warmup: Int = Field(2, ge=0, description="untimed passes first")
    iters: Int = Field(10, ge=1, description="timed passes")


class EvalSettings(Schema):
    ner: TaskSettings = Field(
        default_factory=lambda: TaskSettings(lr=5e-5, batch_size=16, epochs=5, max_length=512)
    )
    re: TaskSettings = Field(
        default_factory=lambda: TaskSettings(lr=5e-5, batch_size=32, epochs=3, max_length=128)
    )
    qa: QaSettings = Field(
        default_factory=lambda: QaSettings(lr=3e-5, batch_size=16, epochs=5, max_length=384)
    )
    speed: SpeedSettings = Field(default_factory=SpeedSettings)


def build_settings(overrides: Sequence[str] = ()) -> EvalSettings:
    """The defaults with `section.key=value` overrides applied (values read as YAML, as recipe
    overrides are), validated; bad input is a UserError naming the key."""
    raw = apply_overrides(EvalSettings().model_dump(), overrides)
    return validate(EvalSettings, raw, root="evaluation settings")


def as_dict(section: BaseModel) -> dict[str, Any]:
    return section.model_dump()
