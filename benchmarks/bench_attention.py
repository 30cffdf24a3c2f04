"""Attention kernels: which SDPA kernel is faster for a training step, by shape and dtype.

    python benchmarks/run.py --only attention [--quick]

The trainer's attention (trainer/models/attention.py) runs SDPA's math kernel instead of the flash
one on a CPU in bf16 or fp16 when the keys are at most `CPU_MATH_MAX_KEYS` long. This measures the
rule: forward and backward of `sdpa_attention_forward` (as every layer calls it: q, k and v as
strided views of one projection, a padding mask, no dropout) under each kernel, both timed in
every round (trainer/export/latency.py's `interleaved`), at batch 24 over a grid of key lengths
and head sizes (8: the demo's students; 26: TinyBioBERT's 312/12; 64: BERT-base's).
Figures (benchmark attention_kernels):

- math_over_flash_<dtype>_L<len>_D<head>: seconds with the math kernel over seconds with the
  flash one, the median over rounds (below 1: math is faster). The settings name the kernel the
  trainer takes at that shape, so a line with the ratio above 1 and `"trainer_takes": "math"` (or
  below 1 with "flash") says the rule is wrong on this machine or this torch.

On a GPU the trainer leaves the choice to torch (flash or memory-efficient kernels), and this
benchmark is skipped there. --quick: 4 rounds of 2 steps at key lengths 64, 128 and 256; full: 8
rounds of 3 steps at 64, 128, 192, 256 and 512. About a minute (--quick) on 2 CPU cores.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterator

from benchmarks.common import Skipped

BATCH = 24
HEAD_SIZES = {8: 4, 26: 12, 64: 12}  # head size -> heads (hidden 32, 312 and 768)
LENGTHS = {True: (64, 128, 256), False: (64, 128, 192, 256, 512)}  # by quick
ROUNDS = {True: (4, 2), False: (8, 3)}  # rounds, steps per round, by quick


def measure(length: int, head: int, dtype, rounds: int, steps: int) -> list[float]:
    """math/flash seconds per forward+backward, one ratio per round."""
    import torch
    from torch import nn
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    from trainer.export.latency import interleaved

    heads = HEAD_SIZES[head]
    module = nn.Module()
    module.is_causal = False
    g = torch.Generator().manual_seed(0)
    qkv = torch.randn(BATCH, length, 3 * heads * head, generator=g).to(dtype).requires_grad_()
    mask = torch.ones(BATCH, 1, length, length, dtype=torch.bool)
    mask[: BATCH // 2, :, :, length * 3 // 4 :] = False  # half the batch padded

    def step(backend) -> None:
        q, k, v = (
            x.view(BATCH, length, heads, head).transpose(1, 2) for x in qkv.split(heads * head, -1)
        )
        with sdpa_kernel(backend):
            out, _ = sdpa_attention_forward(module, q, k, v, mask, dropout=0.0)
        out.float().sum().backward()

    calls = {  # every round times `steps` steps of each kernel (trainer/export/latency.py)
        backend: lambda b=backend: [step(b) for _ in range(steps)]
        for backend in (SDPBackend.MATH, SDPBackend.FLASH_ATTENTION)
    }
    times = interleaved(calls, rounds)
    ratios = [
        m / f
        for m, f in zip(times[SDPBackend.MATH], times[SDPBackend.FLASH_ATTENTION], strict=True)
    ]
    return ratios


def run(quick: bool) -> Iterator[dict]:
    import torch

    from trainer.models.attention import CPU_MATH_MAX_KEYS, cpu_math_kernel

    if torch.cuda.is_available():
        raise Skipped("a GPU: the trainer leaves the kernel to torch there")
    rounds, steps = ROUNDS[quick]
    dtypes = {"bf16": torch.bfloat16, "fp32": torch.float32}
    for name, dtype in dtypes.items():
        for length in LENGTHS[quick]:
            for head in HEAD_SIZES:
                ratios = measure(length, head, dtype, rounds, steps)
                probe = torch.zeros(1, 1, length, head, dtype=dtype)
                takes = "math" if cpu_math_kernel(probe, probe) else "flash"
                yield {
                    "benchmark": "attention_kernels",
                    "metric": f"math_over_flash_{name}_L{length}_D{head}",
                    "value": round(statistics.median(ratios), 3),
                    "unit": "ratio",
                    "settings": {
                        "batch": BATCH,
                        "heads": HEAD_SIZES[head],
                        "head_size": head,
                        "keys": length,
                        "dtype": name,
                        "rounds": rounds,
                        "steps_per_round": steps,
                        "ratio_per_round": [round(x, 3) for x in ratios],
                        "trainer_takes": takes,
                        "cpu_math_max_keys": CPU_MATH_MAX_KEYS,
                        "threads": torch.get_num_threads(),
                        "torch": torch.__version__,
                    },
                }
