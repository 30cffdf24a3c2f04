"""Attention: SDPA everywhere, attention probabilities only in the layers a loss reads.

Models are built with `attn_implementation=IMPLEMENTATION`, an attention function registered with
transformers' AttentionInterface (its masks are SDPA's: boolean, or None without padding). A layer
marked with `return_probabilities(model, layers)` also returns its attention probabilities:

It serves every family whose attention goes through transformers' attention interface (BERT,
RoBERTa, ModernBERT). ModernBERT's local layers get their window from the mask, which transformers
builds for this implementation with `sdpa_mask` and the sliding-window overlay; the
`sliding_window` argument it passes beside is for flash attention and is not needed here.

- in training mode with attention dropout (a student): eager attention, exactly as HF's eager
  path computes it, softmax(QK^T * scale + mask), dropout, times V; the probabilities returned are
  the ones after dropout, as HF returns them and as the paper's losses saw them;
- otherwise (the teacher, in eval mode): the output comes from SDPA like any other layer, and the
  probabilities are computed beside it. The teacher's hidden states are then bit-identical whatever
  maps the cohort asks for, which keeps "a student trained in a cohort equals the same student
  trained alone" exact.
Every other layer runs SDPA (flash or memory-efficient kernels on a GPU) and returns no
probabilities. On a CPU in bf16 or fp16 with keys at most CPU_MATH_MAX_KEYS long, SDPA runs its
math kernel instead of the flash one: torch's CPU flash kernel is 1.2 to 2.6x slower there (head
sizes 8 to 64), and 1.6 to 3x faster from 192 keys on at head sizes 26 and 64
(docs/benchmarks.md, "Where the cohort's time went"). The choice depends only on the device, the
dtype and the batch's length, so a run and its resume, or a student in a cohort and alone, take
the same kernel for the same batch.

HF's plain SDPA returns no probabilities at all, and `output_attentions` then quietly gives an
empty tuple: the trap this module exists to avoid.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

IMPLEMENTATION = "biodistill_sdpa"
FLAG = "biodistill_probabilities"  # set on the attention modules whose probabilities are needed
CPU_MATH_MAX_KEYS = 128  # the longest keys for which a CPU in reduced precision takes SDPA's math
REDUCED = (torch.bfloat16, torch.float16)


def cpu_math_kernel(query: torch.Tensor, key: torch.Tensor) -> bool:
    """Whether SDPA takes its math kernel for these inputs (see the module docstring)."""
    return (
        query.device.type == "cpu" and query.dtype in REDUCED and key.shape[-2] <= CPU_MATH_MAX_KEYS
    )


def _sdpa(module, query, key, value, attention_mask, **kwargs) -> tuple[torch.Tensor, None]:
    if cpu_math_kernel(query, key):
        with sdpa_kernel(SDPBackend.MATH):
            return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)


def _probabilities(query, key, attention_mask, scaling) -> torch.Tensor:
    scores = torch.matmul(query, key.transpose(2, 3)) * scaling
    if attention_mask is not None:
        if attention_mask.dtype == torch.bool:
            scores = scores.masked_fill(~attention_mask, torch.finfo(scores.dtype).min)
        else:
            scores = scores + attention_mask
    return F.softmax(scores, dim=-1)


def attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """HF attention-interface signature: returns (output [B, L, heads, d], probabilities)."""
    if not getattr(module, FLAG, False):
        return _sdpa(
            module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs
        )
    scaling = query.size(-1) ** -0.5 if scaling is None else scaling
    probs = _probabilities(query, key, attention_mask, scaling)
    if module.training and dropout > 0.0:
        probs = F.dropout(probs, p=dropout, training=True)
        out = torch.matmul(probs, value).transpose(1, 2).contiguous()
        return out, probs
    out, _ = _sdpa(
        module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs
    )
    return out, probs


AttentionInterface.register(IMPLEMENTATION, attention_forward)
AttentionMaskInterface.register(IMPLEMENTATION, sdpa_mask)


def attention_modules(model: nn.Module) -> list[nn.Module]:
    """The attention module of every layer of a masked LM, in order (its family says where)."""
    from trainer.models.families import family_of

    fam = family_of(model)
    return [fam.attention(model, i) for i in range(len(fam.layers(model)))]


def return_probabilities(model: nn.Module, layers) -> None:
    """Make exactly `layers` (indices from 0) return their attention probabilities."""
    wanted = set(layers)
    for i, module in enumerate(attention_modules(model)):
        setattr(module, FLAG, i in wanted)


def returns_probabilities(model: nn.Module, layer: int) -> bool:
    if getattr(model.config, "_attn_implementation", None) == "eager":
        return True
    if getattr(model.config, "_attn_implementation", None) != IMPLEMENTATION:
        return False
    return bool(getattr(attention_modules(model)[layer], FLAG, False))
