"""The attention-kernel benchmark measures both kernels and names the one the trainer takes, at
tiny sizes (the real grid: `python benchmarks/run.py --only attention --quick`).

    .venv/bin/python -m pytest -q tests/test_bench_attention.py
"""

from __future__ import annotations

from benchmarks import bench_attention
from trainer.models.attention import CPU_MATH_MAX_KEYS


def test_figures_cover_the_grid_and_name_the_trainers_kernel(monkeypatch):
    monkeypatch.setattr(bench_attention, "BATCH", 2)
    monkeypatch.setattr(bench_attention, "HEAD_SIZES", {8: 2, 16: 2})
    monkeypatch.setattr(bench_attention, "LENGTHS", {True: (16, CPU_MATH_MAX_KEYS + 8)})
    monkeypatch.setattr(bench_attention, "ROUNDS", {True: (2, 1)})
    figures = {f["metric"]: f for f in bench_attention.run(quick=True)}
    assert len(figures) == 2 * 2 * len(bench_attention.HEAD_SIZES)  # dtypes x lengths x heads
    for f in figures.values():
        s = f["settings"]
        assert f["value"] > 0 and len(s["ratio_per_round"]) == 2
        short = s["keys"] <= CPU_MATH_MAX_KEYS
        assert s["trainer_takes"] == ("math" if short and s["dtype"] == "bf16" else "flash")
    assert "math_over_flash_bf16_L16_D8" in figures
    assert "math_over_flash_fp32_L136_D16" in figures
