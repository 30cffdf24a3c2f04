"""What a masked-LM forward returns to the losses: the signals, and only the ones asked for.

    need = Need(logits=True, hidden=frozenset({6}), attentions=frozenset({1, 3}))
    out = masked_lm_signals(model, input_ids, attention_mask, masked_index, need)
    out["logits"]      # [N, V]: the MLM head applied at the N masked rows only
    out["hidden.6"]    # HF hidden_states[6]: [B, L, H] (0 = embeddings, k = layer k's output)
    out["attn.1"]      # HF attentions[1]: layer 1's attention probabilities [B, heads, L, L]
    out["query.5"]     # layer 5's self-attention query projection [B, L, H] (also key., value.)

- The MLM head runs on the masked rows only (`masked_index`: flat positions b * L + t, computed
  on the host by `DeviceBatch`, so selecting them costs no host sync): the same logits as the
  full head at those rows, without the [B, L, V] tensor that is ~95% discarded.
- Hidden states and attention maps are taken with forward hooks on the layers asked for,
  installed once per model (`tap_signals`, so torch.compile traces them); nothing else is kept.
  Attention probabilities come only from layers that compute them (trainer/models/attention.py; SDPA
  elsewhere returns none, and HF's `output_attentions` then silently gives an empty tuple), so a
  requested map that comes back missing is an error here rather than a loss term that is quietly
  zero.
- The output is a flat dict of tensors, not a dataclass: DeepSpeed ZeRO-3 attaches its backward
  hooks to the tensors it finds in tuples, lists and dicts only.

Where the embeddings, layers, attention modules, q/k/v projections and the MLM head are is the
model family's to say (trainer/models/families/): hidden states and attention maps for the
families with `layer_signals` (BERT, RoBERTa, ModernBERT), the MLM head on masked rows for every
family; an architecture no family describes falls back to its full forward with the rows
gathered afterwards.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from data_pipeline.errors import UserError
from trainer.models.attention import IMPLEMENTATION, returns_probabilities
from trainer.models.families import FAMILIES, family_of

LOGITS = "logits"


@dataclass(frozen=True)
class Need:
    """The signals a forward must produce; `|` is the union (the teacher computes the cohort's)."""

    logits: bool = False
    hidden: frozenset[int] = field(default_factory=frozenset)  # HF hidden_states indices
    attentions: frozenset[int] = field(default_factory=frozenset)  # layer indices, from 0
    qkv: frozenset[int] = field(default_factory=frozenset)  # layers whose q, k, v projections

    def __or__(self, other: Need) -> Need:
        return Need(
            self.logits or other.logits,
            self.hidden | other.hidden,
            self.attentions | other.attentions,
            self.qkv | other.qkv,
        )

    @property
    def empty(self) -> bool:
        return not (self.logits or self.hidden or self.attentions or self.qkv)

    def describe(self) -> str:
        parts = ["MLM logits at masked rows"] if self.logits else []
        if self.hidden:
            parts.append(f"hidden_states {sorted(self.hidden)}")
        if self.attentions:
            parts.append(f"attention maps of layers {sorted(self.attentions)}")
        if self.qkv:
            parts.append(f"query/key/value projections of layers {sorted(self.qkv)}")
        return ", ".join(parts) or "nothing"


def hidden_key(index: int) -> str:
    return f"hidden.{index}"


def attention_key(layer: int) -> str:
    return f"attn.{layer}"


QKV = ("query", "key", "value")


def qkv_keys(layer: int) -> tuple[str, str, str]:
    """The keys of a layer's self-attention query, key and value projections [B, L, H]."""
    return tuple(f"{name}.{layer}" for name in QKV)


# ---------------------------------------------------------------- architectures


def num_layers(model: nn.Module) -> int:
    return family_of(model).num_layers(model.config)


def supports_layer_signals(model: nn.Module) -> bool:
    """Whether hidden states and attention maps of any layer can be taken from this model."""
    return family_of(model).layer_signals


def layer_families() -> list[str]:
    return [name for name, fam in FAMILIES.items() if fam.layer_signals]


def check_need(model: nn.Module, need: Need, who: str) -> None:
    """Refuse, before training starts, signals this model cannot give."""
    layers = num_layers(model)
    bad_hidden = [i for i in need.hidden if not 0 <= i <= layers]
    bad_attn = [i for i in need.attentions | need.qkv if not 0 <= i < layers]
    if bad_hidden or bad_attn:
        raise UserError(
            f"{who}: has {layers} layers, so hidden_states 0..{layers} and attentions "
            f"0..{layers - 1}; asked for hidden_states {sorted(bad_hidden)} and attentions "
            f"(or q/k/v) {sorted(bad_attn)}"
        )
    layer_wise = need.attentions or need.qkv or (need.hidden - {layers})
    if layer_wise and not supports_layer_signals(model):
        raise UserError(
            f"{who}: a {type(model).__name__}; hidden states and attention maps of single "
            f"layers are supported for the families {', '.join(layer_families())} only"
        )
    silent = [i for i in sorted(need.attentions) if not returns_probabilities(model, i)]
    if silent:
        raise ValueError(
            f"{who}: attention maps of layers {silent} are needed but the model runs "
            f"{model.config._attn_implementation!r} attention there, which returns none; build it "
            f"with attn_implementation={IMPLEMENTATION!r} and trainer.models.attention."
            "return_probabilities (or 'eager')"
        )


# ---------------------------------------------------------------- the forward


def _layer_signals(need: Need, layers: int) -> list[str]:
    """The keys of the layer-wise signals in `need`; the last hidden state is last_hidden_state,
    no hook needed."""
    wanted = [hidden_key(i) for i in need.hidden - {layers}]
    wanted += [key for i in need.qkv for key in qkv_keys(i)]
    return wanted + [attention_key(i) for i in need.attentions]


def tap_signals(model: nn.Module, need: Need) -> None:
    """Install, once, forward hooks that keep the layer-wise signals of `need` (more calls add
    what is missing). Installed before torch.compile, they are traced into the compiled graph;
    hooks added and removed around every call would not be."""
    taps = model.__dict__.setdefault("_biodistill_taps", {"store": {}, "keys": set()})
    fam = family_of(model)
    if not fam.layer_signals:
        return
    for i in sorted(need.hidden - {num_layers(model)}):
        module = fam.embeddings(model) if i == 0 else fam.layers(model)[i - 1]
        _tap(taps, hidden_key(i), module, _first)
    for i in sorted(need.qkv):
        for key, (module, take) in zip(qkv_keys(i), fam.qkv(model, i), strict=True):
            _tap(taps, key, module, take)
    for i in sorted(need.attentions):
        _tap(taps, attention_key(i), fam.attention(model, i), _second)


def _tap(taps: dict, key: str, module: nn.Module, take: Callable) -> None:
    if key not in taps["keys"]:
        module.register_forward_hook(_keep(taps["store"], key, take))
        taps["keys"].add(key)


def masked_lm_signals(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    masked_index: torch.Tensor,
    need: Need,
) -> dict[str, torch.Tensor]:
    """Run an HF masked LM and return the signals in `need` (keys: see the module docstring)."""
    layers = num_layers(model)
    wanted = _layer_signals(need, layers)
    taps = model.__dict__.get("_biodistill_taps")
    if taps is None or not taps["keys"].issuperset(wanted):  # built elsewhere: tap it now
        tap_signals(model, need)
        taps = model.__dict__["_biodistill_taps"]
    store = taps["store"]
    store.clear()
    fam = family_of(model)
    head = fam.head(model) if need.logits else None
    try:
        if need.logits and head is None:
            out = model(input_ids=input_ids, attention_mask=attention_mask, return_dict=True)
            logits = out.logits.reshape(-1, out.logits.shape[-1])
            last = None
        else:
            base = fam.base(model)(
                input_ids=input_ids, attention_mask=attention_mask, return_dict=True
            )
            last = base.last_hidden_state
        captured = {key: store.get(key) for key in wanted}
    finally:
        store.clear()  # NOTE: the taps keep nothing between calls
    if need.logits:
        if head is None:
            captured[LOGITS] = logits.index_select(0, masked_index)
        else:
            captured[LOGITS] = head(last.reshape(-1, last.shape[-1]).index_select(0, masked_index))
    if layers in need.hidden:
        if last is None:
            raise UserError(
                f"{type(model).__name__}: no masked-row head is known for this architecture, "
                "so its last hidden state is not available alongside its logits"
            )
        captured[hidden_key(layers)] = last
    for layer in need.attentions:
        if captured.get(attention_key(layer)) is None:
            raise RuntimeError(
                f"{type(model).__name__}: layer {layer} returned no attention probabilities "
                f"(attention implementation {model.config._attn_implementation!r}); the "
                "attention loss terms need layers that compute them (trainer/models/attention.py)"
            )
    return captured


def _keep(store: dict, key: str, take: Callable) -> Callable:
    def hook(module: nn.Module, inputs: tuple, output) -> None:
        store[key] = take(output)

    return hook


def _first(output):
    return output[0] if isinstance(output, tuple | list) else output


def _second(output):
    return output[1]
