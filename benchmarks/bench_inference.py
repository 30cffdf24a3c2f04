"""What a user deploys: size, CPU latency and throughput of the teacher and the students, in
PyTorch and ONNX Runtime, fp32 and int8, and their bf16 throughput on a GPU when there is one.

    python benchmarks/run.py --only inference [--quick]

Models at the paper's sizes with random weights (speed and size do not depend on the values):
the BERT-base teacher (12 layers, 768 wide, BioBERT's vocabulary of 28996), the 6-layer 768-wide
students (DistilBioBERT, CompactBioBERT, BioDistilBERT: one shape, measured once) and the 4-layer
312-wide TinyBioBERT (FFN 1200, 12 heads; BioTinyBERT has its shape), as in
recipes/paper_distilled.yaml. Each as a Hugging Face masked LM (SDPA attention), exported to
ONNX and quantized to int8 by trainer/export/onnx.py, the code behind `python -m trainer.export
--onnx --int8`.

Runtimes: `pytorch_fp32`; `pytorch_int8` (torch.ao dynamic int8 of every nn.Linear);
`onnxruntime_fp32` (model.onnx); `onnxruntime_int8` (model.int8.onnx, dynamic int8 of the graph
after onnxruntime's fusions, as the export writes it; `int8_from` in the agreement line). Every
runtime gets the same number of threads (the cores this process may use), stated in the lines.
Without onnxruntime or onnxscript (the `onnx` extra) the two ONNX runtimes are left out and one
line, `onnxruntime/skipped`, gives the reason; the PyTorch figures still come out.

Figures (benchmark inference), per model (`<model>/...`): `parameters`; `size_fp32_bytes`
(model.safetensors), `size_bf16_bytes` (the same saved in bf16), `size_onnx_fp32_bytes`,
`size_int8_bytes` (model.int8.onnx); per runtime (`<model>/<runtime>/...`): `latency_ms_median`
and `latency_ms_p90` at batch 1, seq 128, `throughput_seq_per_s` at batch 32, seq 128; for the
students, `latency_speedup_vs_teacher` and `throughput_speedup_vs_teacher` (against the teacher
in the same runtime) and `<model>/deployed_vs_teacher_pytorch_fp32/latency_speedup` (the
student in ONNX Runtime int8 against the teacher as trained); checks: `<model>/onnxruntime_fp32/
max_abs_diff` (logits against PyTorch) and `<model>/onnxruntime_int8/top1_agreement` (with fp32 at
masked positions of random tokens).

On a GPU (`torch.cuda.is_available()`), first, per model and batch B (32 and 128, seq 128, every
position attended): `<model>/pytorch_bf16_cuda/b<B>/throughput_seq_per_s` and
`.../throughput_tokens_per_s` (the model in bf16 on the GPU, SDPA attention), and for the students
`.../throughput_speedup_vs_teacher`; the settings name the GPU. A batch that does not fit in the
GPU's memory gives `pytorch_bf16_cuda/b<B>/skipped` with the reason instead. On a CPU these lines
are absent. Each timed call ends with a CUDA synchronisation, after untimed warm-up calls.

Timings interleave: each latency round calls every model in every runtime once, so that a machine
shared with other work slows all alike and the ratios stay fair; throughput rounds interleave the
runtimes of one model, a model at a time (a batch-32 call leaves buffers of its size in every
runtime; the peak memory is about 8 GB); GPU rounds call every model once at one batch size. The
load average before and after is in the settings, with a note when the machine was busy (load
average over half the cores). --quick: 10 latency rounds and one batch-32 round (after one
untimed; a BERT-base forward of 32 x 128 tokens alone takes seconds on 2 cores), 20 GPU rounds
after 3 warm-up ones; full: 100, 5, and 100 after 3.
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

BATCH, SEQ, THROUGHPUT_BATCH = 1, 128, 32
VOCAB = 28996  # BioBERT's (cased)
MASK_ID = 103  # [MASK] in BERT's vocabularies
SHAPES = {  # name -> (layers, hidden, FFN, heads), recipes/paper_distilled.yaml
    "teacher": (12, 768, 3072, 12),
    "DistilBioBERT": (6, 768, 3072, 12),
    "TinyBioBERT": (4, 312, 1200, 12),
}
# --dry of the GPU check (benchmarks/gpu_check.py) and the tests: ids >= 1000 are plain tokens
TINY_VOCAB = 1200
TINY_SHAPES = {
    "teacher": (2, 64, 128, 4),
    "DistilBioBERT": (1, 64, 128, 4),
    "TinyBioBERT": (1, 32, 64, 4),
}
SAME_SHAPE = {
    "teacher": ["BioBERT (BERT-base)"],
    "DistilBioBERT": ["DistilBioBERT", "CompactBioBERT", "BioDistilBERT"],
    "TinyBioBERT": ["TinyBioBERT", "BioTinyBERT"],
}
PYTORCH_RUNTIMES = ("pytorch_fp32", "pytorch_int8")
ONNX_RUNTIMES = ("onnxruntime_fp32", "onnxruntime_int8")
RUNTIMES = PYTORCH_RUNTIMES + ONNX_RUNTIMES
GPU_BATCHES = (32, 128)  # 128 where it fits
SPECIALS = set(range(1000))  # BERT vocabularies keep specials and [unused] at the start


def log(message: str) -> None:
    print(f"   {message}", file=sys.stderr, flush=True)


def build(shape: tuple[int, int, int, int], vocab: int):
    """A BertForMaskedLM of `shape` (layers, hidden, FFN, heads), random weights, SDPA, eval."""
    import torch
    from transformers import BertConfig, BertForMaskedLM

    layers, hidden, ffn, heads = shape
    config = BertConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        num_hidden_layers=layers,
        intermediate_size=ffn,
        num_attention_heads=heads,
        max_position_embeddings=512,
        attn_implementation="sdpa",
    )
    torch.manual_seed(0)
    return BertForMaskedLM(config).eval()


def onnx_missing() -> str | None:
    """Why the ONNX runtimes cannot be measured here, or None when they can."""
    try:
        import onnxruntime  # noqa: F401
        import onnxscript  # noqa: F401 - torch.onnx's dynamo exporter needs it
    except ImportError as e:
        return f"{e.name} is not installed (pip install -e .[onnx])"
    return None


def gpu_device() -> str | None:
    """The device of the GPU figures: "cuda" where torch sees a GPU, else None (no such lines)."""
    import torch

    return "cuda" if torch.cuda.is_available() else None


def prepare(
    model, root: Path, quick: bool, onnx: bool
) -> tuple[dict, dict[str, Callable[[dict], object]]]:
    """Sizes and checks of one model, and a call per runtime (numpy feed -> logits); the ONNX
    files, checks and runtimes only with `onnx`."""
    import torch

    from trainer.export.onnx import torch_logits

    root.mkdir(parents=True)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # "Writing model shards", twice a model
    model.save_pretrained(root / "fp32")
    copy.deepcopy(model).to(torch.bfloat16).save_pretrained(root / "bf16")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's quantized tensors are deprecated (kept in 2.13)
        q = torch.ao.quantization.quantize_dynamic(
            copy.deepcopy(model), {torch.nn.Linear}, dtype=torch.qint8
        )
    facts = {
        "parameters": sum(p.numel() for p in model.parameters()),
        "size_fp32_bytes": (root / "fp32" / "model.safetensors").stat().st_size,
        "size_bf16_bytes": (root / "bf16" / "model.safetensors").stat().st_size,
    }
    calls = {
        "pytorch_fp32": lambda feed: torch_logits(model, feed),
        "pytorch_int8": lambda feed: torch_logits(q, feed),
    }
    if onnx:
        more_facts, more_calls = prepare_onnx(model, root, quick)
        facts.update(more_facts)
        calls.update(more_calls)
    return facts, calls


def prepare_onnx(model, root: Path, quick: bool) -> tuple[dict, dict[str, Callable]]:
    """model.onnx and model.int8.onnx of `model` in `root`: their sizes, checks and sessions."""
    import torch

    from trainer.export.onnx import (
        INT8_FILE,
        ONNX_FILE,
        OUTPUT,
        export_fp32,
        masked_agreement,
        max_abs_diff,
        session,
        token_batches,
        write_int8,
    )

    threads = torch.get_num_threads()
    log(f"{root.name}: exporting to ONNX, quantizing")
    export_fp32(model, root / ONNX_FILE)
    checks = token_batches(model.config, [(2, SEQ)], seed=0, specials=SPECIALS)
    int8_from = write_int8(model, root / ONNX_FILE, root / INT8_FILE, checks, threads, log)
    fp32, int8 = session(root / ONNX_FILE, threads), session(root / INT8_FILE, threads)
    agreement_batches = token_batches(model.config, [(8, SEQ)] * (1 if quick else 4), 1, SPECIALS)
    agreement, positions = masked_agreement(fp32, int8, agreement_batches, MASK_ID, seed=2)
    facts = {
        "size_onnx_fp32_bytes": (root / ONNX_FILE).stat().st_size,
        "size_int8_bytes": (root / INT8_FILE).stat().st_size,
        "max_abs_diff": max_abs_diff(model, fp32, checks),
        "top1_agreement": agreement,
        "agreement_positions": positions,
        "int8_from": int8_from,
    }
    calls = {
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


def gpu_throughput(
    device: str,
    shapes: dict[str, tuple[int, int, int, int]],
    vocab: int,
    *,
    batches: tuple[int, ...] = GPU_BATCHES,
    seq: int = SEQ,
    rounds: int = 20,
    warmup: int = 3,
) -> tuple[dict[tuple[str, int], list[float]], dict[int, str]]:
    """Seconds of a bf16 forward (SDPA attention, every position attended) of each model at each
    batch size on `device`: ({(model, batch): [seconds, ...]}, {batch: why it was left out}).

        times, left_out = gpu_throughput("cuda", SHAPES, VOCAB)

    Per batch size: `warmup` untimed rounds, then `rounds` rounds, each calling every model once
    (the CPU figures' interleaving). On CUDA each call ends with torch.cuda.synchronize(), so
    the time is the GPU's work and not its launch; a batch that runs out of GPU memory is left
    out for every model (so the ratios stay within one batch size). Any device torch has works:
    the tests measure on "cpu" at tiny sizes.
    """
    import torch

    from trainer.export.latency import interleaved as timed
    from trainer.export.onnx import token_batches

    dev = torch.device(device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    models = {
        name: build(shape, vocab).to(device=dev, dtype=torch.bfloat16)
        for name, shape in shapes.items()
    }
    config = next(iter(models.values())).config
    (feed,) = token_batches(config, [(max(batches), seq)], seed=5, specials=SPECIALS)
    ids = torch.from_numpy(feed["input_ids"]).to(dev)
    mask = torch.ones_like(ids)  # full rows: throughput of real tokens

    def forward(model, batch: int) -> Callable[[], object]:
        def call() -> object:
            with torch.inference_mode():
                logits = model(input_ids=ids[:batch], attention_mask=mask[:batch]).logits
            sync()  # NOTE: CUDA runs ahead of Python: without it only the launch is timed
            return logits

        return call

    times: dict[tuple[str, int], list[float]] = {}
    left_out: dict[int, str] = {}
    for batch in batches:
        calls = {(name, batch): forward(model, batch) for name, model in models.items()}
        log(f"{dev.type} bf16: batch {batch}, seq {seq}, {warmup} + {rounds} rounds")
        try:
            for _ in range(warmup):
                for call in calls.values():
                    call()
            times.update(timed(calls, rounds, warm_up=False))
        except torch.OutOfMemoryError as e:
            first = (str(e).splitlines() or [type(e).__name__])[0]
            left_out[batch] = f"out of memory on {dev}: {first}"
            log(f"batch {batch}: {left_out[batch]}")
        del calls
        gc.collect()
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    return times, left_out


def gpu_figures(
    times: dict[tuple[str, int], list[float]],
    left_out: dict[int, str],
    runtime: str,
    seq: int,
    settings: dict,
) -> Iterator[dict]:
    """The lines of gpu_throughput's result: sequences/s and tokens/s from the median of each
    model's rounds, and each student's speed-up against the teacher at the same batch size."""
    rate = {(name, batch): batch / statistics.median(t) for (name, batch), t in times.items()}
    for (name, batch), seqs in rate.items():
        at = {**settings, "model": name, "runtime": runtime, "batch": batch, "seq": seq}
        runs = [round(t * 1000, 3) for t in times[(name, batch)]]
        prefix = f"{name}/{runtime}/b{batch}"
        yield figure(f"{prefix}/throughput_seq_per_s", round(seqs, 3), "sequences/s", at, runs)
        yield figure(f"{prefix}/throughput_tokens_per_s", round(seqs * seq, 1), "tokens/s", at)
        if name != "teacher":
            speedup = round(seqs / rate[("teacher", batch)], 3)
            yield figure(f"{prefix}/throughput_speedup_vs_teacher", speedup, "ratio", at)
    for batch, why in left_out.items():
        at = {**settings, "runtime": runtime, "batch": batch, "seq": seq}
        yield {"metric": f"{runtime}/b{batch}/skipped", "value": why, "unit": None, "settings": at}


def figure(metric: str, value, unit: str, settings: dict, runs_ms: list[float] | None = None):
    extra = {} if runs_ms is None else {"runs_ms": runs_ms}
    return {"metric": metric, "value": value, "unit": unit, "settings": {**settings, **extra}}


def gpu_lines(device: str, shapes: dict, vocab: int, sizes: str, quick: bool) -> Iterator[dict]:
    """The GPU figures (gpu_throughput, then gpu_figures), the GPU's memory freed after."""
    import torch
    import transformers

    from trainer.export.latency import cpu_name

    rounds, warmup = (20, 3) if quick else (100, 3)
    times, left_out = gpu_throughput(
        device, shapes, vocab, batches=GPU_BATCHES, rounds=rounds, warmup=warmup
    )
    dev = torch.device(device)
    settings = {
        "sizes": sizes,
        "weights": "random (BertForMaskedLM from a config; timings do not depend on the values)",
        "dtype": "bf16",
        "attention": "sdpa",
        "device": str(dev),
        "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else cpu_name(),
        "rounds": rounds,
        "warmup_rounds": warmup,
        "timing": "wall time of each call, ending in torch.cuda.synchronize() on CUDA",
        "versions": {
            "torch": torch.__version__,
            "cuda": torch.version.cuda,
            "transformers": transformers.__version__,
        },
    }
    yield from gpu_figures(times, left_out, f"pytorch_bf16_{dev.type}", SEQ, settings)
    gc.collect()
    if dev.type == "cuda":
        torch.cuda.empty_cache()


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


def run(quick: bool, sizes: str = "paper") -> Iterator[dict]:
    """The figures (module docstring); `sizes` "tiny": TINY_SHAPES, for the GPU check's --dry."""
    import torch
    import transformers

    from trainer.export.latency import cpu_name
    from trainer.export.onnx import token_batches

    shapes, vocab = (SHAPES, VOCAB) if sizes == "paper" else (TINY_SHAPES, TINY_VOCAB)
    device = gpu_device()
    if device is not None:  # NOTE: first: on a GPU machine these are what the run is for
        yield from gpu_lines(device, shapes, vocab, sizes, quick)
    onnx_skipped = onnx_missing()
    runtimes = PYTORCH_RUNTIMES if onnx_skipped else RUNTIMES
    cores = len(os.sched_getaffinity(0))
    torch.set_num_threads(cores)
    load_before = os.getloadavg()[0]
    rounds, batch_rounds = (10, 1) if quick else (100, 5)
    facts, calls = {}, {}
    with tempfile.TemporaryDirectory(prefix="bench-inference-") as tmp:
        for name, shape in shapes.items():
            model = build(shape, vocab)
            facts[name], per_runtime = prepare(model, Path(tmp) / name, quick, not onnx_skipped)
            calls.update({(name, rt): call for rt, call in per_runtime.items()})
        config = model.config  # the vocabulary is all the feeds need
        one = token_batches(config, [(BATCH, SEQ)], seed=3, specials=SPECIALS)[0]
        many = token_batches(config, [(THROUGHPUT_BATCH, SEQ)], 4, specials=SPECIALS)[0]
        many["attention_mask"][:] = 1  # full rows: throughput of real tokens
        log(f"latency: batch {BATCH}, seq {SEQ}, {rounds} rounds")
        latency = interleaved(calls, one, rounds, warm_up=True)
        throughput: dict[tuple[str, str], list[float]] = {}
        for name in shapes:
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
    versions = {"torch": torch.__version__, "transformers": transformers.__version__}
    if not onnx_skipped:
        import onnxruntime

        versions["onnxruntime"] = onnxruntime.__version__
    settings = {
        "sizes": sizes,
        "weights": "random (BertForMaskedLM from a config; timings do not depend on the values)",
        "threads": cores,
        "cpu": cpu_name(),
        "latency": {"batch": BATCH, "seq": SEQ, "rounds": rounds},
        "throughput": {"batch": THROUGHPUT_BATCH, "seq": SEQ, "rounds": batch_rounds},
        "load_average_1m": [round(load_before, 2), round(load_after, 2)],
        "versions": dict(sorted(versions.items())),
    }
    note = machine_note(load_before, cores)
    if note:
        settings["note"] = note

    def cpu_figure(metric: str, value, unit: str | None, **extra) -> dict:
        return {"metric": metric, "value": value, "unit": unit, "settings": {**settings, **extra}}

    med = {k: statistics.median(v) for k, v in latency.items()}
    rate = {k: THROUGHPUT_BATCH / statistics.median(v) for k, v in throughput.items()}
    for name, f in facts.items():
        shape = dict(zip(("layers", "hidden", "ffn", "heads"), shapes[name], strict=True))
        about = {"model": name, "shape": shape, "models_of_this_shape": SAME_SHAPE[name]}
        yield cpu_figure(f"{name}/parameters", f["parameters"], "parameters", **about)
        for key in ("size_fp32_bytes", "size_bf16_bytes", "size_onnx_fp32_bytes"):
            if key in f:
                yield cpu_figure(f"{name}/{key}", f[key], "bytes", **about)
        if not onnx_skipped:
            yield cpu_figure(f"{name}/size_int8_bytes", f["size_int8_bytes"], "bytes", **about)
            yield cpu_figure(
                f"{name}/onnxruntime_fp32/max_abs_diff", f["max_abs_diff"], "logit", **about
            )
            yield cpu_figure(
                f"{name}/onnxruntime_int8/top1_agreement",
                round(f["top1_agreement"], 4),
                "ratio",
                positions=f["agreement_positions"],
                int8_from=f["int8_from"],  # "fused": after onnxruntime's fusions
                **about,
            )
        for rt in runtimes:
            key, times = (name, rt), latency[(name, rt)]
            at = {**about, "runtime": rt}
            ms = [round(t * 1000, 3) for t in times]
            yield cpu_figure(
                f"{name}/{rt}/latency_ms_median", round(med[key] * 1000, 3), "ms", **at
            )
            p90 = round(float(np.percentile(np.asarray(times), 90)) * 1000, 3)
            yield cpu_figure(f"{name}/{rt}/latency_ms_p90", p90, "ms", runs_ms=ms, **at)
            yield cpu_figure(
                f"{name}/{rt}/throughput_seq_per_s", round(rate[key], 3), "sequences/s", **at
            )
            if name == "teacher":
                continue
            teacher = ("teacher", rt)
            yield cpu_figure(
                f"{name}/{rt}/latency_speedup_vs_teacher",
                round(med[teacher] / med[key], 3),
                "ratio",
                **at,
            )
            yield cpu_figure(
                f"{name}/{rt}/throughput_speedup_vs_teacher",
                round(rate[key] / rate[teacher], 3),
                "ratio",
                **at,
            )
        if name != "teacher" and not onnx_skipped:
            yield cpu_figure(
                f"{name}/deployed_vs_teacher_pytorch_fp32/latency_speedup",
                round(med[("teacher", "pytorch_fp32")] / med[(name, "onnxruntime_int8")], 3),
                "ratio",
                runtime="onnxruntime_int8 against the teacher in pytorch_fp32",
                **about,
            )
    if onnx_skipped:
        yield cpu_figure("onnxruntime/skipped", onnx_skipped, None, runtimes=list(ONNX_RUNTIMES))
