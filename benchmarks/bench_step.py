"""The cohort step: anatomy, tokens/s and MFU; against the paper-style loop; teacher ahead.

    python benchmarks/run.py --only step [--quick]

One trainer is built in this process with the trainer's own `build_trainer` (a world of one) for
the cohort teacher + DistilBioBERT + CompactBioBERT + TinyBioBERT, at the demo sizes (--quick,
recipes/demo.yaml on the demo shards) or the paper's (BERT-base teacher, seq 256, micro-batch 24,
on generated full-length shards; benchmarks/bench_cohort.py explains them). Figures:

- step: `tokens_per_s` (real tokens), `samples_per_s` and `mfu` over `Plan.steps` steps of the
  training loop's own path (the device prefetcher over the loader, `Trainer.train_batch`), after
  a warm-up. MFU = matmul FLOPs of the steps (benchmarks/flops.py; the formula is in the
  settings) / time / the device's dense bf16 peak (989 TFLOP/s for an H100 SXM); null where the
  peak is not known (CPUs). The settings hold the step anatomy: seconds per step waiting for
  data, in the teacher's forward, and in each student's forward (loss included), backward and
  optimizer step, from the trainer's step timer (CUDA events on a GPU).
- vs_paper_loop: `speedup` = seconds per step of the paper-style loop (benchmarks/paper_loop.py:
  eager attention and all maps everywhere, full-vocabulary logits, one teacher forward per
  student, torch AdamW) / seconds per step of the cohort, on the same batches, the two taking
  turns over `Plan.rounds` rounds; the median round.
- teacher_ahead: `speedup` = seconds per step with the teacher's forward for batch k+1 launched
  right after batch k's (train.teacher_ahead, trainer/train/teacher_ahead.py: a side CUDA stream
  beside the students' steps) / seconds per step without, same batches, taking turns over
  `Plan.rounds` rounds of ROUND_STEPS steps; the median round. Each block starts cold (its first
  batch has no early signals), so the figure slightly understates a long run's gain. On a CPU there
  is no second stream and nothing can overlap: expect about 1.0 there.

Peak memory per ZeRO stage is its own benchmark (benchmarks/bench_memory.py).
"""

from __future__ import annotations

import logging
import statistics
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from benchmarks.bench_cohort import (
    DS_CONFIG,
    FULL,
    QUICK,
    Plan,
    log,
    recipe_overrides,
    run_config,
    run_settings,
    stdout_to_stderr,
    time_batches,
)
from benchmarks.flops import FORMULA, cohort_flops, shapes_from_recipe
from benchmarks.run import device_name

STEP_PLAN_QUICK = Plan(QUICK.sizes, QUICK.recipe, warmup=5, steps=20, rounds=16)
ROUND_STEPS = 5  # steps per timed block of each side in the paper-loop comparison

# Dense bf16 tensor-core peaks (vendor datasheets), matched against torch's device name.
BF16_PEAK = (("H100 PCIe", 756e12), ("H100", 989e12), ("H200", 989e12), ("A100", 312e12))


def bf16_peak(device_name: str) -> float | None:
    for key, peak in BF16_PEAK:
        if key in device_name:
            return peak
    return None


@dataclass
class Measured:
    seconds: float  # the timed steps, wall clock
    steps: int
    tokens: int
    samples: int
    seq_len: float  # mean padded length
    anatomy: dict[str, float]  # seconds per step
    ours: list[float]  # per round, seconds per step: cohort
    paper: list[float]  # per round, seconds per step: paper-style loop
    ahead: dict[str, list[float]]  # per round, seconds per step: teacher_ahead "off" / "on"
    cfg: object
    ds: dict


def measure(plan: Plan, root: Path) -> Measured:
    import deepspeed

    from benchmarks.paper_loop import PaperLoop
    from trainer.config.ds_json import load_ds_config, micro_batch_size
    from trainer.runtime.distributed import Runtime
    from trainer.train.batch import DevicePrefetcher
    from trainer.train.builder import build_trainer

    deepspeed.utils.logger.setLevel(logging.WARNING)
    ds = load_ds_config(DS_CONFIG)
    per_step = micro_batch_size(ds, world_size=1) * int(ds.get("gradient_accumulation_steps", 1))
    # + 1: the prefetcher takes one batch ahead of the anatomy's last step; then the rounds
    # against the paper loop, and twice as many for teacher ahead (off and on)
    total = plan.warmup + plan.steps + 1 + 3 * plan.rounds * ROUND_STEPS
    budget = Plan(plan.sizes, plan.recipe, warmup=0, steps=total, rounds=1)
    overrides = recipe_overrides(budget, root, per_step)
    rt = Runtime.start()
    trainer = None
    try:
        cfg = run_config(budget, overrides, root / "runs", "step", None)
        trainer = build_trainer(cfg, ds, rt)
        for s in trainer.students:
            s.engine.train()
        sync = deepspeed.get_accelerator().synchronize  # around the anatomy's block
        gas = trainer.students[0].engine.gradient_accumulation_steps()
        batches = DevicePrefetcher(trainer.inputs.loader, rt.device)

        def run_steps(n: int) -> tuple[float, int, int, list[int]]:
            tokens = samples = 0
            lengths = []
            sync()
            start = time.perf_counter()
            for _ in range(n * gas):
                batch = next(batches)
                trainer.train_batch(batch, trainer.active)
                tokens, samples = tokens + batch.tokens, samples + batch.samples
                lengths.append(batch.input_ids.shape[1])
            sync()
            return time.perf_counter() - start, tokens, samples, lengths

        run_steps(plan.warmup)
        trainer.step_times()  # the warm-up's anatomy is dropped
        waited = batches.waited
        seconds, tokens, samples, lengths = run_steps(plan.steps)
        anatomy = {k: v / plan.steps for k, v in trainer.step_times().items()}
        anatomy["data"] = (batches.waited - waited) / plan.steps
        log(f"cohort: {plan.steps} steps in {seconds:.2f} s, {tokens / seconds:,.0f} tokens/s")

        log("paper-style loop: copies of the same models")
        paper = PaperLoop.from_trainer(trainer)
        stream = iter(trainer.inputs.loader)
        active = trainer.active
        steps = {"ours": lambda b: trainer.train_batch(b, active), "paper": paper.step}
        times: dict[str, list[float]] = {"ours": [], "paper": []}  # seconds per step, per round
        for r in range(plan.rounds):
            block = [next(stream) for _ in range(ROUND_STEPS * gas)]
            for who in ("ours", "paper") if r % 2 == 0 else ("paper", "ours"):  # alternate
                times[who].append(time_batches(steps[who], block) / ROUND_STEPS)
            ours, theirs = times["ours"][-1], times["paper"][-1]
            log(
                f"round {r + 1}/{plan.rounds}: cohort {ours:.3f} s/step, paper loop "
                f"{theirs:.3f} s/step, speedup {theirs / ours:.2f}"
            )
        ahead = compare_teacher_ahead(trainer, stream, plan.rounds, gas, rt.device)
        return Measured(
            seconds, plan.steps, tokens, samples, statistics.fmean(lengths), anatomy,
            times["ours"], times["paper"], ahead, cfg, ds,
        )  # fmt: skip
    finally:
        if trainer is not None:
            trainer.inputs.loader.close()
            trainer.metrics.close()
        rt.close()


def compare_teacher_ahead(trainer, stream, rounds: int, gas: int, device) -> dict[str, list[float]]:
    """Seconds per step with train.teacher_ahead off and on, taking turns (see the module doc)."""
    from trainer.train.batch import DeviceBatch
    from trainer.train.teacher_ahead import TeacherAhead

    times: dict[str, list[float]] = {"off": [], "on": []}
    if trainer.teacher is None:
        return times
    ahead, active = TeacherAhead(trainer.teacher, device), trainer.active

    def step(pair) -> None:  # (batch, the next one or None)
        upcoming = (lambda _stream, b=pair[1]: b) if pair[1] is not None else None
        trainer.train_batch(pair[0], active, upcoming=upcoming)

    for r in range(rounds):
        block = [DeviceBatch.from_host(next(stream), device) for _ in range(ROUND_STEPS * gas)]
        pairs = list(zip(block, [*block[1:], None], strict=True))
        for who in ("off", "on") if r % 2 == 0 else ("on", "off"):
            trainer.teacher_ahead = ahead if who == "on" else None
            times[who].append(time_batches(step, pairs) / ROUND_STEPS)
        off, on = times["off"][-1], times["on"][-1]
        log(f"teacher ahead round {r + 1}/{rounds}: off {off:.3f} s/step, on {on:.3f} s/step")
    trainer.teacher_ahead = None
    return times


def figures(plan: Plan, m: Measured) -> Iterator[dict]:
    name = device_name()
    teacher, students = shapes_from_recipe(m.cfg)
    flops = cohort_flops(teacher, students, m.seq_len, m.cfg.data.mask_prob)
    per_sequence = flops.cohort
    achieved = per_sequence * m.samples / m.seconds
    peak = bf16_peak(name) if m.ds.get("bf16", {}).get("enabled") else None
    settings = {
        **run_settings(plan, m.cfg, m.ds, m.seq_len),
        "steps": m.steps,
        "round_steps": ROUND_STEPS,
        "versions": _versions(),
    }
    anatomy = {k: round(v, 5) for k, v in sorted(m.anatomy.items())}
    yield _line("step", "tokens_per_s", m.tokens / m.seconds, "tokens/s",
                {**settings, "anatomy_s_per_step": anatomy})  # fmt: skip
    yield _line("step", "samples_per_s", m.samples / m.seconds, "samples/s", settings)
    yield _line("step", "mfu", achieved / peak if peak else None, "fraction", {
        **settings,
        "formula": FORMULA,
        "flops_per_sequence": per_sequence,
        "achieved_tflop_s": achieved / 1e12,
        "peak_tflop_s": peak / 1e12 if peak else None,
        "note": None if peak else "no known dense bf16 peak for this device",
    })  # fmt: skip
    ratios = [p / o for p, o in zip(m.paper, m.ours, strict=True)]
    yield _line("vs_paper_loop", "speedup", statistics.median(ratios), "x", {
        **settings,
        "rounds": len(ratios),
        "speedup_per_round": [round(r, 3) for r in ratios],
        "cohort_s_per_step": statistics.median(m.ours),
        "paper_loop_s_per_step": statistics.median(m.paper),
    })  # fmt: skip

    if m.ahead["on"]:
        ratios = [off / on for off, on in zip(m.ahead["off"], m.ahead["on"], strict=True)]
        yield _line("teacher_ahead", "speedup", statistics.median(ratios), "x", {
            **settings,
            "rounds": len(ratios),
            "speedup_per_round": [round(r, 3) for r in ratios],
            "off_s_per_step": statistics.median(m.ahead["off"]),
            "on_s_per_step": statistics.median(m.ahead["on"]),
            "cold_start": "the first batch of each round's block has no early signals",
        })  # fmt: skip


def _line(benchmark, metric, value, unit, settings) -> dict:
    """One figure; benchmarks/run.py adds the device."""
    value = round(value, 4) if isinstance(value, float) else value
    return {"benchmark": benchmark, "metric": metric, "value": value, "unit": unit,
            "settings": settings}  # fmt: skip


def _versions() -> dict:
    import deepspeed
    import torch
    import transformers

    return {"torch": torch.__version__, "deepspeed": deepspeed.__version__,
            "transformers": transformers.__version__}  # fmt: skip


def run(quick: bool) -> Iterator[dict]:
    plan = STEP_PLAN_QUICK if quick else FULL
    with tempfile.TemporaryDirectory(prefix="bench-step-") as tmp, stdout_to_stderr():
        measured = measure(plan, Path(tmp))
    yield from figures(plan, measured)
