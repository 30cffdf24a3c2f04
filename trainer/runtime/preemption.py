"""Preemption, time limits and Ctrl-C: in the loop a signal only sets a flag, and the loop saves and
exits cleanly; before the loop there is nothing to save, and the process stops at once.

SLURM (slurm/train.sbatch) asks for SIGUSR1 a few minutes before the time limit, and preemption
sends SIGTERM. During training either one (or a first Ctrl-C, SIGINT) sets `requested`; at the
next step boundary the ranks agree on it (`Runtime.any`), write a complete checkpoint and exit
with EXIT_PREEMPTED, which tells the batch script to requeue the job. The requeued job resumes
from that checkpoint. Nothing else happens in the handler: a signal can land anywhere, including
inside a collective or a checkpoint write. A second Ctrl-C stops without the checkpoint.

Before the loop starts (`training` False: loading, building, joining the other ranks) a signal
stops the process within a second, whatever the main thread is blocked in (a rendezvous waiting
for a rank that never comes, a JIT build's lock): a watcher thread sees the signal through
Python's wakeup fd and exits with EXIT_PREEMPTED (130 for SIGINT). Every output written before
is atomic, so nothing partial is left that looks complete.
"""

from __future__ import annotations

import logging
import os
import signal
import threading

from trainer.runtime import startup

logger = logging.getLogger(__name__)

EXIT_PREEMPTED = 75  # EX_TEMPFAIL: "try again later"; a finished run exits 0 and is not requeued
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports Ctrl-C
SIGNALS = (signal.SIGUSR1, signal.SIGTERM, signal.SIGINT)


class PreemptionFlag:
    def __init__(self) -> None:
        self.requested: str | None = None
        self.training = False  # set by the loop for its duration
        self._previous: dict = {}
        self._pipe: tuple[int, int] | None = None
        self._old_wakeup = -1

    def _handle(self, signum: int, frame) -> None:
        if signum == signal.SIGINT and self.requested is not None and self.training:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now, without the checkpoint
        self.requested = signal.Signals(signum).name

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers can only be set from the main thread (e.g. not in tests)
        for sig in SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)
        r, w = os.pipe()
        os.set_blocking(w, False)
        self._pipe = (r, w)
        self._old_wakeup = signal.set_wakeup_fd(w, warn_on_full_buffer=False)
        threading.Thread(target=self._watch, args=(r,), name="signal-watch", daemon=True).start()

    def restore(self) -> None:
        if self._pipe is not None:
            signal.set_wakeup_fd(self._old_wakeup)
            os.close(self._pipe[1])  # the watcher reads end-of-file and ends
            self._pipe = None
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    def _watch(self, r: int) -> None:
        try:
            while data := os.read(r, 64):
                for signum in data:
                    if signum in SIGNALS and not self.training:
                        self._exit_now(signal.Signals(signum))
        finally:
            os.close(r)

    def _exit_now(self, sig: signal.Signals) -> None:
        during = startup.current()
        logger.warning(
            "%s during start-up%s: stopping now; training had not started, so there is "
            "nothing to save",
            sig.name,
            f" ({during})" if during else "",
        )
        for handler in logging.getLogger().handlers:
            try:
                handler.flush()
            except Exception:  # noqa: BLE001 - exiting regardless
                pass
        os._exit(EXIT_INTERRUPTED if sig == signal.SIGINT else EXIT_PREEMPTED)


def _forget_wakeup_in_child() -> None:
    # A forked child (a DataLoader worker) inherits the wakeup fd: its signals would reach this
    # process's watcher as if they were its own.
    try:
        signal.set_wakeup_fd(-1)
    except ValueError:  # not the main thread of the child
        pass


os.register_at_fork(after_in_child=_forget_wakeup_in_child)
