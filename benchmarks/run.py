"""Every benchmark of the project, one JSON line per figure on stdout.

    python benchmarks/run.py [--quick] [--only NAME[,NAME]] [--family NAME] [--out FILE.jsonl]

A figure is {"benchmark", "metric", "value", "unit", "device", "settings"}. Progress goes to
stderr, figures to stdout (and to --out, appended), so `> results.jsonl` keeps only figures.
Ratios are measured within one run on one machine; absolute figures mean something only on the
device named in the line. Benchmarks are modules in this folder exposing
`run(quick: bool) -> Iterator[dict]` (dicts with benchmark, metric, value, unit, settings).
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import os
import platform
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import Skipped  # noqa: E402 - after the path it needs

BENCHMARKS = {
    "preprocess": "benchmarks.bench_preprocess",
    "loader": "benchmarks.bench_loader",
    "cohort": "benchmarks.bench_cohort",
    "step": "benchmarks.bench_step",
    "memory": "benchmarks.bench_memory",
    "checkpoint": "benchmarks.bench_checkpoint",
    "quality": "benchmarks.bench_quality",
    "families": "benchmarks.bench_families",
    "inference": "benchmarks.bench_inference",
    "attention": "benchmarks.bench_attention",
}


def device_name() -> str:
    try:
        import torch

        if torch.cuda.is_available():
            return torch.cuda.get_device_name(0)
    except ImportError:
        pass
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"cpu: {cpu} ({os.cpu_count()} cores)"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="small sizes: minutes on 2 cores")
    p.add_argument("--only", default="", help=f"comma-separated subset of {sorted(BENCHMARKS)}")
    p.add_argument("--out", default=None, help="also append the JSON lines to this file")
    p.add_argument(
        "--family", default=None, help="the model family of the benchmarks that take one (quality)"
    )
    args = p.parse_args(argv)
    names = [n for n in args.only.split(",") if n] or list(BENCHMARKS)
    unknown = sorted(set(names) - set(BENCHMARKS))
    if unknown:
        p.error(f"unknown benchmark(s) {unknown}; known: {sorted(BENCHMARKS)}")
    device = device_name()
    out = open(args.out, "a") if args.out else None
    silent = []  # benchmarks that ended without a figure: a failure, not a pass
    started_with = dict(os.environ)
    try:
        for name in names:
            print(f"== {name}", file=sys.stderr, flush=True)
            # NOTE: each benchmark in the environment this process started with: one that
            # starts a Runtime here sets RANK, WORLD_SIZE, LOCAL_WORLD_SIZE=1 (trainer/
            # runtime.py), which a later one's launched ranks would inherit
            os.environ.clear()
            os.environ.update(started_with)
            figures = 0
            try:
                run = importlib.import_module(BENCHMARKS[name]).run
                takes_family = "family" in inspect.signature(run).parameters
                kwargs = {"family": args.family} if args.family and takes_family else {}
                for fig in run(args.quick, **kwargs):
                    line = json.dumps({"benchmark": name, "device": device, **fig}, sort_keys=True)
                    print(line, flush=True)
                    figures += 1
                    if out:
                        out.write(line + "\n")
                        out.flush()
            except Skipped as why:
                print(f"   {name}: skipped ({why})", file=sys.stderr, flush=True)
                continue
            if not figures:
                silent.append(name)
    finally:
        os.environ.clear()
        os.environ.update(started_with)
        if out:
            out.close()
    if silent:
        print(f"error: no figure from benchmark(s) {silent}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
