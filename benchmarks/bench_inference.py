"""What a user deploys: size, CPU latency and throughput of the teacher and the students, in
PyTorch and ONNX Runtime, fp32 and int8.

    python benchmarks/run.py --only inference [--quick]

Models at the paper's sizes with random weights (speed and size do not depend on the values):
the BERT-base teacher (12 layers, 768 wide, BioBERT's vocabulary of 28996), the 6-layer 768-wide
students (DistilBioBERT, CompactBioBERT, BioDistilBERT: one shape, measured once) and the 4-layer
312-wide TinyBioBERT (FFN 1200, 12 heads; BioTinyBERT has its shape), as in
recipes/paper_distilled.yaml. Each as a Hugging Face masked LM (SDPA attention), exported to
ONNX and quantized to int8 by trainer/export/onnx.py, the code behind `python -m trainer.export
--onnx --int8`.

Runtimes: `pytorch_fp32`; `pytorch_int8` (torch.ao dynamic int8 of every nn.Linear);
`onnxruntime_fp32` (model.onnx); `onnxruntime_int8` (model.int8.onnx, dynamic int8). Every
runtime gets the same number of threads (the cores this process may use), stated in the lines.

Figures (benchmark inference), per model (`<model>/...`): `parameters`; `size_fp32_bytes`
(model.safetensors), `size_bf16_bytes` (the same saved in bf16), `size_onnx_fp32_bytes`,
`size_int8_bytes` (model.int8.onnx); per runtime (`<model>/<runtime>/...`): `latency_ms_median`
and `latency_ms_p90` at batch 1, seq 128, `throughput_seq_per_s` at batch 32, seq 128; for the
students, `latency_speedup_vs_teacher` and `throughput_speedup_vs_teacher` (against the teacher
in the same runtime) and `<model>/deployed_vs_teacher_pytorch_fp32/latency_speedup` (the
student in ONNX Runtime int8 against the teacher as trained); checks: `<model>/onnxruntime_fp32/
max_abs_diff` (logits against PyTorch) and `<model>/onnxruntime_int8/top1_agreement` (with fp32 at
masked positions of random tokens).

Timings interleave: each latency round calls every model in every runtime once, so that a machine
shared with other work slows all alike and the ratios stay fair; throughput rounds interleave the
runtimes of one model, a model at a time (a batch-32 call leaves buffers of its size in every
runtime; the peak memory is about 8 GB). The load average before and after is in
the settings, with a note when the machine was busy (load average over half the cores). --quick:
10 latency rounds and one batch-32 round (after one untimed; a BERT-base forward of 32 x 128
tokens alone takes seconds on 2 cores); full: 100 and 5.
"""

from __future__ import annotations

import copy
import gc
import os
import statistics
import sys
import tempfile
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from benchmarks.common import Skipped

BATCH, SEQ, THROUGHPUT_BATCH = 1, 128, 32
VOCAB = 28996  # BioBERT's (cased)
MASK_ID = 103  # [MASK] in BERT's vocabularies
SHAPES = {  # name -> (layers, hidden, FFN, heads), recipes/paper_distilled.yaml
    "teacher": (12, 768, 3072, 12),
    "DistilBioBERT": (6, 768, 3072, 12),
    "TinyBioBERT": (4, 312, 1200, 12),
}
SAME_SHAPE = {
    "teacher": ["BioBERT (BERT-base)"],
    "DistilBioBERT": ["DistilBioBERT", "CompactBioBERT", "BioDistilBERT"],
    "TinyBioBERT": ["TinyBioBERT", "BioTinyBERT"],
}
RUNTIMES = ("pytorch_fp32", "pytorch_int8", "onnxruntime_fp32", "onnxruntime_int8")


def log(message: str) -> None:
    print(f"   {message}", file=sys.stderr, flush=True)


def build(name: str):
    import torch
    from transformers import BertConfig, BertForMaskedLM

    layers, hidden, ffn, heads = SHAPES[name]
    config = BertConfig(
        vocab_size=VOCAB,
        hidden_size=hidden,
        num_hidden_layers=layers,
        intermediate_size=ffn,
        num_attention_heads=heads,
        max_position_embeddings=512,
        attn_implementation="sdpa",
    )
    torch.manual_seed(0)
    return BertForMaskedLM(config).eval()


def prepare(name: str, root: Path, quick: bool) -> tuple[dict, dict[str, Callable[[dict], object]]]:
    """Sizes and checks of one model, and a call per runtime (numpy feed -> logits)."""
    import torch

    from trainer.export.onnx import (
        INT8_FILE,
        ONNX_FILE,
        OUTPUT,
        export_fp32,
        masked_agreement,
        max_abs_diff,
        quantize_int8,
        session,
        token_batches,
        torch_logits,
    )

    threads = torch.get_num_threads()
    model = build(name)
    out = root / name
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # "Writing model shards", twice a model
    model.save_pretrained(out / "fp32")
    copy.deepcopy(model).to(torch.bfloat16).save_pretrained(out / "bf16")
    log(f"{name}: exporting to ONNX, quantizing")
    export_fp32(model, out / ONNX_FILE)
    quantize_int8(out / ONNX_FILE, out / INT8_FILE)
    fp32, int8 = session(out / ONNX_FILE, threads), session(out / INT8_FILE, threads)
    specials = set(range(1000))  # BERT vocabularies keep specials and [unused] at the start
    checks = token_batches(model.config, [(2, SEQ)], seed=0, specials=specials)
    agreement_batches = token_batches(model.config, [(8, SEQ)] * (1 if quick else 4), 1, specials)
    agreement, positions = masked_agreement(fp32, int8, agreement_batches, MASK_ID, seed=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's quantized tensors are deprecated (kept in 2.13)
        q = torch.ao.quantization.quantize_dynamic(
            copy.deepcopy(model), {torch.nn.Linear}, dtype=torch.qint8
        )
    facts = {
        "parameters": sum(p.numel() for p in model.parameters()),
        "size_fp32_bytes": (out / "fp32" / "model.safetensors").stat().st_size,
        "size_bf16_bytes": (out / "bf16" / "model.safetensors").stat().st_size,
        "size_onnx_fp32_bytes": (out / ONNX_FILE).stat().st_size,
        "size_int8_bytes": (out / INT8_FILE).stat().st_size,
        "max_abs_diff": max_abs_diff(model, fp32, checks),
        "top1_agreement": agreement,
        "agreement_positions": positions,
    }
    calls = {
        "pytorch_fp32": lambda feed: torch_logits(model, feed),
        "pytorch_int8": lambda feed: torch_logits(q, feed),
        "onnxruntime_fp32": lambda feed: fp32.run([OUTPUT], feed),
        "onnxruntime_int8": lambda feed: int8.run([OUTPUT], feed),
    }
    return facts, calls


def interleaved(
    calls: dict[tuple[str, str], Callable[[dict], object]], feed: dict, rounds: int, warm_up: bool
) -> dict[tuple[str, str], list[float]]:
    """Seconds of each call on `feed`, `rounds` times, every call once a round (after one untimed
    call each with `warm_up`): trainer/export/latency.py's, which the run's summary times with."""
    from trainer.export.latency import interleaved as timed

    def progress(r: int) -> None:
        if rounds <= 10 or r % 10 == 0:
            log(f"round {r}/{rounds}")

    bound = {key: (lambda call=call: call(feed)) for key, call in calls.items()}
    return timed(bound, rounds, warm_up=warm_up, progress=progress)


def machine_note(before: float, cores: int) -> str | None:
    """A note when other work loaded the machine: judged from the load average before the
    benchmark started (the one after counts its own threads)."""
    if before < 0.5 * cores:
        return None
    return (
        f"other work was running on the machine (load average {before:.1f} on {cores} cores "
        "before the benchmark started): absolute timings were shared with it; ratios are from "
        "interleaved rounds"
    )


def run(quick: bool) -> Iterator[dict]:
    try:
        import onnxruntime
        import onnxscript  # noqa: F401 - torch.onnx's dynamo exporter needs it
    except ImportError as e:
        raise Skipped(f"{e.name} is not installed (pip install -e .[onnx])") from None
    import torch
    import transformers

    from trainer.export.latency import cpu_name
    from trainer.export.onnx import token_batches

    cores = len(os.sched_getaffinity(0))
    torch.set_num_threads(cores)
    load_before = os.getloadavg()[0]
    rounds, batch_rounds = (10, 1) if quick else (100, 5)
    facts, calls = {}, {}
    with tempfile.TemporaryDirectory(prefix="bench-inference-") as tmp:
        for name in SHAPES:
            facts[name], per_runtime = prepare(name, Path(tmp), quick)
            calls.update({(name, rt): call for rt, call in per_runtime.items()})
        config = build("TinyBioBERT").config  # the vocabulary is all the feeds need
        one = token_batches(config, [(BATCH, SEQ)], seed=3, specials=set(range(1000)))[0]
        many = token_batches(config, [(THROUGHPUT_BATCH, SEQ)], 4, specials=set(range(1000)))[0]
        many["attention_mask"][:] = 1  # full rows: throughput of real tokens
        log(f"latency: batch {BATCH}, seq {SEQ}, {rounds} rounds")
        latency = interleaved(calls, one, rounds, warm_up=True)
        throughput: dict[tuple[str, str], list[float]] = {}
        for name in SHAPES:
            # NOTE: one model at a time: each runtime keeps the buffers of a batch-32 call
            # (the teacher's four hold about 3 GB), freed when its model is done: 11 GB -> 8 GB peak
            mine = {key: calls.pop(key) for key in [k for k in calls if k[0] == name]}
            log(f"throughput of {name}: batch {THROUGHPUT_BATCH}, seq {SEQ}, {batch_rounds} rounds")
            # NOTE: with its own warm-up: ONNX Runtime's first call at a new shape grows its
            # arena (page faults over about 1 GB), which made a cold batch-32 round of
            # TinyBioBERT 3x slower than PyTorch's
            throughput.update(interleaved(mine, many, batch_rounds, warm_up=True))
            del mine
            gc.collect()
    load_after = os.getloadavg()[0]
    settings = {
        "sizes": "paper",
        "weights": "random (BertForMaskedLM from a config; timings do not depend on the values)",
        "threads": cores,
        "cpu": cpu_name(),
        "latency": {"batch": BATCH, "seq": SEQ, "rounds": rounds},
        "throughput": {"batch": THROUGHPUT_BATCH, "seq": SEQ, "rounds": batch_rounds},
        "load_average_1m": [round(load_before, 2), round(load_after, 2)],
        "versions": {
            "torch": torch.__version__,
            "onnxruntime": onnxruntime.__version__,
            "transformers": transformers.__version__,
        },
    }
    note = machine_note(load_before, cores)
    if note:
        settings["note"] = note

    def figure(metric: str, value, unit: str, **extra) -> dict:
        return {"metric": metric, "value": value, "unit": unit, "settings": {**settings, **extra}}

    med = {k: statistics.median(v) for k, v in latency.items()}
    rate = {k: THROUGHPUT_BATCH / statistics.median(v) for k, v in throughput.items()}
    for name, f in facts.items():
        shape = dict(zip(("layers", "hidden", "ffn", "heads"), SHAPES[name], strict=True))
        about = {"model": name, "shape": shape, "models_of_this_shape": SAME_SHAPE[name]}
        yield figure(f"{name}/parameters", f["parameters"], "parameters", **about)
        for key in ("size_fp32_bytes", "size_bf16_bytes", "size_onnx_fp32_bytes"):
            yield figure(f"{name}/{key}", f[key], "bytes", **about)
        yield figure(f"{name}/size_int8_bytes", f["size_int8_bytes"], "bytes", **about)
        yield figure(f"{name}/onnxruntime_fp32/max_abs_diff", f["max_abs_diff"], "logit", **about)
        yield figure(
            f"{name}/onnxruntime_int8/top1_agreement",
            round(f["top1_agreement"], 4),
            "ratio",
            positions=f["agreement_positions"],
            **about,
        )
        for rt in RUNTIMES:
            key, times = (name, rt), latency[(name, rt)]
            at = {**about, "runtime": rt}
            ms = [round(t * 1000, 3) for t in times]
            yield figure(f"{name}/{rt}/latency_ms_median", round(med[key] * 1000, 3), "ms", **at)
            p90 = round(float(np.percentile(np.asarray(times), 90)) * 1000, 3)
            yield figure(f"{name}/{rt}/latency_ms_p90", p90, "ms", runs_ms=ms, **at)
            yield figure(
                f"{name}/{rt}/throughput_seq_per_s", round(rate[key], 3), "sequences/s", **at
            )
            if name == "teacher":
                continue
            teacher = ("teacher", rt)
            yield figure(
                f"{name}/{rt}/latency_speedup_vs_teacher",
                round(med[teacher] / med[key], 3),
                "ratio",
                **at,
            )
            yield figure(
                f"{name}/{rt}/throughput_speedup_vs_teacher",
                round(rate[key] / rate[teacher], 3),
                "ratio",
                **at,
            )
        if name != "teacher":
            yield figure(
                f"{name}/deployed_vs_teacher_pytorch_fp32/latency_speedup",
                round(med[("teacher", "pytorch_fp32")] / med[(name, "onnxruntime_int8")], 3),
                "ratio",
                runtime="onnxruntime_int8 against the teacher in pytorch_fp32",
                **about,
            )
