"""Cells: one (model, dataset or fold, seed) fine-tuning, its result file and resume rules.

    python -m evaluation run ... --output DIR      (a rerun skips finished cells)

Each finished cell is one JSON file, written atomically (temporary file, fsync, rename):

    DIR/cells/<model>/<dataset>[_fold<k>]/seed<s>.json

A file that exists is complete. It records what the result depends on: a fingerprint of the
model's weight, config and tokenizer files (the hub name for hub models), the task's settings
and the precision.
A rerun skips a cell whose file matches; a file that does not match (the export was replaced,
a setting changed) is stale: the run stops naming it, unless --rerun-stale recomputes it.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from data_pipeline.io_utils import atomic_write_json
from evaluation import finetune, ner, qa, relation
from evaluation.catalog import Split
from evaluation.config import TaskSettings
from evaluation.models import (
    ModelSpec,
    load_for_task,
    max_positions,
    takes_token_types,
    usable_length,
)
from evaluation.progress import RunProgress

TASK_MODULES = {"ner": ner, "re": relation, "qa": qa}
IDENTITY_KEYS = ("fingerprint", "settings")  # not the path: a moved export stays the same model


@dataclass(frozen=True)
class Cell:
    model: ModelSpec
    split: Split
    seed: int

    @property
    def task(self) -> str:
        return self.split.dataset.task

    @property
    def name(self) -> str:
        return f"{self.model.label} | {self.split.key} | seed {self.seed}"

    def path(self, output: Path) -> Path:
        ds = self.split.dataset.name
        folder = ds if self.split.fold is None else f"{ds}_fold{self.split.fold}"
        return Path(output) / "cells" / self.model.slug / folder / f"seed{self.seed}.json"


def identity(cell: Cell, fingerprint: str, settings: dict[str, Any]) -> dict[str, Any]:
    return {
        "model": cell.model.label,
        "source": cell.model.source,
        "fingerprint": fingerprint,
        "dataset": cell.split.dataset.name,
        "task": cell.task,
        "fold": cell.split.fold,
        "seed": cell.seed,
        "settings": settings,
    }


def status(path: Path, ident: dict[str, Any]) -> tuple[str, str]:
    """("done" | "pending" | "stale", why) for the cell whose result would be at `path`."""
    if not path.is_file():
        return "pending", ""
    try:
        old = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        return "stale", f"unreadable ({e})"
    for key in IDENTITY_KEYS:
        if key != "settings" and old.get(key) != ident[key]:
            return "stale", f"{key} changed: {old.get(key)!r} -> {ident[key]!r}"
    before = old.get("settings") if isinstance(old.get("settings"), dict) else {}
    if before != ident["settings"]:
        diff = [f"{k} {before.get(k)!r} -> {v!r}" for k, v in ident["settings"].items()
                if before.get(k) != v]  # fmt: skip
        return "stale", "settings changed: " + ", ".join(diff)
    return "done", ""


def read_all(output: Path) -> list[dict[str, Any]]:
    """Every finished cell under `output` (the report's input)."""
    cells = []
    for f in sorted((Path(output) / "cells").glob("*/*/seed*.json")):
        cells.append(json.loads(f.read_text(encoding="utf-8")))
    return cells


def run_cell(
    cell: Cell,
    data: Any,
    tokenizer,
    settings: TaskSettings,
    runtime: finetune.Runtime,
    progress: RunProgress,
    feature_cache: dict,
) -> dict[str, Any]:
    """Fine-tune the cell's model on its training file and score the test file(s)."""
    module = TASK_MODULES[cell.task]
    started = time.monotonic()
    labels = None if cell.task == "qa" else data.labels
    model = load_for_task(cell.model, cell.task, labels, cell.seed)
    token_types = takes_token_types(model)
    max_length = min(settings.max_length, max_positions(model), usable_length(tokenizer))
    extra = (settings,) if cell.task == "qa" else ()
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    # NOTE: the seeds of a (model, split) run back to back; their features are the same.
    key = (cell.model.slug, cell.split.key, token_types, max_length)
    if key not in feature_cache:
        feature_cache.clear()
        feature_cache[key] = module.train_features(data, tokenizer, max_length, token_types, *extra)
    features = feature_cache[key]

    loss = finetune.train(
        model,
        features,
        settings,
        seed=cell.seed,
        runtime=runtime,
        pad_id=pad_id,
        on_step=progress.step,
    )

    def predict_fn(feats: list[dict]) -> list:
        return finetune.predict(
            model, feats, settings.eval_batch_size, runtime=runtime, pad_id=pad_id
        )

    metrics = module.evaluate(data, tokenizer, max_length, token_types, *extra, predict_fn)
    effective: dict[str, Any] = {"max_length": max_length, "token_type_ids": token_types}
    if cell.task == "qa":
        max_query, stride = qa.window_settings(settings, max_length, tokenizer)
        effective |= {"max_query_length": max_query, "stride": stride}
    n_train, n_test = data.sizes
    return {
        "metrics": metrics,
        "train_loss": loss,
        "train_examples": n_train,
        "train_features": len(features),
        "test_examples": n_test,
        "effective": effective,
        "seconds": round(time.monotonic() - started, 2),
    }


def write(path: Path, ident: dict[str, Any], result: dict[str, Any], device: str) -> None:
    atomic_write_json(
        path, ident | result | {"device": device, "finished": time.strftime("%Y-%m-%dT%H:%M:%S")}
    )
