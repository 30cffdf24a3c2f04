"""The objective kinds, each defined once, as data: config reads them without torch.

    KINDS["compactbiobert"]   # a Kind: terms, default weights and temperature, layer maps,
                              #   whether it needs a teacher, its model-card description

Kinds (docs/objectives.md; weights and temperature overridable in the recipe):
    distilbiobert   w_mlm*MLM + w_kd*KD + w_cos*COS_last
    compactbiobert  w_mlm*MLM + w_kd*KD + w_att*ATT_KL(attention_map) + w_cos*COS(hidden_map)
    tinybiobert     w_att*ATT_MSE(attention_map) + w_hid*HID_MSE(hidden_map) + w_soft_ce*SOFT_CE
    minilmv2        w_rel*RELATIONS(student's last layer, teacher_layer): MiniLMv2's q-q, k-k,
                    v-v relation KL over relation_heads heads; any student width and head count
    mlm             w_mlm*MLM
Config validation (trainer/config/recipe.py), the cohort's teacher (trainer/models/cohort.py), the
signals each side computes, the loss (trainer/distill/objectives.py) and the model card
(trainer/export/model_card.py) all read KINDS. A new kind is one `Kind` entry below and a recipe
entry; a new loss term is one `Term` here and its function in objectives.LOSSES (over losses.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from data_pipeline.errors import UserError

if TYPE_CHECKING:
    from trainer.config.recipe import ObjectiveSection, StudentSection
    from trainer.distill.objectives import Objective


@dataclass(frozen=True)
class Term:
    """One loss term: what its mean divides by (an objectives.NORMALIZERS key) and the signals it
    reads; its function is objectives.LOSSES[its name]."""

    normalizer: str
    student_logits: bool = False
    teacher_logits: bool = False
    # "attention" or "hidden": sums over that map's pairs; "relations": the relation pair
    layer_map: str | None = None
    projected: bool = False  # the student's hidden states through fit_dense (HID_MSE)


TERMS: dict[str, Term] = {
    "MLM": Term("masked", student_logits=True),
    "KD": Term("masked", student_logits=True, teacher_logits=True),
    "SOFT_CE": Term("masked", student_logits=True, teacher_logits=True),
    "ATT_KL": Term("query_rows", layer_map="attention"),  # non-padding query rows, every key
    "ATT_MSE": Term("pairs", layer_map="attention"),  # every element, padding too (TinyBERT's)
    "COS": Term("tokens", layer_map="hidden"),  # the real tokens
    "RELATIONS": Term("tokens", layer_map="relations"),  # real query rows (x relation heads)
    "HID_MSE": Term("positions", layer_map="hidden", projected=True),
}
"""docs/objectives.md's terms by their names there; the order the loss sums them in."""


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
            raise UserError(f"{key}.{name}={bad[:1]!r}: expected {who} indices < {limit}")


def uses_attention_maps(section: ObjectiveSection) -> bool:
    """Whether the student needs attention probabilities (then it runs eager attention)."""
    kind = KINDS[section.kind]
    return any(kind.term(k).layer_map == "attention" for k, w in section.weights.items() if w > 0)
