"""The console without known third-party noise; runs/<name>/train.log with everything.

    setup_logging()                  # main.py, first: before DeepSpeed logs anything
    quiet_console()                  # ranks other than 0: warnings and errors on the console
    attach_run_log(run_dir, rank)    # assemble.py, once the run directory exists

Every record (ours, DeepSpeed's, Python warnings) goes to the run's log file: train.log on rank 0,
train.rank-0000N.log on rank N, appended on resume. Records from before the run directory exists
are kept in memory and written first. The console shows the same records less NOISE: lines that
third-party libraries print on every run and that say nothing about it, and transformers'
progress bars (loading and saving these models takes well under a second). Not filtered: what
libraries print() rather than log (DeepSpeed's "op built successfully"), and the deepspeed
launcher's own lines (another process).
"""

from __future__ import annotations

import logging
import re
import sys
from pathlib import Path

FORMAT = "%(asctime)s %(levelname)s %(message)s"
# (logger name, message pattern): known noise, dropped from the console, kept in train.log
NOISE: tuple[tuple[str, re.Pattern], ...] = tuple(
    (name, re.compile(pattern))
    for name, pattern in (
        # DeepSpeed's WarmupDecayLR asks itself for an lr in its constructor, once per engine
        ("DeepSpeed", r"Attempting to get learning rate from scheduler before it has started"),
        # said on every CPU start; the trainer's own start-up line names the device
        ("DeepSpeed", r"Setting accelerator to CPU"),
        # DeepSpeed's ZeRO calls a torch function torch has renamed
        ("py.warnings", r"all_gather_into_tensor` is deprecated"),
    )
)
BUFFER_LIMIT = 10_000  # records kept before the run directory exists; the oldest are dropped


def is_noise(record: logging.LogRecord) -> bool:
    message = record.getMessage()
    return any(record.name == name and p.search(message) for name, p in NOISE)


class _RunLog(logging.Handler):
    """Everything, to the run's log file once it is attached; until then, in memory."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(logging.Formatter(FORMAT))
        self.file: logging.FileHandler | None = None
        self.buffer: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if self.file is not None:
            self.file.handle(record)
        else:
            self.buffer.append(record)
            del self.buffer[:-BUFFER_LIMIT]

    def attach(self, path: Path) -> None:
        if self.file is not None and Path(self.file.baseFilename) == path.resolve():
            return
        if self.file is not None:
            self.file.close()
        path.parent.mkdir(parents=True, exist_ok=True)
        self.file = logging.FileHandler(path, mode="a", encoding="utf-8")
        self.file.setFormatter(self.formatter)
        for record in self.buffer:
            self.file.handle(record)
        self.buffer.clear()

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
        super().close()


class _CopyToRunLog(logging.Filter):
    """On DeepSpeed's logger, which does not propagate: every record to the run log, noise
    kept from DeepSpeed's own console handler."""

    def filter(self, record: logging.LogRecord) -> bool:
        if _RUN_LOG is not None:
            _RUN_LOG.handle(record)
        return not is_noise(record)


_RUN_LOG: _RunLog | None = None
_CONSOLE: logging.Handler | None = None


def setup_logging(level: int = logging.INFO) -> None:
    """Console (stderr, noise filtered) and run-log handlers on the root logger; a copy of
    DeepSpeed's records to the run log; Python warnings as log records. Idempotent: a second
    call (another run in the same process) starts over."""
    global _RUN_LOG, _CONSOLE
    root = logging.getLogger()
    for handler in (_RUN_LOG, _CONSOLE):
        if handler is not None:
            root.removeHandler(handler)
            handler.close()
    _CONSOLE = logging.StreamHandler(sys.stderr)
    _CONSOLE.setFormatter(logging.Formatter(FORMAT))
    _CONSOLE.addFilter(lambda record: not is_noise(record))
    _RUN_LOG = _RunLog()
    root.addHandler(_CONSOLE)
    root.addHandler(_RUN_LOG)
    root.setLevel(level)
    logging.captureWarnings(True)
    # NOTE: the logger object DeepSpeed configures when it is imported; a filter put on it now
    # stays on it.
    ds = logging.getLogger("DeepSpeed")
    for f in [f for f in ds.filters if isinstance(f, _CopyToRunLog)]:
        ds.removeFilter(f)
    ds.addFilter(_CopyToRunLog())
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # "Loading weights", "Writing model shards": sub-second


def quiet_console(level: int = logging.WARNING) -> None:
    """Only `level` and above on the console (other ranks); the run log keeps everything."""
    if _CONSOLE is not None:
        _CONSOLE.setLevel(level)


def run_log_name(rank: int) -> str:
    return "train.log" if rank == 0 else f"train.rank-{rank:05d}.log"


def attach_run_log(run_dir: Path, rank: int) -> Path | None:
    """Write this rank's records to <run_dir>/train.log (or train.rank-0000N.log) from now on,
    those logged so far first. No-op without setup_logging (library use)."""
    if _RUN_LOG is None:
        return None
    path = Path(run_dir) / run_log_name(rank)
    _RUN_LOG.attach(path)
    return path
