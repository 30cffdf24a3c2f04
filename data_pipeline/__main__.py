"""Command line of the data pipeline.

    python -m data_pipeline extract --input PATH [PATH ...] --output DIR [--workers N]
        [--parts-only [--slice I/N]]
    python -m data_pipeline tokenize --input PATH [PATH ...] --records DIR --tokenizer NAME_OR_DIR
        --cache CACHE [--slice I/N] ...
    python -m data_pipeline shard --input PATH [PATH ...] --tokenizer NAME_OR_DIR --output DIR ...
        [--token-cache CACHE]
    python -m data_pipeline inspect DIR [--samples N] [--verify]
    python -m data_pipeline demo [--output data/demo]

On a cluster, `extract --parts-only --slice I/N` then `tokenize --slice I/N` run as array tasks
and a final `extract` + `shard --token-cache` merge them (slurm/preprocess.sbatch); the result is
byte-identical to the plain `extract` + `shard`.

Each subcommand lives in its own module with `add_arguments(parser)` and `main(args) -> int`.
A UserError becomes one line `error: ...` on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from data_pipeline.errors import UserError

COMMANDS = {
    "extract": ("data_pipeline.extract", "PubMed XML -> text records (jsonl.gz + report.json)"),
    "tokenize": ("data_pipeline.token_cache", "extract's parts -> token ids for shard (arrays)"),
    "shard": ("data_pipeline.shards.writer", "records -> WebDataset token shards + manifest.json"),
    "inspect": (
        "data_pipeline.shards.inspect_shards",
        "summary and decoded samples of a shard directory",
    ),
    "demo": ("data_pipeline.demo.build", "build the embedded demo corpus, tokenizer and shards"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m data_pipeline", description=__doc__.split("\n")[0]
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(_module=module)
        importlib.import_module(module).add_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(importlib.import_module(args._module).main(args) or 0)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
