"""Counting a model's parameters and grouping them for AdamW (the trainer's and evaluation's).

Kept free of the trainer's heavier modules so that `evaluation` can import it cheaply.
"""

from __future__ import annotations

from torch import nn


def count_parameters(module: nn.Module) -> int:
    """Distinct parameters (tied weights counted once)."""
    return sum(p.numel() for p in {id(p): p for p in module.parameters()}.values())


def param_groups(module: nn.Module, weight_decay: float) -> list[dict]:
    """No decay on biases and LayerNorm weights (the HF Trainer's rule, so the paper's): in
    BERT-family models those are exactly the 1-D parameters."""
    decay, no_decay = [], []
    for p in module.parameters():
        if p.requires_grad:
            (decay if p.dim() >= 2 else no_decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
