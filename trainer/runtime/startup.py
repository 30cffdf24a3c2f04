"""Start-up phases: each one logged as it begins, and one that takes long is said, with the cause
most often behind it.

    with startup.phase("loading the teacher from dmis-lab/biobert-base-cased-v1.2"):
        ...
    startup.current()        # the phase in progress, or None (read by
    trainer/runtime/preemption.py)

A phase that lasts BIODISTILL_STARTUP_WARN_S seconds (default 30) gets one warning. If a torch
extensions lock file exists then (TORCH_EXTENSIONS_DIR, else ~/.cache/torch_extensions), it is
named with how to clear it: a run killed while DeepSpeed JIT-built an op leaves `lock` in the
op's build directory, and every later build of that op, from any process sharing the cache,
waits on it without a word.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

logger = logging.getLogger(__name__)

WARN_AFTER_ENV = "BIODISTILL_STARTUP_WARN_S"

_lock = threading.Lock()
_current: tuple[str, float] | None = None  # (phase, monotonic start)
_watchdog: threading.Thread | None = None


def current() -> str | None:
    with _lock:
        return _current[0] if _current is not None else None


@contextmanager
def phase(name: str, *, log: bool = True) -> Iterator[None]:
    """`name` is the start-up phase in progress until the block ends; logged unless `log` is
    False (a phase every rank goes through, said by rank 0 only)."""
    global _current
    if log:
        logger.info("start-up: %s", name)
    with _lock:
        outer, _current = _current, (name, time.monotonic())
    _start_watchdog()
    try:
        yield
    finally:
        with _lock:
            _current = outer


def extensions_root() -> Path:
    """Where torch JIT-builds C++ ops (DeepSpeed's among them)."""
    root = os.environ.get("TORCH_EXTENSIONS_DIR") or "~/.cache/torch_extensions"
    return Path(root).expanduser()


def extension_locks() -> list[Path]:
    """Lock files of torch's JIT builds (one per op being built, or left by a killed build)."""
    root = extensions_root()
    if not root.is_dir():
        return []
    return sorted(p for p in root.glob("**/lock") if p.is_file())


def _warn_after() -> float:
    try:
        return float(os.environ.get(WARN_AFTER_ENV, "30"))
    except ValueError:
        return 30.0


def _start_watchdog() -> None:
    global _watchdog
    if _watchdog is None or not _watchdog.is_alive():
        _watchdog = threading.Thread(target=_watch, name="startup-watchdog", daemon=True)
        _watchdog.start()


def _watch() -> None:
    warned: set[tuple[str, float]] = set()
    limit = _warn_after()
    while True:
        time.sleep(min(1.0, limit / 4))
        with _lock:
            now = _current
        if now is None or now in warned or time.monotonic() - now[1] < limit:
            continue
        warned.add(now)
        locks = extension_locks()
        if locks:
            logger.warning(
                "start-up: %s has taken %.0f s; torch extension lock(s) exist: %s. A DeepSpeed op "
                "build killed part-way leaves its lock, and every later build of that op waits "
                "on it. If no build is running (no ninja or c++ process), remove the file(s)",
                now[0],
                limit,
                ", ".join(map(str, locks)),
            )
        else:
            logger.warning("start-up: %s has taken %.0f s so far", now[0], limit)
