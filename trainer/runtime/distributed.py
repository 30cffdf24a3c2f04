"""The process's place in the job: distributed init, device, and the collectives the loop uses.

    rt = Runtime.start()      # after `deepspeed`, `torchrun`, srun with rank variables, or alone
    rt.rank, rt.world_size, rt.device, rt.is_main
    rt.any(flag)              # True on every rank if it is True on some rank (CPU gloo group)
    rt.on_main(fn)            # fn() on rank 0; its error is raised on every rank
    rt.from_main(value)       # rank 0's int on every rank
    rt.close()

- Launched by the DeepSpeed launcher (or torchrun), the rank comes from the environment; run as a
  plain `python trainer/main.py` it is a world of one (the variables are filled in with a free
  local port).
- Launched by srun, one task per GPU (slurm/train.sbatch), each task maps Slurm's variables to
  the launcher's when those are not set: RANK = SLURM_PROCID, WORLD_SIZE = SLURM_STEP_NUM_TASKS,
  LOCAL_RANK = SLURM_LOCALID, LOCAL_WORLD_SIZE = this node's entry of SLURM_STEP_TASKS_PER_NODE
  (plus what the DeepSpeed launcher also exports: LOCAL_SIZE, CROSS_RANK, CROSS_SIZE).
  MASTER_ADDR/MASTER_PORT come from the batch script. Only inside a job step (SLURM_STEP_ID set):
  the batch script itself also carries SLURM_PROCID and SLURM_NTASKS, and a `python
  trainer/main.py` run there is still a world of one.
- The accelerator is DeepSpeed's: CUDA where there is one, else CPU with the gloo backend.
  On CPU, each rank gets an equal share of the cores for its intra-op threads unless
  OMP_NUM_THREADS says otherwise (two ranks with all cores each only fight over them).
- `any()` runs on a gloo group even under NCCL, so agreeing on a host flag (preemption) never
  needs a device sync.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from data_pipeline.errors import UserError
from trainer.runtime import startup

logger = logging.getLogger(__name__)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tasks_on_node(tasks_per_node: str, node: int) -> int:
    """Node `node`'s task count from Slurm's compressed list, e.g. "4(x2),3" -> 4, 4, 3."""
    counts: list[int] = []
    for item in tasks_per_node.split(","):
        count, _, repeat = item.partition("(x")
        counts += [int(count)] * (int(repeat.rstrip(")")) if repeat else 1)
    return counts[node]


def _fill_from_slurm() -> None:
    env = os.environ
    if "RANK" in env and "WORLD_SIZE" in env or "SLURM_STEP_ID" not in env:
        return
    node = int(env.get("SLURM_NODEID", "0"))
    world = env.get("SLURM_STEP_NUM_TASKS") or env["SLURM_NTASKS"]
    per_node = env.get("SLURM_STEP_TASKS_PER_NODE") or env.get("SLURM_TASKS_PER_NODE") or world
    local_world = str(_tasks_on_node(per_node, node))
    env.update(
        RANK=env["SLURM_PROCID"],
        WORLD_SIZE=world,
        LOCAL_RANK=env.get("SLURM_LOCALID", "0"),
        LOCAL_WORLD_SIZE=local_world,
        LOCAL_SIZE=local_world,
        CROSS_RANK=str(node),
        CROSS_SIZE=env.get("SLURM_STEP_NUM_NODES") or env.get("SLURM_NNODES", "1"),
    )
    if world == "1":  # a one-task step needs no rendezvous address from the script
        env.setdefault("MASTER_ADDR", "127.0.0.1")
        env.setdefault("MASTER_PORT", str(free_port()))


def _fill_single_process_env() -> None:
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        return
    os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", LOCAL_WORLD_SIZE="1")
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(free_port()))


@dataclass
class Runtime:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    _control: object = field(default=None, repr=False)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def on_gpu(self) -> bool:
        return self.device.type != "cpu"

    @classmethod
    def start(cls) -> Runtime:
        import deepspeed
        from deepspeed.accelerator import get_accelerator

        _fill_from_slurm()
        _fill_single_process_env()
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        accelerator = get_accelerator()
        if accelerator.device_name() == "cpu":
            _share_cores(int(os.environ.get("LOCAL_WORLD_SIZE", os.environ["WORLD_SIZE"])))
            _skip_shm_all_reduce()
            device = torch.device("cpu")
        else:
            accelerator.set_device(local_rank)
            device = torch.device(accelerator.device_name(local_rank))
        if not dist.is_initialized():
            _check_master_port()
            world = int(os.environ["WORLD_SIZE"])
            where = f"{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']}"
            first = os.environ.get("RANK", "0") == "0"
            with startup.phase(f"joining {world} ranks at {where}", log=world > 1 and first):
                deepspeed.init_distributed(
                    dist_backend=accelerator.communication_backend_name(),
                    auto_mpi_discovery=False,
                    verbose=False,
                )
            _OUR_PORTS.add(int(os.environ["MASTER_PORT"]))
        control = None
        if dist.get_backend() != "gloo":
            control = dist.new_group(backend="gloo")  # NOTE: collective: every rank creates it
        return cls(dist.get_rank(), dist.get_world_size(), local_rank, device, control)

    def barrier(self) -> None:
        if dist.is_initialized() and self.world_size > 1:
            dist.barrier(group=self._control)

    def any(self, flag: bool) -> bool:
        """Whether `flag` is set on any rank. NOTE: collective, every rank must call it."""
        if self.world_size == 1:
            return flag
        t = torch.tensor([1 if flag else 0], dtype=torch.int32)
        dist.all_reduce(t, op=dist.ReduceOp.MAX, group=self._control)
        return bool(t.item())

    def from_main(self, value: int) -> int:
        """Rank 0's `value` (an int >= -1) on every rank. NOTE: collective."""
        if self.world_size == 1:
            return value
        t = torch.tensor([value if self.is_main else -1], dtype=torch.int64)
        dist.all_reduce(t, op=dist.ReduceOp.MAX, group=self._control)
        return int(t.item())

    def on_main(self, fn: Callable[[], None]) -> None:
        """`fn()` on rank 0 only (file-system work); if it raises, every rank raises, so that no
        rank waits in a collective for one that has given up. Rank 0 raises fn's own exception;
        the others a UserError when that was one (bad input), else a RuntimeError (a bug: rank
        0's traceback says where).
        NOTE: collective, every rank must call it."""
        error: Exception | None = None
        if self.is_main:
            try:
                fn()
            except Exception as e:  # noqa: BLE001 - said to every rank, then raised as it was
                error = e
        outcome = self.from_main(_OK if error is None else _outcome(error))
        if error is not None:
            raise error
        if outcome == _BAD_INPUT:
            raise UserError("stopped: rank 0 says why")
        if outcome == _FAILED:
            raise RuntimeError("stopped: rank 0 failed (its traceback says why)")

    def all_reduce_sum(self, t: torch.Tensor) -> torch.Tensor:
        """Sum of `t` (on this rank's device) over ranks. NOTE: collective."""
        if self.world_size > 1:
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t

    def close(self) -> None:
        if dist.is_initialized():
            dist.destroy_process_group()
            _forget_deepspeed_groups()


_OK, _BAD_INPUT, _FAILED = 0, 1, 2  # what on_main's fn did on rank 0


def _outcome(error: Exception) -> int:
    return _BAD_INPUT if isinstance(error, UserError) else _FAILED


def _forget_deepspeed_groups() -> None:
    """DeepSpeed caches process groups in module globals (its clone of the world group, ZeRO's
    and the expert groups). After destroy_process_group they name groups that no longer exist,
    and the next run in this process (benchmarks, tests) failed with "Group ... is not
    registered"; reset, DeepSpeed makes them again on first use."""
    from deepspeed.utils import groups

    for name, value in list(vars(groups).items()):
        if name.startswith("_") and name.isupper() and "GROUP" in name:
            setattr(groups, name, {} if isinstance(value, dict) else None)
    groups.mesh_device = None


_OUR_PORTS: set[int] = set()  # rendezvous ports this process has hosted


def _check_master_port() -> None:
    """Rank 0 hosts the rendezvous on MASTER_PORT. One that another job holds (two jobs on the
    default 29500) failed only after about 50 s, as a DistNetworkError: say so at once. Under
    torchrun the agent holds the port itself, on purpose."""
    if os.environ.get("RANK", "0") != "0" or os.environ.get("TORCHELASTIC_USE_AGENT_STORE"):
        return
    port = int(os.environ["MASTER_PORT"])
    if port in _OUR_PORTS:
        return  # an earlier run in this process (benchmarks, tests) may still hold its store
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("", port))
        except OSError as e:
            if e.errno != errno.EADDRINUSE:
                raise
            raise UserError(
                f"MASTER_PORT {port} is in use (another job on this machine?): start with "
                f"another, e.g. `deepspeed --master_port {free_port()} trainer/main.py ...` "
                "(MASTER_PORT=... under srun)"
            ) from None


def _skip_shm_all_reduce() -> None:
    """On the CPU accelerator DeepSpeed's communication backend JIT-builds a shared-memory
    all-reduce op at start-up (minutes, the first time) and, under the deepspeed launcher,
    maps 66 MiB of /dev/shm per run that nothing removes. Only DeepSpeed inference's tensor
    parallelism (`inference_all_reduce`) uses it, never training: mark the op unavailable, as
    DeepSpeed does on a machine that cannot build it."""
    import deepspeed.ops
    from deepspeed.ops.op_builder.cpu import ShareMemCommBuilder

    deepspeed.ops.__compatible_ops__[ShareMemCommBuilder.NAME] = False


def _share_cores(local_ranks: int) -> None:
    if "OMP_NUM_THREADS" in os.environ:
        return
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    torch.set_num_threads(max(1, (cores or 1) // max(1, local_ranks)))
