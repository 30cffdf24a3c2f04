"""The report of an output directory: results.json, results.md (the paper's layout), chart.png,
pareto.png.

    python -m evaluation report --output DIR       (`run` writes it too, when it finishes)

Everything finished under DIR counts, so models evaluated by separate runs (or by `--shard`
processes) end up side by side. Per model and dataset: each seed's score (the mean over folds for
GAD and EU-ADR), then mean and sample standard deviation over the seeds. The main table shows one
score per dataset: NER entity-level F1, RE F1, QA MRR (BioASQ ranks factoid answers by MRR);
detail tables give RE precision / recall and QA strict / lenient accuracy. The chart has one panel
per task: each model's score on each dataset against its parameter count, with the std over seeds
as error bars and the teacher (the model labelled `teacher`) as the reference line. pareto.png and
results.md's last table: the mean score against CPU latency, the Pareto front of the teacher, the
students and their twins marked (evaluation/pareto.py; the latency is the exporting run's
summary.json).
"""

from __future__ import annotations

import json
import statistics
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from data_pipeline.io_utils import atomic_path, atomic_write_bytes, atomic_write_json
from evaluation.catalog import BY_NAME, PAPER_DATASETS
from evaluation.cells import read_all
from evaluation.pareto import TEACHER, chart_pareto, score_vs_latency
from evaluation.pareto import markdown as pareto_markdown

PRIMARY = {"ner": "f1", "re": "f1", "qa": "mrr"}
DETAILS = {"re": ("precision", "recall", "f1"), "qa": ("strict_acc", "lenient_acc", "mrr")}
SHORT = {"precision": "P", "recall": "R", "f1": "F1", "strict_acc": "SAcc", "lenient_acc": "LAcc"}
SHORT |= {"mrr": "MRR"}
TASK_NAMES = {"ner": "NER (F1)", "re": "RE (F1)", "qa": "QA (MRR)"}


def aggregate(cells: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """model -> dataset -> {"seeds", "folds", "metrics": {name: {"mean", "std", "values"}}}."""
    grouped: dict = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    for c in cells:
        grouped[c["model"]][c["dataset"]][c["seed"]].append(c["metrics"])
    out: dict[str, dict[str, Any]] = {}
    for model, datasets in grouped.items():
        for name, seeds in datasets.items():
            task = BY_NAME[name].task
            keys = DETAILS.get(task, ("precision", "recall", "f1"))
            per_seed = {
                seed: {k: statistics.fmean(m[k] for m in folds) for k in keys}
                for seed, folds in sorted(seeds.items())
            }
            metrics = {}
            for k in keys:
                values = [v[k] for v in per_seed.values()]
                std = statistics.stdev(values) if len(values) > 1 else 0.0
                metrics[k] = {"mean": statistics.fmean(values), "std": std, "values": values}
            out.setdefault(model, {})[name] = {
                "task": task,
                "seeds": list(per_seed),
                "folds": sorted({len(f) for f in seeds.values()}),
                "metrics": metrics,
            }
    return out


def _models(output: Path) -> dict[str, dict[str, Any]]:
    info = {}
    for f in sorted((output / "models").glob("*.json")):
        m = json.loads(f.read_text(encoding="utf-8"))
        info[m["label"]] = m
    return info


def write_report(output: Path) -> dict[str, Any]:
    output = Path(output)
    scores = aggregate(read_all(output))
    models = _models(output)
    labels = sorted(scores, key=lambda m: (-models.get(m, {}).get("parameters", 0), m))
    present = {d for per in scores.values() for d in per}
    datasets = [d.name for d in PAPER_DATASETS if d.name in present]
    results = {
        "models": {m: models.get(m, {}) for m in labels},
        # NOTE: lists keep the paper's column order (the JSON writer sorts object keys)
        "datasets": [
            {"name": d, "task": BY_NAME[d].task, "metric": PRIMARY[BY_NAME[d].task]}
            for d in datasets
        ],
        "model_order": labels,
        "scores": scores,
    }
    front = score_vs_latency(labels, scores, models, PRIMARY)
    results["score_vs_latency"] = front
    atomic_write_json(output / "results.json", results)
    text = markdown(labels, datasets, scores, models) + pareto_markdown(front)
    atomic_write_bytes(output / "results.md", text.encode())
    if labels:
        chart(labels, scores, models, output / "chart.png")
    chart_pareto(front, output / "pareto.png")
    return results


def _score(entry: dict | None, metric: str, max_seeds: int) -> str:
    if not entry:
        return "-"
    m = entry["metrics"][metric]
    text = f"{100 * m['mean']:.2f} ± {100 * m['std']:.2f}"
    return text if len(m["values"]) == max_seeds else f"{text} (n={len(m['values'])})"


def _params(info: dict) -> str:
    n = info.get("parameters")
    if not n:
        return "?"
    return f"{n / 1e6:.1f}M" if n >= 1e6 else f"{n / 1e3:.0f}K"


def _speed(info: dict) -> str:
    s = info.get("sequences_per_s")
    return f"{s:,.0f}" if s else "?"


def markdown(labels: list[str], datasets: list[str], scores: dict, models: dict) -> str:
    max_seeds = max((len(e["seeds"]) for per in scores.values() for e in per.values()), default=0)
    head = ["Model", "Params", "Inference (seq/s)"] + [
        f"{d} ({SHORT[PRIMARY[BY_NAME[d].task]]})" for d in datasets
    ]
    lines = ["| " + " | ".join(head) + " |", "|---" + "|---:" * (len(head) - 1) + "|"]
    for m in labels:
        info = models.get(m, {})
        row = [m, _params(info), _speed(info)]
        row += [_score(scores[m].get(d), PRIMARY[BY_NAME[d].task], max_seeds) for d in datasets]
        lines.append("| " + " | ".join(row) + " |")
    devices = sorted(
        {f"{i['device']} ({i['precision']})" for i in models.values() if "device" in i}
    )
    batch = {tuple(i["speed_batch"]) for i in models.values() if "speed_batch" in i}
    lines += [
        "",
        f"Scores x100, mean ± sample standard deviation over {max_seeds} seed(s) (n=k: fewer "
        "finished). NER: entity-level F1 (seqeval, conlleval rules). RE: F1; GAD and EU-ADR on "
        "the positive class, mean over the cross-validation folds; ChemProt micro-averaged over "
        "CPR:3/4/5/6/9. QA: MRR of the BioASQ factoid answers, mean over the test batches.",
        "Params: encoder parameters (no task or MLM head). Inference: sequences/s of the "
        "encoder's forward pass on a fixed batch "
        + ", ".join(f"{b}x{s}" for b, s in sorted(batch))
        + " on "
        + ("; ".join(devices) or "?")
        + ".",
    ]
    for task, keys in DETAILS.items():
        cols = [d for d in datasets if BY_NAME[d].task == task]
        if not cols:
            continue
        head = ["Model"] + [f"{d} {SHORT[k]}" for d in cols for k in keys]
        lines += ["", f"### {task.upper()}: " + " / ".join(SHORT[k] for k in keys), ""]
        lines += ["| " + " | ".join(head) + " |", "|---" + "|---:" * (len(head) - 1) + "|"]
        for m in labels:
            row = [m] + [_score(scores[m].get(d), k, max_seeds) for d in cols for k in keys]
            lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


MARKERS = "osD^vP"


@dataclass(frozen=True)
class Point:
    model: str
    dataset: str
    params_m: float  # encoder parameters, millions
    mean: float  # primary metric x100, mean over seeds
    std: float  # sample std over seeds x100 (0 with one seed)
    seeds: int


def chart_points(labels: list[str], scores: dict, models: dict) -> dict[str, list[Point]]:
    """task -> one point per (model, dataset): datasets are never averaged together."""
    out: dict[str, list[Point]] = {}
    order = [d.name for d in PAPER_DATASETS]
    for m in labels:
        params = models.get(m, {}).get("parameters")
        if not params:
            continue
        for name in sorted(scores[m], key=order.index):
            entry = scores[m][name]
            metric = entry["metrics"][PRIMARY[entry["task"]]]
            point = Point(m, name, params / 1e6, 100 * metric["mean"], 100 * metric["std"],
                          len(metric["values"]))  # fmt: skip
            out.setdefault(entry["task"], []).append(point)
    return {t: out[t] for t in PRIMARY if t in out}


def draw(points: dict[str, list[Point]]):
    """One panel per task: score against parameters (log), one colour per model (the legend
    below names them, so no label sits on another; models of one size are set slightly apart),
    one marker per dataset, error bars of the std over seeds; the teacher's points outlined in
    black, with a dashed line at each of its scores."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.ticker import NullFormatter

    models = list(dict.fromkeys(p.model for ps in points.values() for p in ps))
    colour = {m: plt.cm.tab10(i % 10) for i, m in enumerate(models)}
    same_size: dict[float, list[str]] = {}
    for ps in points.values():
        for p in ps:
            same_size.setdefault(p.params_m, [])
            if p.model not in same_size[p.params_m]:
                same_size[p.params_m].append(p.model)

    def x_of(p: Point) -> float:  # a dodge of 4% (log scale) per model of the same size
        group = same_size[p.params_m]
        return p.params_m * 1.04 ** (group.index(p.model) - (len(group) - 1) / 2)

    fig, axes = plt.subplots(1, len(points), figsize=(4.6 * len(points), 4.2), dpi=120,
                             squeeze=False)  # fmt: skip
    for ax, (task, ps) in zip(axes[0], points.items(), strict=True):
        datasets = list(dict.fromkeys(p.dataset for p in ps))
        marker = {d: MARKERS[i % len(MARKERS)] for i, d in enumerate(datasets)}
        for p in ps:
            teacher = p.model.lower() == TEACHER
            ax.errorbar(
                x_of(p), p.mean, yerr=p.std if p.seeds > 1 else None, fmt=marker[p.dataset],
                markersize=9 if teacher else 7, markeredgecolor="black" if teacher else None,
                markeredgewidth=1.5 if teacher else None, color=colour[p.model], capsize=3,
                linestyle="none",
            )  # fmt: skip
            if teacher:
                ax.axhline(p.mean, color=colour[p.model], linestyle="--", linewidth=0.8)
        ax.set_xscale("log")
        sizes = sorted({p.params_m for p in ps})
        ax.set_xticks(sizes, [f"{v:.3g}M" for v in sizes])
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlim(min(sizes) / 1.4, max(sizes) * 1.4)
        ax.set_title(TASK_NAMES[task])
        ax.set_xlabel("encoder parameters (log scale)")
        ax.grid(True, alpha=0.3)
        handles = [Line2D([], [], marker=marker[d], color="grey", linestyle="none", label=d)
                   for d in datasets]  # fmt: skip
        ax.legend(handles=handles, fontsize=7, title="dataset", title_fontsize=7)
    axes[0][0].set_ylabel("score x100 (mean ± std over seeds)")
    handles = [Line2D([], [], marker="o", color=colour[m], linestyle="none", markersize=8,
                      markeredgecolor="black" if m.lower() == TEACHER else colour[m],
                      label=f"{m} (dashed: its scores)" if m.lower() == TEACHER else m)
               for m in models]  # fmt: skip
    fig.legend(handles=handles, loc="lower center", ncol=min(len(models), 4), fontsize=8)
    fig.suptitle("Downstream score against model size")
    rows = -(-len(models) // 4)
    fig.tight_layout(rect=(0, 0.06 * rows + 0.02, 1, 1))
    return fig


def chart(labels: list[str], scores: dict, models: dict, path: Path) -> None:
    """chart.png: `draw` of the report's points."""
    import matplotlib.pyplot as plt

    points = chart_points(labels, scores, models)
    if not points:
        return
    fig = draw(points)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
