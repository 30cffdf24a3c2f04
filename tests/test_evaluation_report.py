"""The evaluation report's chart (evaluation/report.py): one panel per task, each dataset its own
point with the std over seeds, models told apart by a legend (no label drawn on another), the
teacher as the reference; score against latency and its Pareto front (evaluation/pareto.py).

Run: .venv/bin/pytest tests/test_evaluation_report.py -q
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest

from evaluation.pareto import draw_pareto, pareto_front
from evaluation.report import aggregate, chart, chart_points, draw, write_report


def cells(model: str, dataset: str, f1s: list[float]) -> list[dict]:
    keys = ("precision", "recall", "f1")
    return [{"model": model, "dataset": dataset, "seed": 42 + i,
             "metrics": {k: f for k in keys}} for i, f in enumerate(f1s)]  # fmt: skip


@pytest.fixture
def report():
    rows = [
        *cells("teacher", "NCBI-disease", [0.80, 0.82, 0.84]),
        *cells("teacher", "BC2GM", [0.70, 0.70, 0.70]),
        *cells("TinyBioBERT", "NCBI-disease", [0.60, 0.64, 0.62]),
        *cells("TinyBioBERT", "BC2GM", [0.40, 0.50, 0.45]),
        *cells("DistilBioBERT", "NCBI-disease", [0.75]),
        *cells("DistilBioBERT", "GAD", [0.90, 0.92, 0.94]),  # RE: a panel of its own
        *cells("DistilBioBERT-MLM", "NCBI-disease", [0.74]),  # same size as DistilBioBERT
    ]
    models = {
        "teacher": {"parameters": 108e6},
        "TinyBioBERT": {"parameters": 13e6},
        "DistilBioBERT": {"parameters": 65e6},
        "DistilBioBERT-MLM": {"parameters": 65e6},
    }
    labels = ["teacher", "DistilBioBERT", "DistilBioBERT-MLM", "TinyBioBERT"]
    return labels, aggregate(rows), models  # fmt: skip


def test_points_keep_datasets_apart_with_the_spread_over_seeds(report):
    points = chart_points(*report)
    assert list(points) == ["ner", "re"]
    tiny = {p.dataset: p for p in points["ner"] if p.model == "TinyBioBERT"}
    assert sorted(tiny) == ["BC2GM", "NCBI-disease"]  # never one averaged point
    assert tiny["BC2GM"].mean == pytest.approx(45.0)
    assert tiny["BC2GM"].std == pytest.approx(100 * statistics.stdev([0.40, 0.50, 0.45]))
    assert tiny["BC2GM"].params_m == 13 and tiny["BC2GM"].seeds == 3
    (gad,) = points["re"]
    assert (gad.model, gad.dataset, gad.mean) == ("DistilBioBERT", "GAD", pytest.approx(92.0))


def test_one_panel_per_task_error_bars_a_legend_and_the_teacher_line(report):
    import matplotlib.pyplot as plt

    fig = draw(chart_points(*report))
    ner, re_ = fig.axes
    assert (ner.get_title(), re_.get_title()) == ("NER (F1)", "RE (F1)")
    assert not ner.texts and not re_.texts  # no annotation that could sit on another
    (legend,) = fig.legends
    assert [t.get_text() for t in legend.get_texts()] == [
        "teacher (dashed: its scores)", "DistilBioBERT", "DistilBioBERT-MLM", "TinyBioBERT"
    ]  # fmt: skip
    # models of one size are set apart, not drawn on top of each other
    xs = {c.lines[0].get_xdata()[0] for c in ner.containers}
    assert len(xs) == 4
    assert [t.get_text() for t in ner.get_legend().get_texts()] == ["NCBI-disease", "BC2GM"]
    # error bars where there are seeds to spread: teacher x2, Tiny x2; one seed: none
    bars = [c for c in ner.containers if c.has_yerr]
    assert len(bars) == 4
    teacher_lines = [ln for ln in ner.get_lines() if ln.get_linestyle() == "--"]
    assert sorted(ln.get_ydata()[0] for ln in teacher_lines) == pytest.approx([70.0, 82.0])
    plt.close(fig)


def test_chart_png_is_written_atomically(report, tmp_path):
    chart(*report, tmp_path / "chart.png")
    assert (tmp_path / "chart.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in tmp_path.iterdir()] == ["chart.png"]


def test_pareto_front_by_hand():
    """(latency ms, score): dominated on both axes, or on one with a tie on the other, is off;
    models tied on both axes stay on together."""
    points = {
        "teacher": (10.0, 85.0),
        "same-as-teacher": (10.0, 85.0),  # a tie on both axes: both on the front
        "Distil": (4.0, 80.0),
        "Distil-MLM": (4.0, 78.0),  # as fast as Distil, worse: off
        "Slow-and-worse": (6.0, 75.0),  # slower and worse than Distil: off
        "Tiny": (1.0, 70.0),  # the fastest: on, however bad
        "Tiny-MLM": (1.5, 70.0),  # as good as Tiny, slower: off
    }
    assert pareto_front(points) == ["Tiny", "Distil", "same-as-teacher", "teacher"]
    assert pareto_front({"only": (3.0, 1.0)}) == ["only"]
    assert pareto_front({}) == []


def _run_with_summary(root: Path, latency_ms: dict[str, float]) -> Path:
    """runs/r/summary.json with each model's latency, and an export directory per student."""
    run = root / "runs" / "r"
    for name in latency_ms:
        if name != "teacher":
            (run / "export" / name).mkdir(parents=True)
            (run / "export" / name / "EXPORT.json").write_text('{"files": {}}')
    models = {name: {"latency_ms_median": ms} for name, ms in latency_ms.items()}
    (run / "summary.json").write_text(json.dumps({"run": "r", "models": models}))
    return run


def test_report_draws_score_against_latency_and_marks_the_front(tmp_path):
    run = _run_with_summary(
        tmp_path,
        {"teacher": 10.0, "Distil": 4.0, "Distil-MLM": 4.0, "Tiny": 1.0, "Slow": 6.0},
    )
    out = tmp_path / "eval"
    f1 = {  # NCBI-disease, BC2GM
        "teacher": (0.86, 0.80),
        "Distil": (0.82, 0.76),
        "Distil-MLM": (0.80, 0.74),
        "Tiny": (0.70, 0.60),
        "Slow": (0.76, 0.70),
        "Other": (0.90, 0.90),  # a hub model: no summary, so no latency
    }
    for model, scores in f1.items():
        source = (
            str(run / "export" / model)
            if model in ("Distil", "Distil-MLM", "Tiny", "Slow")
            else f"org/{model}"
        )
        (out / "models").mkdir(parents=True, exist_ok=True)
        info = {"label": model, "source": source, "parameters": 1e6}
        (out / "models" / f"{model}.json").write_text(json.dumps(info))
        for dataset, f in zip(("NCBI-disease", "BC2GM"), scores, strict=True):
            for row in cells(model, dataset, [f]):
                path = out / "cells" / model / dataset / f"seed{row['seed']}.json"
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(json.dumps(row))

    results = write_report(out)

    section = results["score_vs_latency"]
    assert section["datasets"] == ["NCBI-disease", "BC2GM"]
    assert section["front"] == ["Tiny", "Distil", "teacher"]
    assert section["left_out"] == ["Other"]
    points = section["points"]
    assert points["teacher"]["latency_ms"] == 10.0  # the run's teacher row
    assert points["Distil"]["score"] == pytest.approx(79.0)
    assert points["Distil"]["speedup_vs_teacher"] == pytest.approx(2.5)
    assert not points["Distil-MLM"]["on_front"] and not points["Slow"]["on_front"]
    md = (out / "results.md").read_text()
    rows = {
        line.split(" | ")[0].strip("| "): line for line in md.splitlines() if line.startswith("| ")
    }
    assert rows["Distil"].endswith("| yes |") and rows["Slow"].endswith("|  |")
    assert "2.50x" in rows["Distil"] and "Not charted" in md and "Other" in md
    assert json.loads((out / "results.json").read_text())["score_vs_latency"]["front"] == [
        "Tiny", "Distil", "teacher"
    ]  # fmt: skip
    assert (out / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    import matplotlib.pyplot as plt

    fig = draw_pareto(section)
    (ax,) = fig.axes
    (line,) = ax.get_lines()  # the front, through its models in order of latency
    assert list(line.get_xdata()) == [1.0, 4.0, 10.0]
    assert list(line.get_ydata()) == pytest.approx([65.0, 79.0, 83.0])
    names = {t.get_text() for t in ax.texts}
    assert names == {"teacher", "Distil", "Distil-MLM", "Tiny", "Slow"}
    assert "latency" in ax.get_xlabel() and "score" in ax.get_ylabel()
    plt.close(fig)


def test_a_report_without_latencies_says_so_and_draws_no_front(report, tmp_path):
    out = tmp_path / "eval"
    for row in cells("TinyBioBERT", "NCBI-disease", [0.6]):
        path = out / "cells" / "TinyBioBERT" / "NCBI-disease" / "seed42.json"
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps(row))
    results = write_report(out)
    assert results["score_vs_latency"]["points"] == {}
    assert "No model has both a latency" in (out / "results.md").read_text()
    assert not (out / "pareto.png").exists()
