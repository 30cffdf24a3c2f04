"""`python -m trainer.checkpoint info DIR`: the newest complete checkpoint under DIR, for scripts.

    python -m trainer.checkpoint info runs/demo/checkpoints
    # step=40 world_size=2 path=runs/demo/checkpoints/step-00000040

One line of key=value pairs from its COMPLETE.json (not verified: the resume verifies what it
loads), or nothing when DIR holds no complete checkpoint. slurm/train.sbatch reads it to say
that a resubmission resumes on another number of ranks.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from data_pipeline.errors import UserError
from trainer.checkpoint.store import newest_complete_marker


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m trainer.checkpoint", description=__doc__.split("\n")[0]
    )
    sub = p.add_subparsers(dest="command", required=True)
    info = sub.add_parser("info", help="the newest complete checkpoint under DIR")
    info.add_argument("directory", type=Path, metavar="DIR", help="a run's checkpoints/")
    args = p.parse_args(argv)
    try:
        found = newest_complete_marker(args.directory)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if found is not None:
        directory, marker = found
        print(f"step={marker.step} world_size={marker.world_size} path={directory}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
