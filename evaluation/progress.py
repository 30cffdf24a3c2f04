"""Progress lines with rates and ETAs: per cell (optimizer steps) and for the whole run.

    python -m evaluation run ...   (lines on stderr, at most one per --log-every seconds)

The run's ETA counts work in training examples x epochs of the cells still to do (known before
any tokenization) and extrapolates from the pace so far; models of different sizes make it an
estimate, refined as cells finish.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

log = logging.getLogger("evaluation")


def hms(seconds: float) -> str:
    s = max(0, int(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


class RunProgress:
    def __init__(self, total_units: int, cells: int, every_s: float = 15.0):
        self.total_units, self.cells, self.every_s = max(1, total_units), cells, every_s
        self.done_units = 0.0
        self.done_cells = 0
        self.start = time.monotonic()
        self._last = 0.0
        self._cell_units = 0
        self._cell_name = ""
        self._cell_start = 0.0

    def start_cell(self, name: str, units: int) -> None:
        self._cell_name, self._cell_units = name, units
        self._cell_start = self._last = time.monotonic()
        log.info("[%d/%d] %s: fine-tuning", self.done_cells + 1, self.cells, name)

    def step(self, step: int, total: int, loss_fn: Callable[[], float]) -> None:
        """Per optimizer step; prints (and syncs for the loss) at most every `every_s` seconds."""
        now = time.monotonic()
        if now - self._last < self.every_s:
            return
        self._last = now
        elapsed = now - self._cell_start
        rate = step / elapsed if elapsed > 0 else 0.0
        cell_left = (total - step) / rate if rate else 0.0
        done = self.done_units + self._cell_units * step / total
        run_left = self._eta(done, now)
        log.info(
            "[%d/%d] %s: step %d/%d loss %.4f | %.1f steps/s | cell %s left | run ~%s left",
            self.done_cells + 1,
            self.cells,
            self._cell_name,
            step,
            total,
            loss_fn(),
            rate,
            hms(cell_left),
            hms(run_left),
        )

    def finish_cell(self, summary: str) -> None:
        self.done_cells += 1
        self.done_units += self._cell_units
        now = time.monotonic()
        log.info(
            "[%d/%d] %s: %s (%s) | run ~%s left",
            self.done_cells,
            self.cells,
            self._cell_name,
            summary,
            hms(now - self._cell_start),
            hms(self._eta(self.done_units, now)),
        )

    def _eta(self, done: float, now: float) -> float:
        if done <= 0:
            return 0.0
        return (now - self.start) / done * (self.total_units - done)
