"""BERT: BioBERT, PubMedBERT, BioLinkBERT, the paper's distilled students; and the two pretrained
BERT variants the paper continues (MobileBERT, DistilBERT), whose MLM head is all we read.

The BERT layout is the default of trainer/models/families/base.py: `bert.embeddings`,
`bert.encoder.layer[i]` (`attention.self` with `query`, `key`, `value`), the head `cls`
(transform + decoder tied to the word embeddings), a pooler `bert.pooler` that AutoModel builds.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from trainer.models.families.base import Family

if TYPE_CHECKING:
    import torch
    from torch import nn


class Bert(Family):
    pass


class MobileBert(Family):
    """Continual MLM only (BioMobileBERT): its bottleneck layers are not copied or tapped."""

    name = "mobilebert"
    model_types = ("mobilebert",)
    config_class = "MobileBertConfig"
    masked_lm_class = "MobileBertForMaskedLM"
    layer_signals = False
    pooler_prefix = None


class DistilBert(Family):
    """Continual MLM only (BioDistilBERT)."""

    name = "distilbert"
    model_types = ("distilbert",)
    config_class = "DistilBertConfig"
    masked_lm_class = "DistilBertForMaskedLM"
    layer_signals = False
    pooler_prefix = None

    def num_layers(self, config) -> int:
        return config.n_layers

    def head(self, model: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
        def head(h: torch.Tensor) -> torch.Tensor:
            h = model.vocab_layer_norm(model.activation(model.vocab_transform(h)))
            return model.vocab_projector(h)

        return head


BERT, MOBILEBERT, DISTILBERT = Bert(), MobileBert(), DistilBert()
