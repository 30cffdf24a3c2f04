"""The one progress-line helper (data_pipeline/progress.py) and the lines built on it.

.venv/bin/python -m pytest -q tests/test_progress.py
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from data_pipeline.progress import duration, eta, progress_line, si


@pytest.mark.parametrize(
    ("args", "kwargs", "line"),
    [
        # 40 of 500 in 80 s: 0.5 a second, 460 left -> 920 s
        ((40, 500, "steps"), {"elapsed": 80.0}, "40/500 | 0.50 steps/s | ETA 15:20"),
        # a resumed run: 30 were done before it started, so 10 in 20 s, 460 left -> 920 s
        ((40, 500, "steps"), {"elapsed": 20.0, "initial": 30}, "40/500 | 0.50 steps/s | ETA 15:20"),
        # the caller's rate (seconds per step measured elsewhere)
        ((40, 500, "steps"), {"rate": 0.25}, "40/500 | 0.25 steps/s | ETA 30:40"),
        # over an hour: H:MM:SS; big counts with separators, rates with SI prefixes
        (
            (1_000_000, 100_000_000, "records"),
            {"elapsed": 100.0},
            "1,000,000/100,000,000 | 10.0k records/s | ETA 2:45:00",
        ),
        ((2, 3, "files"), {"elapsed": 7200.0}, "2/3 | 0.00 files/s | ETA 1:00:00"),
        # no total known: counts and rate, no ETA
        ((1234, None, "records"), {"elapsed": 2.0}, "1,234 | 617 records/s"),
        # nothing done yet, or no time measured, or a rate that is not a rate: unknown
        ((0, 10, "files"), {"elapsed": 5.0}, "0/10 | ? files/s | ETA ?"),
        ((3, 10, "files"), {"elapsed": 0.0}, "3/10 | ? files/s | ETA ?"),
        ((3, 10, "steps"), {"rate": float("inf")}, "3/10 | ? steps/s | ETA ?"),
        ((3, 10, "steps"), {"rate": 0.0, "elapsed": 3.0}, "3/10 | ? steps/s | ETA ?"),
        # past the total (a budget lowered on resume): nothing left
        ((12, 10, "steps"), {"elapsed": 6.0}, "12/10 | 2.00 steps/s | ETA 00:00"),
    ],
)
def test_progress_line_counts_rate_and_eta(args, kwargs, line):
    assert progress_line(*args, **kwargs) == line


def test_eta_duration_and_si():
    assert eta(0.25, 1.0, 30.0) == "01:30"  # a quarter in 30 s: 90 s to go
    assert eta(512, 1024, 3600.0) == "1:00:00"  # bytes
    assert eta(1.0, 1.0, 30.0) == "00:00"
    assert eta(0, 1.0, 30.0) == "?" and eta(0.5, 1.0, 0.0) == "?"
    assert duration(3723.4) == "1:02:03" and duration(83) == "01:23"
    assert duration(float("inf")) == "?" and duration(float("nan")) == "?"
    assert si(3700.0) == "3.70k" and si(2.5e6) == "2.50M" and si(617.0) == "617"


def test_the_trainer_line_is_made_with_the_helper():
    from trainer.train.metrics import progress_line as trainer_line

    out = {"train/A/loss": 1.234, "train/A/loss_mlm": 0.5, "train/A/loss_kd": 0.7}
    out["perf/tokens_per_s"] = 3712.0
    line = trainer_line(40, 500, 2.0, out, ["A"])
    assert line == "step 40/500 | 0.50 steps/s | ETA 15:20 | A 1.234 (mlm 0.5 kd 0.7) | 3.71k tok/s"
    assert "ETA ?" in trainer_line(40, 500, 0.0, out, ["A"])  # no step timed yet


def test_the_helper_needs_no_torch():
    """The data pipeline's lines come from it: it must import where torch is absent."""
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('torch', 'transformers', 'deepspeed'):\n"
        "            raise ImportError(f'{name} is not installed here')\n"
        "sys.meta_path.insert(0, Block())\n"
        "from data_pipeline.progress import progress_line\n"
        "print(progress_line(1, 2, 'files', elapsed=1.0))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "1/2 | 1.00 files/s | ETA 00:01"
