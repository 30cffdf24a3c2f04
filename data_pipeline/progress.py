"""The one progress line of every long job (extract, shard, the trainer, evaluation): done/total,
rate and ETA, formatted by tqdm's own formatters, so the figures read the same everywhere.

    progress_line(40, 500, "steps", elapsed=80.0)              # '40/500 | 0.50 steps/s | ETA 15:20'
    progress_line(40, 500, "steps", rate=0.5)                  # the caller's rate instead
    progress_line(1234, None, "records", elapsed=2.0)          # '1,234 | 617 records/s' (no total)
    eta(0.25, 1.0, elapsed=30.0)                               # '01:30' from a fraction done
    duration(3723.4), si(3700.0)                               # '1:02:03', '3.70k'

Rates are figures with SI prefixes (`tqdm.format_sizeof`: 3 significant digits) and times are
[H:]MM:SS (`tqdm.format_interval`); a rate or an ETA that cannot be known yet (nothing done) is
`?`. `initial` is what was done before this process started (a resumed run): the rate and the
ETA count only this process's work. Imports tqdm only (no torch): the data pipeline uses it.
"""

from __future__ import annotations

import math

from tqdm import tqdm


def progress_line(
    done: int,
    total: int | None,
    unit: str,
    *,
    elapsed: float = 0.0,
    initial: int = 0,
    rate: float | None = None,
) -> str:
    """`done/total | <rate> <unit>/s | ETA <time>`: the rate is (done - initial) / elapsed unless
    `rate` (units per second) is given; with `total` None, `done | <rate> <unit>/s`."""
    if rate is not None and not (math.isfinite(rate) and rate > 0):
        rate = None
        elapsed = 0.0  # NOTE: tqdm would derive a rate from elapsed; here none is known
    counts = f"{done:,}/{total:,}" if total is not None else f"{done:,}"
    fmt = "{rate_noinv_fmt} | ETA {remaining}" if total is not None else "{rate_noinv_fmt}"
    meter = tqdm.format_meter(
        done,
        total,
        elapsed,
        unit=f" {unit}",
        unit_scale=True,
        initial=initial,
        rate=rate,
        bar_format=fmt,
    )
    return f"{counts} | {meter}"


def eta(done: float, total: float, elapsed: float) -> str:
    """The time left at the pace so far, when `done` of `total` took `elapsed` seconds (any
    unit: records, bytes, a fraction of 1); `?` before anything is done."""
    return tqdm.format_meter(done, total, elapsed, bar_format="{remaining}")


def duration(seconds: float) -> str:
    """A time span as [H:]MM:SS (`?` for one that is not finite)."""
    return tqdm.format_interval(seconds) if math.isfinite(seconds) else "?"


def si(x: float) -> str:
    """A figure with an SI prefix, 3 significant digits: 3700 -> `3.70k`."""
    return tqdm.format_sizeof(x)
