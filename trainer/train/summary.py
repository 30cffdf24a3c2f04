"""What a run achieved, where users look: the console, runs/<name>/summary.{md,json}, TensorBoard.

    figures = relative_figures(metrics, twins={"DistilBioBERT": "DistilBioBERT-MLM"}, ceiling=0.94)
    summary = run_summary(cfg, step, metrics | figures, twins, ceiling)
    write_summary(run_dir, summary); print(render_table(summary))

From the held-out figures of trainer/train/heldout.py (`eval/<model>/mlm_acc`, `mlm_loss`,
`teacher_agreement`, `entity_acc`), each student's figures as a fraction of the teacher's
(`acc_to_teacher`, `entity_acc_to_teacher`), the teacher's entity accuracy as a fraction of the
ceiling (the best accuracy any model can reach there, when `data.entities` gives it), and each
distilled student against its MLM-only twin (`acc_gain_vs_twin`, `entity_acc_gain_vs_twin`, in
accuracy points): what the teacher added at equal steps, model and batches.

At the run's end, after the exports, `add_deployment(run_dir, cfg, teacher)` (rank 0) puts what a
user deploys beside those figures: per model its parameters, fp32 weights on disk
(`size_fp32_bytes`: the export's model.safetensors; the teacher's saved the same way),
`size_onnx_bytes` and `size_int8_onnx_bytes` where export.onnx wrote them (with int8, also
`int8_masked_acc` and `int8_acc_change`: held-out masked accuracy in ONNX Runtime int8 and its
difference from fp32 in points, and `int8_top1_agreement` with fp32 there, from the export's
check on the run's eval shards, trainer/export/onnx.py), PyTorch CPU latency at
batch 1, sequence 128, one thread (`latency_ms_median`, `latency_ms_p90`) and
`latency_speedup_vs_teacher`, the teacher's median over the model's, both from one interleaved
pass (trainer/export/latency.py); summary.json's "latency" names the threads, CPU and rounds.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path

from data_pipeline.io_utils import atomic_write_bytes, atomic_write_json, read_json
from trainer.config.recipe import RunConfig
from trainer.export.latency import pytorch_latency
from trainer.export.record import EXPORT_RECORD

logger = logging.getLogger(__name__)

SUMMARY_MD, SUMMARY_JSON = "summary.md", "summary.json"
TEACHER = "teacher"
RELATIVE_SUFFIXES = ("_to_teacher", "_to_ceiling", "_gain_vs_twin")  # what relative_figures adds
ONNX_SIZES = {"ONNX Runtime fp32": "size_onnx_bytes", "ONNX Runtime int8": "size_int8_onnx_bytes"}


def twins_of(cfg: RunConfig) -> dict[str, str]:
    """Distilled student -> its MLM-only twin, for the twins the run trains."""
    return {s.twin_of: s.name for s in cfg.students if s.twin_of is not None}


def relative_figures(
    metrics: dict[str, float], twins: dict[str, str], ceiling: float | None
) -> dict[str, float]:
    """Ratios to the teacher (and the ceiling) and gains over twins, as `eval/...` scalars."""
    names = sorted({k.split("/")[1] for k in metrics if k.startswith("eval/")} - {TEACHER})

    def get(name: str, figure: str) -> float | None:
        return metrics.get(f"eval/{name}/{figure}")

    out: dict[str, float] = {}
    for name in names:
        for figure in ("mlm_acc", "entity_acc"):
            value, ref = get(name, figure), get(TEACHER, figure)
            if value is not None and ref:
                out[f"eval/{name}/{figure.removeprefix('mlm_')}_to_teacher"] = value / ref
    teacher_entity = get(TEACHER, "entity_acc")
    if ceiling and teacher_entity is not None:
        out[f"eval/{TEACHER}/entity_acc_to_ceiling"] = teacher_entity / ceiling
    for name, twin in twins.items():
        for figure in ("mlm_acc", "entity_acc"):
            value, base = get(name, figure), get(twin, figure)
            if value is not None and base is not None:
                out[f"eval/{name}/{figure.removeprefix('mlm_')}_gain_vs_twin"] = 100 * (
                    value - base
                )
    return out


def run_summary(
    cfg: RunConfig, step: int, metrics: dict[str, float], twins: dict[str, str], ceiling
) -> dict:
    """The summary.json content: per model every figure of `metrics` (held-out and relative)."""
    order = [TEACHER] + [s.name for s in cfg.students]
    models = {}
    for name in order:
        prefix = f"eval/{name}/"
        row = {k.removeprefix(prefix): v for k, v in metrics.items() if k.startswith(prefix)}
        if row:
            models[name] = row
    twin_of = {twin: name for name, twin in twins.items()}
    for name, row in models.items():
        if name in twins:
            row["twin"] = twins[name]
        if name in twin_of:
            row["twin_of"] = twin_of[name]
    return {"run": cfg.run.name, "step": step, "ceiling_entity_acc": ceiling, "models": models}


def deployment_figures(run_dir: Path, teacher, names: list[str]) -> dict:
    """{"latency": settings, "models": {name: figures}} of the teacher (a trainer Teacher or None)
    and the students `names` exported under run_dir/export/ (trainer/export/latency.py)."""
    run_dir = Path(run_dir)
    dirs = {}
    tmp = None
    try:
        if teacher is not None:
            tmp = Path(tempfile.mkdtemp(prefix=".deployment-teacher-", dir=run_dir))
            save_fp32(teacher.model, tmp)
            dirs[TEACHER] = tmp
        for name in names:
            if (run_dir / "export" / name / EXPORT_RECORD).is_file():
                dirs[name] = run_dir / "export" / name
        measured = pytorch_latency(dirs)
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    models = measured["models"]
    for name, row in models.items():
        if name != TEACHER:
            onnx = read_json(dirs[name] / EXPORT_RECORD).get("onnx") or {}
            for runtime, key in ONNX_SIZES.items():
                if runtime in onnx.get("file_bytes", {}):
                    row[key] = onnx["file_bytes"][runtime]
            row.update(int8_figures(onnx.get("heldout") or {}))
        if TEACHER in models and name != TEACHER:
            ratio = models[TEACHER]["latency_ms_median"] / row["latency_ms_median"]
            row["latency_speedup_vs_teacher"] = round(ratio, 3)
    return {"latency": measured["settings"], "models": models}


def int8_figures(heldout: dict) -> dict:
    """From an export's ONNX held-out check: int8's masked accuracy, its change from fp32 in
    accuracy points, and its top-1 agreement with fp32; {} without an int8 check."""
    acc = heldout.get("masked_acc", {})
    fp32, int8 = acc.get("ONNX Runtime fp32"), acc.get("ONNX Runtime int8")
    if fp32 is None or int8 is None:
        return {}
    return {
        "int8_masked_acc": int8,
        "int8_acc_change": round(100 * (int8 - fp32), 3),
        "int8_top1_agreement": heldout["int8_top1_agreement"],
    }


def save_fp32(model, directory: Path) -> None:
    """`model` (a Hugging Face masked LM, on any device and in any dtype) saved as an fp32
    Hugging Face directory, as an export holds it."""
    state = {k: v.detach().float().cpu() for k, v in model.state_dict().items()}
    model.save_pretrained(directory, state_dict=state)


def add_deployment(run_dir: Path, cfg: RunConfig, teacher) -> dict | None:
    """Rank 0, at the run's end, after the exports: `deployment_figures` into summary.{md,json}
    (written by the last evaluation; None and nothing done when there is none)."""
    path = Path(run_dir) / SUMMARY_JSON
    if not path.is_file():
        return None
    summary = read_json(path)
    figures = deployment_figures(run_dir, teacher, [s.name for s in cfg.students])
    summary["latency"] = figures["latency"]
    rows = summary["models"]
    for name, row in figures["models"].items():
        rows.setdefault(name, {}).update(row)
    order = [TEACHER] + [s.name for s in cfg.students]  # NOTE: the JSON file sorts its keys
    summary["models"] = {n: rows[n] for n in order if n in rows} | {
        n: r for n, r in rows.items() if n not in order
    }
    write_summary(run_dir, summary)
    logger.info("size and CPU latency of each model:\n%s", render_table(summary))
    return summary


def eval_line(metrics: dict[str, float]) -> str:
    """The console's line for an evaluation: loss, accuracy (and entity accuracy) per model."""
    names = list(dict.fromkeys(k.split("/")[1] for k in metrics if k.endswith("/mlm_acc")))
    parts = []
    for n in names:
        text = (
            f"{n} loss {metrics[f'eval/{n}/mlm_loss']:.3f} acc {metrics[f'eval/{n}/mlm_acc']:.3f}"
        )
        if (entity := metrics.get(f"eval/{n}/entity_acc")) is not None:
            text += f" entity {entity:.3f}"
        parts.append(text)
    return " | ".join(parts)


def render_table(summary: dict) -> str:
    """A Markdown table of the summary (the console prints it, summary.md holds it)."""
    models = summary["models"]
    entity = any("entity_acc" in r for r in models.values())
    head = ["model", "masked acc", "of teacher", "MLM loss", "agreement"]
    if entity:
        head += ["entity acc", "of teacher"]
    head.append("vs MLM twin (points)")
    deployed = any("latency_ms_median" in r for r in models.values())
    onnx = any("size_onnx_bytes" in r for r in models.values())
    if deployed:
        head += ["params", "fp32 MB", "latency ms", "speed-up"]
    if onnx:
        head.append("ONNX / int8 MB")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, r in models.items():
        cells = [
            name if "twin_of" not in r else f"{name} (twin)",
            _f(r.get("mlm_acc")),
            _ratio(r.get("acc_to_teacher")),
            _f(r.get("mlm_loss")),
            _f(r.get("teacher_agreement")),
        ]
        if entity:
            to_ref = r.get("entity_acc_to_teacher", r.get("entity_acc_to_ceiling"))
            cells += [_f(r.get("entity_acc")), _ratio(to_ref)]
        gains = [r.get("acc_gain_vs_twin"), r.get("entity_acc_gain_vs_twin")]
        cells.append(" / ".join(f"{g:+.1f}" for g in gains if g is not None) or "")
        if deployed:
            cells += [
                _millions(r.get("parameters")),
                _mb(r.get("size_fp32_bytes")),
                _ms(r.get("latency_ms_median")),
                _times(r.get("latency_speedup_vs_teacher")),
            ]
        if onnx:
            sizes = [r.get("size_onnx_bytes"), r.get("size_int8_onnx_bytes")]
            cells.append(" / ".join(_mb(b) for b in sizes if b is not None))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def render_markdown(summary: dict) -> str:
    ceiling = summary["ceiling_entity_acc"]
    notes = [
        f"# Run `{summary['run']}`: held-out figures at step {summary['step']}",
        "",
        render_table(summary),
        "",
        "- masked acc, MLM loss: at the masked positions of the eval split; agreement: top-1 "
        'agreement with the teacher there; "of teacher": the student\'s figure over the '
        "teacher's.",
        "- vs MLM twin: the student's masked accuracy (and entity accuracy) minus its MLM-only "
        "twin's, in points: same model, init, batches and steps, no teacher.",
    ]
    if "latency" in summary:
        lat = summary["latency"]
        notes.append(
            f"- params: parameters of the masked LM; fp32 MB: its model.safetensors; latency: "
            f"{lat['runtime']}, batch {lat['batch']}, sequence {lat['seq']}, median of "
            f"{lat['rounds']} interleaved rounds on {lat['cpu']}, {lat['threads']} thread(s); "
            "speed-up: the teacher's latency over the model's, from the same rounds."
        )
    if any("size_onnx_bytes" in r for r in summary["models"].values()):
        notes.append("- ONNX / int8 MB: model.onnx and model.int8.onnx (export.onnx).")
    if ceiling:
        notes.append(
            f"- entity acc: at the masked positions whose label is an entity word. The teacher's "
            f'"of teacher" cell is its fraction of the ceiling, {ceiling:.4f}: the best '
            "accuracy any model can reach there (data.entities)."
        )
    return "\n".join(notes) + "\n"


def write_summary(run_dir: Path, summary: dict) -> None:
    atomic_write_json(Path(run_dir) / SUMMARY_JSON, summary)
    atomic_write_bytes(Path(run_dir) / SUMMARY_MD, render_markdown(summary).encode())


def _f(x: float | None) -> str:
    return "" if x is None else f"{x:.4f}"


def _ratio(x: float | None) -> str:
    return "" if x is None else f"{x:.3f}"


def _millions(n: int | None) -> str:
    return "" if n is None else f"{n / 1e6:.2f}M"


def _mb(n: int | None) -> str:
    return "" if n is None else f"{n / 1e6:.1f}"


def _ms(x: float | None) -> str:
    return "" if x is None else f"{x:.2f}"


def _times(x: float | None) -> str:
    return "" if x is None else f"{x:.2f}x"
