"""A ModernBERT student against a BERT student of the same size: training step time.

    python benchmarks/run.py --only families [--quick]

Two trainers are built in this process with the trainer's own `build_trainer` (a world of one),
each with one student trained by masked-LM alone (no teacher: the step is the architecture's):
a BERT and a ModernBERT of the same depth, width and heads, the ModernBERT's GeGLU intermediate
size set to 2/3 of BERT's FFN so that both layers hold the same matmul weights (ModernBERT has no
biases, no position table and alternating local/global attention). They train on the same
batches from one loader (generated full-length shards, benchmarks/bench_cohort.py), taking turns
over `rounds` blocks of `steps` steps after a warm-up, timed on the host around a device
synchronize. Figures (benchmark family_step):
- modernbert_vs_bert: ModernBERT's time / BERT's, per round; the median (settings: each round's).
- s_per_step_<family>: median seconds per step; parameters of each model in the settings.

Sizes: --quick 4 layers, hidden 256, 4 heads (BERT FFN 1024, ModernBERT 683), seq 128, vocabulary
8000, micro-batch 24, the local window 64; full: 6 layers, hidden 768, 12 heads (3072 / 2048),
seq 256, vocabulary 28996, window 128 (a GPU's work; on 2 CPU cores it takes tens of minutes).
"""

from __future__ import annotations

import logging
import statistics
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from benchmarks.bench_cohort import (
    DS_CONFIG,
    ONE_MICRO_BATCH,
    ROOT,
    log,
    stdout_to_stderr,
    synthetic_shards,
    train_steps,
)


@dataclass(frozen=True)
class Plan:
    layers: int
    hidden: int
    heads: int
    ffn: int  # BERT's; ModernBERT's GeGLU gets 2/3 of it (the same weights)
    seq: int
    vocab: int
    window: int  # ModernBERT's local attention window
    warmup: int
    steps: int
    rounds: int

    @property
    def total_steps(self) -> int:
        return self.warmup + self.steps * self.rounds


QUICK = Plan(4, 256, 4, 1024, 128, 8000, 64, warmup=3, steps=1, rounds=24)
FULL = Plan(6, 768, 12, 3072, 256, 28996, 128, warmup=5, steps=10, rounds=5)
FAMILIES = ("bert", "modernbert")


def student_config(plan: Plan, family: str, ids: dict[str, int]) -> dict:
    shape = {
        "num_hidden_layers": plan.layers,
        "hidden_size": plan.hidden,
        "num_attention_heads": plan.heads,
        "vocab_size": plan.vocab,
        "max_position_embeddings": max(plan.seq, 64),
    }
    if family == "bert":
        return shape | {"intermediate_size": plan.ffn}
    return shape | {
        "intermediate_size": round(2 * plan.ffn / 3),
        "local_attention": plan.window,
        "global_attn_every_n_layers": 3,
        **{f"{k}_token_id": v for k, v in ids.items()},
        "bos_token_id": ids["cls"],
        "eos_token_id": ids["sep"],
    }


def run_config(plan: Plan, family: str, shards: Path, tok: Path, out: Path):
    from data_pipeline.shards.manifest import Manifest
    from trainer.config.recipe import apply_overrides, config_from_dict

    t = Manifest.load(shards).tokenizer
    ids = {"pad": t.pad_id, "cls": t.cls_id, "sep": t.sep_id}
    raw = {
        "run": {"name": family, "output_dir": str(out)},
        "data": {"train_shards": str(shards), "tokenizer": str(tok), "max_len": plan.seq},
        "train": {"max_steps": plan.total_steps, "seed": 1, "eval_every": 10**6},
        "students": [
            {
                "name": family,
                "init": {"config": student_config(plan, family, ids), "family": family},
                "objective": {"kind": "mlm"},
                "optimizer": {"lr": 1e-4, "weight_decay": 0.01, "warmup_steps": 2},
            }
        ],
    }
    return config_from_dict(apply_overrides(raw, [ONE_MICRO_BATCH]))


@dataclass
class Measured:
    times: dict[str, list[float]]
    parameters: dict[str, int]
    threads: int
    accelerator: str
    micro_batch: int


def measure(plan: Plan, root: Path) -> Measured:
    import deepspeed
    import torch

    from trainer.config.ds_json import load_ds_config, micro_batch_size
    from trainer.models.parameters import count_parameters
    from trainer.runtime.distributed import Runtime
    from trainer.train.builder import build_trainer

    deepspeed.utils.logger.setLevel(logging.WARNING)
    ds = load_ds_config(DS_CONFIG)
    micro = micro_batch_size(ds, world_size=1)
    docs = (plan.total_steps + 1) * micro
    shards, tok = synthetic_shards(root / "data", plan.vocab, plan.seq, docs)
    rt = Runtime.start()
    trainers = {}
    try:
        for family in FAMILIES:
            cfg = run_config(plan, family, shards, tok, root / "runs")
            trainers[family] = build_trainer(cfg, ds, rt)
            trainers[family].students[0].engine.train()
        params = {f: count_parameters(t.students[0].engine.module.mlm) for f, t in trainers.items()}
        log(f"parameters: {params}")
        stream = iter(trainers["bert"].inputs.loader)  # NOTE: one batch list for both

        def take(steps: int) -> list[dict]:
            return [next(stream) for _ in range(steps)]

        warm = take(plan.warmup)
        for family, trainer in trainers.items():
            log(f"warm-up {family}: {plan.warmup} steps in {train_steps(trainer, warm):.2f} s")
        times: dict[str, list[float]] = {f: [] for f in FAMILIES}
        for r in range(plan.rounds):
            batches = take(plan.steps)
            for family in FAMILIES if r % 2 == 0 else FAMILIES[::-1]:
                times[family].append(train_steps(trainers[family], batches))
            log(
                f"round {r + 1}/{plan.rounds}: "
                + ", ".join(f"{f} {times[f][-1] / plan.steps:.3f} s/step" for f in FAMILIES)
            )
        return Measured(times, params, torch.get_num_threads(), rt.device.type, micro)
    finally:
        for trainer in trainers.values():
            trainer.inputs.loader.close()
            trainer.metrics.close()
        rt.close()


def figures(plan: Plan, m: Measured) -> Iterator[dict]:
    ratios = [a / b for a, b in zip(m.times["modernbert"], m.times["bert"], strict=True)]
    settings = {
        "plan": {k: v for k, v in vars(plan).items()},
        "parameters": m.parameters,
        "micro_batch": m.micro_batch,
        "ds_config": str(DS_CONFIG.relative_to(ROOT)),
        "objective": "mlm",
        "accelerator": m.accelerator,
        "threads": m.threads,
    }
    yield {
        "benchmark": "family_step",
        "metric": "modernbert_vs_bert",
        "value": round(statistics.median(ratios), 3),
        "unit": "ratio",
        "settings": {**settings, "ratio_per_round": [round(r, 3) for r in ratios]},
    }
    for family in FAMILIES:
        yield {
            "benchmark": "family_step",
            "metric": f"s_per_step_{family}",
            "value": round(statistics.median(m.times[family]) / plan.steps, 4),
            "unit": "s/step",
            "settings": settings,
        }


def run(quick: bool) -> Iterator[dict]:
    plan = QUICK if quick else FULL
    with tempfile.TemporaryDirectory(prefix="bench-families-") as tmp, stdout_to_stderr():
        measured = measure(plan, Path(tmp))
    yield from figures(plan, measured)
