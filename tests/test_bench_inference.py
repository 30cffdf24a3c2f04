"""The inference benchmark's figures hold together: every model has every runtime's latency and
throughput, and the speed-ups are the ratios of the same run's medians. Its --quick mode at
tiny sizes (the paper's take minutes: `python benchmarks/run.py --only inference --quick`).

    .venv/bin/python -m pytest -q tests/test_bench_inference.py
"""

from __future__ import annotations

import pytest

pytest.importorskip("onnxruntime")  # NOTE: the dev extra installs it; CI runs this
pytest.importorskip("onnxscript")

from benchmarks import bench_inference  # noqa: E402 - after the skips


@pytest.mark.slow
def test_quick_mode_gives_every_figure_and_ratios_of_its_own_medians(monkeypatch):
    monkeypatch.setattr(bench_inference, "VOCAB", 1200)  # ids >= 1000 are the plain tokens
    monkeypatch.setattr(
        bench_inference,
        "SHAPES",
        {
            "teacher": (2, 64, 128, 4),
            "DistilBioBERT": (1, 64, 128, 4),
            "TinyBioBERT": (1, 32, 64, 4),
        },
    )
    figures = {f["metric"]: f for f in bench_inference.run(quick=True)}
    value = {k: f["value"] for k, f in figures.items()}
    for model in bench_inference.SHAPES:
        assert value[f"{model}/size_bf16_bytes"] < 0.6 * value[f"{model}/size_fp32_bytes"]
        assert value[f"{model}/size_int8_bytes"] < value[f"{model}/size_onnx_fp32_bytes"]
        assert value[f"{model}/onnxruntime_fp32/max_abs_diff"] <= 1e-4
        assert 0 <= value[f"{model}/onnxruntime_int8/top1_agreement"] <= 1
        for rt in bench_inference.RUNTIMES:
            at = f"{model}/{rt}"
            assert 0 < value[f"{at}/latency_ms_median"] <= value[f"{at}/latency_ms_p90"]
            assert value[f"{at}/throughput_seq_per_s"] > 0
            assert figures[f"{at}/latency_ms_median"]["settings"]["threads"] >= 1
            if model != "teacher":
                ratio = value[f"teacher/{rt}/latency_ms_median"] / value[f"{at}/latency_ms_median"]
                assert value[f"{at}/latency_speedup_vs_teacher"] == pytest.approx(ratio, rel=1e-2)
    assert value["teacher/parameters"] > value["DistilBioBERT/parameters"]
    assert "teacher/pytorch_fp32/latency_speedup_vs_teacher" not in value
