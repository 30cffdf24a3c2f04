"""Objectives: the recipe kinds, each defined once, and the objective that composes their terms.

    KINDS["compactbiobert"]            # a Kind: terms, default weights and temperature, layer maps,
                                       #   whether it needs a teacher, its model-card description
    objective = Objective.from_section(section, student_layers=6, teacher_layers=12)
    objective.student_need(), objective.teacher_need()   # the signals each side must produce
    loss, terms = objective(student_out, teacher_out, batch, scale)

Kinds (docs/objectives.md; weights and temperature overridable in the recipe):
    distilbiobert   w_mlm*MLM + w_kd*KD + w_cos*COS_last
    compactbiobert  w_mlm*MLM + w_kd*KD + w_att*ATT_KL(attention_map) + w_cos*COS(hidden_map)
    tinybiobert     w_att*ATT_MSE(attention_map) + w_hid*HID_MSE(hidden_map) + w_soft_ce*SOFT_CE
    minilmv2        w_rel*RELATIONS(student's last layer, teacher_layer): MiniLMv2's q-q, k-k,
                    v-v relation KL over relation_heads heads; any student width and head count
    mlm             w_mlm*MLM
Config validation (trainer/config/recipe.py), the cohort's teacher (trainer/models/cohort.py), the
signals each side computes, the loss and the model card (trainer/export/model_card.py) all read
KINDS. A new kind is one `Kind` entry below and a recipe entry; a new loss term is one `Term` (and
its function in losses.py).

Layer-map terms are sums over the [student, teacher] pairs. A term whose weight is 0 is neither
computed nor are its signals requested. `terms` holds every computed term unweighted (for logs;
scaled as below when scaled); `loss` is the weighted sum, fp32.

Every term is a mean, and its Term names what it divides by (`NORMALIZERS`). Called with `scale`
(the loop does, trainer/train/loop.py), each term is multiplied by scale[its normalizer]: count in
this batch x ranks / count over the accumulation window on all ranks. The window's micro-batches on
all ranks then add up (DeepSpeed averages the ranks' gradients) to each term's mean over the whole
window, as one batch of that size would give, not a mean of per-micro-batch means.

TinyBioBERT's fit_dense projection is applied inside the student's forward
(trainer/models/students.py) so that ZeRO-3 gathers its weights there; its outputs arrive here as
`proj.<index>`.
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from trainer.distill import losses
from trainer.distill.teacher_signals import LOGITS, Need, attention_key, hidden_key, qkv_keys
from trainer.train.batch import Counts, DeviceBatch

if TYPE_CHECKING:
    from trainer.config.recipe import ObjectiveSection, StudentSection

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


@dataclass(frozen=True)
class Term:
    """One loss term: its function of (objective, student signals, teacher signals, batch), what
    its mean divides by, and the signals it reads."""

    loss: Callable[[Objective, dict, dict | None, DeviceBatch], torch.Tensor]
    normalizer: str  # a NORMALIZERS key
    student_logits: bool = False
    teacher_logits: bool = False
    # "attention" or "hidden": sums over that map's pairs; "relations": the relation pair
    layer_map: str | None = None
    projected: bool = False  # the student's hidden states through fit_dense (HID_MSE)


TERMS: dict[str, Term] = {
    "MLM": Term(
        lambda o, s, t, b: losses.mlm_loss(s[LOGITS], b.masked_labels),
        "masked",
        student_logits=True,
    ),
    "KD": Term(
        lambda o, s, t, b: losses.kd_kl(s[LOGITS], t[LOGITS], o.temperature),
        "masked",
        student_logits=True,
        teacher_logits=True,
    ),
    "SOFT_CE": Term(
        lambda o, s, t, b: losses.soft_cross_entropy(s[LOGITS], t[LOGITS], o.temperature),
        "masked",
        student_logits=True,
        teacher_logits=True,
    ),
    "ATT_KL": Term(  # over the non-padding query rows, every key column
        lambda o, s, t, b: _pairs(o, s, t, attention_key, losses.attention_kl, b.attention_mask),
        "query_rows",
        layer_map="attention",
    ),
    "ATT_MSE": Term(  # over every element, padding included (TinyBERT's code)
        lambda o, s, t, b: _pairs(o, s, t, attention_key, losses.attention_mse),
        "pairs",
        layer_map="attention",
    ),
    "COS": Term(  # over the real tokens
        lambda o, s, t, b: _pairs(o, s, t, hidden_key, losses.cosine_loss, b.attention_mask),
        "tokens",
        layer_map="hidden",
    ),
    "RELATIONS": Term(  # over the real query rows (x relation heads)
        lambda o, s, t, b: losses.minilm_relations(
            tuple(s[k] for k in qkv_keys(o.relation_pair[0])),
            tuple(t[k] for k in qkv_keys(o.relation_pair[1])),
            b.attention_mask,
            o.relation_heads,
        ),
        "tokens",
        layer_map="relations",
    ),
    "HID_MSE": Term(
        lambda o, s, t, b: _pairs(
            o, s, t, hidden_key, losses.hidden_mse, student_key=projected_key
        ),
        "positions",
        layer_map="hidden",
        projected=True,
    ),
}
"""docs/objectives.md's terms by their names there."""


LayerMaps = Callable[[int], tuple[list[list[int]], list[list[int]]]]


@dataclass(frozen=True)
class Kind:
    """One recipe `objective.kind`: everything about it, in one place."""

    terms: dict[str, str]  # recipe weight key -> TERMS name; the keys are its only weights
    weights: dict[str, float]  # default weights (docs/objectives.md)
    temperature: float | None  # default temperature; None: none (no logit distillation)
    card: str  # what the model card says of a student trained so
    # default (attention_map, hidden_map) for a student of n layers; None: no recipe layer maps
    layer_maps: LayerMaps | None = None
    last_layers_cos: bool = False  # its hidden map is fixed: the last layers (COS_last)
    # its own integer recipe keys (objective.<key>): (default, least value); other kinds
    # refuse them. Each is a field of config.ObjectiveSection, so that the schema lists it.
    options: dict[str, tuple[int | None, int]] = field(default_factory=dict)
    # once the models are built: (objective, student config, teacher config) -> a problem
    # ("objective.<key>=...: ...") that would fail the first step, or None
    check_models: Callable[[Objective, Any, Any], str | None] | None = None

    def term(self, key: str) -> Term:
        return TERMS[self.terms[key]]

    @property
    def needs_teacher(self) -> bool:
        return any(
            t.teacher_logits or t.layer_map is not None for t in map(TERMS.get, self.terms.values())
        )


def _relation_heads_divide(objective: Objective, student, teacher) -> str | None:
    """MiniLMv2's relation heads must split both models' hidden sizes."""
    heads = objective.relation_heads
    sizes = {"student": student.hidden_size, "teacher": teacher.hidden_size}
    bad = {who: size for who, size in sizes.items() if size % heads}
    if bad:
        return (
            f"objective.relation_heads={heads}: must divide the hidden sizes {sizes}; {bad} is "
            "not divisible"
        )
    return None


KINDS: dict[str, Kind] = {
    "distilbiobert": Kind(
        terms={"mlm": "MLM", "kd": "KD", "cos": "COS"},
        weights={"mlm": 2.0, "kd": 5.0, "cos": 1.0},
        temperature=2.0,
        card="distilled (DistilBioBERT recipe: MLM + KD + last-layer cosine)",
        last_layers_cos=True,
    ),
    "compactbiobert": Kind(
        terms={"mlm": "MLM", "kd": "KD", "att": "ATT_KL", "cos": "COS"},
        weights={"mlm": 1.0, "kd": 5.0, "att": 3.0, "cos": 3.0},
        temperature=1.0,
        card="distilled (CompactBioBERT recipe: MLM + KD + attention KL + layer cosines)",
        # attention i -> 2i+1; hidden i -> 2i (i >= 1)
        layer_maps=lambda n: (
            [[i, 2 * i + 1] for i in range(n)],
            [[i, 2 * i] for i in range(1, n + 1)],
        ),
    ),
    "tinybiobert": Kind(
        terms={"att": "ATT_MSE", "hid": "HID_MSE", "soft_ce": "SOFT_CE"},
        weights={"att": 1.0, "hid": 1.0, "soft_ce": 1.0},
        temperature=1.0,
        card="distilled (TinyBioBERT recipe: attention MSE + hidden MSE + soft CE)",
        # attention i -> 3i+2; hidden j -> 3j (j >= 0)
        layer_maps=lambda n: (
            [[i, 3 * i + 2] for i in range(n)],
            [[j, 3 * j] for j in range(n + 1)],
        ),
    ),
    "minilmv2": Kind(
        terms={"rel": "RELATIONS"},
        weights={"rel": 1.0},
        temperature=None,
        card="distilled (MiniLMv2 recipe: query, key and value self-attention relation KL)",
        # teacher_layer None: the teacher's last (MiniLMv2 takes an upper-middle one of a large
        # teacher, the last of a base one); relation heads: MiniLMv2's for base-size teachers
        options={"teacher_layer": (None, 0), "relation_heads": (12, 1)},
        check_models=_relation_heads_divide,
    ),
    "mlm": Kind(
        terms={"mlm": "MLM"},
        weights={"mlm": 1.0},
        temperature=None,
        card="continual masked-language-model pre-training",
    ),
}
"""Every objective kind a recipe can name."""

KIND_OPTIONS = sorted({name for kind in KINDS.values() for name in kind.options})
"""The objective keys some kind owns (config validation refuses them for the others)."""


# ---------------------------------------------------------------- layer-map rules


def fill_layer_maps(obj: ObjectiveSection, student_layers: int) -> None:
    """Give each layer map the recipe leaves null its kind's default for a student this deep."""
    rule = KINDS[obj.kind].layer_maps
    if rule is not None:
        att, hid = rule(student_layers)
        obj.attention_map = att if obj.attention_map is None else obj.attention_map
        obj.hidden_map = hid if obj.hidden_map is None else obj.hidden_map


def check_layers(
    student: StudentSection, teacher_layers: int | None, student_layers: int | None
) -> None:
    """Layer indices in range for the depths known (None: unknown, unchecked): the layers a
    student copies from the teacher, its layer maps, its teacher_layer. Config validation calls
    it with the depths a recipe states; the trainer again with those of the models it built."""
    key, obj = f"students.{student.name}", student.objective
    checks = [("init.from_teacher_layers", student.init.from_teacher_layers or [], 0, 1)]
    for name, extra in (("attention_map", 0), ("hidden_map", 1)):  # hidden_states: layers + 1
        pairs = getattr(obj, name) or []
        checks += [(f"objective.{name}", [p[0] for p in pairs], extra, 0)]
        checks += [(f"objective.{name}", [p[1] for p in pairs], extra, 1)]
    if obj.teacher_layer is not None:  # a layer index, from 0
        checks += [("objective.teacher_layer", [obj.teacher_layer], 0, 1)]
    for name, indices, extra, is_teacher in checks:
        depth, who = (teacher_layers, "teacher") if is_teacher else (student_layers, "student")
        bad = [i for i in indices if depth is not None and i >= depth + extra]
        if bad:
            limit = (depth or 0) + extra
            raise ValueError(f"{key}.{name}={bad[:1]!r}: expected {who} indices < {limit}")


def uses_attention_maps(section: ObjectiveSection) -> bool:
    """Whether the student needs attention probabilities (then it runs eager attention)."""
    kind = KINDS[section.kind]
    return any(kind.term(k).layer_map == "attention" for k, w in section.weights.items() if w > 0)


@dataclass(frozen=True)
class Objective:
    kind: str
    temperature: float | None
    weights: dict[str, float]
    attention_map: tuple[tuple[int, int], ...]
    hidden_map: tuple[tuple[int, int], ...]
    relation_pair: tuple[int, int] | None = None  # (student layer, teacher layer), from 0
    relation_heads: int | None = None

    @classmethod
    def from_section(
        cls, section: ObjectiveSection, student_layers: int, teacher_layers: int | None
    ) -> Objective:
        """Resolve the layer maps: COS_last pairs the last layers; the rest come from the recipe
        (defaults filled in by trainer/config/recipe.py)."""
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
        if "relations" in used:  # the student's last layer learns the teacher layer's relations
            layer = section.teacher_layer
            pair = (student_layers - 1, teacher_layers - 1 if layer is None else layer)
            heads = section.relation_heads
        return cls(section.kind, section.temperature, weights, att, hid, pair, heads)

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

    @property
    def projects_hidden(self) -> bool:
        """Whether student hidden states go through fit_dense (TinyBioBERT's HID_MSE)."""
        return any(t.projected for t in self.terms.values())

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
        terms = {k: term.loss(self, student, teacher, batch) for k, term in self.terms.items()}
        if scale is not None:
            terms = {name: value * scale[self.normalizer(name)] for name, value in terms.items()}
        loss = sum(self.weights[name] * value for name, value in terms.items())
        return loss, terms


def cohort_teacher_need(objectives: Iterable[Objective]) -> Need:
    """What the teacher computes for a cohort: the union of what every student's losses read."""
    return functools.reduce(operator.or_, (o.teacher_need() for o in objectives), Need())
