"""`python -m evaluation run`: check everything, plan the cells, fine-tune what is missing, report.

    python -m evaluation run --models DIR_OR_NAME [...] --tasks ner,re,qa --data DIR --output DIR \
        [--seeds 3] [--datasets A,B] [--folds 1,2] [--shard I/N] [--dry-run] [section.key=value ...]

Order of work: every selected dataset file and every model's config and tokenizer are read and
checked first, so a missing file or a format error stops the run before any training, with one
message naming the file. Then cells run model by model (its speed probe first), dataset by
dataset, seed innermost (tokenized features are reused across seeds). Finished cells are skipped.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from data_pipeline.errors import UserError
from data_pipeline.io_utils import atomic_write_json, check_output_dir, claim_output_dir
from evaluation import cells as cells_mod
from evaluation.catalog import Split, locate, select_datasets
from evaluation.cells import TASK_MODULES, Cell
from evaluation.config import EvalSettings, as_dict
from evaluation.finetune import Runtime, resolve_runtime
from evaluation.models import (
    ModelSpec,
    check_model,
    device_name,
    fingerprint,
    load_tokenizer,
    measure,
    parse_models,
)
from evaluation.progress import RunProgress
from evaluation.report import write_report

log = logging.getLogger("evaluation")


@dataclass
class RunRequest:
    models: list[str]
    data: Path
    output: Path
    tasks: list[str] = field(default_factory=lambda: ["ner", "re", "qa"])
    datasets: list[str] | None = None
    folds: list[int] | None = None
    seeds: int = 3
    first_seed: int = 42
    device: str = "auto"
    precision: str = "auto"
    shard: tuple[int, int] = (0, 1)
    rerun_stale: bool = False
    dry_run: bool = False
    log_every_s: float = 15.0


def plan_cells(models: list[ModelSpec], splits: list[Split], req: RunRequest) -> list[Cell]:
    seeds = range(req.first_seed, req.first_seed + req.seeds)
    every = [Cell(m, s, seed) for m in models for s in splits for seed in seeds]
    index, count = req.shard
    return every[index::count]


def run(req: RunRequest, settings: EvalSettings) -> dict[str, Any]:
    """Run the evaluation; returns the counts of cells done, skipped and (dry run) pending."""
    if req.seeds < 1:
        raise UserError(f"--seeds {req.seeds}: expected >= 1")
    runtime = resolve_runtime(req.device, req.precision)
    specs = parse_models(req.models)
    datasets = select_datasets(req.tasks, req.datasets)
    splits = [s for d in datasets for s in locate(d, req.data, req.folds)]
    data = {s.key: TASK_MODULES[s.dataset.task].read(s) for s in splits}
    tokenizers = {}
    for spec in specs:
        check_model(spec)
        tokenizers[spec.slug] = load_tokenizer(spec)
    prints = {spec.slug: fingerprint(spec) for spec in specs}
    precision = runtime.precision
    # NOTE: cells/ is made first thing, so that a stopped run's directory is known as this
    # command's (and resumed) like a finished one's (results.json).
    claim = check_output_dir if req.dry_run else claim_output_dir
    claim(req.output, OWN_RECORDS, "use a new or empty directory as --output")
    if not req.dry_run:
        (Path(req.output) / "cells").mkdir(exist_ok=True)

    plan = plan_cells(specs, splits, req)
    idents, pending, stale, finished = {}, [], [], 0
    for cell in plan:
        section = as_dict(getattr(settings, cell.task)) | {"precision": precision}
        idents[cell] = cells_mod.identity(cell, prints[cell.model.slug], section)
        state, why = cells_mod.status(cell.path(req.output), idents[cell])
        finished += state == "done"
        if state == "stale":
            stale.append((cell, why))
        if state == "pending" or (state == "stale" and req.rerun_stale):
            pending.append(cell)
    log.info(
        "%d cells (%d models x %d splits x %d seeds%s): %d finished, %d stale, %d to run, %s (%s)",
        len(plan), len(specs), len(splits), req.seeds,
        f", shard {req.shard[0]}/{req.shard[1]}" if req.shard[1] > 1 else "",
        finished, len(stale), len(pending),
        device_name(runtime.device), precision,
    )  # fmt: skip
    if req.dry_run:
        _print_plan(pending, stale, data, settings, req.output)
        return {"cells": len(plan), "pending": len(pending), "stale": len(stale)}
    if stale and not req.rerun_stale:
        cell, why = stale[0]
        raise UserError(
            f"{cell.path(req.output)}: finished with other inputs ({why}); {len(stale)} such "
            "cell(s). Use another --output, or --rerun-stale to recompute them"
        )
    counts = {"cells": len(plan), "skipped": finished, "done": 0}

    units = {c: data[c.split.key].sizes[0] * getattr(settings, c.task).epochs for c in pending}
    progress = RunProgress(sum(units.values()), len(pending), req.log_every_s)
    feature_cache: dict = {}
    for spec in specs:
        todo = [c for c in pending if c.model == spec]
        _speed_probe(spec, prints[spec.slug], settings, runtime, req.output, needed=bool(todo))
        for cell in todo:
            progress.start_cell(cell.name, units[cell])
            try:
                result = cells_mod.run_cell(
                    cell,
                    data[cell.split.key],
                    tokenizers[spec.slug],
                    getattr(settings, cell.task),
                    runtime,
                    progress,
                    feature_cache,
                )
            except FloatingPointError as e:
                raise FloatingPointError(f"{cell.name}: {e}") from None
            cells_mod.write(
                cell.path(req.output), idents[cell], result, device_name(runtime.device)
            )
            progress.finish_cell(_summary(result["metrics"]))
            counts["done"] += 1
    write_report(req.output)
    log.info("report: %s", ", ".join(str(req.output / n) for n in REPORT_FILES))
    return counts


REPORT_FILES = ("results.json", "results.md", "chart.png")
OWN_RECORDS = ("results.json", "cells")  # what marks an --output as this command's


def _summary(metrics: dict[str, Any]) -> str:
    return " ".join(f"{k} {v:.4f}" for k, v in metrics.items() if isinstance(v, float))


def _speed_probe(
    spec: ModelSpec,
    print_: str,
    settings: EvalSettings,
    runtime: Runtime,
    output: Path,
    needed: bool,
) -> None:
    """Parameters and inference speed, once per model, weights and device (models/<slug>.json)."""
    path = Path(output) / "models" / f"{spec.slug}.json"
    want = {
        "label": spec.label,
        "source": spec.source,
        "fingerprint": print_,
        "speed_settings": as_dict(settings.speed),
        "device": device_name(runtime.device),
        "precision": runtime.precision,
    }
    if path.is_file():
        old = json.loads(path.read_text(encoding="utf-8"))
        if all(old.get(k) == v for k, v in want.items()) or not needed:
            return
    info = measure(spec, settings.speed, runtime)
    log.info(
        "%s: %.1fM parameters, %.0f sequences/s (%s)",
        spec.label, info["parameters"] / 1e6, info["sequences_per_s"], want["device"],
    )  # fmt: skip
    atomic_write_json(path, want | info)


def _print_plan(
    pending: list[Cell], stale: list[tuple[Cell, str]], data: dict, settings: EvalSettings,
    output: Path,
) -> None:  # fmt: skip
    for task in ("ner", "re", "qa"):
        print(f"{task}: {as_dict(getattr(settings, task))}")
    for key, d in data.items():
        n_train, n_test = d.sizes
        print(f"{key}: {n_train} training examples, {n_test} test examples")
    for c in pending:
        print(f"to run: {c.name} -> {c.path(output)}")
    for c, why in stale:
        print(f"stale: {c.name} ({why}); --rerun-stale recomputes it")
