"""Students: built from the recipe, each wrapped in the module its DeepSpeed engine trains.

    built = build_student(spec, teacher_model=teacher, vocab_size=28996, seed=42)
    built.module      # StudentModule: forward(input_ids, attention_mask, masked_index) -> signals
    built.objective   # trainer/distill/objectives.py, layer maps resolved

Initialisation (`students.NAME.init`, exactly one):
- from_teacher_layers: the teacher's config with len(layers) layers; embeddings, the listed
  teacher layers (in order) and the teacher's MLM head (transform + bias; the decoder is tied to
  the embeddings) are copied. The paper's code re-initialised the head when it reloaded the
  student; keeping the trained head is one of our deliberate corrections (docs/objectives.md).
- config: a masked LM of `init.family` (default BERT) with these config values, at random.
- pretrained: any HF masked LM by name or directory (continual MLM), with its own tokenizer.
Random draws (initialisation, fit_dense) are seeded from (seed, "student", name): a student built
alone or in a cohort starts from the same weights, and an MLM-only twin (`twin_of`, seeded by its
sibling's name) from its sibling's.

`fit_dense` (student hidden -> teacher hidden: TinyBioBERT's HID_MSE, and any hidden-map term of a
student whose width is not the teacher's) lives in the StudentModule, is trained with it and is not
exported. The pooler that is exported
(trainer/models/pooler.py) is not trained and lives outside the module: the teacher's for
from_teacher_layers, the checkpoint's own for pretrained, else the identity one.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import nn

from data_pipeline.errors import UserError
from trainer.config.recipe import StudentSection
from trainer.distill.kinds import check_layers, fill_layer_maps
from trainer.distill.objectives import Objective, projected_key
from trainer.distill.teacher_signals import (
    Need,
    check_need,
    hidden_key,
    layer_families,
    masked_lm_signals,
    num_layers,
    tap_signals,
)
from trainer.models.attention import return_probabilities
from trainer.models.families import DEFAULT, FAMILIES, family_of
from trainer.models.hf_models import attn_implementation, load_masked_lm
from trainer.models.pooler import Pooler, pooler_for
from trainer.train.rng import derive_seed, seeded

logger = logging.getLogger(__name__)


class StudentModule(nn.Module):
    """The HF masked LM (`mlm`, what is exported) plus TinyBioBERT's `fit_dense`."""

    def __init__(self, mlm: nn.Module, need: Need, fit_dense: nn.Linear | None = None) -> None:
        super().__init__()
        self.mlm = mlm
        self.fit_dense = fit_dense
        self.need = need
        tap_signals(mlm, need)  # NOTE: before DeepSpeed (or torch.compile) wraps the module

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        masked_index: torch.Tensor,
        logits_only: bool = False,
    ) -> dict[str, torch.Tensor]:
        need = Need(logits=True) if logits_only else self.need
        out = masked_lm_signals(self.mlm, input_ids, attention_mask, masked_index, need)
        if self.fit_dense is not None and not logits_only:
            for index in need.hidden:
                out[projected_key(index)] = self.fit_dense(out.pop(hidden_key(index)))
        return out


@dataclass
class BuiltStudent:
    name: str
    module: StudentModule
    objective: Objective
    tokenizer: str | None  # where its tokenizer comes from (None: the run's tokenizer)
    base_model: str | None  # what it started from, for the model card
    pooler: Pooler | None  # exported with it, never trained (None: its family has none)


def build_student(
    spec: StudentSection,
    *,
    teacher_model: nn.Module | None,
    vocab_size: int,
    seed: int,
    teacher_path: str | None = None,
) -> BuiltStudent:
    """`teacher_path`: the teacher's checkpoint (`teacher.path`), whose pooler students made of
    its layers export."""
    key = f"students.{spec.name}"
    init, section = spec.init, spec.objective
    impl = attn_implementation()
    tokenizer, base, pooler_source = None, None, None
    with seeded(derive_seed(seed, "student", spec.seed_name), torch.device("cpu")):
        if init.from_teacher_layers is not None:
            mlm = _from_teacher_layers(teacher_model, init.from_teacher_layers, impl, key)
            base = f"teacher layers {init.from_teacher_layers}"
            pooler_source = teacher_path
        elif init.config is not None:
            mlm = _from_config(init.config, impl, key, init.family)
        else:
            mlm = _from_pretrained(init.pretrained, impl, key)
            tokenizer = base = pooler_source = init.pretrained
        teacher_layers = num_layers(teacher_model) if teacher_model is not None else None
        # NOTE: into the run's config: a pretrained student's depth was unknown when the recipe
        # was loaded, so its default maps are filled now, before the builder writes the config
        fill_layer_maps(section, num_layers(mlm))
        check_layers(spec, teacher_layers, num_layers(mlm))
        widths_differ = teacher_model is not None and _width(mlm) != _width(teacher_model)
        objective = Objective.from_section(section, num_layers(mlm), teacher_layers, widths_differ)
        _check_heads(mlm, objective, teacher_model, key)
        need = objective.student_need()
        if need.attentions:
            return_probabilities(mlm, need.attentions)
        check_need(mlm, need, key)
        fit_dense = None
        if objective.project_hidden:
            # NOTE: the paper's plain nn.Linear, PyTorch's default initialisation (uniform in
            # +-1/sqrt(fan_in), bias included), drawn from the student's seed like its weights
            fit_dense = nn.Linear(_width(mlm), _width(teacher_model))
    _check_vocab(mlm, objective, teacher_model, vocab_size, key)
    module = StudentModule(mlm, need, fit_dense)
    pooler = pooler_for(mlm, pooler_source)
    return BuiltStudent(spec.name, module, objective, tokenizer, base, pooler)


def _from_teacher_layers(teacher: nn.Module, layers: list[int], impl: str, key: str) -> nn.Module:
    fam = family_of(teacher)
    if not fam.layer_signals:
        raise UserError(
            f"{key}.init.from_teacher_layers: the teacher is a {type(teacher).__name__}; copying "
            f"layers needs a teacher of the families {', '.join(layer_families())}"
        )
    return fam.student_from_layers(teacher, layers, impl)


def _from_config(values: dict, impl: str, key: str, family: str | None) -> nn.Module:
    fam = FAMILIES[family or DEFAULT]
    return fam.masked_lm(fam.config(values, f"{key}.init.config", impl))


def _from_pretrained(name: str, impl: str, key: str) -> nn.Module:
    mlm, new = load_masked_lm(name, impl, f"{key}.init.pretrained={name!r}")
    if new:  # e.g. a checkpoint without an MLM head: continual MLM trains it from scratch
        logger.warning("%s: %d weights newly initialised: %s", key, len(new), new[:8])
    return mlm


def _width(model: nn.Module) -> int:
    return model.config.hidden_size


def _check_heads(mlm: nn.Module, objective: Objective, teacher: nn.Module | None, key: str) -> None:
    """Attention-map terms compare maps head by head: the head counts must be equal."""
    if not objective.attention_map or teacher is None:
        return
    s_heads, t_heads = mlm.config.num_attention_heads, teacher.config.num_attention_heads
    if s_heads != t_heads:
        raise UserError(
            f"{key}.objective: its attention-map terms compare the student's {s_heads} heads "
            f"with the teacher's {t_heads} head by head; give the student {t_heads} heads, set "
            "the attention term's weight to 0, or use objective.kind=minilmv2 (relations work "
            "across head counts)"
        )


def _check_vocab(
    mlm: nn.Module, objective: Objective, teacher: nn.Module | None, vocab_size: int, key: str
) -> None:
    rows = mlm.get_output_embeddings().weight.shape[0]
    if rows < vocab_size:
        raise UserError(
            f"{key}: its vocabulary has {rows} entries but the shards' tokenizer has "
            f"{vocab_size}; shards must be made with the student's tokenizer"
        )
    if objective.student_need().logits and objective.teacher_need().logits:
        t_rows = teacher.get_output_embeddings().weight.shape[0]
        if rows != t_rows:
            raise UserError(
                f"{key}: KD compares its {rows} logits with the teacher's {t_rows}; the "
                "vocabularies must be the same"
            )
