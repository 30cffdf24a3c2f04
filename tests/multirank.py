"""Run a function on N real ranks (gloo on CPU), each in a fresh process of its own.

    results = run_distributed(train_and_report, 2, arg1, arg2)   # [rank 0's return, rank 1's]

The function must be defined at module level (it is pickled by reference) and receives
(rank, world_size, *args); the rank environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR,
MASTER_PORT) is set before it runs, exactly as a launcher would, over a copy of the caller's
environment at the call. A rank that raises fails the call with its traceback; a run past
`timeout` seconds is killed and fails the call.

The ranks come from multiprocessing's forkserver, which has imported the trainer's heavy modules
once (PRELOAD): a spawned rank spent about 7 s importing them (transformers' modeling_utils,
DeepSpeed's optimizers, which import torch's compiler) before its first step, in every one of
the suite's distributed calls. Each rank is still a process of its own that has run nothing:
the forkserver only imports, never computes, so no thread pool or process group crosses the fork.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue
import traceback

from trainer.runtime.distributed import free_port

# What `trainer.main` imports on its first run, the costly ones named (cProfile of a first run).
PRELOAD = [
    "torch",
    "deepspeed",
    "deepspeed.runtime.zero.muon.muon_optimizer",  # imports torch._inductor: 2 s
    "transformers.modeling_utils",  # 3.8 s
    "trainer.main",
    "trainer.train.builder",
    "trainer.train.loop",
]


def _entry(fn, rank: int, world: int, port: int, args: tuple, results, env: dict) -> None:
    os.environ.clear()
    os.environ.update(env)  # NOTE: the caller's environment now, not the forkserver's at its start
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
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(PRELOAD)
    results = ctx.Queue()
    port = free_port()
    procs = [
        ctx.Process(
            target=_entry,
            args=(fn, r, world_size, port, args, results, dict(os.environ)),
            daemon=True,
        )
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
