"""What every model family states: one `Family` per architecture, read by everything that touches
a model (loading, students, the teacher's signals, attention maps, export).

    fam = family_of(model)                  # trainer/models/families/__init__.py
    fam.layers(model)[3]                    # the fourth encoder layer
    logits = fam.head(model)(rows)          # the MLM head on masked rows only: [N, H] -> [N, V]
    student = fam.student_from_layers(teacher, [0, 2, 4], impl)

A family's methods take the model (or config) they act on; the family itself holds no state. The
defaults here are the BERT layout (`model.<base>.encoder.layer[i].attention.self`); a family
overrides what differs. Nothing outside trainer/models/families/ reads `model_type` or names a
transformers model class.
"""

from __future__ import annotations

import copy
import difflib
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from data_pipeline.errors import UserError
from data_pipeline.io_utils import first_line

if TYPE_CHECKING:
    import torch
    from torch import nn

# A q/k/v tap: (module hooked, function of its output -> [B, L, H]); three per layer, q, k, v.
QkvTap = tuple["nn.Module", Callable[[Any], "torch.Tensor"]]


class Family:
    """The BERT layout; subclasses override what differs."""

    name = "bert"
    model_types: tuple[str, ...] = ("bert",)  # config.model_type values this family reads
    config_class = "BertConfig"  # in transformers
    masked_lm_class = "BertForMaskedLM"
    # hidden states and attention maps of single layers (and copying layers) are supported
    layer_signals = True
    # what AutoModel finds the pooler under in a masked LM's weights; None: the family has none
    pooler_prefix: str | None = "bert.pooler."
    # config keys the config class accepts as arguments without keeping them as fields
    init_only_keys: frozenset[str] = frozenset()
    # positions taken by something other than tokens (RoBERTa: padding_idx + 1)
    position_offset = 0

    def __repr__(self) -> str:
        return f"<family {self.name}>"

    # ------------------------------------------------------------ configs and models

    def config(self, values: dict, key: str, attn_implementation: str | None = None) -> Any:
        """The config for a model built at random from recipe values, every problem one UserError
        naming the recipe key: unknown fields (with the closest known one), values the config
        class rejects, a width the heads do not divide, ids outside the vocabulary."""
        import transformers

        cls = getattr(transformers, self.config_class)
        if "attn_implementation" in values:
            raise UserError(
                f"{key}: not a valid {self.config_class} here: attn_implementation is set by the "
                "trainer (ours in the layers whose attention maps a loss reads, SDPA elsewhere); "
                "remove it"
            )
        known = set(cls().to_dict()) | self.init_only_keys
        for name in values:
            if name not in known:
                close = difflib.get_close_matches(name, sorted(known), n=1)
                hint = f"; did you mean '{close[0]}'?" if close else ""
                raise UserError(
                    f"unknown key '{key}.{name}': {self.config_class} has no such field{hint}"
                )
        extra = {} if attn_implementation is None else {"attn_implementation": attn_implementation}
        try:
            config = cls(**copy.deepcopy(values), **extra)
        except Exception as e:  # noqa: BLE001 - config classes raise several types: "bad value"
            raise UserError(f"{key}: not a valid {self.config_class} ({first_line(e)})") from None
        for name in ("hidden_size", "num_attention_heads", "num_hidden_layers", "vocab_size"):
            value = getattr(config, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise UserError(f"{key}.{name}={value!r}: expected an integer >= 1")
        if config.hidden_size % config.num_attention_heads:
            raise UserError(
                f"{key}.hidden_size={config.hidden_size}: expected a multiple of "
                f"num_attention_heads={config.num_attention_heads}"
            )
        self.check_config(config, key)
        return config

    def check_config(self, config: Any, key: str) -> None:
        """Family-specific checks of a config built from recipe values (UserError naming `key`)."""

    def masked_lm(self, config: Any) -> nn.Module:
        """A masked LM of this family, initialised at random (under the caller's seed)."""
        import transformers

        return getattr(transformers, self.masked_lm_class)(config)

    def num_layers(self, config: Any) -> int:
        return config.num_hidden_layers

    def max_positions(self, config: Any) -> int:
        """The longest sequence the model takes (tokens, special ones included)."""
        return config.max_position_embeddings - self.position_offset

    # ------------------------------------------------------------ where things are

    def base(self, model: nn.Module) -> nn.Module:
        """The encoder without its head (returns last_hidden_state)."""
        return model.base_model

    def embeddings(self, model: nn.Module) -> nn.Module:
        """The module whose output is hidden_states[0]."""
        return model.base_model.embeddings

    def layers(self, model: nn.Module) -> Sequence[nn.Module]:
        """The encoder layers in order; layer i's output is hidden_states[i + 1] (the last one's
        is last_hidden_state, after the final norm where the family has one)."""
        return model.base_model.encoder.layer

    def attention(self, model: nn.Module, layer: int) -> nn.Module:
        """The module that calls the attention function (trainer/models/attention.py marks it)
        and returns (output, probabilities)."""
        return self.layers(model)[layer].attention.self

    def qkv(self, model: nn.Module, layer: int) -> list[QkvTap]:
        """Where layer `layer`'s query, key and value projections [B, L, H] are read (MiniLMv2),
        before any position rotation."""
        attention = self.attention(model, layer)
        return [(getattr(attention, name), _whole) for name in ("query", "key", "value")]

    def head(self, model: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
        """The MLM head as a function of hidden rows [N, H] -> logits [N, V]."""
        return model.cls

    # ------------------------------------------------------------ students made of teacher layers

    def student_config(self, teacher_config: Any, layers: list[int]) -> Any:
        """The teacher's config with len(layers) layers."""
        config = copy.deepcopy(teacher_config)
        config.num_hidden_layers = len(layers)
        return config

    def student_from_layers(
        self, teacher: nn.Module, layers: list[int], attn_implementation: str | None
    ) -> nn.Module:
        """A student of the teacher's config with len(layers) layers: embeddings, the listed
        teacher layers in order, any final norm and the MLM head copied (the output projection
        is tied to the embeddings)."""
        config = self.student_config(teacher.config, layers)
        config._attn_implementation = attn_implementation or "sdpa"
        student = self.masked_lm(config)
        self.embeddings(student).load_state_dict(self.embeddings(teacher).state_dict())
        for i, layer in enumerate(layers):
            self.copy_layer(self.layers(teacher)[layer], self.layers(student)[i])
        self.copy_top(teacher, student)
        return student

    def copy_layer(self, source: nn.Module, target: nn.Module) -> None:
        target.load_state_dict(source.state_dict())

    def copy_top(self, teacher: nn.Module, student: nn.Module) -> None:
        """What sits above the layers: the MLM head (transform + bias)."""
        student.cls.load_state_dict(teacher.cls.state_dict())


def _whole(output: Any) -> torch.Tensor:
    return output
