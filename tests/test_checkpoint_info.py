"""`python -m trainer.checkpoint info DIR`: what slurm/train.sbatch reads of the newest checkpoint.

.venv/bin/python -m pytest tests/test_checkpoint_info.py -q
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def info(directory: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "trainer.checkpoint", "info", str(directory)],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_info_names_the_newest_complete_checkpoint_and_how_it_was_saved(tmp_path):
    root = tmp_path / "checkpoints"
    assert info(root).stdout == ""  # no checkpoints yet: nothing, exit 0
    for step, world in ((2, 2), (4, 1)):
        directory = root / f"step-{step:08d}"
        directory.mkdir(parents=True)
        (directory / "COMPLETE.json").write_text(json.dumps({"step": step, "world_size": world}))
    (root / "step-00000006").mkdir()  # an unfinished save: no marker
    done = info(root)
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"step=4 world_size=1 path={root / 'step-00000004'}\n"
