"""Peak GPU memory of the paper's cohort per ZeRO stage and micro-batch.

    python benchmarks/run.py --only memory        # on a GPU; skipped (no figures) elsewhere

For ZeRO-1/2/3 (ds_configs/zero{1,2,3}.json) and micro-batch 24, 64 and 128, the paper-size cohort
(benchmarks/bench_cohort.py: a random BERT-base teacher + DistilBioBERT + CompactBioBERT +
TinyBioBERT, seq 256, generated full-length shards) trains 3 steps in a process of its own
(`python -m benchmarks.bench_memory STAGE MICRO`, so no run's cached blocks count in the next);
figure `memory` / `peak_gb` = torch.cuda.max_memory_allocated, or null where the run failed (out
of memory, say; the reason goes to stderr).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from benchmarks.bench_cohort import (
    FULL,
    ROOT,
    Plan,
    log,
    recipe_overrides,
    run_config,
    stdout_to_stderr,
)
from benchmarks.common import Skipped

MEMORY_STAGES, MEMORY_MICRO = (1, 2, 3), (24, 64, 128)


def measure_memory(
    stage: int, micro: int, root: Path, sizes: str = "paper", compile: bool | None = None
) -> float | None:
    """Peak GPU memory (GB) of 3 cohort steps at the paper `sizes`, ZeRO `stage`, `micro`
    (None without a GPU: benchmarks/gpu_check.py --dry goes through it at tiny sizes)."""
    import deepspeed
    import torch

    from trainer.config.ds_json import load_ds_config
    from trainer.runtime.distributed import Runtime
    from trainer.train.builder import build_trainer

    deepspeed.utils.logger.setLevel(logging.WARNING)
    ds = load_ds_config(ROOT / "ds_configs" / f"zero{stage}.json")
    ds["train_micro_batch_size_per_gpu"] = micro
    plan = Plan(sizes, FULL.recipe, warmup=0, steps=4, rounds=1, compile=compile)
    overrides = recipe_overrides(plan, root, micro)
    rt = Runtime.start()
    try:
        trainer = build_trainer(run_config(plan, overrides, root / "runs", "mem", None), ds, rt)
        gpu = torch.cuda.is_available()
        if gpu:
            torch.cuda.reset_peak_memory_stats()
        stream = iter(trainer.inputs.loader)
        for _ in range(3):
            trainer.train_batch(next(stream), trainer.active)
        if not gpu:
            return None
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() / 1e9
    finally:
        rt.close()


def memory_figures(
    stages: tuple[int, ...] = MEMORY_STAGES,
    micros: tuple[int, ...] = MEMORY_MICRO,
    sizes: str = "paper",
    compile: bool | None = None,
) -> Iterator[dict]:
    """One figure per (stage, micro-batch); at the paper sizes only on a GPU. `compile`:
    train.compile (None: the trainer's default, on a GPU)."""
    import torch

    if sizes == "paper" and not torch.cuda.is_available():
        log("memory: skipped (needs a GPU)")
        return
    path = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]  # kept
    for stage in stages:
        for micro in micros:
            command = ["-m", "benchmarks.bench_memory", str(stage), str(micro), "--sizes", sizes]
            command += [] if compile is None else ["--compile", str(compile).lower()]
            proc = subprocess.run(
                [sys.executable, *command],
                cwd=ROOT,
                capture_output=True,
                text=True,
                env={**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), *path])},
            )
            if proc.returncode != 0:
                tail = proc.stderr.strip().splitlines()[-1:] or ["?"]
                log(f"memory ZeRO-{stage} micro-batch {micro}: failed ({tail[0]})")
                value = None
            else:
                value = json.loads(proc.stdout.strip().splitlines()[-1])["peak_gb"]
                log(f"memory ZeRO-{stage} micro-batch {micro}: {value} GB")
            yield {"metric": "peak_gb", "value": value, "unit": "GB", "settings": {
                "zero_stage": stage, "micro_batch": micro, "sizes": sizes, "compile": compile,
                "recipe": "recipes/paper_distilled.yaml"}}  # fmt: skip


def run(quick: bool) -> Iterator[dict]:
    """The figures (the same with --quick: the paper sizes are the point); on a GPU only."""
    import torch

    if not torch.cuda.is_available():
        raise Skipped("needs a GPU")
    yield from memory_figures()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("stage", type=int, choices=MEMORY_STAGES)
    p.add_argument("micro", type=int)
    p.add_argument("--sizes", choices=("paper", "tiny"), default="paper")
    p.add_argument("--compile", choices=("true", "false"), default=None, help="default: on a GPU")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as tmp:
        with stdout_to_stderr():
            compile = None if args.compile is None else args.compile == "true"
            peak = measure_memory(args.stage, args.micro, Path(tmp), args.sizes, compile)
    print(json.dumps({"peak_gb": peak}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
