"""Model families, each defined once and registered by name: everything that touches a model
(loading, building students, the teacher's signals, attention maps, export) asks its family.

    fam = FAMILIES["modernbert"]      # a Family (trainer/models/families/base.py)
    fam = family_of(model)            # by the model's config.model_type
    FAMILY_NAMES                      # for the recipe schema (no torch imported here)

A new family is one module here (a Family subclass overriding what differs from BERT's layout),
one entry in FAMILIES, and its tests (tests/test_families.py runs every promise per family).
Architectures without a definition (an ELECTRA, a DeBERTa used for continual MLM) get GENERIC:
their full forward, logits gathered at the masked rows, no layer-wise signals.
"""

from __future__ import annotations

from typing import Any

from data_pipeline.errors import UserError
from trainer.models.families.base import Family
from trainer.models.families.bert import BERT, DISTILBERT, MOBILEBERT
from trainer.models.families.modernbert import MODERNBERT
from trainer.models.families.roberta import ROBERTA


class Generic(Family):
    """An architecture no family describes: continual MLM with the full forward only."""

    name = "generic"
    model_types = ()
    layer_signals = False
    pooler_prefix = None

    def num_layers(self, config: Any) -> int:
        for name in ("num_hidden_layers", "n_layers"):
            if isinstance(getattr(config, name, None), int):
                return getattr(config, name)
        raise UserError(f"{type(config).__name__}: cannot tell how many layers it has")

    def head(self, model):
        return None  # trainer.distill.teacher_signals runs the full forward


GENERIC = Generic()
FAMILIES: dict[str, Family] = {
    f.name: f for f in (BERT, ROBERTA, MODERNBERT, MOBILEBERT, DISTILBERT)
}
FAMILY_NAMES = ("bert", "roberta", "modernbert")  # what a recipe may build at random
_BY_MODEL_TYPE = {t: f for f in FAMILIES.values() for t in f.model_types}


def family_of(model_or_config: Any) -> Family:
    """The family of a model or config, GENERIC when none describes it."""
    config = getattr(model_or_config, "config", model_or_config)
    return _BY_MODEL_TYPE.get(getattr(config, "model_type", None), GENERIC)


def architecture(model_or_config: Any) -> str:
    """The family's name, or the model type where no family describes it (plans, cards)."""
    config = getattr(model_or_config, "config", model_or_config)
    fam = family_of(config)
    return fam.name if fam is not GENERIC else str(getattr(config, "model_type", "unknown"))


DEFAULT = "bert"  # the family of teacher.config and init.config when the recipe names none


def model_config(
    values: dict, key: str, family: str | None = None, attn_implementation: str | None = None
) -> Any:
    """The config of a model built at random from recipe values (`teacher.config`,
    `students.NAME.init.config`), checked by its family (None: DEFAULT); errors name `key`."""
    return FAMILIES[family or DEFAULT].config(values, key, attn_implementation)
