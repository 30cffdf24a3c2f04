"""Small file-system helpers shared by every pipeline stage: atomic writes, checksums, input lists.

NOTE: every file the pipeline produces goes through `atomic_path` (temp file in the same directory,
fsync, rename), so a crash never leaves a half-written file under its final name.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from data_pipeline.errors import UserError


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _read_umask()


def out_of_space(e: BaseException, path: str | os.PathLike) -> bool:
    """Whether `e` (from a write under `path`) means the file system is full.

    An OSError from a worker process arrives re-raised with its errno. torch.save says it as
    "[enforce fail at inline_container.cc] unexpected pos" or "file write failed", without an
    errno, so those count when the file system has under 1 MiB left.
    """
    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    text = str(e)
    if "No space left on device" in text or "Disk quota exceeded" in text:
        return True
    if "unexpected pos" in text or "file write failed" in text:
        return free_bytes(path) < 1 << 20
    return False


def free_bytes(path: str | os.PathLike) -> int:
    """Free bytes on the file system of `path` (or of its nearest existing parent)."""
    p = Path(path).absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return shutil.disk_usage(p).free


def no_space_message(path: str | os.PathLike, doing: str, need: int | None, advice: str) -> str:
    """One line: the path, what was being written, free and needed bytes, what to do."""
    needed = f", about {need:,} needed" if need else ""
    return (
        f"{path}: no space left on device while {doing} ({free_bytes(path):,} bytes free "
        f"now{needed}); {advice}"
    )


@contextlib.contextmanager
def disk_full_is_an_error(
    path: str | os.PathLike,
    doing: str,
    advice: str,
    need: Callable[[], int | None] = lambda: None,
) -> Iterator[None]:
    """Turn running out of space under `path` into a one-line UserError.

    NOTE: the writes inside must be atomic (atomic_path), so that what they leave behind is only
    complete files; `advice` says what the user can rely on and how to go on.
    """
    try:
        yield
    except Exception as e:  # NOTE: writers say it in their own types (safetensors, torch.save)
        if not out_of_space(e, path):
            raise
        raise UserError(no_space_message(path, doing, need(), advice)) from None


def first_line(e: BaseException) -> str:
    """The first line of an exception's message (libraries often add pages of advice)."""
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to `path`; on success it is fsynced and renamed onto `path`.

    On an exception the temporary file is removed and `path` is left untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    # mkstemp makes the file 0600; outputs on a shared cluster should honour the umask instead.
    os.fchmod(fd, 0o666 & ~_UMASK)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
        fsync_dir(path.parent)  # NOTE: the rename itself survives a power loss, not only a crash
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def fsync_dir(directory: str | os.PathLike) -> None:
    """fsync a directory: its entries (a file renamed into it) are on disk once this returns."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_json(path: str | os.PathLike, obj: object) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def read_json(path: str | os.PathLike) -> dict:
    """Read a JSON object, raising UserError naming the file when it is missing or invalid."""
    try:
        with open(path, encoding="utf-8") as f:
            obj = json.load(f)
    except FileNotFoundError:
        raise UserError(f"{path}: file not found") from None
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(obj, dict):
        raise UserError(f"{path}: expected a JSON object, found {type(obj).__name__}")
    return obj


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def expand_inputs(inputs: Iterable[str | os.PathLike], suffixes: tuple[str, ...]) -> list[Path]:
    """Expand files and directories into a sorted, de-duplicated list of files ending in `suffixes`.

    A named file is taken whatever its suffix; directories contribute the files (recursively) whose
    names end in one of `suffixes`. Missing paths are an error naming the path.
    """
    found: dict[Path, None] = {}
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            for child in sorted(p.rglob("*")):
                if child.is_file() and child.name.endswith(suffixes):
                    found[child] = None
        elif p.is_file():
            found[p] = None
        else:
            raise UserError(f"{p}: no such file or directory")
    return sorted(found, key=lambda q: (q.name, str(q)))


_PROBE = ".write-test."  # check_writable_dir's test file, there for a moment


def check_writable_dir(path: str | os.PathLike) -> Path:
    """Create `path` if needed and check that files can be written there."""
    p = Path(path)
    try:
        p.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=p, prefix=_PROBE):
            pass
    except OSError as e:
        raise UserError(f"{p}: output directory is not writable ({e.strerror})") from None
    return p


def listing(names: list[str]) -> str:
    """The first three of `names` and how many more, for a one-line message."""
    return ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")


def check_output_dir(path: str | os.PathLike, records: Iterable[str], way_out: str) -> Path:
    """claim_output_dir's check alone: the UserError where this writer may not write into
    `path`, creating nothing (for a dry run)."""
    p = Path(path)
    records = tuple(records)
    if p.exists() and not p.is_dir():
        raise UserError(f"{p}: is a file, not a directory; {way_out}")
    # NOTE: listed before the records are looked for: a record that another task of this writer
    # creates meanwhile (array tasks claim one directory at once) is then in the listing or
    # found after it, never a file listed without its record
    names = {c.name for c in p.iterdir()} if p.is_dir() else set()
    if p.is_dir() and not any(r in names or (p / r).exists() for r in records):
        # NOTE: what another process of this writer has in flight does not count: a test file
        # of check_writable_dir, or a record being written atomically (atomic_path's temp
        # name). Array tasks claim one directory at the same time.
        writing = tuple(f".{r}." for r in records)

        def in_flight(name: str) -> bool:
            return name.startswith(_PROBE) or name.startswith(writing) and name.endswith(".tmp")

        found = sorted(name for name in names if not in_flight(name))
        if found:
            raise UserError(
                f"{p}: holds {listing(found)} and no {' or '.join(records)}: it is not an output "
                f"of this command, and nothing in it is overwritten; {way_out}"
            )
    return p


def claim_output_dir(path: str | os.PathLike, records: Iterable[str], way_out: str) -> Path:
    """Create `path` when absent and return it, if this writer may write there: the directory is
    absent, empty, or holds one of `records`: the names of the writer's own completion record
    and of what an unfinished run of it leaves (report.json and .parts for extract, a run's
    .lock). Otherwise a UserError names the path, what is there and `way_out`.
    NOTE: the rule of every writer: a directory the user owns (a path they named that holds
    their files) is never written into, let alone replaced; in its own directory a writer
    touches only the files it made."""
    return check_writable_dir(check_output_dir(path, records, way_out))


def parse_slice(spec: str) -> tuple[int, int]:
    """`I/N` (slice I of N, 0 <= I < N) as (I, N); a one-line error names what is wrong."""
    index, sep, count = spec.partition("/")
    if not sep or not index.isdigit() or not count.isdigit():
        raise UserError(f"--slice must look like I/N (e.g. 3/16), got {spec!r}")
    i, n = int(index), int(count)
    if n < 1 or i >= n:
        raise UserError(f"--slice {spec}: need 0 <= I < N")
    return i, n


def take_slice(files: list[Path], spec: tuple[int, int] | None) -> list[Path]:
    """Slice I of N of a name-sorted file list: every N-th file from the I-th.

    Round robin rather than blocks, so baseline and (smaller) update files spread over slices.
    NOTE: `extract --parts-only` and `tokenize` must agree on this; only the work split depends on
    it, never an output, so any N gives the same corpus.
    """
    if spec is None:
        return list(files)
    i, n = spec
    return list(files[i::n])


def share_tree(directory: str | os.PathLike) -> None:
    """Give `directory` and everything under it the modes the umask allows (0755/0644 under
    022): mkdtemp makes directories 0700 and some writers make files 0600, which nobody else on a
    shared cluster could read. Executable files stay executable."""
    os.chmod(directory, 0o777 & ~_UMASK)
    for dirpath, dirs, files in os.walk(directory):
        for name in dirs:
            os.chmod(os.path.join(dirpath, name), 0o777 & ~_UMASK)
        for name in files:
            path = os.path.join(dirpath, name)
            executable = os.stat(path).st_mode & 0o100
            os.chmod(path, (0o777 if executable else 0o666) & ~_UMASK)


def fsync_tree(directory: Path) -> None:
    """fsync every file under `directory` (before a marker or rename says it is complete)."""
    for dirpath, _, files in os.walk(directory):
        for name in files:
            with open(os.path.join(dirpath, name), "rb") as f:
                os.fsync(f.fileno())
