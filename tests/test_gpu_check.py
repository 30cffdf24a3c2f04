"""The GPU check (benchmarks/gpu_check.sh, benchmarks/gpu_check.py) cannot rot: its --dry mode
goes through every part here, at tiny sizes on the CPU, and its failure and time-out reports are
checked on real failures.

Run: .venv/bin/pytest tests/test_gpu_check.py -q
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # benchmarks/ is a folder of the checkout, not an installed package

from benchmarks import gpu_check  # noqa: E402

pytestmark = pytest.mark.slow


def check_env(**extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "BIODISTILL_CPU_BF16"}  # fp32 here
    return {**env, "PYTHON": sys.executable, "WHEELS": "/nonexistent", **extra}


def lines(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "gpu_check.jsonl").read_text().splitlines()]


def test_dry_run_goes_through_every_part(tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run(
        ["bash", "benchmarks/gpu_check.sh", str(out), "--dry"],
        cwd=ROOT, env=check_env(), capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    printed = [json.loads(x) for x in proc.stdout.splitlines()]  # stdout: JSON lines only
    got = lines(out)
    parts = {x["settings"]["part"]: x["value"] for x in got if x["metric"] == "part"}
    assert parts == {p.name: "ok" for p in gpu_check.PARTS}
    assert got[-1]["metric"] == "passed" and got[-1]["value"] is True
    assert all(x["device"].startswith("cpu: ") for x in got)

    runs = {x["settings"]["part"]: x for x in got if x["metric"] == "train_run"}
    assert sorted(runs) == ["train", "train-ahead", "train-compile", "train-modernbert"]
    modern = ["ModernBioMiniLM", "ModernCompactBioBERT", "ModernTinyBioBERT"]
    for name, run in runs.items():
        assert run["value"] is True and run["settings"]["problems"] == []  # every loss fell
        first_last = run["settings"]["loss_first_last"]
        paper = ["CompactBioBERT", "DistilBioBERT", "TinyBioBERT"]
        assert sorted(first_last) == (modern if name == "train-modernbert" else paper)
        # the record rounds to 4 decimals: a tiny model's relation loss (5e-4) can read equal
        assert all(last <= first for first, last in first_last.values())
        assert run["settings"]["tokens_per_s_last"] > 0
    assert runs["train-compile"]["settings"]["compile"] is True
    assert runs["train-ahead"]["settings"]["teacher_ahead"] is True

    figures = {(x["benchmark"], x["metric"]) for x in got if x["benchmark"] != "gpu_check"}
    assert figures >= {
        ("step", "tokens_per_s"),
        ("step", "mfu"),
        ("vs_paper_loop", "speedup"),
        ("teacher_ahead", "speedup"),
        ("cohort_vs_separate", "measured_ratio"),
        ("cohort_vs_separate", "predicted_ratio"),
        ("memory", "peak_gb"),
        ("inference", "TinyBioBERT/pytorch_fp32/throughput_speedup_vs_teacher"),
    }
    # the inference part, before train-compile (which the deadline may skip); on a CPU it has
    # the CPU figures and no GPU ones
    names = [p.name for p in gpu_check.PARTS]
    assert names.index("inference") == names.index("train-compile") - 1
    inference = {x["metric"]: x for x in got if x["benchmark"] == "inference"}
    assert inference["teacher/pytorch_fp32/latency_ms_median"]["value"] > 0
    assert inference["teacher/parameters"]["settings"]["sizes"] == "tiny"
    assert not [m for m in inference if "/pytorch_bf16_" in m]
    assert printed == got  # the benchmark children's lines too, echoed as each part ends
    for part in gpu_check.PARTS:
        assert (out / f"{part.name}.log").stat().st_size > 0


def test_a_failing_run_is_reported_with_its_reason_and_the_check_fails(tmp_path):
    """A busy MASTER_PORT makes the trainer refuse to start: the train part fails, naming why."""
    out = tmp_path / "out"
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        env = check_env(MASTER_PORT=str(busy.getsockname()[1]))
        proc = subprocess.run(
            ["bash", "benchmarks/gpu_check.sh", str(out), "--dry", "--parts", "train"],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
        )  # fmt: skip
    assert proc.returncode == 1, proc.stderr[-3000:]
    run, part, summary = lines(out)
    assert run["metric"] == "train_run" and run["value"] is False
    assert run["settings"]["problems"][0] == "exit status 2"
    assert part["value"] == "failed" and "--master_port" in part["settings"]["log_tail"]
    assert summary["value"] is False and summary["settings"]["parts"] == {"train": "failed"}


def test_a_part_past_its_limit_is_killed_and_reported(tmp_path, monkeypatch):
    monkeypatch.delenv("BIODISTILL_CPU_BF16", raising=False)
    out = gpu_check.Output(tmp_path)
    part = gpu_check.Part("env", 10)
    assert gpu_check.run_part(part, out, tmp_path, dry=False, limit=0.5) == "timed_out"
    (line,) = lines(tmp_path)
    assert line["metric"] == "part" and line["value"] == "timed_out"
    assert line["settings"]["rc"] is None and line["settings"]["seconds"] < 30


def test_unknown_part_is_refused(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        gpu_check.main([str(tmp_path), "--parts", "trian"])
    assert e.value.code == 2
    assert "unknown part(s) ['trian']; known: ['env', 'train'," in capsys.readouterr().err


@pytest.mark.parametrize(
    "losses, problem",
    [
        ([3.0, 2.0, 1.0], None),
        ([3.0, 3.5, 3.2], "TinyBioBERT: the loss did not fall (3 -> 3.2)"),
        ([3.0, float("nan"), 1.0], "TinyBioBERT: a non-finite loss"),
        ([3.0], "TinyBioBERT: the loss did not fall (3 -> 3)"),
    ],
)
def test_train_verdict_needs_every_loss_finite_and_falling(tmp_path, losses, problem):
    from trainer.train.metrics import MetricsWriter

    writer = MetricsWriter(
        tmp_path / "tensorboard", enabled=True, models=["DistilBioBERT", "TinyBioBERT"]
    )
    for step, value in enumerate(losses, 1):
        writer.log({"train/DistilBioBERT/loss": 5.0 - step, "train/TinyBioBERT/loss": value}, step)
    writer.close()
    part = gpu_check.PARTS[1]
    verdict = gpu_check.train_verdict(tmp_path, 0, 1.0, part, dry=True)
    problems = verdict["settings"]["problems"]
    assert problems == [] if problem is None else problem in problems
    assert verdict["value"] is (problem is None)


def test_run_py_fails_on_a_benchmark_without_figures_and_reports_a_skip(tmp_path, monkeypatch):
    """benchmarks/run.py: a benchmark that ends without a figure fails the command (exit 1,
    naming it), one that raises Skipped (memory on a CPU) is reported and passes."""
    import types

    from benchmarks import run as bench_run
    from benchmarks.common import Skipped

    def skipped(quick):
        raise Skipped("needs a GPU")
        yield  # a generator, as benchmarks are

    fake = {
        "empty": types.SimpleNamespace(run=lambda quick: iter(())),
        "skips": types.SimpleNamespace(run=skipped),
        "one": types.SimpleNamespace(
            run=lambda quick: iter([{"metric": "m", "value": 1, "unit": "x", "settings": {}}])
        ),
    }
    monkeypatch.setattr(bench_run, "BENCHMARKS", {name: name for name in fake})
    monkeypatch.setattr(bench_run.importlib, "import_module", fake.__getitem__)
    out = tmp_path / "figures.jsonl"
    assert bench_run.main(["--only", "skips,one", "--out", str(out)]) == 0
    assert [json.loads(line)["benchmark"] for line in out.read_text().splitlines()] == ["one"]
    assert bench_run.main(["--only", "one,empty,skips"]) == 1


def test_run_py_gives_each_benchmark_the_environment_it_started_with(monkeypatch):
    """A benchmark that starts a Runtime in-process sets RANK, WORLD_SIZE, LOCAL_WORLD_SIZE=1,
    ... (trainer/runtime/distributed.py). Leaked into a later benchmark's `deepspeed --num_gpus 2`
    children (the launcher sets LOCAL_SIZE, not LOCAL_WORLD_SIZE), each rank took every core, so the
    learning benchmark trained other numerics after the step benchmark than alone."""
    import types

    from benchmarks import run as bench_run

    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    seen = []

    def leaks(quick):
        os.environ["LOCAL_WORLD_SIZE"] = "1"
        yield {"metric": "m", "value": 1, "unit": "x", "settings": {}}

    def looks(quick):
        seen.append(os.environ.get("LOCAL_WORLD_SIZE"))
        yield {"metric": "m", "value": 1, "unit": "x", "settings": {}}

    fake = {"leaks": types.SimpleNamespace(run=leaks), "looks": types.SimpleNamespace(run=looks)}
    monkeypatch.setattr(bench_run, "BENCHMARKS", {name: name for name in fake})
    monkeypatch.setattr(bench_run.importlib, "import_module", fake.__getitem__)
    assert bench_run.main(["--only", "leaks,looks"]) == 0
    assert seen == [None] and "LOCAL_WORLD_SIZE" not in os.environ
