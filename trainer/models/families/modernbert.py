"""ModernBERT: BioClinical ModernBERT, Clinical ModernBERT, ModernBioBERT; Ettin-shaped students.

    model.model.embeddings          tok_embeddings -> norm -> dropout (no position table: RoPE)
    model.model.layers[i]           attn_norm (Identity in layer 0) -> attn (Wqkv, Wo) -> mlp_norm
                                    -> mlp (GeGLU: Wi, Wo); attention_type from config.layer_types
    model.model.final_norm          before the head; last_hidden_state is after it
    model.head, model.decoder       dense -> act -> norm, then decoder (tied to tok_embeddings)

- Layers alternate global ("full_attention") and local ("sliding_attention", a window of
  config.local_attention tokens) attention. A student made of teacher layers keeps each copied
  layer's type: its layer_types follow the layers it copied (rotary bases follow the type).
- q, k and v are one fused projection `Wqkv` ([B, L, 3H]: q, then k, then v). MiniLMv2 relations
  read them straight from it, before the rotary embedding is applied: the relations are those of
  the token representations the layer projects, defined the same way in every family (a BERT
  adds its positions to the embeddings instead); the attention-map terms carry the positions.
- Layer 0's attn_norm is an Identity (the embeddings were just normalised), every other layer's
  a LayerNorm. A teacher layer >= 1 copied to student layer 0 therefore leaves its attn_norm
  behind; teacher layer 0 copied to a student layer >= 1 gets a LayerNorm with unit weight (and
  zero bias). Every other weight is copied exactly (docs/families.md).
- `sparse_prediction` is ModernBERT's own way of running the head on masked rows when labels are
  given; the trainer runs the head on masked rows itself and never passes labels.
- Up to config.max_position_embeddings positions (8,192 for the released models).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from data_pipeline.errors import UserError
from trainer.models.families.base import Family, QkvTap

if TYPE_CHECKING:
    import torch
    from torch import nn

SPECIAL_IDS = ("pad_token_id", "bos_token_id", "eos_token_id", "cls_token_id", "sep_token_id")


class ModernBert(Family):
    name = "modernbert"
    model_types = ("modernbert",)
    config_class = "ModernBertConfig"
    masked_lm_class = "ModernBertForMaskedLM"
    pooler_prefix = None  # ModernBertModel has no pooler; classifiers pool the hidden states
    init_only_keys = frozenset(
        {"global_attn_every_n_layers", "global_rope_theta", "local_rope_theta"}
    )

    def check_config(self, config: Any, key: str) -> None:
        for name in SPECIAL_IDS:
            value = getattr(config, name, None)
            if value is not None and not 0 <= value < config.vocab_size:
                raise UserError(
                    f"{key}.{name}={value}: expected an id inside the vocabulary (vocab_size="
                    f"{config.vocab_size}); set it to the tokenizer's id"
                )
        if len(config.layer_types) != config.num_hidden_layers:
            raise UserError(
                f"{key}.layer_types: {len(config.layer_types)} entries for num_hidden_layers="
                f"{config.num_hidden_layers}; expected one per layer"
            )

    def base(self, model: nn.Module) -> nn.Module:
        return model.model

    def embeddings(self, model: nn.Module) -> nn.Module:
        return model.model.embeddings

    def layers(self, model: nn.Module):
        return model.model.layers

    def attention(self, model: nn.Module, layer: int) -> nn.Module:
        return model.model.layers[layer].attn

    def qkv(self, model: nn.Module, layer: int) -> list[QkvTap]:
        fused = model.model.layers[layer].attn.Wqkv
        return [(fused, _third(i)) for i in range(3)]

    def head(self, model: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
        def head(h: torch.Tensor) -> torch.Tensor:
            return model.decoder(model.head(h))

        return head

    def student_config(self, teacher_config: Any, layers: list[int]) -> Any:
        config = super().student_config(teacher_config, layers)
        config.layer_types = [teacher_config.layer_types[i] for i in layers]
        return config

    def copy_layer(self, source: nn.Module, target: nn.Module) -> None:
        import torch

        state = {k: v for k, v in source.state_dict().items() if not k.startswith("attn_norm.")}
        missing, unexpected = target.load_state_dict(state, strict=False)
        if unexpected or any(not k.startswith("attn_norm.") for k in missing):
            raise RuntimeError(f"layer copy: missing {missing}, unexpected {unexpected}")
        norm = target.attn_norm
        if isinstance(norm, torch.nn.LayerNorm):
            source_norm = source.attn_norm
            if isinstance(source_norm, torch.nn.LayerNorm):
                norm.load_state_dict(source_norm.state_dict())
            else:  # teacher layer 0 (no norm of its own) in a later place: a plain norm
                with torch.no_grad():
                    norm.weight.fill_(1.0)
                    if norm.bias is not None:
                        norm.bias.zero_()

    def copy_top(self, teacher: nn.Module, student: nn.Module) -> None:
        student.model.final_norm.load_state_dict(teacher.model.final_norm.state_dict())
        student.head.load_state_dict(teacher.head.state_dict())
        student.decoder.load_state_dict(teacher.decoder.state_dict())


def _third(i: int) -> Callable[[torch.Tensor], torch.Tensor]:
    def take(qkv: torch.Tensor) -> torch.Tensor:
        return qkv.chunk(3, dim=-1)[i]

    return take


MODERNBERT = ModernBert()
