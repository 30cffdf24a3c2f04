"""One loader batch on the device, with the masked rows located on the host.

The loader yields CPU tensors (pinned on a GPU machine); everything a step needs to know about
the batch's shape is read there, where reading is free: the flat indices of the masked rows
(labels != -100), their labels, and the real-token count. On the device nothing then needs a host
sync: the MLM heads, KD and accuracy use `masked_index` / `masked_labels` with fixed shapes.

Under gradient accumulation the prefetcher loads a whole window (`gradient_accumulation_steps`
micro-batches) at once, so that every micro-batch knows the counts of its window before the first
backward: token-mean loss terms are then normalised by the window's counts (trainer/train/loop.py).
"""

from __future__ import annotations

import collections
import time
from contextlib import nullcontext
from dataclasses import dataclass

import torch

from trainer.distill.losses import IGNORE_INDEX


@dataclass(frozen=True)
class Counts:
    """What a batch holds, as host ints: what the loss terms' means divide by."""

    samples: int
    length: int  # padded sequence length L
    tokens: int  # real tokens
    masked: int  # masked rows


@dataclass
class DeviceBatch:
    input_ids: torch.Tensor  # [B, L] int64
    attention_mask: torch.Tensor  # [B, L] int64, 1 = real token
    masked_index: torch.Tensor  # [N] int64, flat positions b * L + t of the masked rows
    masked_labels: torch.Tensor  # [N] int64, the original ids there
    tokens: int  # real tokens in the batch (host int)
    samples: int
    # its accumulation window: every micro-batch's Counts, this one's at `position`
    window: tuple[Counts, ...] = ()
    position: int = 0

    @property
    def masked(self) -> int:
        return self.masked_index.numel()

    @property
    def counts(self) -> Counts:
        return Counts(self.samples, self.input_ids.shape[1], self.tokens, self.masked)

    @property
    def window_counts(self) -> tuple[Counts, ...]:
        """The Counts of every micro-batch of this batch's window (just its own outside one)."""
        return self.window or (self.counts,)

    @property
    def last_in_window(self) -> bool:
        return self.position == len(self.window_counts) - 1

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
    """Device batches from a loader; on a GPU the next batches' copy overlaps this step.

    It loads `window` batches at a time (the gradient accumulation window; 1 without
    accumulation), each tagged with the window's Counts and its position there, and stays up to
    one window ahead: when the last batch of a window is handed out, the next window is loaded.
    On CUDA the copies run on a side stream (from pinned memory, non-blocking) while the kernels
    of the current step run; the compute stream waits for a copy only when it uses the batch.
    `waited` accumulates the host time spent waiting for the loader (the "data" share of the step
    anatomy), and `state_dict()` is the loader's position as of the batches handed out, those
    taken ahead not counted.
    """

    def __init__(self, loader, device: torch.device, window: int = 1) -> None:
        if window < 1:
            raise ValueError(f"window={window!r}: expected at least one batch")
        self._loader, self._host, self.device, self.window = loader, iter(loader), device, window
        self._stream = torch.cuda.Stream(device) if device.type == "cuda" else None
        self._ready: collections.deque[DeviceBatch] = collections.deque()
        self.waited = 0.0

    def _load(self) -> None:
        start = time.perf_counter()
        hosts = [next(self._host) for _ in range(self.window)]
        self.waited += time.perf_counter() - start
        with torch.cuda.stream(self._stream) if self._stream is not None else nullcontext():
            batches = [DeviceBatch.from_host(host, self.device) for host in hosts]
        counts = tuple(b.counts for b in batches) if self.window > 1 else ()
        for position, batch in enumerate(batches):
            batch.window, batch.position = counts, position
        self._ready.extend(batches)

    def _hand_over(self, batch: DeviceBatch, stream: torch.cuda.Stream) -> None:
        tensors = (batch.input_ids, batch.attention_mask, batch.masked_index, batch.masked_labels)
        hand_over(tensors, self._stream, stream)

    def state_dict(self) -> dict:
        """The loader's state_dict, positioned after the last batch handed out: a checkpoint
        must not count the batches taken ahead, which no step has trained on yet."""
        return self._loader.state_dict(unconsumed=len(self._ready))

    def peek(self, stream: torch.cuda.Stream | None = None) -> DeviceBatch:
        """The batch the next `next()` returns, usable on `stream` (on CUDA: that stream waits for
        its copy; on other devices the argument is ignored)."""
        if not self._ready:
            self._load()
        if self._stream is not None and stream is not None:
            self._hand_over(self._ready[0], stream)
        return self._ready[0]

    def __iter__(self) -> DevicePrefetcher:
        return self

    def __next__(self) -> DeviceBatch:
        # Up to a window ahead on every device (so the CPU tests run a GPU's bookkeeping).
        if not self._ready:
            self._load()
        current = self._ready.popleft()
        if self._stream is not None:
            self._hand_over(current, torch.cuda.current_stream(self.device))
        if not self._ready:
            self._load()
        return current
