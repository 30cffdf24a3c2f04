"""RoBERTa (and XLM-R, CamemBERT): BioMed-RoBERTa, RoBERTa-base-PM-M3-Voc.

BERT's layout under `roberta.` with the head `lm_head` (dense, layer_norm, decoder tied to the
word embeddings, bias). Positions start after the padding id: a checkpoint with 514 position
embeddings takes 512 tokens. AutoModel builds a pooler (`roberta.pooler`), as BERT's does.

XLM-R (`xlm-roberta`) and CamemBERT (`camembert`) are RoBERTa's layout under other class names:
a model of either is built with its own masked-LM class, so that a student made of its layers
is of the teacher's class and exports as one (docs/families.md).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from trainer.models.families.base import Family

if TYPE_CHECKING:
    import torch
    from torch import nn

# the masked-LM class of each model type this family reads
MASKED_LM_CLASSES = {
    "roberta": "RobertaForMaskedLM",
    "xlm-roberta": "XLMRobertaForMaskedLM",
    "camembert": "CamembertForMaskedLM",
}


class Roberta(Family):
    name = "roberta"
    model_types = tuple(MASKED_LM_CLASSES)
    config_class = "RobertaConfig"  # what a recipe's `config` builds
    masked_lm_class = "RobertaForMaskedLM"
    pooler_prefix = "roberta.pooler."

    def masked_lm(self, config: Any) -> nn.Module:
        import transformers

        return getattr(transformers, MASKED_LM_CLASSES[config.model_type])(config)

    def max_positions(self, config: Any) -> int:
        return config.max_position_embeddings - (config.pad_token_id + 1)

    def head(self, model: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
        return model.lm_head

    def copy_top(self, teacher: nn.Module, student: nn.Module) -> None:
        student.lm_head.load_state_dict(teacher.lm_head.state_dict())


ROBERTA = Roberta()
