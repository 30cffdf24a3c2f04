"""Downstream evaluation: fine-tune models on the paper's NER, RE and QA benchmarks; tabulate.

    python -m evaluation run --models DIR_OR_NAME [...] --tasks ner,re,qa --data DIR --output DIR
        [--seeds 3] [--first-seed 42] [--datasets NAME,...] [--folds 1,...] [--device auto]
        [--precision auto|bf16|fp32] [--shard I/N] [--rerun-stale] [--dry-run]
        [section.key=value ...]        e.g. ner.lr=3e-5 re.epochs=5 qa.max_length=512
    python -m evaluation report --output DIR

Exit codes: 0 done, 2 bad input (one line names the file, key or value, or an --output that holds
files and no results.json or cells/ of this command), 3 a non-finite training loss (the line names
the cell), 130 interrupted; any other exception is a bug and exits 1 with its traceback.
Finished cells are kept in every case.
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from evaluation.catalog import TASKS

if TYPE_CHECKING:
    from evaluation.config import EvalSettings

EXIT_BAD_INPUT, EXIT_NONFINITE = 2, 3
OVERRIDE = re.compile(r"(ner|re|qa|speed)\.\w+=.*")


def _csv(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def _folds(text: str) -> list[int]:
    try:
        return [int(t) for t in _csv(text)]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected fold numbers like 1,2,3, got {text!r}"
        ) from None


def _shard(text: str) -> tuple[int, int]:
    i, sep, n = text.partition("/")
    if not (sep and i.isdigit() and n.isdigit() and 0 <= int(i) < int(n)):
        raise argparse.ArgumentTypeError(f"expected I/N with 0 <= I < N, got {text!r}")
    return int(i), int(n)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m evaluation", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    r = sub.add_parser(
        "run",
        help="fine-tune and score, then write the report",
        epilog="Settings: section.key=value anywhere on the line, e.g. ner.lr=3e-5 "
        "qa.max_length=512 speed.batch_size=64 (sections ner, re, qa, speed).",
    )
    r.add_argument("--models", nargs="+", required=True, metavar="[LABEL=]DIR_OR_NAME")
    r.add_argument("--tasks", type=_csv, default=list(TASKS), help="ner,re,qa (default: all)")
    r.add_argument("--data", type=Path, required=True, help="BioBERT's datasets folder")
    r.add_argument("--output", type=Path, required=True, help="results directory (resumable)")
    r.add_argument("--seeds", type=int, default=3, help="fine-tuning runs per dataset")
    r.add_argument("--first-seed", type=int, default=42, help="seeds are N, N+1, ...")
    r.add_argument("--datasets", type=_csv, default=None, help="subset, e.g. NCBI-disease,GAD")
    r.add_argument("--folds", type=_folds, default=None, help="GAD/EU-ADR folds (default: all)")
    r.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    r.add_argument("--precision", default="auto", help="auto | bf16 | fp32 (auto: bf16 on GPU)")
    r.add_argument("--shard", type=_shard, default=(0, 1), help="run every N-th cell from I")
    r.add_argument("--rerun-stale", action="store_true", help="recompute outdated cells")
    r.add_argument("--dry-run", action="store_true", help="check inputs, print the plan, exit")
    r.add_argument("--log-every", type=float, default=15.0, help="seconds between progress lines")
    rep = sub.add_parser("report", help="rebuild results.json / results.md / chart.png")
    rep.add_argument("--output", type=Path, required=True)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    # NOTE: `section.key=value` overrides may come anywhere; --models takes several values, so
    # the ones written right after it land there.
    args, extra = parser.parse_known_args(argv)
    if args.command == "run":
        args.overrides = [m for m in args.models if OVERRIDE.fullmatch(m)]
        args.models = [m for m in args.models if not OVERRIDE.fullmatch(m)]
        args.overrides += [x for x in extra if OVERRIDE.fullmatch(x)]
        extra = [x for x in extra if not OVERRIDE.fullmatch(x)]
        if not args.models:
            parser.error("--models: no model given")
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    from data_pipeline.errors import UserError
    from evaluation.report import write_report
    from evaluation.runner import RunRequest, run

    try:
        if args.command == "report":
            if not (args.output / "cells").is_dir():
                raise UserError(f"{args.output}: no cells/ folder; not an evaluation output")
            write_report(args.output)
            return 0
        settings = read_settings(args.overrides)
        request = RunRequest(
            models=args.models,
            data=args.data,
            output=args.output,
            tasks=args.tasks,
            datasets=args.datasets,
            folds=args.folds,
            seeds=args.seeds,
            first_seed=args.first_seed,
            device=args.device,
            precision=args.precision,
            shard=args.shard,
            rerun_stale=args.rerun_stale,
            dry_run=args.dry_run,
            log_every_s=args.log_every,
        )
        run(request, settings)
    except UserError as e:  # DataError included; a refused --output. Anything else is a bug.
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except FloatingPointError as e:
        print(f"error: {e} (finished cells are kept)", file=sys.stderr)
        return EXIT_NONFINITE
    except KeyboardInterrupt:
        print("interrupted (finished cells are kept; rerun to resume)", file=sys.stderr)
        return 130
    return 0


def read_settings(overrides: list[str]) -> EvalSettings:
    """The fine-tuning settings with the `section.key=value` overrides; bad ones raise UserError."""
    from evaluation.config import build_settings

    return build_settings(overrides)


if __name__ == "__main__":
    sys.exit(main())
