"""Step anatomy: where a step's time goes (data wait, teacher, each student), without host syncs.

    timer.start()                 # at the top of a step
    timer.mark("teacher")         # the time since the previous mark is charged to "teacher"
    ...
    timer.collect()               # at a log step: {name: seconds} since the last collect

On a GPU the marks are CUDA events, read only in `collect` (one sync per log step); on CPU they
are wall-clock readings. Data wait is host time either way (the loader runs on the host).
"""

from __future__ import annotations

import time
from collections import defaultdict

import torch


class StepTimer:
    def __init__(self, device: torch.device) -> None:
        self._cuda = device.type == "cuda"
        self._pending: list[tuple[str, object, object]] = []
        self._host: dict[str, float] = defaultdict(float)
        self._last = None

    def _now(self):
        if self._cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def start(self) -> None:
        self._last = self._now()

    def host(self, name: str, seconds: float) -> None:
        """Charge host-measured time (e.g. waiting for the loader)."""
        self._host[name] += seconds

    def mark(self, name: str) -> None:
        now = self._now()
        if self._cuda:
            self._pending.append((name, self._last, now))
        else:
            self._host[name] += now - self._last
        self._last = now

    def collect(self) -> dict[str, float]:
        totals = defaultdict(float, self._host)
        if self._pending:
            self._pending[-1][2].synchronize()
            for name, begin, end in self._pending:
                totals[name] += begin.elapsed_time(end) / 1000.0
        self._pending, self._host = [], defaultdict(float)
        return dict(totals)
