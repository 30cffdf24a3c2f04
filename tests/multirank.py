"""Run a function on N real ranks (gloo on CPU), each in its own spawned process.

    results = run_distributed(train_and_report, 2, arg1, arg2)   # [rank 0's return, rank 1's]

The function must be defined at module level (spawn pickles it by reference) and receives
(rank, world_size, *args); the rank environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR,
MASTER_PORT) is set before it runs, exactly as a launcher would. A rank that raises fails the
call with its traceback; a run past `timeout` seconds is killed and fails the call.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue
import traceback

from trainer.runtime.distributed import free_port


def _entry(fn, rank: int, world: int, port: int, args: tuple, results) -> None:
    os.environ.update(
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
        LOCAL_WORLD_SIZE=str(world),
        LOCAL_SIZE=str(world),  # as the deepspeed launcher sets it
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    try:
        results.put((rank, True, fn(rank, world, *args)))
    except BaseException:  # noqa: BLE001 - every failure goes back to the test
        results.put((rank, False, traceback.format_exc()))


def run_distributed(fn, world_size: int, *args, timeout: float = 300.0) -> list:
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    port = free_port()
    procs = [
        ctx.Process(target=_entry, args=(fn, r, world_size, port, args, results), daemon=True)
        for r in range(world_size)
    ]
    for p in procs:
        p.start()
    got: dict[int, tuple[bool, object]] = {}
    try:
        while len(got) < world_size:
            try:
                rank, ok, value = results.get(timeout=timeout)
            except queue.Empty:
                raise TimeoutError(
                    f"ranks {sorted(set(range(world_size)) - set(got))} did not finish in "
                    f"{timeout:.0f} s"
                ) from None
            got[rank] = (ok, value)
            if not ok:
                break  # the other ranks may be stuck in a collective: stop them below
        for p in procs:
            p.join(timeout=30 if len(got) == world_size else 1)
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
    failed = {r: v for r, (ok, v) in got.items() if not ok}
    if failed:
        rank = min(failed)
        raise AssertionError(f"rank {rank} of {world_size} failed:\n{failed[rank]}")
    return [got[r][1] for r in range(world_size)]
