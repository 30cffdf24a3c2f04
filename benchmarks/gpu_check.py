"""The GPU check: every CUDA-only path run once and every GPU figure measured, in one command.

    bash benchmarks/gpu_check.sh OUT_DIR [--dry] [--parts NAME,NAME]

It is built for a machine with a GPU, torch, transformers and tensorboard but no network and no
deepspeed or webdataset: gpu_check.sh first installs what is missing from the wheel directory
that `make gpu-wheels` builds on a networked machine. The parts, in order, each in a process of
its own under its own time limit (1.5 x its planned seconds on one H100/H200-class GPU, and never
past the deadline, 9.5 minutes after the start), so that one that fails or hangs costs only its
own time:

    part           planned  what
    env              10 s   versions and the device
    train           100 s   recipes/paper_distilled.yaml at the paper sizes for 40 steps: bf16,
                            FusedAdam (JIT-built here), compile off, teacher_ahead off
    step            150 s   benchmarks/bench_step.py at the paper sizes, compiled as a user's run
                            is on a GPU (tokens/s, MFU, against the paper-style loop, teacher
                            ahead)
    cohort           80 s   benchmarks/bench_cohort.py at the paper sizes, not compiled (four
                            trainers: compiling each would cost more than the timed steps)
    train-ahead      40 s   the train run with train.teacher_ahead (the side CUDA stream)
    memory           60 s   benchmarks/bench_memory.py: ZeRO-1/2/3 at micro-batch 24, not compiled
    train-modernbert 60 s   recipes/biobert_to_modernbert.yaml (ModernBERT students of a BERT
                            teacher, on its vocabulary) for 40 steps, as the train part
    inference        60 s   benchmarks/bench_inference.py --quick at the paper sizes: bf16
                            throughput on the GPU with SDPA at batch 32 and 128, written first
                            (a time-out keeps them), then the CPU figures; where onnxruntime is
                            missing (`make gpu-wheels` does not bring it) the ONNX ones are
                            skipped with the reason, and where it is there its exports add time
    train-compile   100 s   the train run with train.compile (torch.compile, engine.compile):
                            last, as the part most likely to run long (the deadline may skip it)
                    660 s   in all: past the deadline, so train-compile gets what is left

The train parts are the user's command (`python trainer/main.py --ds_config ds_configs/zero2.json
--recipe recipes/paper_distilled.yaml ...`, a world of one) on generated shards and a random
BERT-base teacher (benchmarks/bench_cohort.py explains both); their words are drawn from a Zipf
distribution, which a model can learn in a few steps, and the warm-up is 5 steps. Such a part
passes when the run exits 0, every logged loss is finite and each student's last logged loss is
below its first.

Every JSON line goes to OUT_DIR/gpu_check.jsonl as soon as it exists (a time-out still returns
what finished), each part's output to OUT_DIR/<part>.log. After each part a line of benchmark
gpu_check, metric `part`, says ok, failed (with the end of its log), timed_out or skipped (the
deadline); the last line, metric `passed`, sums them up. Exit status 0 when every part passed.
An OUT_DIR that holds files but no gpu_check.jsonl is someone else's: the check refuses it in one
line (exit status 2) and writes nothing there.

--dry goes through every part at tiny sizes (bench_cohort.TINY_*), 6 steps a run, on whatever
device there is, with no deadline; tests/test_gpu_check.py runs it in the suite, so the script
cannot rot. On a CPU, TORCH_COMPILE_DISABLE=1 makes train-compile's compile calls no-ops
(tests/test_trainer_runs.py compiles on a CPU) and teacher_ahead has no side stream.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.bench_cohort import stdout_to_stderr  # noqa: E402
from data_pipeline.errors import UserError  # noqa: E402
from data_pipeline.io_utils import claim_output_dir  # noqa: E402

RECIPE = ROOT / "recipes" / "paper_distilled.yaml"
# ModernBERT-architecture students of a BERT teacher, on its vocabulary: the model family's GPU path
MIXED = ROOT / "recipes" / "biobert_to_modernbert.yaml"
DS_CONFIG = ROOT / "ds_configs" / "zero2.json"
DEADLINE_S = 570  # the whole check, on a GPU: inside one 10-minute device call
LIMIT_FACTOR = 1.5
DRY_LIMIT_S = 600  # a part of --dry, on a slow shared CPU
ZIPF = 1.1


@dataclass(frozen=True)
class Part:
    name: str
    planned_s: int
    steps: int = 40  # train parts
    train: dict | None = None  # train parts: the recipe's train.* overrides
    recipe: Path = RECIPE  # train parts


PARTS = (
    Part("env", 10),
    Part("train", 100, train={"compile": False, "teacher_ahead": False}),
    Part("step", 150),
    Part("cohort", 80),
    Part("train-ahead", 40, train={"compile": False, "teacher_ahead": True}),
    Part("memory", 60),
    Part(
        "train-modernbert",
        60,
        train={"compile": False, "teacher_ahead": False, "mlm_twins": False},
        recipe=MIXED,
    ),
    Part("inference", 60),  # NOTE: before train-compile, which the deadline may cut short
    Part("train-compile", 100, train={"compile": True, "teacher_ahead": False}),
)
DRY_STEPS, LOG_EVERY, DRY_LOG_EVERY, WARMUP = 6, 5, 2, 5
JSONL = "gpu_check.jsonl"  # the check's record: OUT_DIR holds it, or nothing, or is made here


class Output:
    """OUT_DIR/gpu_check.jsonl, written line by line; every line names the device."""

    def __init__(self, out_dir: Path) -> None:
        from benchmarks.run import device_name

        self.dir = out_dir
        self.path = out_dir / JSONL
        self.device = device_name()
        sys.stdout.flush()
        # NOTE: a handle of its own: what the libraries print goes from fd 1 to stderr meanwhile
        self._stdout = open(os.dup(sys.stdout.fileno()), "w", buffering=1, encoding="utf-8")

    def write(self, figure: dict) -> None:
        line = json.dumps({"device": self.device, **figure}, sort_keys=True)
        with self.path.open("a", encoding="utf-8") as f:
            f.write(line + "\n")
        self._stdout.write(line + "\n")

    def size(self) -> int:
        return self.path.stat().st_size if self.path.exists() else 0

    def echo_since(self, offset: int) -> None:
        """Print the lines a child process added to the file after `offset`."""
        if self.size() <= offset:
            return
        with self.path.open("rb") as f:
            f.seek(offset)
            self._stdout.write(f.read().decode("utf-8"))


def log(message: str) -> None:
    print(f"gpu_check: {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- the parts, in the parent


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("out_dir", type=Path)
    p.add_argument("--dry", action="store_true", help="every part at tiny sizes (any device)")
    p.add_argument("--parts", default="", help=f"a subset of {[x.name for x in PARTS]}")
    p.add_argument("--bench", default=None, help=argparse.SUPPRESS)  # a benchmark part's child
    args = p.parse_args(argv)
    if args.bench is not None:
        return run_bench(args.bench, "tiny" if args.dry else "paper", args.out_dir)
    wanted = [n for n in args.parts.split(",") if n] or [x.name for x in PARTS]
    unknown = sorted(set(wanted) - {x.name for x in PARTS})
    if unknown:
        p.error(f"unknown part(s) {unknown}; known: {[x.name for x in PARTS]}")
    try:
        claim_output_dir(args.out_dir, (JSONL,), "use a new or empty directory as OUT_DIR")
    except UserError as e:
        print(f"gpu_check: error: {e}", file=sys.stderr)
        return 2
    out = Output(args.out_dir)
    out.path.touch()  # NOTE: the record, there from the start: a killed check's OUT_DIR is reused
    start = time.monotonic()
    status: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp, stdout_to_stderr():
        work = Path(tmp)
        for part in (x for x in PARTS if x.name in wanted):
            left = math.inf if args.dry else DEADLINE_S - (time.monotonic() - start)
            limit = DRY_LIMIT_S if args.dry else min(LIMIT_FACTOR * part.planned_s, left)
            if limit < 5:
                status[part.name] = "skipped"
                out.write(_part_line(part, "skipped", limit, 0.0, None, "past the deadline"))
                continue
            log(f"{part.name}: up to {limit:.0f} s (planned {part.planned_s} s)")
            status[part.name] = run_part(part, out, work, args.dry, limit)
    passed = all(s == "ok" for s in status.values())
    out.write({
        "benchmark": "gpu_check", "metric": "passed", "value": passed, "unit": None,
        "settings": {"parts": status, "dry": args.dry,
                     "seconds": round(time.monotonic() - start, 1)},
    })  # fmt: skip
    return 0 if passed else 1


def run_part(part: Part, out: Output, work: Path, dry: bool, limit: float) -> str:
    """Run one part in its own process group under `limit` seconds; write its lines."""
    log_path = out.dir / f"{part.name}.log"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    run_dir = None
    if part.name == "env":
        command = [sys.executable, "-c", ENV_SCRIPT]
    elif part.train is not None:
        run_dir = work / "runs" / part.name
        command = train_command(part, work, dry)
        if dry and part.train["compile"] and not _has_gpu():
            env["TORCH_COMPILE_DISABLE"] = "1"  # the calls are made; inductor is not run
    else:
        command = [
            sys.executable,
            str(Path(__file__).resolve()),
            str(out.dir),
            "--bench",
            part.name,
        ]
        command += ["--dry"] if dry else []
    t0, offset = time.monotonic(), out.size()
    with log_path.open("w", encoding="utf-8") as log_file:
        proc = subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=log_file, stderr=subprocess.STDOUT,
            start_new_session=True,  # NOTE: its DataLoader and compile workers die with it
        )  # fmt: skip
        try:
            rc = proc.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            rc = None
    seconds = time.monotonic() - t0
    out.echo_since(offset)  # the benchmark children's figures
    tail = _tail(log_path)
    if rc is None:
        out.write(_part_line(part, "timed_out", limit, seconds, rc, tail))
        return "timed_out"
    ok = rc == 0
    if part.name == "env" and ok:
        found = [x for x in tail.splitlines() if x.startswith("{")]
        out.write({"benchmark": "gpu_check", "metric": "env", "value": None, "unit": None,
                   "settings": json.loads(found[-1])})  # fmt: skip
    if run_dir is not None:
        verdict = train_verdict(run_dir, rc, seconds, part, dry)
        out.write(verdict)
        ok = bool(verdict["value"])
    result = "ok" if ok else "failed"
    out.write(_part_line(part, result, limit, seconds, rc, None if ok else tail))
    return result


def _has_gpu() -> bool:
    import torch

    return torch.cuda.is_available()


def _part_line(part, result, limit, seconds, rc, tail) -> dict:
    return {
        "benchmark": "gpu_check", "metric": "part", "value": result, "unit": None,
        "settings": {"part": part.name, "planned_s": part.planned_s, "limit_s": round(limit),
                     "seconds": round(seconds, 1), "rc": rc, "log_tail": tail},
    }  # fmt: skip


def _tail(path: Path, lines: int = 8) -> str:
    text = path.read_text(encoding="utf-8", errors="replace").strip().splitlines()
    return "\n".join(text[-lines:])


ENV_SCRIPT = """
import json, platform, torch, transformers, deepspeed
cuda = torch.cuda.is_available()
print(json.dumps({
    "python": platform.python_version(), "torch": torch.__version__,
    "cuda": torch.version.cuda, "transformers": transformers.__version__,
    "deepspeed": deepspeed.__version__, "gpus": torch.cuda.device_count(),
    "gpu": torch.cuda.get_device_name(0) if cuda else None,
    "bf16": bool(cuda and torch.cuda.is_bf16_supported()),
    "memory_gb": round(torch.cuda.get_device_properties(0).total_memory / 1e9, 1) if cuda else None,
}))
"""


# ---------------------------------------------------------------- the train parts


def train_command(part: Part, work: Path, dry: bool) -> list[str]:
    """The user's command for a short run of the paper's cohort on generated data."""
    from benchmarks.bench_cohort import synthetic_overrides
    from trainer.config.ds_json import load_ds_config, micro_batch_size
    from trainer.config.recipe import load_config

    steps = DRY_STEPS if dry else part.steps
    data = work / "train-data"
    cached = data / "overrides.json"
    if cached.is_file():  # one corpus for the three train parts
        overrides = json.loads(cached.read_text())
    else:
        micro = micro_batch_size(load_ds_config(DS_CONFIG), world_size=1)
        docs = (steps + 1) * micro
        overrides = synthetic_overrides("tiny" if dry else "paper", data, docs, zipf=ZIPF)
        overrides.append("data.num_workers=2")
        cached.write_text(json.dumps(overrides))
    if dry:  # the recipe's own students at tiny sizes where it names their shapes
        overrides = tiny_students(part.recipe, overrides)
    overrides += [f"train.{k}={str(v).lower()}" for k, v in part.train.items()]
    names = [s.name for s in load_config(part.recipe, overrides).students]  # twins included
    overrides += [
        f"run.output_dir={work / 'runs'}",
        f"run.name={part.name}",
        f"train.max_steps={steps}",
        f"train.log_every={DRY_LOG_EVERY if dry else LOG_EVERY}",
        "train.eval_every=100000",
        "train.save_every=100000",  # the run's end saves one (and exports): that path runs too
    ]
    for name in names:
        overrides.append(f"students.{name}.optimizer.warmup_steps={min(WARMUP, steps - 1)}")
        overrides.append(f"students.{name}.optimizer.max_steps={steps}")
    return [
        sys.executable, "trainer/main.py", "--ds_config", str(DS_CONFIG),
        "--recipe", str(part.recipe), *overrides,
    ]  # fmt: skip


def tiny_students(recipe: Path, overrides: list[str]) -> list[str]:
    """--dry: `overrides` for `recipe`, its ModernBERT students (random, init.config) at the tiny
    teacher's sizes and vocabulary, their relation heads dividing its width (synthetic_overrides
    shrinks paper_distilled's TinyBioBERT; that override is dropped for a recipe without it)."""
    import yaml

    from benchmarks.bench_cohort import TINY_TEACHER, _flow
    from trainer.config.recipe import load_config

    names = {s["name"] for s in yaml.safe_load(recipe.read_text(encoding="utf-8"))["students"]}
    out = [o for o in overrides if not o.startswith("students.") or o.split(".")[1] in names]
    for s in load_config(recipe, out).students:
        if s.init.family != "modernbert" or s.twin_of is not None:
            continue
        tiny = {**TINY_TEACHER, **{k: s.init.config[k] for k in SPECIAL_IDS if k in s.init.config}}
        tiny |= {"num_hidden_layers": 2, "intermediate_size": 48, "local_attention": 16}
        out.append(f"students.{s.name}.init.config={_flow(tiny)}")
        if s.objective.kind == "minilmv2":
            out.append(f"students.{s.name}.objective.relation_heads=2")
    return out


SPECIAL_IDS = ("pad_token_id", "cls_token_id", "sep_token_id", "bos_token_id", "eos_token_id")


def train_verdict(run_dir: Path, rc: int, seconds: float, part: Part, dry: bool) -> dict:
    """The train part's line: passed (exit 0, finite losses, each falling), and its figures."""
    from trainer.train.metrics import read_scalars

    losses, tokens_per_s = {}, []
    problems = [] if rc == 0 else [f"exit status {rc}"]
    try:
        scalars = read_scalars(run_dir / "tensorboard")
    except Exception as e:  # no event file: the run died before its first log
        scalars, problems = {}, [*problems, f"no TensorBoard scalars ({e})"]
    for tag, values in sorted(scalars.items()):
        if tag.startswith("train/") and tag.endswith("/loss"):
            losses[tag.split("/")[1]] = values
        if tag == "perf/tokens_per_s":
            tokens_per_s = [v for _, v in values]
    if scalars and not losses:
        problems.append("no losses logged")
    for name, values in losses.items():
        if not all(math.isfinite(v) for _, v in values):
            problems.append(f"{name}: a non-finite loss")
        elif len(values) < 2 or not values[-1][1] < values[0][1]:
            problems.append(
                f"{name}: the loss did not fall ({values[0][1]:.4g} -> {values[-1][1]:.4g})"
            )
    return {
        "benchmark": "gpu_check", "metric": "train_run", "value": not problems, "unit": None,
        "settings": {
            "part": part.name, **(part.train or {}), "steps": DRY_STEPS if dry else part.steps,
            "sizes": "tiny" if dry else "paper", "recipe": str(part.recipe.relative_to(ROOT)),
            "ds_config": str(DS_CONFIG.relative_to(ROOT)), "seconds": round(seconds, 1),
            "problems": problems,
            "loss_first_last": {n: [round(v[0][1], 4), round(v[-1][1], 4)]
                                for n, v in losses.items() if v},
            "tokens_per_s_last": round(tokens_per_s[-1]) if tokens_per_s else None,
        },
    }  # fmt: skip


# ---------------------------------------------------------------- the benchmark parts, in a child


def run_bench(name: str, sizes: str, out_dir: Path) -> int:
    from benchmarks.bench_cohort import stdout_to_stderr

    out = Output(out_dir)
    with stdout_to_stderr():
        for figure in bench_figures(name, sizes):
            out.write(figure)
    return 0


def bench_figures(name: str, sizes: str) -> Iterator[dict]:
    from benchmarks import bench_cohort, bench_inference, bench_memory, bench_step
    from benchmarks.bench_cohort import FULL, Plan

    if name == "inference":  # --quick: the GPU lines come first, so a time-out keeps them
        for figure in bench_inference.run(quick=True, sizes=sizes):
            yield {"benchmark": name, **figure}
        return
    if name == "memory":
        stages = bench_memory.MEMORY_STAGES if sizes == "paper" else (2,)
        for figure in bench_memory.memory_figures(stages, (24,), sizes, compile=False):
            yield {"benchmark": name, **figure}
        return
    module = {"step": bench_step, "cohort": bench_cohort}[name]
    plan = FULL if sizes == "paper" else Plan("tiny", FULL.recipe, warmup=1, steps=1, rounds=2)
    if name == "cohort":
        plan = dataclasses.replace(plan, compile=False)
    with tempfile.TemporaryDirectory(prefix=f"gpu-check-{name}-") as tmp:
        measured = module.measure(plan, Path(tmp))
    for figure in module.figures(plan, measured):
        yield {"benchmark": name, **figure}


if __name__ == "__main__":
    sys.exit(main())
