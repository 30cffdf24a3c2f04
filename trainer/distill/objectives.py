"""The objective: a student's loss composed of its kind's terms (trainer/distill/kinds.py).

    objective = Objective.from_section(section, student_layers=6, teacher_layers=12)
    objective.student_need(), objective.teacher_need()   # the signals each side must produce
    loss, terms = objective(student_out, teacher_out, batch, scale)

Layer-map terms are sums over the [student, teacher] pairs. A term whose weight is 0 is neither
computed nor are its signals requested. `terms` holds every computed term unweighted (for logs;
scaled as below when scaled); `loss` is the weighted sum, fp32. Each term's function is
`LOSSES[its name]`, over the loss functions of trainer/distill/losses.py.

Every term is a mean, and its Term names what it divides by (`NORMALIZERS`). Called with `scale`
(the loop does, trainer/train/loop.py), each term is multiplied by scale[its normalizer]: count in
this batch x ranks / count over the accumulation window on all ranks. The window's micro-batches on
all ranks then add up (DeepSpeed averages the ranks' gradients) to each term's mean over the whole
window, as one batch of that size would give, not a mean of per-micro-batch means.

The fit_dense projection (student width -> teacher width: TinyBioBERT's HID_MSE, and any hidden-map
term of a student narrower or wider than its teacher) is applied inside the student's forward
(trainer/models/students.py) so that ZeRO-3 gathers its weights there; its outputs arrive here as
`proj.<index>`.
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from trainer.distill import losses
from trainer.distill.kinds import KINDS, TERMS, Term
from trainer.distill.teacher_signals import LOGITS, Need, attention_key, hidden_key, qkv_keys
from trainer.train.batch import Counts, DeviceBatch

if TYPE_CHECKING:
    from trainer.config.recipe import ObjectiveSection

NORMALIZERS: dict[str, Callable[[Counts], int]] = {
    "masked": lambda c: c.masked,  # over the masked rows
    "tokens": lambda c: c.tokens,  # over the real tokens
    "query_rows": lambda c: c.tokens * c.length,  # real query rows x key columns (x heads)
    "positions": lambda c: c.samples * c.length,  # every position (x hidden)
    "pairs": lambda c: c.samples * c.length**2,  # every query-key pair (x heads)
}
"""What a term's mean divides by, as a function of a batch's Counts (constant factors such as
the head count and the hidden size left out: they cancel in count / window count)."""


def projected_key(index: int) -> str:
    return f"proj.{index}"


def _pairs(o: Objective, student: dict, teacher: dict, key, loss, *extra, student_key=None):
    """Sum of `loss` over the objective's layer pairs for `key`'s signal (attention_key: the
    attention map, hidden_key: the hidden map); the student's side read at `student_key`."""
    pairs = o.attention_map if key is attention_key else o.hidden_map
    student_key = student_key or key
    return sum(loss(student[student_key(s)], teacher[key(t)], *extra) for s, t in pairs)


def _student_hidden(o: Objective) -> Callable[[int], str]:
    return projected_key if o.project_hidden else hidden_key


LOSSES: dict[str, Callable[[Objective, dict, dict | None, DeviceBatch], torch.Tensor]] = {
    "MLM": lambda o, s, t, b: losses.mlm_loss(s[LOGITS], b.masked_labels),
    "KD": lambda o, s, t, b: losses.kd_kl(s[LOGITS], t[LOGITS], o.temperature),
    "SOFT_CE": lambda o, s, t, b: losses.soft_cross_entropy(s[LOGITS], t[LOGITS], o.temperature),
    "ATT_KL": lambda o, s, t, b: _pairs(
        o, s, t, attention_key, losses.attention_kl, b.attention_mask
    ),
    "ATT_MSE": lambda o, s, t, b: _pairs(o, s, t, attention_key, losses.attention_mse),
    "COS": lambda o, s, t, b: _pairs(
        o, s, t, hidden_key, losses.cosine_loss, b.attention_mask, student_key=_student_hidden(o)
    ),
    "RELATIONS": lambda o, s, t, b: losses.minilm_relations(
        tuple(s[k] for k in qkv_keys(o.relation_pair[0])),
        tuple(t[k] for k in qkv_keys(o.relation_pair[1])),
        b.attention_mask,
        o.relation_heads,
    ),
    "HID_MSE": lambda o, s, t, b: _pairs(
        o, s, t, hidden_key, losses.hidden_mse, student_key=_student_hidden(o)
    ),
}
"""Each term's function of (objective, student signals, teacher signals, batch), by its name in
kinds.TERMS (the signals and normaliser it has there)."""


@dataclass(frozen=True)
class Objective:
    kind: str
    temperature: float | None
    weights: dict[str, float]
    attention_map: tuple[tuple[int, int], ...]
    hidden_map: tuple[tuple[int, int], ...]
    relation_pair: tuple[int, int] | None = None  # (student layer, teacher layer), from 0
    relation_heads: int | None = None
    # student hidden states reach the hidden-map terms through fit_dense (student width ->
    # teacher width): TinyBioBERT's HID_MSE always, any hidden-map term when the widths differ
    project_hidden: bool = False

    @classmethod
    def from_section(
        cls,
        section: ObjectiveSection,
        student_layers: int,
        teacher_layers: int | None,
        widths_differ: bool = False,
    ) -> Objective:
        """Resolve the layer maps: COS_last pairs the last layers; the rest come from the recipe
        (defaults filled in by trainer/config/recipe.py). `widths_differ`: the student's hidden
        size is not the teacher's, so its hidden states are projected to the teacher's."""
        kind = KINDS[section.kind]
        weights = {k: float(v) for k, v in section.weights.items() if v > 0}
        att = tuple(tuple(p) for p in section.attention_map or ())
        hid = tuple(tuple(p) for p in section.hidden_map or ())
        if kind.last_layers_cos:
            hid = ((student_layers, teacher_layers),)
        used = {kind.term(k).layer_map for k in weights}
        att = att if "attention" in used else ()
        hid = hid if "hidden" in used else ()
        pair, heads = None, None
        # the student's last layer learns the teacher layer's relations (unknown to a plan
        # whose teacher config cannot be read: no pair then)
        known = teacher_layers is not None or section.teacher_layer is not None
        if "relations" in used and known:
            layer = section.teacher_layer
            pair = (student_layers - 1, teacher_layers - 1 if layer is None else layer)
            heads = section.relation_heads
        projected = any(kind.term(k).projected for k in weights)
        project = projected or (widths_differ and bool(hid))
        return cls(section.kind, section.temperature, weights, att, hid, pair, heads, project)

    @property
    def terms(self) -> dict[str, Term]:
        """The computed terms (weight > 0) by their recipe keys, in TERMS order (the order the
        loss sums them in)."""
        kind, order = KINDS[self.kind], list(TERMS)
        keys = sorted(self.weights, key=lambda k: order.index(kind.terms[k]))
        return {k: kind.term(k) for k in keys}

    def normalizer(self, key: str) -> str:
        """The NORMALIZERS entry the mean of the term with recipe key `key` divides by."""
        return KINDS[self.kind].term(key).normalizer

    def student_need(self) -> Need:
        return Need(
            logits=any(t.student_logits for t in self.terms.values()),
            hidden=frozenset(s for s, _ in self.hidden_map),
            attentions=frozenset(s for s, _ in self.attention_map),
            qkv=frozenset(self.relation_pair[:1] if self.relation_pair else ()),
        )

    def teacher_need(self) -> Need:
        return Need(
            logits=any(t.teacher_logits for t in self.terms.values()),
            hidden=frozenset(t for _, t in self.hidden_map),
            attentions=frozenset(t for _, t in self.attention_map),
            qkv=frozenset(self.relation_pair[1:] if self.relation_pair else ()),
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
        names = KINDS[self.kind].terms
        terms = {k: LOSSES[names[k]](self, student, teacher, batch) for k in self.terms}
        if scale is not None:
            terms = {name: value * scale[self.normalizer(name)] for name, value in terms.items()}
        loss = sum(self.weights[name] * value for name, value in terms.items())
        return loss, terms


def cohort_teacher_need(objectives: Iterable[Objective]) -> Need:
    """What the teacher computes for a cohort: the union of what every student's losses read."""
    return functools.reduce(operator.or_, (o.teacher_need() for o in objectives), Need())
