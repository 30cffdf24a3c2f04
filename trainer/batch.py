"""One loader batch on the device, with the masked rows located on the host.

The loader yields CPU tensors; everything a step needs to know about the batch's shape is read
there, where reading is free: the flat indices of the masked rows (labels != -100), their labels,
and the real-token count. On the device nothing then needs a host sync: the MLM heads, KD and
accuracy use `masked_index` / `masked_labels` with fixed shapes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from trainer.losses import IGNORE_INDEX


@dataclass
class DeviceBatch:
    input_ids: torch.Tensor  # [B, L] int64
    attention_mask: torch.Tensor  # [B, L] int64, 1 = real token
    masked_index: torch.Tensor  # [N] int64, flat positions b * L + t of the masked rows
    masked_labels: torch.Tensor  # [N] int64, the original ids there
    tokens: int  # real tokens in the batch (host int)
    samples: int

    @property
    def masked(self) -> int:
        return self.masked_index.numel()

    @classmethod
    def from_host(cls, batch: dict[str, torch.Tensor], device: torch.device) -> DeviceBatch:
        labels = batch["labels"].reshape(-1)
        index = (labels != IGNORE_INDEX).nonzero().squeeze(1)
        pinned = batch["input_ids"].is_pinned()

        def move(t: torch.Tensor) -> torch.Tensor:
            return t.to(device, non_blocking=pinned)

        return cls(
            input_ids=move(batch["input_ids"]),
            attention_mask=move(batch["attention_mask"]),
            masked_index=move(index),
            masked_labels=move(labels.index_select(0, index)),
            tokens=int(batch["attention_mask"].sum()),
            samples=int(batch["input_ids"].shape[0]),
        )
