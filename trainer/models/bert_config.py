"""BertConfig values from a recipe (teacher.config, students.NAME.init.config), checked.

    config = bert_config(values, "students.TinyBioBERT.init.config", attn_implementation="eager")

Recipe values go to `transformers.BertConfig`, which keeps unknown keys as attributes (a typo such
as `num_hidden_layer` would silently train a 12-layer model) and reports bad values with its own
exception types. Here every problem is a ValueError naming the recipe key: unknown fields (with
the closest known one), values BertConfig rejects, a hidden size the heads do not divide, and
`attn_implementation`, which the trainer sets (eager where a loss needs attention maps).
"""

from __future__ import annotations

import copy
import difflib
from typing import Any

from data_pipeline.io_utils import first_line


def bert_config(values: dict, key: str, attn_implementation: str | None = None) -> Any:
    from transformers import BertConfig

    if "attn_implementation" in values:
        raise ValueError(
            f"{key}: not a valid BertConfig here: attn_implementation is set by the trainer "
            "(eager where a loss needs attention maps, SDPA elsewhere); remove it"
        )
    known = set(BertConfig().to_dict())
    for name in values:
        if name not in known:
            close = difflib.get_close_matches(name, sorted(known), n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise ValueError(f"unknown key '{key}.{name}': BertConfig has no such field{hint}")
    extra = {} if attn_implementation is None else {"attn_implementation": attn_implementation}
    try:
        config = BertConfig(**copy.deepcopy(values), **extra)
    except Exception as e:  # noqa: BLE001 - BertConfig raises several types; all mean "bad value"
        raise ValueError(f"{key}: not a valid BertConfig ({first_line(e)})") from None
    for name in ("hidden_size", "num_attention_heads", "num_hidden_layers", "vocab_size"):
        value = getattr(config, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{key}.{name}={value!r}: expected an integer >= 1")
    if config.hidden_size % config.num_attention_heads:
        raise ValueError(
            f"{key}.hidden_size={config.hidden_size}: expected a multiple of "
            f"num_attention_heads={config.num_attention_heads}"
        )
    return config
