"""Objectives: the paper's loss recipes composed from the terms in losses.py over layer maps.

    objective = Objective.from_section(section, student_layers=6, teacher_layers=12)
    objective.student_need(), objective.teacher_need()   # the signals each side must produce
    loss, terms = objective(student_out, teacher_out, batch)

Kinds (RECIPES.md; weights and temperature from the recipe, defaults in trainer/config.py):
    distilbiobert   w_mlm*MLM + w_kd*KD + w_cos*COS_last
    compactbiobert  w_mlm*MLM + w_kd*KD + w_att*ATT_KL(attention_map) + w_cos*COS(hidden_map)
    tinybiobert     w_att*ATT_MSE(attention_map) + w_hid*HID_MSE(hidden_map) + w_soft_ce*SOFT_CE
    mlm             w_mlm*MLM
Layer-map terms are sums over the [student, teacher] pairs. A term whose weight is 0 is neither
computed nor are its signals requested. `terms` holds every computed term unweighted (for logs);
`loss` is the weighted sum, fp32. TinyBioBERT's fit_dense projection is applied inside the student's
forward (trainer/students.py) so that ZeRO-3 gathers its weights there; its outputs arrive here as
`proj.<index>`.
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Iterable
from dataclasses import dataclass

import torch

from trainer import losses
from trainer.batch import DeviceBatch
from trainer.config import ObjectiveSection
from trainer.signals import LOGITS, Need, attention_key, hidden_key

LOGIT_TERMS = ("mlm", "kd", "soft_ce")


def projected_key(index: int) -> str:
    return f"proj.{index}"


def uses_attention_maps(section: ObjectiveSection) -> bool:
    """Whether the student needs attention probabilities (then it runs eager attention)."""
    return section.kind in ("compactbiobert", "tinybiobert") and section.weights.get("att", 0) > 0


@dataclass(frozen=True)
class Objective:
    kind: str
    temperature: float | None
    weights: dict[str, float]
    attention_map: tuple[tuple[int, int], ...]
    hidden_map: tuple[tuple[int, int], ...]

    @classmethod
    def from_section(
        cls, section: ObjectiveSection, student_layers: int, teacher_layers: int | None
    ) -> Objective:
        """Resolve the layer maps: COS_last pairs the last layers; the rest come from the recipe
        (defaults filled in by trainer/config.py)."""
        weights = {k: float(v) for k, v in section.weights.items() if v > 0}
        att = tuple(tuple(p) for p in section.attention_map or ())
        hid = tuple(tuple(p) for p in section.hidden_map or ())
        if section.kind == "distilbiobert":
            hid = ((student_layers, teacher_layers),)
        if "att" not in weights:
            att = ()
        if "cos" not in weights and "hid" not in weights:
            hid = ()
        return cls(section.kind, section.temperature, weights, att, hid)

    @property
    def projects_hidden(self) -> bool:
        """Whether student hidden states go through fit_dense (TinyBioBERT's HID_MSE)."""
        return "hid" in self.weights

    def student_need(self) -> Need:
        return Need(
            logits=any(t in self.weights for t in LOGIT_TERMS),
            hidden=frozenset(s for s, _ in self.hidden_map),
            attentions=frozenset(s for s, _ in self.attention_map),
        )

    def teacher_need(self) -> Need:
        return Need(
            logits="kd" in self.weights or "soft_ce" in self.weights,
            hidden=frozenset(t for _, t in self.hidden_map),
            attentions=frozenset(t for _, t in self.attention_map),
        )

    def __call__(
        self,
        student: dict[str, torch.Tensor],
        teacher: dict[str, torch.Tensor] | None,
        batch: DeviceBatch,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        terms: dict[str, torch.Tensor] = {}
        w, mask, T = self.weights, batch.attention_mask, self.temperature
        if "mlm" in w:
            terms["mlm"] = losses.mlm_loss(student[LOGITS], batch.masked_labels)
        if "kd" in w:
            terms["kd"] = losses.kd_kl(student[LOGITS], teacher[LOGITS], T)
        if "soft_ce" in w:
            terms["soft_ce"] = losses.soft_cross_entropy(student[LOGITS], teacher[LOGITS], T)
        if "att" in w:
            pairs = [
                (student[attention_key(s)], teacher[attention_key(t)])
                for s, t in self.attention_map
            ]
            if self.kind == "compactbiobert":  # ATT_KL over the non-padding query rows
                terms["att"] = sum(losses.attention_kl(s, t, mask) for s, t in pairs)
            else:  # tinybiobert: ATT_MSE over every element
                terms["att"] = sum(losses.attention_mse(s, t) for s, t in pairs)
        if "cos" in w:
            terms["cos"] = sum(
                losses.cosine_loss(student[hidden_key(s)], teacher[hidden_key(t)], mask)
                for s, t in self.hidden_map
            )
        if "hid" in w:
            terms["hid"] = sum(
                losses.hidden_mse(student[projected_key(s)], teacher[hidden_key(t)])
                for s, t in self.hidden_map
            )
        loss = sum(w[name] * value for name, value in terms.items())
        return loss, terms


def cohort_teacher_need(objectives: Iterable[Objective]) -> Need:
    """What the teacher computes for a cohort: the union of what every student's losses read."""
    return functools.reduce(operator.or_, (o.teacher_need() for o in objectives), Need())
