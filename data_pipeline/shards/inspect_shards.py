"""`python -m data_pipeline inspect DIR`: what a shard directory holds, and a few samples as text.

    python -m data_pipeline inspect SHARDS [--samples 3] [--split train|eval] [--verify]

Prints the manifest summary (tokenizer, mode, max_len, dtype; per split: shards, samples, tokens,
mean length, the share of a max_len-padded batch that would be padding, and a length histogram),
then the first samples of a split read with stock `webdataset` (no project code in the read path,
so what this shows is what any WebDataset consumer sees), decoded with the manifest's tokenizer.

`--verify` first checks every shard the manifest lists, both splits, against its recorded size
and SHA-256 and fails (exit status 2) naming each one that is missing or differs. Shards of a
manifest older than checksums are listed as not verified and do not fail the check.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import textwrap
from pathlib import Path
from typing import TextIO

from data_pipeline.errors import UserError
from data_pipeline.io_utils import sha256_file
from data_pipeline.shards.manifest import (
    LENGTH_BINS,
    SPLITS,
    Manifest,
    load_tokenizer,
    tokenizer_info,
)

_BAR = 40  # characters of the widest histogram bar


def summary_lines(m: Manifest) -> list[str]:
    """The manifest as human-readable lines (no shard reading)."""
    t = m.tokenizer
    in_bytes = sum(int(i.get("bytes", 0)) for i in m.inputs)
    lines = [
        f"tokenizer: {t.name} (vocab {t.vocab_size:,}, hash {t.vocab_hash[:12]})",
        f"mode: {m.mode}, max_len: {m.max_len}, dtype: {m.dtype}, eval fraction: {m.eval_fraction}",
        f"inputs: {len(m.inputs)} files, {in_bytes:,} bytes",
    ]
    for name, split in sorted(m.splits.items(), key=lambda kv: SPLITS.index(kv[0])):
        n, tokens = split.samples, split.tokens
        if not n:
            lines.append(f"{name}: no samples")
            continue
        # Padding share: what padding every sequence to max_len would waste (pack mode ~0).
        lines.append(
            f"{name}: {len(split.shards)} shards, {n:,} samples, {tokens:,} tokens, "
            f"mean length {tokens / n:.1f}, padding share {1 - tokens / (n * m.max_len):.1%}"
        )
        hist = [sum(s.length_hist[i] for s in split.shards) for i in range(LENGTH_BINS)]
        top = max(hist) or 1
        for i, count in enumerate(hist):
            if not count:
                continue  # empty bins only lengthen the listing; the ranges say what is missing
            lo, hi = i * m.max_len // LENGTH_BINS, (i + 1) * m.max_len // LENGTH_BINS
            bar = "#" * round(_BAR * count / top)
            lines.append(f"  length {lo + 1:>5}-{hi:<5} {count:>10,} {bar}".rstrip())
    return lines


def verify_shards(directory: Path, m: Manifest, out: TextIO) -> None:
    """Check every listed shard's size and SHA-256; raise UserError naming each bad one."""
    bad, unverified, total = [], [], 0
    for name in SPLITS:
        for s in m.splits[name].shards if name in m.splits else []:
            total += 1
            path = directory / s.name
            if not path.is_file():
                bad.append(f"{s.name} (missing)")
            elif s.sha256 is None:
                unverified.append(s.name)
            elif s.bytes is not None and (size := path.stat().st_size) != s.bytes:
                bad.append(f"{s.name} ({size} bytes, manifest.json lists {s.bytes})")
            elif sha256_file(path) != s.sha256:
                bad.append(f"{s.name} (corrupt: SHA-256 differs from manifest.json)")
    for why in bad:
        print(f"  BAD {why}", file=out)
    if unverified:
        print(
            f"  not verified: {len(unverified)} shards have no SHA-256 in manifest.json (made "
            f"before shard recorded checksums; re-shard to verify them): {unverified[:3]}",
            file=out,
        )
    if bad:
        raise UserError(
            f"{directory}: {len(bad)} of {total} shards fail verification: {', '.join(bad)}"
        )
    print(f"  verified: {total - len(unverified)} of {total} shards match manifest.json", file=out)


def _decoder(m: Manifest):
    """(tokenizer, None) when the manifest's tokenizer loads and matches, else (None, why)."""
    try:
        tok = load_tokenizer(m.tokenizer.name)
        m.check_tokenizer(tokenizer_info(tok, m.tokenizer.name))
    except UserError as e:
        return None, str(e)
    return tok, None


def inspect(
    directory: str | Path,
    samples: int = 3,
    split: str = "train",
    out: TextIO | None = None,
    verify: bool = False,
) -> None:
    """Print the manifest summary of `directory` and its first `samples` samples of `split`;
    with `verify`, check every shard against the manifest first (UserError if one fails)."""
    out = out if out is not None else sys.stdout  # resolved late so redirected stdout is honoured
    directory = Path(directory)
    if split not in SPLITS:
        raise UserError(f"--split must be one of {', '.join(SPLITS)}, got {split!r}")
    if samples < 0:
        raise UserError(f"--samples must be 0 or more, got {samples}")
    m = Manifest.load(directory)
    print(f"{directory}", file=out)
    for line in summary_lines(m):
        print(f"  {line}", file=out)
    if verify:
        verify_shards(directory, m, out)
    shards = m.splits.get(split)
    if not samples or shards is None or not shards.shards:
        if samples:
            print(f"no {split} samples to show", file=out)
        return
    paths = [directory / s.name for s in shards.shards]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise UserError(f"{directory}: shard files listed in the manifest are missing: {missing}")

    import webdataset as wds

    tok, why = _decoder(m)
    if tok is None:
        print(f"(showing token ids: cannot decode them: {why})", file=out)
    print(f"first {samples} {split} samples:", file=out)
    dataset = wds.WebDataset([str(p) for p in paths], shardshuffle=False).decode()
    for sample in itertools.islice(dataset, samples):
        ids = sample["input_ids.npy"]
        print(f"- {sample['__key__']} {sample['json']}", file=out)
        body = tok.decode(ids.tolist()) if tok is not None else " ".join(map(str, ids.tolist()))
        print(textwrap.fill(body, 100, initial_indent="    ", subsequent_indent="    "), file=out)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("directory", metavar="DIR", help="a shard directory (with manifest.json)")
    parser.add_argument("--samples", type=int, default=3, help="samples to decode and show")
    parser.add_argument("--split", choices=SPLITS, default="train")
    parser.add_argument(
        "--verify",
        action="store_true",
        help="check every shard's size and SHA-256 against the manifest (exit 2 naming bad ones)",
    )


def main(args: argparse.Namespace) -> int:
    inspect(args.directory, samples=args.samples, split=args.split, verify=args.verify)
    return 0
