"""The pooler an export carries, so that `AutoModel.from_pretrained(export)` finds every weight.

A masked LM (BertForMaskedLM) has no pooler, and neither has a student: MLM and distillation never
train it. But `AutoModel` builds BertModel with one (transformers has no config field to leave it
out: `add_pooling_layer` is an argument of BertModel's constructor only), so an export without
pooler weights loads with "MISSING pooler.dense.*" and a random `pooler_output`. Every export of
a family with a pooler (BERT, RoBERTa: its `pooler_prefix`; ModernBERT has none) therefore
carries one, in this order of preference:

- the pooler of the checkpoint the student's weights come from, unchanged: the teacher's for
  `init.from_teacher_layers` (same width), the model's own for `init.pretrained`;
- where there is none (`init.config`, a student of another width such as TinyBioBERT, a teacher
  from `teacher.config` or saved without one): dense = identity and bias = 0, so that
  `pooler_output` is tanh of the [CLS] hidden state, a fixed function of the trained weights
  rather than random numbers. Fine-tuning a sequence classifier trains it either way.

Loading an export as a masked LM then reports the two `bert.pooler.dense.*` weights as UNEXPECTED
(not used by that class), as loading any pre-training checkpoint does.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from trainer.models.families import family_of

logger = logging.getLogger(__name__)

KEYS = ("dense.weight", "dense.bias")  # inside BertPooler
FILE = "pooler.safetensors"  # in a checkpoint's per-student hf/ directory
IDENTITY = "identity"


@dataclass
class Pooler:
    state: dict[str, torch.Tensor]  # KEYS -> fp32 CPU tensors
    source: str  # where it comes from: a checkpoint's name, or IDENTITY

    def describe(self) -> str:
        """For the model card."""
        if self.source == IDENTITY:
            return (
                "not trained and none to copy: dense = identity, bias = 0, so "
                "`pooler_output` is tanh of the [CLS] hidden state"
            )
        return f"`{self.source}`'s, unchanged (MLM and distillation do not train it)"


def identity_pooler(hidden: int) -> Pooler:
    state = {"dense.weight": torch.eye(hidden), "dense.bias": torch.zeros(hidden)}
    return Pooler(state, IDENTITY)


def pooler_for(model: nn.Module, source: str | None) -> Pooler | None:
    """The pooler to export with `model` (a masked LM): `source`'s if that checkpoint has one of
    the right shape, else the identity one; None for a model without a BERT base (no pooler)."""
    prefix = family_of(model).pooler_prefix
    if prefix is None:
        return None
    hidden = model.config.hidden_size
    state = read_pooler(source, prefix) if source else None
    if state is not None and tuple(state["dense.weight"].shape) != (hidden, hidden):
        logger.info(
            "%s: its pooler does not fit hidden size %d; exporting the identity", source, hidden
        )
        state = None
    return Pooler(state, source) if state is not None else identity_pooler(hidden)


def read_pooler(name_or_dir: str, prefix: str = "bert.pooler.") -> dict[str, torch.Tensor] | None:
    """The pooler weights in the checkpoint `name_or_dir` (a directory or a hub name, read from
    the local cache as the model was just loaded), or None when it has none. `prefix`: where a
    masked LM of the family keeps it (its family's `pooler_prefix`)."""
    from transformers.utils import cached_file

    def find(filename: str) -> str | None:
        try:
            return cached_file(name_or_dir, filename, _raise_exceptions_for_missing_entries=False)
        except (OSError, ValueError):
            return None

    for weights, index in (
        ("model.safetensors", "model.safetensors.index.json"),
        ("pytorch_model.bin", "pytorch_model.bin.index.json"),
    ):
        if (path := find(weights)) is not None:
            return _pooler_in([path], prefix)
        if (path := find(index)) is not None:
            weight_map = json.loads(Path(path).read_text(encoding="utf-8"))["weight_map"]
            shards = {v for k, v in weight_map.items() if _local_key(k, prefix) is not None}
            return _pooler_in([f for f in map(find, sorted(shards)) if f is not None], prefix)
    return None


def _local_key(key: str, prefix: str) -> str | None:
    """`bert.pooler.dense.weight` (a masked LM's or pre-training model's, with `prefix`) or
    `pooler.dense.weight` (a BertModel's) -> `dense.weight`."""
    for start in (prefix, "pooler."):
        if key.startswith(start) and key.removeprefix(start) in KEYS:
            return key.removeprefix(start)
    return None


def _pooler_in(paths: list[str], prefix: str) -> dict[str, torch.Tensor] | None:
    state = {}
    for path in paths:
        if path.endswith(".safetensors"):
            from safetensors import safe_open

            with safe_open(path, framework="pt") as f:
                for key in f.keys():
                    if (local := _local_key(key, prefix)) is not None:
                        state[local] = f.get_tensor(key).float()
        else:
            try:  # NOTE: mmap reads only the pooler's pages of a zip-format file
                tensors = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError:  # the legacy (pre-zip) format
                tensors = torch.load(path, map_location="cpu", weights_only=True)
            for key, value in tensors.items():
                if (local := _local_key(key, prefix)) is not None:
                    state[local] = value.float().clone()
    return state if set(state) == set(KEYS) else None


def attach(model: nn.Module, pooler: Pooler | None) -> nn.Module:
    """Give `model` (a masked LM of a family with a pooler, about to be saved) the pooler, so that
    save_pretrained writes `<base>.pooler.dense.*`. BERT's and RoBERTa's poolers are the same
    module (dense + tanh on the first token)."""
    if pooler is None:
        return model
    from transformers.models.bert.modeling_bert import BertPooler

    module = BertPooler(model.config)
    module.load_state_dict(pooler.state)
    model.base_model.pooler = module.to(model.dtype)
    return model


def save(pooler: Pooler | None, directory: Path) -> None:
    """Into a checkpoint's hf/ directory, for `python -m trainer.export`."""
    if pooler is None:
        return
    from safetensors.torch import save_file

    save_file(pooler.state, str(directory / FILE), metadata={"source": pooler.source})


def load(directory: Path) -> Pooler | None:
    """What `save` wrote; None for a checkpoint saved without one (an older checkpoint)."""
    path = directory / FILE
    if not path.is_file():
        return None
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        state = {k: f.get_tensor(k) for k in f.keys()}
        source = (f.metadata() or {}).get("source", IDENTITY)
    return Pooler(state, source)
