"""The loop's own bookkeeping on 2 real gloo ranks, with stand-in engines: what a log step
reports, and the order a checkpoint is written in. No model and no DeepSpeed engine: seconds.

    .venv/bin/pytest tests/test_loop_stand_in.py -q

The 2-rank training runs (tests/test_trainer_runs.py, tests/test_resume.py) cover the same code
with real engines; these pin the two properties a review found no test of: logged values are a
mean over ranks (counts a sum), and COMPLETE.json is written after every rank's files exist.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.distributed as dist
from multirank import run_distributed

from trainer.checkpoint import store as checkpoint_module
from trainer.checkpoint.store import MARKER, Checkpointer, latest_complete, rank_file, step_dir
from trainer.runtime.distributed import Runtime
from trainer.train.loop import Trainer
from trainer.train.metrics import TrainLog

CPU = torch.device("cpu")


def _runtime(rank: int, world: int) -> Runtime:
    dist.init_process_group("gloo", rank=rank, world_size=world)
    return Runtime(rank, world, rank, CPU)


class _Engine:
    """What the loop and the checkpointer read from a DeepSpeed engine. `save_checkpoint` writes
    one file per rank after `delay` seconds (a slow rank)."""

    def __init__(self, rank: int, lr: float, delay: float = 0.0) -> None:
        self.rank, self.lr, self.delay = rank, lr, delay
        self.global_steps, self.skipped_steps = 2, 0

    def get_lr(self) -> list[float]:
        return [self.lr]

    def get_global_grad_norm(self) -> float:
        return 0.5

    def save_checkpoint(self, save_dir: str, tag: str, client_state: dict) -> None:
        time.sleep(self.delay)
        path = Path(save_dir) / tag / f"model-rank{self.rank}.pt"
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(client_state, path)


class _Recorder:
    def __init__(self) -> None:
        self.logged: list[tuple[dict, int]] = []

    def log(self, values: dict, step: int) -> None:
        self.logged.append((dict(values), step))


def _stand_in_trainer(rt: Runtime, run_dir: Path, skipped_shards: int) -> Trainer:
    cfg = SimpleNamespace(
        train=SimpleNamespace(teacher_ahead=False, max_steps=10), export=SimpleNamespace(onnx=None)
    )
    student = SimpleNamespace(name="A", engine=_Engine(rt.rank, lr=1e-4), budget=10)
    inputs = SimpleNamespace(
        loader=SimpleNamespace(skipped_corrupt=skipped_shards),
        student_tokenizer=lambda s: None,
        eval_sequences=0,
    )
    checkpointer = Checkpointer(run_dir / "checkpoints", rt, keep=2)
    return Trainer(cfg, rt, None, [student], inputs, checkpointer, _Recorder(), run_dir)


# Per rank: two optimizer steps' window-scaled terms, the tokens and samples it trained on and
# the shards it skipped. Chosen so that a sum over ranks, a mean and rank 0's own value differ.
PER_RANK = {
    0: {"terms": [{"mlm": 1.0, "kd": 4.0}, {"mlm": 3.0, "kd": 8.0}], "tokens": 100, "samples": 8},
    1: {"terms": [{"mlm": 5.0, "kd": 0.0}, {"mlm": 7.0, "kd": 2.0}], "tokens": 300, "samples": 40},
}
SKIPPED = {0: 0, 1: 3}
SECONDS = 4.0  # the log window, on a stand-in clock


def _log_step(rank: int, world: int, run_dir: str) -> dict:
    rt = _runtime(rank, world)
    try:
        trainer = _stand_in_trainer(rt, Path(run_dir), SKIPPED[rank])
        now = [100.0]
        trainer.log = TrainLog(["A"], clock=lambda: now[0])
        mine = PER_RANK[rank]
        for terms in mine["terms"]:
            values = {k: torch.tensor(v) for k, v in terms.items()}
            trainer.log.add("A", sum(values.values()), values)
            trainer.log.stepped(["A"])
            trainer.step += 1
        trainer.tokens, trainer.samples = mine["tokens"], mine["samples"]
        now[0] += SECONDS
        trainer._log()
        (out, step), *rest = trainer.metrics.logged
        assert not rest and step == 2
        return out
    finally:
        dist.destroy_process_group()


def _mean_over_steps_then_ranks(term: str) -> float:
    per_rank = []
    for mine in PER_RANK.values():
        values = [sum(t.values()) if term == "loss" else t[term] for t in mine["terms"]]
        per_rank.append(sum(values) / len(values))
    return sum(per_rank) / len(per_rank)


def test_a_log_step_reports_the_mean_over_ranks_and_the_counts_summed(tmp_path):
    logged = run_distributed(_log_step, 2, str(tmp_path), timeout=120)
    # Every rank has the reduced figures (rank 0 writes them); memory is each rank's own.
    local = ("perf/cpu_peak_rss_gb", "perf/gpu_peak_allocated_gb")
    reduced = [{k: v for k, v in out.items() if k not in local} for out in logged]
    assert reduced[0] == reduced[1]
    out = logged[0]
    for tag, term in (("loss", "loss"), ("loss_mlm", "mlm"), ("loss_kd", "kd")):
        assert out[f"train/A/{tag}"] == _mean_over_steps_then_ranks(term), tag
    tokens = sum(r["tokens"] for r in PER_RANK.values())
    samples = sum(r["samples"] for r in PER_RANK.values())
    assert out["perf/tokens_per_s"] == tokens / SECONDS
    assert out["perf/samples_per_s"] == samples / SECONDS
    assert out["data/skipped_shards"] == sum(SKIPPED.values())
    assert out["train/A/lr"] == 1e-4 and out["train/A/grad_norm"] == 0.5


def _save_with_a_slow_rank(rank: int, world: int, root: str) -> dict:
    """Rank 1's engine saves a second late; rank 0 notes what exists when the marker is
    written."""
    rt = _runtime(rank, world)
    try:
        directory = step_dir(Path(root), 7)
        seen: dict = {}
        write_json = checkpoint_module.atomic_write_json

        def noting(path, value) -> None:
            if Path(path).name == MARKER:
                seen["files"] = sorted(
                    str(p.relative_to(directory)) for p in directory.rglob("*") if p.is_file()
                )
            write_json(path, value)

        checkpoint_module.atomic_write_json = noting
        student = SimpleNamespace(
            name="A", engine=_Engine(rank, 1e-4, delay=1.0 if rank == 1 else 0.0), steps=2
        )

        def main_rank_files(d: Path) -> None:
            (d / "recipe.resolved.yaml").write_text("run: {}\n")

        Checkpointer(Path(root), rt, keep=2).save(7, [student], {"rank": rank}, {}, main_rank_files)
        return seen
    finally:
        dist.destroy_process_group()


def test_the_checkpoint_marker_is_written_after_every_ranks_files(tmp_path):
    seen, _ = run_distributed(_save_with_a_slow_rank, 2, str(tmp_path), timeout=120)
    directory = step_dir(tmp_path, 7)
    expected = sorted(
        [
            "A/global_step2/model-rank0.pt",
            "A/global_step2/model-rank1.pt",
            str(rank_file(directory, 0).relative_to(directory)),
            str(rank_file(directory, 1).relative_to(directory)),
            "recipe.resolved.yaml",
        ]
    )
    assert seen["files"] == expected  # all there, and the marker not yet
    marker = json.loads((directory / MARKER).read_text())
    assert sorted(marker["files"]) == expected
    assert latest_complete(tmp_path) == directory
