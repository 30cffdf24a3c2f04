"""The report of an output directory: results.json, results.md (the paper's layout), chart.png.

    python -m evaluation report --output DIR       (`run` writes it too, when it finishes)

Everything finished under DIR counts, so models evaluated by separate runs (or by `--shard`
processes) end up side by side. Per model and dataset: each seed's score (the mean over folds for
GAD and EU-ADR), then mean and sample standard deviation over the seeds. The main table shows one
score per dataset: NER entity-level F1, RE F1, QA MRR (BioASQ ranks factoid answers by MRR);
detail tables give RE precision / recall and QA strict / lenient accuracy. The chart plots each
model's average score per task against its parameter count.
"""

from __future__ import annotations

import json
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

from data_pipeline.io_utils import atomic_path, atomic_write_bytes, atomic_write_json
from evaluation.catalog import BY_NAME, PAPER_DATASETS
from evaluation.cells import read_all

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
    atomic_write_json(output / "results.json", results)
    atomic_write_bytes(output / "results.md", markdown(labels, datasets, scores, models).encode())
    if labels:
        chart(labels, scores, models, output / "chart.png")
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


def chart(labels: list[str], scores: dict, models: dict, path: Path) -> None:
    """Average score per task against parameters (log scale), one marker per model and task."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    for task, marker in (("ner", "o"), ("re", "s"), ("qa", "^")):
        xs, ys, names = [], [], []
        for m in labels:
            vals = [
                e["metrics"][PRIMARY[task]]["mean"] for e in scores[m].values() if e["task"] == task
            ]
            if vals and models.get(m, {}).get("parameters"):
                xs.append(models[m]["parameters"] / 1e6)
                ys.append(100 * statistics.fmean(vals))
                names.append(m)
        if xs:
            ax.scatter(xs, ys, marker=marker, label=TASK_NAMES[task])
            for x, y, name in zip(xs, ys, names, strict=True):
                ax.annotate(name, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.set_xscale("log")
    ax.set_xlabel("encoder parameters (millions, log scale)")
    ax.set_ylabel("average score x100")
    ax.set_title("Downstream score against model size")
    ax.grid(True, alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
