"""What the checkpoints' checksums cost: save and resume with and without hashing.

    python benchmarks/run.py --only checkpoint [--quick]

The cohort is built by the trainer's own `build_trainer` in this process (a world of one), as in
benchmarks/bench_cohort.py (micro-batch 2: a checkpoint's size does not depend on it), and
trains a step before each save, so that every engine has optimizer state. Then,
`REPEATS` times each: `Trainer.save()` (DeepSpeed's engine saves, the ranks' files, fsync, the
SHA-256 of every file and COMPLETE.json), `file_records` (the hashing alone, on the files just
written), `verify` (what start-up checks: re-reading and hashing every file), and
`Checkpointer.load` (every engine's load_checkpoint, without the verify). Figures (benchmark
checkpoint), medians in seconds: save_s, hash_s, verify_s, load_s; hash_share_of_save and
verify_share_of_resume (verify / (verify + load)); checkpoint_bytes.

Sizes: --quick the demo's three students on the demo teacher's shape; full, the paper's
(recipes/paper_distilled.yaml: a random BERT-base teacher, DistilBioBERT, CompactBioBERT,
TinyBioBERT; seq 256). The page cache holds what was just written, so the hashing reads from
memory: on a file system slower than the hash (about 1.5 GB/s a core) verify costs its read time.
"""

from __future__ import annotations

import logging
import statistics
import tempfile
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

from benchmarks.bench_cohort import (
    DS_CONFIG,
    FULL,
    QUICK,
    log,
    recipe_overrides,
    run_config,
    stdout_to_stderr,
    train_steps,
)

REPEATS = 3


def measure(quick: bool, root: Path) -> dict:
    import deepspeed

    from trainer.checkpoint.store import file_records, read_plan, verify
    from trainer.config.ds_json import load_ds_config, micro_batch_size
    from trainer.runtime.distributed import Runtime
    from trainer.train.builder import build_trainer

    deepspeed.utils.logger.setLevel(logging.WARNING)
    plan = replace(QUICK if quick else FULL, warmup=2, steps=REPEATS, rounds=1)
    ds = {**load_ds_config(DS_CONFIG), "train_micro_batch_size_per_gpu": 2}  # size: states only
    overrides = recipe_overrides(plan, root, micro_batch_size(ds, world_size=1))
    overrides += [f"train.keep={REPEATS + 1}"]
    rt = Runtime.start()
    try:
        cfg = run_config(plan, overrides, root / "runs", "checkpoint", None)
        log(f"building the cohort ({', '.join(s.name for s in cfg.students)})")
        trainer = build_trainer(cfg, ds, rt)
        for s in trainer.students:
            s.engine.train()
        stream = iter(trainer.inputs.loader)
        times: dict[str, list[float]] = {"save": [], "hash": [], "verify": [], "load": []}
        size = 0
        for i in range(REPEATS):
            log(f"round {i + 1}/{REPEATS}: a step, then save, hash, verify, load")
            train_steps(trainer, [next(stream)])
            trainer.step += 1
            start = time.perf_counter()
            directory = trainer.save()
            times["save"].append(time.perf_counter() - start)
            start = time.perf_counter()
            records = file_records(directory)
            times["hash"].append(time.perf_counter() - start)
            size = sum(r["size"] for r in records.values())
            start = time.perf_counter()
            assert verify(directory) is None, directory
            times["verify"].append(time.perf_counter() - start)
            start = time.perf_counter()
            plan = read_plan(directory, rt.world_size, [s.name for s in trainer.students])
            trainer.checkpointer.load(plan, trainer.students)
            times["load"].append(time.perf_counter() - start)
        trainer.inputs.loader.close()
    finally:
        rt.close()
    return {"times": times, "bytes": size, "students": [s.name for s in cfg.students]}


def run(quick: bool) -> Iterator[dict]:
    with tempfile.TemporaryDirectory(prefix="bench-checkpoint-") as tmp, stdout_to_stderr():
        m = measure(quick, Path(tmp))
    med = {k: statistics.median(v) for k, v in m["times"].items()}
    settings = {
        "sizes": "demo" if quick else "paper",
        "students": m["students"],
        "repeats": REPEATS,
        "runs_s": {k: [round(x, 4) for x in v] for k, v in m["times"].items()},
    }
    for key in ("save", "hash", "verify", "load"):
        yield {"metric": f"{key}_s", "value": round(med[key], 4), "unit": "s", "settings": settings}
    yield {
        "metric": "hash_share_of_save",
        "value": round(med["hash"] / med["save"], 4),
        "unit": "ratio",
        "settings": settings,
    }
    yield {
        "metric": "verify_share_of_resume",
        "value": round(med["verify"] / (med["verify"] + med["load"]), 4),
        "unit": "ratio",
        "settings": settings,
    }
    yield {"metric": "checkpoint_bytes", "value": m["bytes"], "unit": "bytes", "settings": settings}
