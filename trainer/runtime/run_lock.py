"""One trainer per run directory: an exclusive lock on runs/<name>/.lock for the process's life.

    hold(run_dir)            # raises RunDirInUse naming the holder's host, PID and start time
    release_all()            # at exit (the kernel releases the locks of a dead process anyway)

The lock is fcntl.flock (Linux carries it over NFS as a record lock), which the kernel drops with
the process: one killed with -9 leaves a .lock file that locks nothing, and the next start takes
it over. The file says who holds it
(host, PID, start time, command line), for the message a second trainer prints. Holding is
idempotent within a process: a run that builds the demo teacher first holds both directories.
A file system without locks (Lustre mounted without -o flock) is said and left unguarded.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import socket
import sys
import time
from pathlib import Path

from data_pipeline.errors import UserError
from data_pipeline.io_utils import check_output_dir, claim_output_dir

logger = logging.getLogger(__name__)

LOCK_NAME = ".lock"
# What only a run leaves in its directory (plan.txt: slurm/train.sbatch's dry-run plan): a
# directory with one of them is a run directory
RUN_RECORDS = (LOCK_NAME, "recipe.resolved.yaml", "checkpoints", "TEACHER.json", "plan.txt")
_WAY_OUT = "set run.name or run.output_dir to another directory, or move what is there away"

_held: dict[Path, int] = {}  # run directory (resolved) -> the open lock file descriptor


class RunDirInUse(UserError):
    """Another live process holds the run directory."""


def hold(run_dir: Path) -> None:
    """Take the run directory's lock (creating the directory), or raise RunDirInUse. A directory
    that holds files but no trace of a run (RUN_RECORDS) is the user's: refused, untouched."""
    run_dir = Path(run_dir)
    key = run_dir.resolve()
    if key in _held:
        return
    claim_output_dir(run_dir, RUN_RECORDS, _WAY_OUT)
    path = run_dir / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        os.close(fd)
        if e.errno in (errno.EAGAIN, errno.EACCES):
            raise RunDirInUse(f"{run_dir}: {_holder(path)}") from None
        logger.warning(
            "%s: cannot lock it (%s): this file system has no locks, so nothing stops a "
            "second trainer from sharing the run directory",
            path,
            os.strerror(e.errno or 0),
        )
        return
    holder = {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "command": " ".join(sys.argv),
    }
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(holder) + "\n").encode(), 0)
    _held[key] = fd


def foreign(run_dir: Path) -> str | None:
    """Why `run_dir` is not a run directory a trainer may take (None: it may), creating
    nothing: the dry-run's check of what `hold` would refuse."""
    try:
        check_output_dir(run_dir, RUN_RECORDS, _WAY_OUT)
    except UserError as e:
        return str(e)
    return None


def release(run_dir: Path) -> None:
    fd = _held.pop(Path(run_dir).resolve(), None)
    if fd is not None:
        os.close(fd)  # closing releases the lock; the file stays, locking nothing


def release_all() -> None:
    for key in list(_held):
        release(key)


def _holder(path: Path) -> str:
    try:
        who = json.loads(path.read_text(encoding="utf-8"))
        desc = f"pid {who['pid']} on host {who['host']}, started {who['started']}"
    except (OSError, ValueError, KeyError, TypeError):
        desc = "a process that has not said who it is yet"
    return (
        f"in use by another trainer ({desc}); wait for it to end or stop it, or give this run "
        "another run.name"
    )
