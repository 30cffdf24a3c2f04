"""One loader batch on the device, with the masked rows located on the host.

The loader yields CPU tensors (pinned on a GPU machine); everything a step needs to know about
the batch's shape is read there, where reading is free: the flat indices of the masked rows
(labels != -100), their labels, and the real-token count. On the device nothing then needs a host
sync: the MLM heads, KD and accuracy use `masked_index` / `masked_labels` with fixed shapes.
"""

from __future__ import annotations

import time
from contextlib import nullcontext
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


def hand_over(tensors, producer: torch.cuda.Stream, consumer: torch.cuda.Stream) -> None:
    """Make tensors made on the `producer` stream safe to use on `consumer`: it waits for them,
    and the allocator keeps their memory until `consumer` is done with it too."""
    consumer.wait_stream(producer)
    for t in tensors:
        t.record_stream(consumer)


class DevicePrefetcher:
    """Device batches from a loader; on a GPU the next batch's copy overlaps this step.

    It stays one batch ahead. On CUDA, batch k+1 is copied on a side stream (from pinned memory,
    non-blocking) while the kernels of step k run; the compute stream waits for that copy only
    when it uses the batch. `waited` accumulates the host time spent waiting for the loader (the
    "data" share of the step anatomy), and `state_dict()` is the loader's position as of the
    batches handed out, the one taken ahead not counted.
    """

    def __init__(self, loader, device: torch.device) -> None:
        self._loader, self._host, self.device = loader, iter(loader), device
        self._stream = torch.cuda.Stream(device) if device.type == "cuda" else None
        self._next: DeviceBatch | None = None
        self.waited = 0.0

    def _load(self) -> DeviceBatch:
        start = time.perf_counter()
        host = next(self._host)
        self.waited += time.perf_counter() - start
        with torch.cuda.stream(self._stream) if self._stream is not None else nullcontext():
            return DeviceBatch.from_host(host, self.device)

    def _hand_over(self, batch: DeviceBatch, stream: torch.cuda.Stream) -> None:
        tensors = (batch.input_ids, batch.attention_mask, batch.masked_index, batch.masked_labels)
        hand_over(tensors, self._stream, stream)

    def state_dict(self) -> dict:
        """The loader's state_dict, positioned after the last batch handed out: a checkpoint
        must not count the batch taken ahead, which no step has trained on yet."""
        state = self._loader.state_dict()
        state["batches_consumed"] -= 0 if self._next is None else 1
        return state

    def peek(self, stream: torch.cuda.Stream | None = None) -> DeviceBatch:
        """The batch the next `next()` returns, usable on `stream` (on CUDA: that stream waits for
        its copy; on other devices the argument is ignored)."""
        if self._next is None:
            self._next = self._load()
        if self._stream is not None and stream is not None:
            self._hand_over(self._next, stream)
        return self._next

    def __iter__(self) -> DevicePrefetcher:
        return self

    def __next__(self) -> DeviceBatch:
        # One batch ahead on every device (so the CPU tests run the same bookkeeping as a GPU).
        current = self._next if self._next is not None else self._load()
        if self._stream is not None:
            self._hand_over(current, torch.cuda.current_stream(self.device))
        self._next = self._load()
        return current
