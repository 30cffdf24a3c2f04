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
computed nor are its signals requested. `terms` holds every computed term unweighted (for logs;
scaled as below when scaled); `loss` is the weighted sum, fp32.

Every term is a mean, and `NORMALIZERS` names what it divides by. Called with `scale` (the loop
does, trainer/loop.py), each term is multiplied by scale[its normalizer]: count in this batch x
ranks / count over the accumulation window on all ranks. The window's micro-batches on all ranks
then add up (DeepSpeed averages the ranks' gradients) to each term's mean over the whole window,
as one batch of that size would give, not a mean of per-micro-batch means.

TinyBioBERT's fit_dense projection is applied inside the student's forward (trainer/students.py)
so that ZeRO-3 gathers its weights there; its outputs arrive here as `proj.<index>`.
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch

from trainer import losses
from trainer.batch import Counts, DeviceBatch
from trainer.config import ObjectiveSection
from trainer.signals import LOGITS, Need, attention_key, hidden_key

LOGIT_TERMS = ("mlm", "kd", "soft_ce")

NORMALIZERS: dict[str, Callable[[Counts], int]] = {
    "masked": lambda c: c.masked,  # MLM, KD, SOFT_CE: over the masked rows
    "tokens": lambda c: c.tokens,  # COS: over the real tokens
    "query_rows": lambda c: c.tokens * c.length,  # ATT_KL: real query rows x keys (x heads)
    "positions": lambda c: c.samples * c.length,  # HID_MSE: every position (x hidden)
    "pairs": lambda c: c.samples * c.length**2,  # ATT_MSE: every query-key pair (x heads)
}
"""What each term's mean divides by, as a function of a batch's Counts (constant factors such as
the head count and the hidden size left out: they cancel in count / window count)."""


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

    def normalizer(self, term: str) -> str:
        """The NORMALIZERS entry `term`'s mean divides by."""
        if term in LOGIT_TERMS:
            return "masked"
        if term == "cos":
            return "tokens"
        if term == "att":
            return "query_rows" if self.kind == "compactbiobert" else "pairs"
        if term == "hid":
            return "positions"
        raise KeyError(f"objective {self.kind}: no normalizer for term {term!r}")

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
        scale: dict[str, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(loss, terms) of one batch: the batch's means, or with `scale` (normalizer ->
        factor) each term times its factor, its share of the window's mean (module doc)."""
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
        if scale is not None:
            terms = {name: value * scale[self.normalizer(name)] for name, value in terms.items()}
        loss = sum(w[name] * value for name, value in terms.items())
        return loss, terms


def cohort_teacher_need(objectives: Iterable[Objective]) -> Need:
    """What the teacher computes for a cohort: the union of what every student's losses read."""
    return functools.reduce(operator.or_, (o.teacher_need() for o in objectives), Need())
