"""The baseline: the same cohort trained the way the paper's code did it, in a plain HF loop.

    loop = PaperLoop.from_trainer(trainer)   # copies of the trainer's teacher and students
    loop.step(host_batch)                     # one batch through every student

What makes it the paper's way (Rohanian et al.'s distillation scripts on transformers 4.x), each
the opposite of a choice in trainer/:
- eager attention in every layer of teacher and students, with every layer's attention maps and
  hidden states returned (`output_attentions=True, output_hidden_states=True`);
- full-vocabulary logits [B, L, V] from the MLM heads; the losses then take the masked rows;
- a separate teacher forward for every student (one script per student);
- torch's AdamW with gradient clipping, autocast for mixed precision (bf16 when the trainer's
  DeepSpeed JSON trains in bf16), no DeepSpeed.
The loss is the trainer's own objective (trainer/distill/objectives.py) on the same signals, so both
sides do the same learning work; only how they compute it differs.
"""

from __future__ import annotations

import contextlib
import copy

import torch
from torch import nn

from trainer.distill.objectives import projected_key
from trainer.distill.teacher_signals import LOGITS, attention_key, hidden_key
from trainer.train.batch import DeviceBatch


def _plain(model: nn.Module) -> nn.Module:
    """An fp32 copy running HF's eager attention, without the trainer's signal taps."""
    model = copy.deepcopy(model).float()
    for m in model.modules():
        m._forward_hooks.clear()
        if getattr(m, "_compiled_call_impl", None) is not None:
            m._compiled_call_impl = None  # compiled against the original module: run eagerly
    model.__dict__.pop("_biodistill_taps", None)
    config = model.config
    config._attn_implementation = "eager"
    return model


class _Student:
    def __init__(self, student) -> None:
        module = student.module
        self.name, self.objective = student.name, student.objective
        self.mlm = _plain(module.mlm).train()
        self.fit_dense = copy.deepcopy(module.fit_dense).float() if module.fit_dense else None
        params = list(self.mlm.parameters())
        if self.fit_dense is not None:
            params += list(self.fit_dense.parameters())
        opt = student.spec.optimizer
        self.params = params
        self.optimizer = torch.optim.AdamW(
            params, lr=opt.lr, betas=opt.betas, eps=opt.eps, weight_decay=opt.weight_decay
        )


class PaperLoop:
    def __init__(self, teacher: nn.Module | None, students: list, device, autocast_dtype) -> None:
        self.teacher = _plain(teacher).eval() if teacher is not None else None
        self.students = [_Student(s) for s in students]
        self.device, self.autocast_dtype = device, autocast_dtype

    @classmethod
    def from_trainer(cls, trainer) -> PaperLoop:
        ds_bf16 = trainer.students[0].engine.bfloat16_enabled()
        teacher = trainer.teacher.model if trainer.teacher is not None else None
        dtype = torch.bfloat16 if ds_bf16 else None
        return cls(teacher, trainer.students, trainer.rt.device, dtype)

    def _autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    @staticmethod
    def _signals(out, batch: DeviceBatch) -> dict[str, torch.Tensor]:
        logits = out.logits.reshape(-1, out.logits.shape[-1])
        signals = {LOGITS: logits.index_select(0, batch.masked_index)}
        signals.update({hidden_key(i): h for i, h in enumerate(out.hidden_states)})
        signals.update({attention_key(i): a for i, a in enumerate(out.attentions or ())})
        return signals

    def step(self, batch: DeviceBatch | dict) -> None:
        if isinstance(batch, dict):
            batch = DeviceBatch.from_host(batch, self.device)
        inputs = {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask}
        every = {"output_hidden_states": True, "output_attentions": True, "return_dict": True}
        for s in self.students:
            teacher = None
            if self.teacher is not None:  # NOTE: once per student, as separate scripts do
                with torch.no_grad(), self._autocast():
                    teacher = self._signals(self.teacher(**inputs, **every), batch)
            with self._autocast():
                student = self._signals(s.mlm(**inputs, **every), batch)
                if s.fit_dense is not None:
                    for i, _ in s.objective.hidden_map:
                        student[projected_key(i)] = s.fit_dense(student[hidden_key(i)])
            loss, _ = s.objective(student, teacher, batch)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(s.params, 1.0)
            s.optimizer.step()
            s.optimizer.zero_grad(set_to_none=True)
