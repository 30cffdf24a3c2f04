"""The documentation holds together: every document the code and the docs cite exists, nothing
cites a document outside the repository, the README stays a front door, and the recipe-key
reference in docs/training.md is the output of `--print-keys`.

Run: .venv/bin/python -m pytest -q tests/test_docs.py
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README_MAX_LINES = 260
SCANNED_SUFFIXES = (".py", ".md", ".yaml", ".sh", ".sbatch")
SCANNED_NAMES = ("Makefile", "run")  # run: .ci/run

# A docs/ document (or the README) named anywhere in a file, with an optional #section.
CITED = re.compile(r"(?<![\w/.-])(docs/[\w.-]+\.md|README\.md)(#[\w-]+)?")
# A Markdown link to a relative target: [text](target) or [text](target#anchor).
LINK = re.compile(r"\[[^\]]*\]\(([^)\s#]*)(#[^)\s]*)?\)")
# Documents that live outside the repository; the names are split so this file does not cite them.
OUTSIDE_NAMES = ("RECIPES", "DESIGN", "STYLE")
OUTSIDE = re.compile(
    r"(?<![\w.-])(" + "|".join(OUTSIDE_NAMES) + r")\.md\b"  # a notes file by name
    r"|\.\./shared\b"  # a folder beside the checkout
    r"|(?<![\w.:/~-])/[\w.-]+(?:/[\w.-]+)*/[\w.-]+\.md\b"  # an absolute path to a document
)
FENCE = re.compile(r"^(```|~~~)")


def tracked_files() -> list[Path]:
    """The repository's text files (tracked, plus new ones git does not ignore) of the scanned
    kinds: Python, Markdown, YAML, shell and sbatch scripts, the Makefile, .ci/run."""
    try:
        out = subprocess.run(
            ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    paths = [ROOT / line for line in out.splitlines() if line]
    return sorted(
        p
        for p in paths
        if p.is_file() and (p.suffix in SCANNED_SUFFIXES or p.name in SCANNED_NAMES)
    )


def markdown_files() -> list[Path]:
    return [p for p in tracked_files() if p.suffix == ".md"]


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*]", "", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every heading anchor of a Markdown file (headings inside code blocks left out; repeated
    headings get GitHub's -1, -2, ... suffixes)."""
    found: set[str] = set()
    seen: dict[str, int] = {}
    in_code = False
    for line in path.read_text(encoding="utf-8").splitlines():
        if FENCE.match(line):
            in_code = not in_code
            continue
        m = re.match(r"^#{1,6} (.+)$", line)
        if m and not in_code:
            base = slug(m.group(1))
            n = seen.get(base, 0)
            seen[base] = n + 1
            found.add(base if n == 0 else f"{base}-{n}")
    return found


def where(path: Path, text: str, start: int) -> str:
    return f"{path.relative_to(ROOT)}:{text.count(chr(10), 0, start) + 1}"


def test_every_cited_document_exists():
    """Each `docs/<topic>.md` (and `README.md`) named in a scanned file exists; a `#section` after
    it names one of its headings."""
    missing = []
    for path in tracked_files():
        text = path.read_text(encoding="utf-8", errors="replace")
        for m in CITED.finditer(text):
            target = ROOT / m.group(1)
            if not target.is_file():
                missing.append(f"{where(path, text, m.start())}: {m.group(1)} does not exist")
            elif m.group(2) and m.group(2)[1:] not in anchors(target):
                missing.append(f"{where(path, text, m.start())}: {m.group(0)}: no such section")
    assert not missing, "\n".join(missing)


def test_every_markdown_link_resolves():
    """Relative links in the README and docs/ point at files that exist, and at headings that
    exist there (`#anchor`)."""
    broken = []
    for path in markdown_files():
        text = path.read_text(encoding="utf-8")
        for m in LINK.finditer(text):
            target, anchor = m.group(1), m.group(2)
            if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
                continue
            file = (path.parent / target) if target else path
            if not file.exists():
                broken.append(f"{where(path, text, m.start())}: {target} does not exist")
            elif anchor and file.suffix == ".md" and anchor[1:] not in anchors(file):
                broken.append(f"{where(path, text, m.start())}: {target}{anchor}: no such section")
    assert not broken, "\n".join(broken)


def test_no_document_outside_the_repository_is_cited():
    """No scanned file names a notes file or folder that is not part of the repository (a name
    that does exist in the repository is allowed)."""
    here = {p.name for p in tracked_files()}
    found = []
    for path in tracked_files():
        text = path.read_text(encoding="utf-8", errors="replace")
        for m in OUTSIDE.finditer(text):
            if Path(m.group(0)).name in here and not m.group(0).startswith("/"):
                continue
            found.append(f"{where(path, text, m.start())}: {m.group(0)}")
    assert not found, "cites what the repository does not hold:\n" + "\n".join(found)


def test_readme_is_a_front_door():
    """The README stays short (reference and results live in docs/) and keeps the test command
    that .ci/run and CI rely on."""
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES, (
        f"README.md has {len(lines)} lines, at most {README_MAX_LINES}: move reference, "
        "rationale or results into docs/"
    )
    assert any(line.startswith("make test ") for line in lines)


def test_keys_reference_is_the_print_keys_output():
    """docs/training.md's recipe-key block is what `python trainer/main.py --print-keys` prints
    (paste that output into the block when a key changes)."""
    from trainer.config.recipe import render_keys

    text = (ROOT / "docs" / "training.md").read_text(encoding="utf-8")
    m = re.search(r"Generated from `python trainer/main.py --print-keys`.*?\n```\n(.*?)\n```", text,
                  re.S)  # fmt: skip
    assert m, "docs/training.md: no generated recipe-key block"
    assert m.group(1) == render_keys()


CODE_PATH = re.compile(
    r"\b(?:trainer|data_pipeline|evaluation|benchmarks|tests|slurm)/[\w/]+\.(?:py|sh|sbatch)\b"
)


def test_every_cited_code_path_exists():
    """A file named in the docs or in a comment (trainer/train/loop.py) is where it says: a moved
    or renamed file leaves no stale pointer behind."""
    missing = []
    for path in tracked_files():
        text = path.read_text(encoding="utf-8")
        for m in CODE_PATH.finditer(text):
            if not (ROOT / m.group(0)).exists():
                missing.append(f"{path.relative_to(ROOT)}: {m.group(0)}")
    assert not missing, "cites files that do not exist:\n" + "\n".join(missing)
