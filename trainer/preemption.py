"""Preemption and time limits: a signal only sets a flag; the loop saves and exits cleanly.

SLURM (slurm/train.sbatch) asks for SIGUSR1 a few minutes before the time limit, and preemption
sends SIGTERM. Either one sets `requested`; at the next step boundary the ranks agree on it
(`Runtime.any`), write a complete checkpoint and exit with EXIT_PREEMPTED, which tells the batch
script to requeue the job. The requeued job resumes from that checkpoint. Nothing else happens in
the handler: a signal can land anywhere, including inside a collective or a checkpoint write.
"""

from __future__ import annotations

import signal
import threading

EXIT_PREEMPTED = 75  # EX_TEMPFAIL: "try again later"; a finished run exits 0 and is not requeued
SIGNALS = (signal.SIGUSR1, signal.SIGTERM)


class PreemptionFlag:
    def __init__(self) -> None:
        self.requested: str | None = None
        self._previous: dict = {}

    def _handle(self, signum: int, frame) -> None:
        self.requested = signal.Signals(signum).name

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers can only be set from the main thread (e.g. not in tests)
        for sig in SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}
