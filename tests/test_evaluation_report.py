"""The evaluation report's chart (evaluation/report.py): one panel per task, each dataset its own
point with the std over seeds, models told apart by a legend (no label drawn on another), the
teacher as the reference.

Run: .venv/bin/pytest tests/test_evaluation_report.py -q
"""

from __future__ import annotations

import statistics

import pytest

from evaluation.report import aggregate, chart, chart_points, draw


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
