"""Train a cohort of compact students on one frozen teacher.

    deepspeed trainer/main.py --ds_config ds_configs/zero2.json [--recipe recipes/X.yaml]
        [--students NAME[,NAME]] [--dry-run] [key.sub=value ...] [ds.key.sub=value ...]
    python trainer/main.py --print-keys      # every recipe key, its type and default

With no --recipe it runs recipes/demo.yaml on the embedded demo corpus: the demo teacher
(recipes/demo_teacher.yaml) is trained first when data/demo/teacher is missing or stale, then
the students are distilled from it, each beside its MLM-only twin.
`deepspeed --num_gpus 2 trainer/main.py ...` runs two ranks (on CPU too); plain
`python trainer/main.py ...` runs one. --dry-run prints the plan and a pre-flight (teacher,
students, tokenizer, shards, batch: one line each, ok or what to fix; trainer/cli/preflight.py).
Exit codes: 0 done, 2 bad input (one line says what: a UserError), 3 stopped on a non-finite
loss, 75 preempted after a complete checkpoint (requeue to resume) or by SIGTERM/SIGUSR1 before
training started, 130 Ctrl-C before training started; any other exception is a bug and exits 1
with its traceback.
Overrides starting with `ds.` set keys of the DeepSpeed JSON (ds.train_micro_batch_size_per_gpu=2,
ds.zero_optimization.stage=3); the JSON a run used is in runs/<name>/ds_config.json.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

# NOTE: `deepspeed trainer/main.py` runs this file as a script, so Python puts trainer/ first on
# sys.path: its packages (config, models, train, ...) would shadow any installed module of that
# name for every import in the process. The trainer is imported as `trainer.*` (installed).
if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    sys.path.pop(0)

from data_pipeline.errors import UserError  # noqa: E402
from trainer.cli import preflight  # noqa: E402
from trainer.config.ds_json import DS_OVERRIDE_PREFIX, apply_ds_overrides, load_ds_config  # noqa: E402
from trainer.config.recipe import (  # noqa: E402
    RunConfig,
    load_config,
    render_keys,
    select_students,
)
from trainer.runtime.logs import quiet_console, setup_logging  # noqa: E402

EXIT_BAD_INPUT, EXIT_NONFINITE = 2, 3


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="trainer/main.py", description=__doc__.splitlines()[0])
    p.add_argument("--ds_config", help="DeepSpeed JSON, e.g. ds_configs/zero2.json (required)")
    p.add_argument("--recipe", default=None, help="run recipe (default: recipes/demo.yaml)")
    p.add_argument("--students", default=None, help="train only these students (comma-separated)")
    p.add_argument("--dry-run", action="store_true", help="print the resolved recipe and plan")
    p.add_argument(
        "--print-keys", action="store_true", help="list every recipe key, its type and default"
    )
    p.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)  # launcher's
    p.add_argument(
        "overrides",
        nargs="*",
        metavar="key.sub=value",
        help="recipe overrides; ds.key.sub=value sets a DeepSpeed JSON key",
    )
    args = p.parse_intermixed_args(argv)
    if args.ds_config is None and not args.print_keys:
        p.error("the following arguments are required: --ds_config")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.print_keys:  # NOTE: no torch, transformers or DeepSpeed needed (nor imported)
        print(render_keys(), flush=True)
        return 0
    setup_logging()  # NOTE: first, so that DeepSpeed's start-up lines are filtered and kept
    try:
        cfg, ds = read_config(args)
        # NOTE: before any hub lookup: offline, every one then fails at once, without retries
        network = preflight.go_offline_if_unreachable(cfg)
        if args.dry_run:
            return dry_run(cfg, ds, network)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return EXIT_BAD_INPUT
    if network is not None and "offline" in network.detail:
        logging.getLogger("trainer").info("network: %s", network.detail)

    from trainer.cli.teacher_build import ensure_teacher
    from trainer.runtime import run_lock
    from trainer.runtime.distributed import Runtime
    from trainer.runtime.preemption import PreemptionFlag
    from trainer.train.builder import build_trainer
    from trainer.train.loop import NonFiniteLoss

    preempt = PreemptionFlag()
    preempt.install()  # NOTE: first: a signal during start-up stops the process at once
    try:
        rt = Runtime.start()
    except UserError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        preempt.restore()
        return EXIT_BAD_INPUT
    quiet_other_ranks(rt.rank)
    trainer = None
    try:
        rc = ensure_teacher(cfg, ds, rt, preempt)  # the demo's: trained first when missing
        if rc != 0:
            return rc
        trainer = build_trainer(cfg, ds, rt, preempt)
        return trainer.fit()
    except UserError as e:  # NOTE: any other exception is a bug: it keeps its traceback
        print(f"error{_where(rt)}: {e}", file=sys.stderr, flush=True)
        return EXIT_BAD_INPUT
    except NonFiniteLoss as e:
        print(f"error{_where(rt)}: {e}", file=sys.stderr, flush=True)
        return EXIT_NONFINITE
    finally:
        if trainer is not None:
            trainer.metrics.close()
        rt.close()
        run_lock.release_all()
        preempt.restore()


def read_config(args: argparse.Namespace) -> tuple[RunConfig, dict]:
    """The recipe (with its overrides and --students) and the DeepSpeed JSON (with its ds.
    overrides); bad input raises UserError."""
    ds_overrides = [o for o in args.overrides if o.startswith(DS_OVERRIDE_PREFIX)]
    recipe_overrides = [o for o in args.overrides if not o.startswith(DS_OVERRIDE_PREFIX)]
    cfg = load_config(args.recipe, recipe_overrides)
    if args.students:
        cfg = select_students(cfg, [n.strip() for n in args.students.split(",") if n.strip()])
    ds = apply_ds_overrides(load_ds_config(args.ds_config), ds_overrides)
    return cfg, ds


def dry_run(cfg, ds: dict, network) -> int:
    """The resolved recipe, the plan and the pre-flight checks; 2 when a check fails."""
    import os

    from trainer.cli.plan import render_plan

    world = int(os.environ.get("WORLD_SIZE", "1"))
    print(render_plan(cfg, ds), flush=True)
    checks = ([network] if network is not None else []) + preflight.run_checks(cfg, ds, world)
    print("\n# pre-flight", *(c.line() for c in checks), sep="\n", flush=True)
    failed = [c for c in checks if c.problem is not None]
    if failed:  # NOTE: on stderr too, for the jobs that keep stdout as the plan (train.sbatch)
        for check in failed:
            print(check.line(), file=sys.stderr)
        print(f"error: {len(failed)} of {len(checks)} pre-flight checks failed", file=sys.stderr)
        return EXIT_BAD_INPUT
    return 0


def quiet_other_ranks(rank: int) -> None:
    """Progress and info come from rank 0; other ranks report warnings and errors only on the
    console (their train.rank-0000N.log keeps their info too). DeepSpeed: warnings and errors."""
    import deepspeed

    deepspeed.utils.logger.setLevel(logging.WARNING)
    if rank != 0:
        quiet_console()


def _where(rt) -> str:
    return f" (rank {rt.rank})" if rt.world_size > 1 else ""


if __name__ == "__main__":
    sys.exit(main())
