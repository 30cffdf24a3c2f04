"""The teacher one batch ahead: its forward for the next batch runs while the students step.

    train.teacher_ahead: true        # recipe switch; off by default until a GPU measurement says

The cohort step is teacher(batch k), then each student's forward, backward and optimizer step on
batch k. With this switch, right after batch k's signals are handed over, the teacher's forward
for batch k+1 (the prefetcher's next batch) is launched on a side CUDA stream, so the GPU can run
it beside the students' kernels; step k+1 waits for it only when it uses the signals. The signals
are a pure function of the batch (the teacher is frozen, in eval mode, with no random draws), so
the run is the same as without the switch; only when the teacher's kernels run changes.

On a CPU there is no second stream: the forward for batch k+1 runs at the end of step k's
teacher call, which exercises the same bookkeeping (tests compare the runs bit for bit).
Costs: one more set of teacher signals alive during the students' step. On a GPU the step
anatomy's "teacher" share (CUDA events on the compute stream) becomes the time the students wait
for the early forward to finish, zero when it finished during the previous step.
Checkpoints never hold signals: a resumed run computes them again.
"""

from __future__ import annotations

from contextlib import nullcontext

import torch

from trainer.models.teacher import Teacher
from trainer.train.batch import DeviceBatch, hand_over


class TeacherAhead:
    """Teacher signals of a batch, computed one batch early where possible (see module doc)."""

    def __init__(self, teacher: Teacher, device: torch.device) -> None:
        self.teacher = teacher
        self.stream = torch.cuda.Stream(device) if device.type == "cuda" else None
        self._batch: DeviceBatch | None = None  # the batch whose signals are in flight
        self._signals: dict[str, torch.Tensor] | None = None
        self.hits = self.misses = 0

    def __call__(self, batch: DeviceBatch, upcoming) -> dict[str, torch.Tensor]:
        """Signals of `batch`; then launch those of `upcoming()` (a callable giving the next
        batch on the stream it is passed, or None when there is none)."""
        if self._batch is batch:
            signals, self.hits = self._signals, self.hits + 1
            if self.stream is not None:
                compute = torch.cuda.current_stream(self.stream.device)
                hand_over(signals.values(), self.stream, compute)
        else:  # the first batch, or the batches after a resume
            signals, self.misses = self.teacher(batch), self.misses + 1
        self._batch = self._signals = None
        if upcoming is not None:
            self._launch(upcoming)
        return signals

    def _launch(self, upcoming) -> None:
        # NOTE: teacher weights are read-only, so the side stream need wait only for the batch's
        # copy (which `upcoming`, the prefetcher's peek, arranges).
        with torch.cuda.stream(self.stream) if self.stream is not None else nullcontext():
            nxt = upcoming(self.stream)
            self._batch, self._signals = nxt, self.teacher(nxt)
