"""Progress lines with rates and ETAs: per cell (optimizer steps) and for the whole run.

    python -m evaluation run ...   (lines on stderr, at most one per --log-every seconds)

    [1/2] M | GAD: step 5/10 | 0.50 steps/s | ETA 00:10 | loss 0.5000 | run ETA ~00:30
    [1/2] M | GAD: f1 0.5000 (00:20) | run ETA ~00:20

The cell's counts, rate and ETA are every progress line's (data_pipeline/progress.py). The run's
ETA counts work in training examples x epochs of the cells still to do (known before any
tokenization) and extrapolates from the pace so far; models of different sizes make it an
estimate, refined as cells finish.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from data_pipeline.progress import duration, eta, progress_line

log = logging.getLogger("evaluation")


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
        done = self.done_units + self._cell_units * step / total
        log.info(
            "[%d/%d] %s: step %s | loss %.4f | run ETA ~%s",
            self.done_cells + 1,
            self.cells,
            self._cell_name,
            progress_line(step, total, "steps", elapsed=now - self._cell_start),
            loss_fn(),
            eta(done, self.total_units, now - self.start),
        )

    def finish_cell(self, summary: str) -> None:
        self.done_cells += 1
        self.done_units += self._cell_units
        now = time.monotonic()
        log.info(
            "[%d/%d] %s: %s (%s) | run ETA ~%s",
            self.done_cells,
            self.cells,
            self._cell_name,
            summary,
            duration(now - self._cell_start),
            eta(self.done_units, self.total_units, now - self.start),
        )
