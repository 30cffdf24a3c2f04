"""RoBERTa (and XLM-R, CamemBERT): BioMed-RoBERTa, RoBERTa-base-PM-M3-Voc.

BERT's layout under `roberta.` with the head `lm_head` (dense, layer_norm, decoder tied to the
word embeddings, bias). Positions start after the padding id: a checkpoint with 514 position
embeddings takes 512 tokens. AutoModel builds a pooler (`roberta.pooler`), as BERT's does.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from trainer.models.families.base import Family

if TYPE_CHECKING:
    import torch
    from torch import nn


class Roberta(Family):
    name = "roberta"
    model_types = ("roberta", "xlm-roberta", "camembert")
    config_class = "RobertaConfig"
    masked_lm_class = "RobertaForMaskedLM"
    pooler_prefix = "roberta.pooler."

    def max_positions(self, config: Any) -> int:
        return config.max_position_embeddings - (config.pad_token_id + 1)

    def head(self, model: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
        return model.lm_head

    def copy_top(self, teacher: nn.Module, student: nn.Module) -> None:
        student.lm_head.load_state_dict(teacher.lm_head.state_dict())


ROBERTA = Roberta()
