"""The inference benchmark's figures hold together: every model has every runtime's latency and
throughput, and the speed-ups are the ratios of the same run's medians. Its --quick mode at
tiny sizes (the paper's take minutes: `python benchmarks/run.py --only inference --quick`); the
GPU throughput measured on the CPU (the GPU-only lines are absent there); and without ONNX
Runtime, the PyTorch figures with the reason the ONNX ones are skipped.

    .venv/bin/python -m pytest -q tests/test_bench_inference.py
"""

from __future__ import annotations

import statistics
import sys

import pytest
import torch

from benchmarks import bench_inference


@pytest.fixture
def one_thread():
    """One intra-op thread: on a busy 2-core machine two threads wait on each other's barrier."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.slow
def test_quick_mode_gives_every_figure_and_ratios_of_its_own_medians():
    pytest.importorskip("onnxruntime")  # NOTE: the dev extra installs them; CI runs this
    pytest.importorskip("onnxscript")
    figures = {f["metric"]: f for f in bench_inference.run(quick=True, sizes="tiny")}
    value = {k: f["value"] for k, f in figures.items()}
    for model in bench_inference.TINY_SHAPES:
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
    # on a CPU the GPU lines are absent (not zero), and nothing was skipped
    assert not [m for m in value if "/pytorch_bf16_" in m or m.endswith("/skipped")]


def test_gpu_throughput_measured_on_the_cpu_gives_rates_and_speedups_the_right_way_round(
    one_thread,
):
    """The GPU path's measurement on "cpu" (its device argument): a teacher far bigger than the
    student must come out slower, and each speed-up is the student's rate over the teacher's."""
    shapes = {"teacher": (4, 256, 1024, 4), "TinyBioBERT": (1, 32, 64, 4)}
    times, left_out = bench_inference.gpu_throughput(
        "cpu", shapes, bench_inference.TINY_VOCAB, batches=(4, 8), seq=64, rounds=5, warmup=1
    )
    assert left_out == {} and sorted(times) == sorted((m, b) for m in shapes for b in (4, 8))
    assert all(len(t) == 5 and min(t) > 0 for t in times.values())
    lines = list(bench_inference.gpu_figures(times, left_out, "pytorch_bf16_cpu", 64, {}))
    value = {x["metric"]: x["value"] for x in lines}
    for batch in (4, 8):
        rate = {m: batch / statistics.median(times[(m, batch)]) for m in shapes}
        teacher, tiny = "teacher/pytorch_bf16_cpu", "TinyBioBERT/pytorch_bf16_cpu"
        assert value[f"{teacher}/b{batch}/throughput_seq_per_s"] > 0
        assert value[f"{tiny}/b{batch}/throughput_tokens_per_s"] == pytest.approx(
            64 * value[f"{tiny}/b{batch}/throughput_seq_per_s"], rel=1e-3
        )
        speedup = value[f"{tiny}/b{batch}/throughput_speedup_vs_teacher"]
        assert speedup == pytest.approx(rate["TinyBioBERT"] / rate["teacher"], rel=1e-2)
        assert speedup > 1  # the student is the faster one
    assert f"{teacher}/b4/throughput_speedup_vs_teacher" not in value


def test_gpu_figures_a_student_twice_as_fast_is_2x_and_a_batch_left_out_says_why():
    times = {
        ("teacher", 32): [0.2, 0.4, 0.4],  # median 0.4 s: 80 sequences/s
        ("TinyBioBERT", 32): [0.2, 0.2, 0.9],  # median 0.2 s: 160 sequences/s
    }
    lines = list(
        bench_inference.gpu_figures(
            times, {128: "out of memory on cuda"}, "pytorch_bf16_cuda", 128, {"device": "cuda"}
        )
    )
    value = {x["metric"]: x["value"] for x in lines}
    assert value["teacher/pytorch_bf16_cuda/b32/throughput_seq_per_s"] == 80
    assert value["TinyBioBERT/pytorch_bf16_cuda/b32/throughput_tokens_per_s"] == 160 * 128
    assert value["TinyBioBERT/pytorch_bf16_cuda/b32/throughput_speedup_vs_teacher"] == 2.0
    assert value["pytorch_bf16_cuda/b128/skipped"] == "out of memory on cuda"
    assert not [m for m in value if "/b128/throughput" in m]
    assert all(x["settings"]["device"] == "cuda" for x in lines)


@pytest.mark.slow
def test_without_onnxruntime_the_pytorch_figures_come_out_with_the_reason(monkeypatch, one_thread):
    """No onnxruntime (a GPU machine with only `make gpu-wheels`'s wheels): the GPU lines first
    (measured here on the CPU through run()'s GPU branch), then the PyTorch CPU figures, and one
    line saying why the ONNX ones are skipped."""
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime -> ImportError
    monkeypatch.setattr(bench_inference, "gpu_device", lambda: "cpu")
    monkeypatch.setattr(bench_inference, "GPU_BATCHES", (2, 4))
    lines = list(bench_inference.run(quick=True, sizes="tiny"))
    value = {x["metric"]: x["value"] for x in lines}
    gpu = [i for i, x in enumerate(lines) if "/pytorch_bf16_cpu/" in x["metric"]]
    assert gpu == list(range(len(gpu))) and len(gpu) == 3 * 2 * 2 + 2 * 2  # first
    for model in bench_inference.TINY_SHAPES:
        for batch in (2, 4):
            assert value[f"{model}/pytorch_bf16_cpu/b{batch}/throughput_seq_per_s"] > 0
        for rt in bench_inference.PYTORCH_RUNTIMES:
            assert value[f"{model}/{rt}/latency_ms_median"] > 0
            assert value[f"{model}/{rt}/throughput_seq_per_s"] > 0
        assert value[f"{model}/size_fp32_bytes"] > 0
    assert value["onnxruntime/skipped"] == "onnxruntime is not installed (pip install -e .[onnx])"
    assert lines[-1]["metric"] == "onnxruntime/skipped"
    assert not [m for m in value if "onnx" in m and m != "onnxruntime/skipped"]
    assert not [m for m in value if "int8_bytes" in m or "deployed" in m]


def test_a_batch_that_runs_out_of_memory_is_left_out_for_every_model(monkeypatch, one_thread):
    """torch.OutOfMemoryError at batch 8 (raised here by a hook, as CUDA raises it): batch 4 is
    measured for every model, batch 8 for none, and the reason is kept."""
    built = bench_inference.build

    def build_with_a_small_memory(shape, vocab):
        def refuse(module, args, kwargs):
            if kwargs["input_ids"].shape[0] > 4:
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

        model = built(shape, vocab)
        model.register_forward_pre_hook(refuse, with_kwargs=True)
        return model

    monkeypatch.setattr(bench_inference, "build", build_with_a_small_memory)
    shapes = {"teacher": (1, 32, 64, 4), "TinyBioBERT": (1, 32, 64, 4)}
    times, left_out = bench_inference.gpu_throughput(
        "cpu", shapes, bench_inference.TINY_VOCAB, batches=(4, 8), seq=16, rounds=2, warmup=1
    )
    assert sorted(times) == [("TinyBioBERT", 4), ("teacher", 4)]
    assert left_out == {8: "out of memory on cpu: CUDA out of memory. Tried to allocate 2.00 GiB"}
