"""CPU latency of masked LMs, timed in interleaved rounds so that their ratios are fair.

    times = interleaved({"teacher": call_t, "S": call_s}, rounds=7)   # name -> [seconds, ...]
    figures = pytorch_latency({"teacher": Path("t"), "S": Path("runs/demo/export/S")})

A machine shared with other work slows every model of a round alike, so ratios of medians from
one pass of interleaved rounds hold where absolute times drift: the run's summary
(trainer/train/summary.py) and the inference benchmark (benchmarks/bench_inference.py) time
through `interleaved`; the ONNX export's card (trainer/export/onnx.py) through `timings`, and it
loads the export with `load_masked_lm` as the summary does.

`pytorch_latency` loads each Hugging Face directory as a user's `from_pretrained` gets it (fp32,
SDPA attention, CPU) and times a forward pass at batch 1 and sequence 128 (shorter where the
model's positions end), on random ordinary token ids with every position attended.
"""

from __future__ import annotations

import platform
import statistics
import time
from collections.abc import Callable, Hashable
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch
from torch import nn

from trainer.models.parameters import count_parameters

LATENCY_BATCH, LATENCY_SEQ = 1, 128
K = TypeVar("K", bound=Hashable)


def timings(call: Callable[[], object], repeats: int, warmup: int = 2) -> list[float]:
    """Wall seconds of `repeats` calls after `warmup` untimed ones."""
    for _ in range(warmup):
        call()
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        out.append(time.perf_counter() - start)
    return out


def interleaved(
    calls: dict[K, Callable[[], object]],
    rounds: int,
    *,
    warm_up: bool = True,
    progress: Callable[[int], None] | None = None,
) -> dict[K, list[float]]:
    """Wall seconds of each call, `rounds` times, every call once a round (after one untimed
    call each with `warm_up`); `progress(r)` after round r (from 1)."""
    for call in calls.values() if warm_up else ():
        call()
    times: dict[K, list[float]] = {key: [] for key in calls}
    for r in range(rounds):
        for key, call in calls.items():
            start = time.perf_counter()
            call()
            times[key].append(time.perf_counter() - start)
        if progress is not None:
            progress(r + 1)
    return times


def cpu_name() -> str:
    """The CPU model as /proc/cpuinfo names it (else platform's), e.g. 'AMD EPYC 9B14'."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def usable_length(config) -> int:
    """The longest sequence every family's position table takes (RoBERTa's starts at pad + 1)."""
    return max(8, int(getattr(config, "max_position_embeddings", 512)) - 2)


def p90(values: list[float]) -> float:
    return float(np.percentile(np.asarray(values), 90))


def load_masked_lm(directory: Path) -> nn.Module:
    """The export's masked LM in fp32, SDPA attention (what a user's `from_pretrained` gets)."""
    from transformers import AutoModelForMaskedLM
    from transformers.utils import logging as hf_logging

    level, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()  # NOTE: the pooler an export carries is UNEXPECTED here
    hf_logging.disable_progress_bar()
    try:
        model = AutoModelForMaskedLM.from_pretrained(
            directory, attn_implementation="sdpa", dtype=torch.float32
        )
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()
    return model.eval()


def pytorch_latency(
    directories: dict[str, Path],
    *,
    seq: int = LATENCY_SEQ,
    threads: int = 1,
    budget_s: float = 1.0,
    rounds: tuple[int, int] = (5, 50),
) -> dict:
    """Parameters, fp32 weights on disk and PyTorch CPU latency of each Hugging Face masked LM
    directory, timed in one interleaved pass on `threads` intra-op threads:

        {"settings": {"runtime", "batch", "seq", "rounds", "threads", "cpu", "torch"},
         "models": {name: {"parameters", "size_fp32_bytes", "latency_ms_median",
                           "latency_ms_p90"}}}

    `seq` is cut to the shortest usable length among the models, so that all share one shape.
    As many rounds as fit in about `budget_s` after an untimed one, within `rounds` (least,
    most): tiny models get enough rounds for a steady median, big ones no more than the least.
    One thread by default: on a machine shared with other work, every operator of a
    multi-threaded forward waits for a core at its parallel region's barrier (the demo's teacher
    took 400 ms instead of 3 ms on a busy 2-core machine), and one thread's figures compare
    across machines; the speed-ups are ratios of work either way.
    """
    models = {name: load_masked_lm(Path(d)) for name, d in directories.items()}
    length = min([seq] + [usable_length(m.config) for m in models.values()])
    calls = {name: _forward(m, length) for name, m in models.items()}
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        start = time.perf_counter()
        for call in calls.values():
            call()
        first = max(time.perf_counter() - start, 1e-6)
        least, most = rounds
        times = interleaved(calls, min(most, max(least, int(budget_s / first))), warm_up=False)
    finally:
        torch.set_num_threads(before)
    out = {}
    for name, model in models.items():
        out[name] = {
            "parameters": count_parameters(model),
            "size_fp32_bytes": _weights_bytes(Path(directories[name])),
            "latency_ms_median": round(statistics.median(times[name]) * 1000, 3),
            "latency_ms_p90": round(p90(times[name]) * 1000, 3),
        }
    settings = {
        "runtime": "PyTorch fp32, SDPA attention",
        "batch": LATENCY_BATCH,
        "seq": length,
        "rounds": len(next(iter(times.values()), [])),
        "threads": threads,
        "cpu": cpu_name(),
        "torch": torch.__version__,
    }
    return {"settings": settings, "models": out}


def _forward(model: nn.Module, length: int) -> Callable[[], object]:
    vocab = model.config.vocab_size
    low = min(1000, vocab // 2)  # past the special tokens (and [unused]) of WordPiece vocabularies
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(low, vocab, (LATENCY_BATCH, length), generator=g)
    mask = torch.ones_like(ids)

    def call() -> object:
        with torch.inference_mode():
            return model(input_ids=ids, attention_mask=mask).logits

    return call


def _weights_bytes(directory: Path) -> int:
    """model.safetensors' size (the weights of every export; pytorch_model.bin for older ones)."""
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (directory / name).is_file():
            return (directory / name).stat().st_size
    raise FileNotFoundError(f"{directory}: no model.safetensors")
