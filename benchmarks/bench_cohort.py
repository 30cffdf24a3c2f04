"""Cohort against separate runs: one teacher pass for three students, against one pass each.

    python benchmarks/run.py --only cohort [--quick]

Four trainers are built in this process with the trainer's own `build_trainer` (one Runtime, a
world of one): the cohort (teacher + DistilBioBERT + CompactBioBERT + TinyBioBERT) and each
student alone (`select_students`: its own teacher, computing only that student's needs). They
train on the very same host batches (drawn from the cohort's loader; every trainer has the same
seed, so the same initial weights and dropout streams), through `Trainer.train_batch`, the loop's
per-batch step: teacher forward, then each student's forward, loss, backward and optimizer step.
After `Plan.warmup` steps each, the runs take turns, `Plan.rounds` times, at `Plan.steps` steps on
a fresh block of batches (the order rotating each round), timed on the host around a device
synchronize, so machine noise falls on all runs alike. Data loading and the loop's per-step
bookkeeping (logging, evaluation, checkpoints) are outside the timed region. A student alone gets
the teacher its own objective needs: DistilBioBERT's reads no attention maps, so its teacher
computes none, where the cohort's computes the maps CompactBioBERT and TinyBioBERT read beside
its SDPA attention (trainer/models/attention.py); that is what a separate run would cost. Figures
(benchmark cohort_vs_separate):
- measured_ratio: cohort time / sum of the three separate runs' times, per round; the median
  (settings: every round's ratio, the ratios of total and of minimum times, and the teacher's
  share of the cohort's step time from the trainer's own step timer).
- predicted_ratio: the same ratio of matmul FLOPs (benchmarks/flops.py, formula in the settings)
  at the batches' mean padded length: about 0.69 at the paper sizes, 0.72 at the demo's. The
  teacher's forward is the only work the cohort saves. With the demo's tiny models on CPU, what
  every student pays in both setups and FLOPs leave out (optimizer step, bf16 casts, loss math,
  Python) outweighs the matmuls, so the teacher is a smaller share of the time than of the FLOPs
  and the measured ratio comes out above the predicted one; on a GPU at the paper sizes the
  matmuls dominate and the two should come closer.
- cohort_s_per_step, separate_s_per_step_<student>: median seconds per optimizer step.

Sizes:
- --quick: recipes/demo.yaml's three students (2 layers, no MLM twins) with a random teacher of
  the demo teacher's shape (4 layers, hidden 64), seq 128, on the embedded demo shards (built
  first if missing), micro-batch 24 from ds_configs/zero2.json. About a minute on 2 idle CPU
  cores (several on a busy machine).
- full: the paper's sizes, recipes/paper_distilled.yaml with a random BERT-base teacher
  (`teacher.config`: 12 layers, hidden 768, 12 heads, FFN 3072, vocabulary 28996; no hub access)
  and the recipe's students (DistilBioBERT from teacher layers [0,2,4,6,8,10], CompactBioBERT
  from [1,3,5,7,9,11], TinyBioBERT 4L-312), seq 256, micro-batch 24. This is meant for a GPU:
  `python benchmarks/run.py --only cohort` there. On 2 CPU cores one cohort step takes minutes
  and the plan (4 runs x 105 steps) hours; it was checked end to end on CPU with micro-batch 2.

The full size needs shards of 256 tokens with a 28996-token vocabulary, and none exist offline.
They are made here by the pipeline's own `run_shard` from generated text: a WordPiece tokenizer
whose vocabulary is the 5 special tokens plus 28991 words "w5" ... "w28995" (word "wN" is id N),
and a text file of documents of 300 such words drawn uniformly at random. Every word is one
token, so each sample is [CLS] + 254 random ids in the valid range + [SEP]: full-length sequences
(no padding) with the manifest, tokenizer check and masking of a real run. Speed does not depend
on which ids the sequences hold, only on their length, the vocabulary size and the models.
"""

from __future__ import annotations

import contextlib
import logging
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from benchmarks.flops import FORMULA, cohort_flops, describe, shapes_from_recipe

if TYPE_CHECKING:
    from trainer.config.recipe import RunConfig
    from trainer.train.loop import Trainer

ROOT = Path(__file__).resolve().parents[1]
DS_CONFIG = ROOT / "ds_configs" / "zero2.json"
DEMO_DIR = ROOT / "data" / "demo"
DEMO_TEACHER_RECIPE = ROOT / "recipes" / "demo_teacher.yaml"

PAPER_VOCAB = 28996
PAPER_MAX_LEN = 256
PAPER_TEACHER = {  # BERT-base cased, BioBERT's shape
    "num_hidden_layers": 12,
    "hidden_size": 768,
    "num_attention_heads": 12,
    "intermediate_size": 3072,
    "vocab_size": PAPER_VOCAB,
    "max_position_embeddings": 512,
}
WORDS_PER_DOC = 300  # more than max_len: truncation fills every sequence
# --dry of benchmarks/gpu_check.py: the recipe's three students at a few thousand parameters, a
# 12-layer teacher (DistilBioBERT and CompactBioBERT copy its layers), seq 32: every code path of
# the paper sizes in seconds on a CPU.
TINY_VOCAB, TINY_MAX_LEN = 1000, 32
TINY_TEACHER = {
    "num_hidden_layers": 12,
    "hidden_size": 32,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "vocab_size": TINY_VOCAB,
    "max_position_embeddings": 64,
}
TINY_TINYBIOBERT = {
    **TINY_TEACHER,
    "num_hidden_layers": 4,
    "hidden_size": 24,
    "intermediate_size": 48,
}


@dataclass(frozen=True)
class Plan:
    sizes: str  # "demo", "paper" or "tiny"
    recipe: Path
    warmup: int  # steps per trainer before timing
    steps: int  # steps per timed block
    rounds: int  # timed blocks per trainer, interleaved across trainers
    compile: bool | None = None  # train.compile; None: the trainer's default (on a GPU only)

    @property
    def total_steps(self) -> int:
        return self.warmup + self.steps * self.rounds


# One step per block and many rounds on CPU: a round then lasts seconds, so the shared 2-core
# machine's slow spells mostly fall on every run of a round alike, and the median round ignores
# the rest. On a GPU longer blocks keep its queue full, as in training.
QUICK = Plan("demo", ROOT / "recipes" / "demo.yaml", warmup=5, steps=1, rounds=64)
FULL = Plan("paper", ROOT / "recipes" / "paper_distilled.yaml", warmup=5, steps=20, rounds=5)


def log(message: str) -> None:
    print(f"   {message}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def stdout_to_stderr() -> Iterator[None]:
    """Send everything written to stdout meanwhile to stderr: DeepSpeed logs and its op builds
    print there, and stdout carries only figures."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


# ---------------------------------------------------------------- synthetic paper-size shards


def synthetic_tokenizer(out: Path, vocab_size: int) -> Path:
    """A cased BERT-style WordPiece tokenizer whose vocabulary is the special tokens plus words
    "w5" ... "w<vocab_size - 1>", word "wN" being id N (the same normaliser, pre-tokeniser and
    specials as data_pipeline.demo.synth.train_wordpiece, nothing learned)."""
    from data_pipeline.demo.synth import SPECIAL_TOKENS, wordpiece_from_vocab

    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS)}
    vocab.update({f"w{i}": i for i in range(len(vocab), vocab_size)})
    wordpiece_from_vocab(vocab, out)
    return out


def synthetic_shards(
    root: Path, vocab_size: int, max_len: int, docs: int, zipf: float | None = None
) -> tuple[Path, Path]:
    """(shard dir, tokenizer dir): `docs` full-length samples of random token ids, uniform, or
    with `zipf` the k-th most frequent word drawn with probability proportional to k**-zipf:
    a unigram distribution a model can learn, so that the loss of a short run falls."""
    from data_pipeline.demo.synth import SPECIAL_TOKENS
    from data_pipeline.shards.writer import run_shard

    tok = synthetic_tokenizer(root / "tokenizer", vocab_size)
    rng = np.random.default_rng(2023)
    first, shape = len(SPECIAL_TOKENS), (docs, WORDS_PER_DOC)
    if zipf is None:
        ids = rng.integers(first, vocab_size, size=shape)
    else:
        weights = np.arange(1, vocab_size - first + 1, dtype=np.float64) ** -zipf
        ids = first + rng.choice(vocab_size - first, size=shape, p=weights / weights.sum())
    text = root / "docs.txt"
    with text.open("w", encoding="utf-8") as f:
        for row in ids:
            f.write(" ".join(f"w{i}" for i in row) + "\n")
    shards = root / "shards"
    run_shard(
        [str(text)],
        str(tok),
        str(shards),
        max_len=max_len,
        eval_fraction=0.0,
        samples_per_shard=-(-docs // 4),
        progress=False,
    )
    return shards, tok


# ---------------------------------------------------------------- runs


# A step here is one micro-batch of the DeepSpeed JSON on each rank (the recipes' global batch
# would add accumulation on one rank): the figures compare with those recorded before.
ONE_MICRO_BATCH = "train.global_batch=null"


def recipe_overrides(plan: Plan, root: Path, samples_per_step: int) -> list[str]:
    """Overrides shared by every run: its data, no evaluation (never timed here), paper sizes."""
    if plan.sizes == "demo":
        if not (DEMO_DIR / "shards" / "manifest.json").exists():
            from data_pipeline.demo.build import build_demo

            log(f"demo corpus missing: building {DEMO_DIR}")
            build_demo(DEMO_DIR, log=log)
        # A teacher of the demo teacher's shape, random: speed does not depend on its weights,
        # and the demo's trained one may not be built yet. No MLM twins: the paper's three.
        from trainer.config.recipe import load_config

        shape = load_config(DEMO_TEACHER_RECIPE).students[0].init.config
        teacher = ", ".join(f"{k}: {v}" for k, v in shape.items())
        return [
            f"data.train_shards={DEMO_DIR / 'shards'}",
            "data.eval_shards=null",
            "data.entities=null",
            f"teacher={{config: {{{teacher}}}}}",
            "train.mlm_twins=false",
            ONE_MICRO_BATCH,
        ]
    docs = (plan.total_steps + 1) * samples_per_step  # every batch distinct (no epoch wraps)
    return synthetic_overrides(plan.sizes, root / "data", docs)


def synthetic_overrides(sizes: str, root: Path, docs: int, zipf: float | None = None) -> list[str]:
    """Overrides for generated shards of `docs` samples and a random teacher, at the paper's
    `sizes` or "tiny" ones (TINY_*: the recipe's TinyBioBERT shrunk to match)."""
    tiny = sizes == "tiny"
    vocab, max_len = (TINY_VOCAB, TINY_MAX_LEN) if tiny else (PAPER_VOCAB, PAPER_MAX_LEN)
    log(f"synthetic shards: {docs} samples of {max_len} tokens, vocabulary {vocab}")
    shards, tok = synthetic_shards(root, vocab, max_len, docs, zipf)
    overrides = [
        f"teacher={{config: {_flow(TINY_TEACHER if tiny else PAPER_TEACHER)}}}",
        f"data.train_shards={shards}",
        "data.eval_shards=null",
        f"data.tokenizer={tok}",
        f"data.max_len={max_len}",
        "data.num_workers=0",
        ONE_MICRO_BATCH,
    ]
    if tiny:
        overrides.append(f"students.TinyBioBERT.init.config={_flow(TINY_TINYBIOBERT)}")
    return overrides


def _flow(mapping: dict) -> str:
    """A YAML flow mapping, for an override's value."""
    return "{" + ", ".join(f"{k}: {v}" for k, v in mapping.items()) + "}"


def run_config(
    plan: Plan, overrides: list[str], out: Path, name: str, students: list[str] | None
) -> RunConfig:
    """The recipe with `overrides`, its run directory under `out`, student budgets long enough
    for every step taken here, and only `students` (None: all)."""
    from trainer.config.recipe import load_config, select_students

    overrides = [*overrides, f"run.output_dir={out}", f"run.name={name}"]
    if plan.compile is not None:
        overrides.append(f"train.compile={str(plan.compile).lower()}")
    cfg = load_config(plan.recipe, overrides)
    for s in cfg.students:
        if s.optimizer.max_steps < plan.total_steps:
            overrides.append(f"students.{s.name}.optimizer.max_steps={plan.total_steps}")
    cfg = load_config(plan.recipe, overrides)
    return select_students(cfg, students) if students is not None else cfg


def time_batches(step, batches: list[dict]) -> float:
    """Seconds for `step(batch)` over `batches` (host clock, device synchronized at both ends)."""
    from deepspeed.accelerator import get_accelerator

    sync = get_accelerator().synchronize
    sync()
    start = time.perf_counter()
    for batch in batches:
        step(batch)
    sync()
    return time.perf_counter() - start


def train_steps(trainer: Trainer, batches: list[dict]) -> float:
    """Seconds for the trainer's own per-batch step on each of `batches`."""
    active = trainer.active
    return time_batches(lambda batch: trainer.train_batch(batch, active), batches)


def padded_len(batches: list[dict]) -> float:
    return statistics.fmean(b["input_ids"].shape[1] for b in batches)


@dataclass
class Measured:
    cohort: list[float]  # seconds per timed block, one per round
    separate: dict[str, list[float]]
    seq_len: float  # mean padded batch length of the timed batches
    teacher_share: float  # of the cohort's timed step time (the trainer's own step timer)
    cfg: RunConfig  # the cohort's
    ds: dict
    threads: int
    accelerator: str


def measure(plan: Plan, root: Path) -> Measured:
    import deepspeed
    import torch

    from trainer.config.ds_json import load_ds_config, micro_batch_size
    from trainer.runtime.distributed import Runtime
    from trainer.train.builder import build_trainer

    deepspeed.utils.logger.setLevel(logging.WARNING)
    ds = load_ds_config(DS_CONFIG)
    per_step = micro_batch_size(ds, world_size=1) * int(ds.get("gradient_accumulation_steps", 1))
    overrides = recipe_overrides(plan, root, per_step)
    rt = Runtime.start()
    trainers = {}
    try:
        cfg = run_config(plan, overrides, root / "runs", "cohort", None)
        names = [s.name for s in cfg.students]
        log(f"building the cohort ({', '.join(names)}) and each student alone")
        trainers["cohort"] = build_trainer(cfg, ds, rt)
        for name in names:
            alone = run_config(plan, overrides, root / "runs", f"alone-{name}", [name])
            trainers[name] = build_trainer(alone, ds, rt)
        for trainer in trainers.values():
            for s in trainer.students:
                s.engine.train()
        gas = trainers["cohort"].students[0].engine.gradient_accumulation_steps()
        stream = iter(trainers["cohort"].inputs.loader)  # NOTE: one batch list for every run

        def take(steps: int) -> list[dict]:
            return [next(stream) for _ in range(steps * gas)]

        warm = take(plan.warmup)
        for key, trainer in trainers.items():
            log(f"warm-up {key}: {plan.warmup} steps in {train_steps(trainer, warm):.2f} s")
        trainers["cohort"].step_times()  # drop the warm-up's step anatomy
        times: dict[str, list[float]] = {key: [] for key in trainers}
        keys, timed = list(trainers), []
        for r in range(plan.rounds):
            batches = take(plan.steps)
            timed += batches
            order = keys[r % len(keys) :] + keys[: r % len(keys)]
            for key in order:
                times[key].append(train_steps(trainers[key], batches))
            ratio = times["cohort"][-1] / sum(times[k][-1] for k in names)
            log(
                f"round {r + 1}/{plan.rounds}: "
                + ", ".join(f"{k} {times[k][-1] / plan.steps:.3f} s/step" for k in keys)
                + f" | ratio {ratio:.3f}"
            )
        anatomy = trainers["cohort"].step_times()
        return Measured(
            cohort=times["cohort"],
            separate={k: times[k] for k in names},
            seq_len=padded_len(timed),
            teacher_share=anatomy.get("teacher", 0.0) / (sum(anatomy.values()) or 1.0),
            cfg=cfg,
            ds=ds,
            threads=torch.get_num_threads(),
            accelerator=rt.device.type,
        )
    finally:
        for trainer in trainers.values():
            trainer.inputs.loader.close()
            trainer.metrics.close()
        rt.close()


# ---------------------------------------------------------------- figures


def run_settings(plan: Plan, cfg: RunConfig, ds: dict, seq_len: float) -> dict:
    """What every figure of a run states: sizes, recipe, DeepSpeed settings, models."""
    from trainer.config.ds_json import micro_batch_size

    teacher, students = shapes_from_recipe(cfg)
    models = {"teacher": describe(teacher)} if teacher is not None else {}
    models.update({s.name: describe(s.config) for s in students})
    return {
        "sizes": plan.sizes,
        "recipe": str(plan.recipe.relative_to(ROOT)),
        "ds_config": str(DS_CONFIG.relative_to(ROOT)),
        "micro_batch": micro_batch_size(ds, world_size=1),
        "gradient_accumulation": ds.get("gradient_accumulation_steps", 1),
        "bf16": ds.get("bf16", {}).get("enabled", False),
        "zero_stage": ds.get("zero_optimization", {}).get("stage", 0),
        "compile": cfg.train.compile,
        "max_len": cfg.data.max_len,
        "seq_len_mean": round(seq_len, 1),
        "models": models,
    }


def figures(plan: Plan, m: Measured) -> Iterator[dict]:
    cfg, ds = m.cfg, m.ds
    names = list(m.separate)
    teacher, students = shapes_from_recipe(cfg)
    flops = cohort_flops(teacher, students, m.seq_len, cfg.data.mask_prob)
    ratios = [c / sum(m.separate[k][r] for k in names) for r, c in enumerate(m.cohort)]
    settings = {
        **run_settings(plan, cfg, ds, m.seq_len),
        "warmup_steps": plan.warmup,
        "steps": plan.steps,
        "rounds": plan.rounds,
        "accelerator": m.accelerator,
        "threads": m.threads,
    }
    per_step = {k: statistics.median(v) / plan.steps for k, v in m.separate.items()}
    cohort_per_step = statistics.median(m.cohort) / plan.steps
    yield {
        "benchmark": "cohort_vs_separate",
        "metric": "measured_ratio",
        "value": round(statistics.median(ratios), 3),
        "unit": "ratio",
        "settings": {
            **settings,
            "ratio_per_round": [round(r, 3) for r in ratios],
            "ratio_of_totals": round(sum(m.cohort) / sum(map(sum, m.separate.values())), 3),
            "ratio_of_minimums": round(min(m.cohort) / sum(map(min, m.separate.values())), 3),
            "cohort_teacher_share": round(m.teacher_share, 3),
        },
    }
    gflops = {"teacher_fwd": flops.teacher_fwd / 1e9}
    gflops.update({f"train_{k}": v / 1e9 for k, v in flops.student_train.items()})
    yield {
        "benchmark": "cohort_vs_separate",
        "metric": "predicted_ratio",
        "value": round(flops.ratio, 3),
        "unit": "ratio",
        "settings": {
            **settings,
            "formula": FORMULA,
            "seq_len": round(m.seq_len, 1),
            "mask_prob": cfg.data.mask_prob,
            "gflops_per_sequence": {k: round(v, 4) for k, v in gflops.items()},
        },
    }
    yield {
        "benchmark": "cohort_vs_separate",
        "metric": "cohort_s_per_step",
        "value": round(cohort_per_step, 4),
        "unit": "s/step",
        "settings": {**settings, "students": names},
    }
    for name in names:
        yield {
            "benchmark": "cohort_vs_separate",
            "metric": f"separate_s_per_step_{name}",
            "value": round(per_step[name], 4),
            "unit": "s/step",
            "settings": {**settings, "students": [name]},
        }


def run(quick: bool) -> Iterator[dict]:
    plan = QUICK if quick else FULL
    with tempfile.TemporaryDirectory(prefix="bench-cohort-") as tmp, stdout_to_stderr():
        measured = measure(plan, Path(tmp))
    yield from figures(plan, measured)
