"""The directory a built teacher is installed in (`teacher.path` under `teacher.build`): whether
the build owns it, and whether the teacher there is current. File system only (no torch), so
that the dry-run's plan and pre-flight say the same as the build.

    ownership(path)                 # None: the build may write it; else whose it is
    stale_reason(path, expected)    # None: the teacher there is current; else why not

A directory is the build's when absent, empty, or holding BUILT.json and nothing besides the
files BUILT.json lists; any other is the user's (loaded as the teacher, never written). A
BUILT.json is read through `BuiltRecord`: one that is not JSON, or whose keys have the wrong types,
is unreadable (the directory is then the user's, and no teacher is current there).
"""

from __future__ import annotations

from pathlib import Path

from pydantic import ConfigDict, Field

from data_pipeline.errors import UserError
from data_pipeline.io_utils import listing, read_json
from data_pipeline.schema import Int, Schema, Str, validate
from trainer.models.hub_names import is_hub_name

BUILT = "BUILT.json"


class BuiltRecord(Schema):
    """BUILT.json as trainer/cli/teacher_build.py writes it; every key optional, as earlier builds
    wrote fewer, and keys it does not know (run_dir, later ones) kept."""

    model_config = ConfigDict(extra="allow")

    recipe: Str | None = Field(None, description="the build recipe, as teacher.build names it")
    recipe_sha256: Str | None = Field(None, description="the resolved build recipe's digest")
    shards_manifest_sha256: Str | None = Field(None, description="the shards' manifest's digest")
    global_batch: Int | None = Field(None, description="trained at; None: before it was fixed")
    files: list[Str] | None = Field(None, description="installed; None: vouches for the whole dir")


def ownership(path: Path) -> str | None:
    """None when the build may write `path` (absent, empty, or a teacher it built holding only
    its listed files); otherwise what makes it someone else's, as "<path> <what>" reads."""
    if not path.exists():
        return "looks like a hub name" if is_hub_name(str(path)) else None
    if not path.is_dir():
        return "is a file"
    found = sorted(p.name for p in path.iterdir())
    if not found:
        return None
    stamp = read_built(path / BUILT)
    if stamp is None:
        what = "an unreadable" if (path / BUILT).exists() else "no"
        return f"holds {listing(found)} and {what} {BUILT}"
    listed = stamp.files
    if listed is not None:  # NOTE: a BUILT.json of before the file list vouches for the whole dir
        others = [name for name in found if name not in {*listed, BUILT}]
        if others:
            return f"holds {listing(others)} besides the teacher its {BUILT} lists"
    return None


def stale_reason(path: Path, expected: dict) -> str | None:
    """Why the teacher at `path` cannot be used, as "<path> <reason>" reads (None: it can)."""
    stamp = path / BUILT
    if not stamp.is_file():
        return "is missing" if not path.exists() else f"holds no {BUILT}"
    found = read_built(stamp)
    if found is None:
        return f"is stale: its {BUILT} is unreadable"
    if found.shards_manifest_sha256 != expected["shards_manifest_sha256"]:
        return "is stale: the shards changed since it was built"
    if found.global_batch is None:
        return (
            "is stale: built before the global batch was the recipe's on any number of ranks "
            f"(this start trains it at {expected['global_batch']})"
        )
    if found.global_batch != expected["global_batch"]:
        return (
            f"is stale: built at global batch {found.global_batch}, this start trains it at "
            f"{expected['global_batch']}"
        )
    if found.recipe_sha256 != expected["recipe_sha256"]:
        return f"is stale: {expected['recipe']} changed since it was built"
    return None


def read_built(path: Path) -> BuiltRecord | None:
    """The BUILT.json at `path`; None when it is missing or unreadable (not JSON, not an object,
    a key of the wrong type)."""
    raw = read_or_none(path)
    try:
        return None if raw is None else validate(BuiltRecord, raw, root=BUILT)
    except UserError:
        return None


def read_or_none(path: Path) -> dict | None:
    try:
        return read_json(path)
    except UserError:  # missing, not JSON, or not an object
        return None
