"""Downstream score against CPU latency: which models are worth deploying (the Pareto front).

    front = pareto_front({"teacher": (5.1, 84.0), "Tiny": (1.2, 79.5), "Twin": (1.2, 77.0)})
    section = score_vs_latency(labels, scores, models, PRIMARY)   # evaluation/report.py
    chart_pareto(section, Path("DIR/pareto.png"))

A model is on the front when no other model is at least as fast and at least as good, and better
in one of the two: a model dominated on both axes is off it; models tied on both stay on it
together. Latency: PyTorch CPU latency at batch 1, sequence 128 (one thread) from the
runs/<name>/summary.json of the run that exported the model (trainer/train/summary.py measured
the teacher and every student there in one interleaved pass, so their ratios are fair). A model
evaluated from runs/<name>/export/<student> takes its row; the model labelled `teacher` takes its
own row if it is such an export, else the teacher's row of the run the others came from (when
they came from one run). Models without a latency are left out and named. Score: the mean over
the datasets every charted model has of each dataset's primary metric (x100), the datasets named.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

from data_pipeline.io_utils import atomic_path
from evaluation.catalog import BY_NAME, PAPER_DATASETS
from trainer.export.record import EXPORT_RECORD

TEACHER = "teacher"  # the model labelled so (`--models teacher=DIR`) is the reference
SUMMARY = "summary.json"  # runs/<name>/summary.json (trainer/train/summary.py)


def pareto_front(points: dict[str, tuple[float, float]]) -> list[str]:
    """The names of `points` (name -> (latency, score)) that no other point dominates: another
    point dominates when it is no slower and no worse, and faster or better. Ordered by
    latency."""

    def dominated(a: tuple[float, float]) -> bool:
        return any(
            b[0] <= a[0] and b[1] >= a[1] and (b[0] < a[0] or b[1] > a[1]) for b in points.values()
        )

    front = [name for name, p in points.items() if not dominated(p)]
    return sorted(front, key=lambda n: (points[n][0], -points[n][1], n))


def latencies(models: dict[str, dict[str, Any]]) -> tuple[dict[str, float], dict[str, str]]:
    """label -> latency (ms) from the exporting runs' summary.json, and label -> the summary it
    came from (see the module's docstring)."""
    out: dict[str, float] = {}
    where: dict[str, str] = {}
    runs: set[Path] = set()
    for label, info in models.items():
        source = Path(str(info.get("source", "")))
        summary = source.parent.parent / SUMMARY
        if not ((source / EXPORT_RECORD).is_file() and summary.is_file()):
            continue
        row = _summary_rows(summary).get(source.name, {})
        if "latency_ms_median" in row:
            out[label], where[label] = float(row["latency_ms_median"]), str(summary)
            runs.add(summary)
    if TEACHER in models and TEACHER not in out and len(runs) == 1:
        (summary,) = runs
        row = _summary_rows(summary).get(TEACHER, {})
        if "latency_ms_median" in row:
            out[TEACHER], where[TEACHER] = float(row["latency_ms_median"]), str(summary)
    return out, where


def _summary_rows(path: Path) -> dict[str, dict]:
    try:
        return json.loads(path.read_text(encoding="utf-8")).get("models", {})
    except (OSError, ValueError, AttributeError):
        return {}  # NOTE: a summary that cannot be read gives no latency; the model is named


def score_vs_latency(
    labels: list[str], scores: dict, models: dict, primary: dict[str, str]
) -> dict[str, Any]:
    """The report's score-against-latency section (`primary`: task -> its metric):
    {"datasets", "points": {label: {"latency_ms", "score", "speedup_vs_teacher", "on_front",
    "summary"}}, "front", "left_out"}."""
    ms, where = latencies({m: models.get(m, {}) for m in labels})
    charted = [m for m in labels if m in ms and scores.get(m)]
    order = [d.name for d in PAPER_DATASETS]
    common = set.intersection(*(set(scores[m]) for m in charted)) if charted else set()
    datasets = sorted(common, key=order.index)
    points = {}
    for m in charted if datasets else ():
        values = [scores[m][d]["metrics"][primary[BY_NAME[d].task]]["mean"] for d in datasets]
        points[m] = (ms[m], 100 * statistics.fmean(values))
    front = pareto_front(points)
    teacher = points.get(TEACHER)
    rows = {
        m: {
            "latency_ms": lat,
            "score": score,
            "speedup_vs_teacher": None if teacher is None else teacher[0] / lat,
            "on_front": m in front,
            "summary": where[m],
        }
        for m, (lat, score) in points.items()
    }
    return {
        "datasets": datasets,
        "points": rows,
        "front": front,
        "left_out": [m for m in labels if m not in points],
    }


def markdown(section: dict[str, Any]) -> str:
    """The results.md part: a table of every charted model, the front marked."""
    rows = section["points"]
    lines = ["", "### Score against CPU latency", ""]
    if not rows:
        lines.append(
            "No model has both a latency (runs/<name>/summary.json of the run that exported it) "
            "and scores on datasets every such model has."
        )
        return "\n".join(lines) + "\n"
    lines += [
        "| Model | Latency (ms) | Speed-up | Score | Pareto front |",
        "|---|---:|---:|---:|:---:|",
    ]
    for m, r in sorted(rows.items(), key=lambda kv: (kv[1]["latency_ms"], kv[0])):
        speed = "" if r["speedup_vs_teacher"] is None else f"{r['speedup_vs_teacher']:.2f}x"
        mark = "yes" if r["on_front"] else ""
        lines.append(f"| {m} | {r['latency_ms']:.2f} | {speed} | {r['score']:.2f} | {mark} |")
    lines += [
        "",
        "Latency: PyTorch CPU latency at batch 1, sequence 128, one thread, from "
        + ", ".join(sorted({f"`{r['summary']}`" for r in rows.values()}))
        + f". Score: mean over {', '.join(section['datasets'])} of each dataset's primary "
        "metric (x100). On the front: no other model is as fast and as good, and better in one.",
    ]
    if section["left_out"]:
        lines.append(
            f"Not charted (no latency or no common dataset): {', '.join(section['left_out'])}."
        )
    return "\n".join(lines) + "\n"


def draw_pareto(section: dict[str, Any]):
    """Score against latency (log scale): every model a named point, the front a line through
    its points, the teacher outlined."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = section["points"]
    fig, ax = plt.subplots(figsize=(6.4, 4.6), dpi=120)
    for m, r in rows.items():
        on = r["on_front"]
        ax.scatter(
            r["latency_ms"],
            r["score"],
            s=60 if m == TEACHER else 40,
            color="tab:blue" if on else "tab:grey",
            edgecolors="black" if m == TEACHER else "none",
            zorder=3,
        )
        ax.annotate(m, (r["latency_ms"], r["score"]), textcoords="offset points", xytext=(5, 4),
                    fontsize=8)  # fmt: skip
    front = [(rows[m]["latency_ms"], rows[m]["score"]) for m in section["front"]]
    ax.plot(*zip(*front, strict=True), color="tab:blue", linewidth=1.2, label="Pareto front")
    ax.set_xscale("log")
    ax.set_xlabel("CPU latency, batch 1, seq 128, one thread (ms, log scale)")
    ax.set_ylabel(f"mean score x100 ({len(section['datasets'])} datasets)")
    ax.set_title("Downstream score against latency")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def chart_pareto(section: dict[str, Any], path: Path) -> bool:
    """pareto.png from `section` (atomically); False, nothing written, with no point to draw."""
    import matplotlib.pyplot as plt

    if not section["points"]:
        return False
    fig = draw_pareto(section)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return True
