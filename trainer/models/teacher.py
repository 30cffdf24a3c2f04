"""The frozen teacher: loaded once as a masked LM, asked only for what the cohort needs.

    model = load_teacher_model(cfg.teacher, seed=42, vocab_size=28996)
    teacher = Teacher(model.to(device, dtype), need)   # after the students copied their layers
    signals = teacher(batch)                            # dict, see
    trainer/distill/teacher_signals.py

- Loading that leaves any weight newly initialised is an error (a teacher without its MLM head
  gives meaningless soft targets) unless `teacher.allow_new_weights` opts out, for a teacher used
  only for hidden-state terms.
- Frozen: eval() (no dropout; the paper's code left it on, docs/objectives.md), requires_grad False,
  bf16 on GPU, never in a checkpoint. Its forward runs under no_grad rather than inference_mode:
  students' losses save teacher tensors for their backward, which inference tensors forbid.
- It computes the union of the students' needs only (`Need`), e.g. no logits at all when no
  student has a KD or soft-CE term, attention probabilities only in the layers some student's
  loss reads (SDPA computes every layer's output, trainer/models/attention.py).
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from data_pipeline.errors import UserError
from trainer.config.recipe import TeacherSection
from trainer.distill.teacher_signals import Need, check_need, masked_lm_signals, tap_signals
from trainer.models.attention import return_probabilities
from trainer.models.families import DEFAULT, FAMILIES
from trainer.models.hf_models import attn_implementation, load_masked_lm
from trainer.train.batch import DeviceBatch
from trainer.train.rng import seeded

logger = logging.getLogger(__name__)


def load_teacher_model(section: TeacherSection, *, seed: int, vocab_size: int) -> nn.Module:
    """The teacher as an fp32 CPU masked LM (students copy from it before it moves)."""
    impl = attn_implementation()
    if section.config is not None:
        fam = FAMILIES[section.family or DEFAULT]
        config = fam.config(section.config, "teacher.config", impl)
        with seeded(seed, torch.device("cpu")):
            model = fam.masked_lm(config)
        where = "teacher.config"
    else:
        where = f"teacher.path={section.path!r}"
        model, new = load_masked_lm(section.path, impl, where)
        if new and not section.allow_new_weights:
            raise UserError(
                f"{where}: loading left {len(new)} weights newly "
                f"initialised ({', '.join(new[:6])}{', ...' if len(new) > 6 else ''}); a "
                "teacher without its trained MLM head gives meaningless soft targets. Use a "
                "checkpoint with the head, or set teacher.allow_new_weights=true if no student "
                "uses the teacher's logits"
            )
        if new:
            logger.warning("teacher: %d weights newly initialised (allowed): %s", len(new), new)
    model_vocab = model.get_output_embeddings().weight.shape[0]
    if model_vocab < vocab_size:
        raise UserError(
            f"{where}: the model's vocabulary has {model_vocab} entries but the shards' tokenizer "
            f"has {vocab_size}; re-shard with the teacher's tokenizer"
        )
    return model


class Teacher:
    def __init__(self, model: nn.Module, need: Need) -> None:
        if need.attentions:
            return_probabilities(model, need.attentions)
        check_need(model, need, "teacher")
        tap_signals(model, need)
        model.eval()
        model.requires_grad_(False)
        self.model, self.need = model, need

    @property
    def num_layers(self) -> int:
        return self.model.config.num_hidden_layers

    @torch.no_grad()
    def __call__(self, batch: DeviceBatch, need: Need | None = None) -> dict[str, torch.Tensor]:
        need = self.need if need is None else need
        if need.empty:
            return {}
        return masked_lm_signals(
            self.model, batch.input_ids, batch.attention_mask, batch.masked_index, need
        )
