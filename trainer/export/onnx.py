"""ONNX files for an export: model.onnx (fp32) and model.int8.onnx (dynamic int8), checked
against PyTorch before they count.

    python -m trainer.export runs/demo/export/DistilBioBERT --onnx [--int8]
    add_onnx(Path("runs/demo/export/DistilBioBERT"), int8=True)   # -> the record's "onnx" entry

Needs the `onnx` extra (`pip install -e .[onnx]`: onnx, onnxruntime, onnxscript). The model is
loaded as `AutoModelForMaskedLM.from_pretrained(export)` and exported by torch.onnx's dynamo
exporter (torch's preferred one; the TorchScript exporter's options are deprecated): inputs
`input_ids` and `attention_mask` (int64, dynamic batch and sequence), output `logits` (the MLM
head over the vocabulary at every position). Nothing here names a model family: BERT, RoBERTa and
ModernBERT masked LMs export the same way (tests/test_onnx.py). The int8 file is
onnxruntime.quantization's `quantize_dynamic` (int8 weights, activations quantized at run time)
of the fp32 graph after onnxruntime.transformers' fusions (a LayerNorm with its residual add,
a bias with its GELU): quantized without them, int8 was no faster than fp32 at the paper's
sizes on a 2-core Xeon (DistilBioBERT 184 against 267 ms, TinyBioBERT 100 against 102 ms, batch
1); with them 112 and 48 ms (one interleaved run each beside other work). The fused graph must
give PyTorch's logits to ATOL like model.onnx, else int8 is quantized from model.onnx as it is,
and the record says which ("int8_from"). Fused operators are ONNX Runtime's own (com.microsoft):
model.int8.onnx is for ONNX Runtime; model.onnx stays the portable graph.

Checked at export, on generated token ids (random ids outside the special tokens, padded rows):
- ONNX Runtime's fp32 logits equal PyTorch's to ATOL at every attended position of a few batches
  (else OnnxCheckFailed, one line, and nothing is written);
- int8's top-1 agreement with fp32 ONNX Runtime at masked positions ([MASK] in 15% of them) is
  measured, printed and recorded (not a pass/fail: quantization changes logits by design);
- CPU latency at batch 1, seq 128 (median), in PyTorch, ONNX Runtime fp32 and int8, with the CPU
  and thread count.
- with `eval_shards` (a run's own held-out split: the trainer passes data.eval_shards; the CLI
  takes --eval-shards), held-out masked accuracy on real text in ONNX Runtime fp32 and int8 and
  int8's top-1 agreement with fp32 there, over the split's first `eval_sequences` sequences
  (the trainer passes as many as its held-out evaluation reads), masked as that evaluation
  masks them (the same positions every time). The shards' vocabulary must be the export's
  (else a UserError naming both). This is what int8 costs a user; random token ids only bound
  it.

The files are written into a copy of the export, which is sealed (EXPORT.json lists every file,
ONNX included, with its size and SHA-256; the checks go into its "onnx" entry) and renamed into
the export's place: a partial or unchecked ONNX file never stands in an export. The model card
gets a section with each file's size and the latencies.
"""

from __future__ import annotations

import contextlib
import io
import logging
import re
import shutil
import statistics
import tempfile
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
from torch import nn

from data_pipeline.errors import UserError
from data_pipeline.io_utils import disk_full_is_an_error, read_json
from trainer.export.latency import (
    LATENCY_SEQ,
    cpu_name,
    load_masked_lm,
    timings,
    usable_length,
)
from trainer.export.model_card import UNSET_ID
from trainer.export.record import EXPORT_RECORD, not_an_export, seal, verify_export

ONNX_FILE = "model.onnx"
INT8_FILE = "model.int8.onnx"
ONNX_FILES = (ONNX_FILE, INT8_FILE)
INPUTS = ("input_ids", "attention_mask")
OUTPUT = "logits"
ATOL = 1e-4  # fp32 ONNX Runtime against PyTorch, absolute, on every attended position
HELDOUT_BATCH = 16  # sequences per held-out batch
HELDOUT_SEQUENCES = 800  # default number of held-out sequences (--eval-sequences)
CARD_HEADING = "## ONNX Runtime (CPU)"
RUNTIME_NAMES = ("PyTorch fp32", "ONNX Runtime fp32", "ONNX Runtime int8")  # the card's rows
EXTRA = "pip install -e .[onnx]  (onnx, onnxruntime, onnxscript)"


class LogitsOnly(nn.Module):
    """The masked LM as a graph of two inputs and one output (what ONNX holds)."""

    def __init__(self, mlm: nn.Module) -> None:
        super().__init__()
        self.mlm = mlm

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.mlm(input_ids=input_ids, attention_mask=attention_mask).logits


class OnnxCheckFailed(UserError):
    """ONNX Runtime's fp32 logits differ from PyTorch's by more than ATOL: nothing is written.
    One line, as bad input is: the model does not export faithfully (the exporter's limit, not
    this code's), and the Hugging Face export stays as it was."""


def require_onnx(what: str = "--onnx") -> None:
    """A one-line UserError when the `onnx` extra is not installed (`what` asked for it)."""
    missing = []
    for name in ("onnx", "onnxruntime", "onnxscript"):
        try:
            __import__(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise UserError(f"{what} needs {', '.join(missing)}: {EXTRA}")


def export_fp32(model: nn.Module, path: Path) -> None:
    """Write `model` (a masked LM) to `path` as one ONNX file (weights inside)."""
    batch, seq = torch.export.Dim("batch"), torch.export.Dim("sequence")
    ids = torch.full((2, 16), _first_plain_id(model.config), dtype=torch.long)
    mask = torch.ones_like(ids)
    mask[1, 12:] = 0  # NOTE: a padded row, so that nothing specialises on an all-ones mask
    with torch.no_grad(), _quiet_exporter():
        torch.onnx.export(
            LogitsOnly(model).eval(),
            (ids, mask),
            str(path),
            dynamo=True,
            input_names=list(INPUTS),
            output_names=[OUTPUT],
            dynamic_shapes={"input_ids": {0: batch, 1: seq}, "attention_mask": {0: batch, 1: seq}},
            external_data=False,
        )


def quantize_int8(src: Path, dst: Path) -> None:
    """Dynamic int8 (onnxruntime.quantization): int8 weights, activations quantized on the fly."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # NOTE: it logs advice on pre-processing at WARNING, every time
    try:
        quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8)
    finally:
        root.setLevel(level)


def fuse_for_onnxruntime(src: Path, dst: Path, config) -> None:
    """onnxruntime.transformers' graph fusions of `src` into `dst` (fp32). Its "bert" patterns
    (SkipLayerNormalization, BiasGelu) are what a BERT-like encoder's graph matches; what a
    family's graph does not match stays as it was."""
    from onnxruntime.transformers.optimizer import optimize_model

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # NOTE: it logs each fusion it tries at INFO/WARNING
    try:
        fused = optimize_model(
            str(src),
            model_type="bert",
            num_heads=int(getattr(config, "num_attention_heads", 0) or 0),
            hidden_size=int(getattr(config, "hidden_size", 0) or 0),
        )
        fused.save_model_to_file(str(dst))
    finally:
        root.setLevel(level)


def session(path: Path, threads: int):
    """An ONNX Runtime CPU session with `threads` intra-op threads (one inter-op)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _first_plain_id(config) -> int:
    specials = [
        getattr(config, k, None)
        for k in ("pad_token_id", "bos_token_id", "eos_token_id", "cls_token_id", "sep_token_id")
    ]
    return max([i for i in specials if isinstance(i, int)] + [4]) + 1


def token_batches(
    config, shapes: list[tuple[int, int]], seed: int, specials: set[int]
) -> list[dict[str, np.ndarray]]:
    """Random plain token ids (no special token) of the given (batch, seq) shapes; every row but
    the first is padded at its end by a different amount (at most half), as a real batch is."""
    rng = np.random.default_rng(seed)
    plain = np.setdiff1d(np.arange(config.vocab_size), np.fromiter(specials, dtype=np.int64))
    batches = []
    for b, s in shapes:
        ids = rng.choice(plain, size=(b, s)).astype(np.int64)
        mask = np.ones((b, s), dtype=np.int64)
        for row in range(1, b):
            mask[row, s - int(rng.integers(1, max(2, s // 2))) :] = 0
        ids[mask == 0] = config.pad_token_id if config.pad_token_id is not None else 0
        batches.append({"input_ids": ids, "attention_mask": mask})
    return batches


def torch_logits(model: nn.Module, feed: dict[str, np.ndarray]) -> np.ndarray:
    with torch.inference_mode():
        out = model(**{k: torch.from_numpy(v) for k, v in feed.items()})
    return out.logits.float().numpy()


def max_abs_diff(model: nn.Module, sess, batches: list[dict[str, np.ndarray]]) -> float:
    """The largest |ONNX Runtime - PyTorch| logit over every attended position of `batches`."""
    worst = 0.0
    for feed in batches:
        keep = feed["attention_mask"].astype(bool)
        diff = np.abs(sess.run([OUTPUT], feed)[0] - torch_logits(model, feed))[keep]
        worst = max(worst, float(diff.max()))
    return worst


def masked_agreement(
    fp32, int8, batches: list[dict[str, np.ndarray]], mask_id: int, seed: int
) -> tuple[float, int]:
    """Top-1 agreement of `int8` with `fp32` (ONNX Runtime sessions) at masked positions: 15% of
    each batch's attended positions replaced by `mask_id`. Returns (agreement, positions)."""
    rng = np.random.default_rng(seed)
    same = total = 0
    for feed in batches:
        attended = feed["attention_mask"].astype(bool)
        masked = attended & (rng.random(attended.shape) < 0.15)
        masked[0, 0] = True  # at least one per batch
        ids = np.where(masked, mask_id, feed["input_ids"])
        fed = {**feed, "input_ids": ids}
        a = fp32.run([OUTPUT], fed)[0][masked].argmax(-1)
        b = int8.run([OUTPUT], fed)[0][masked].argmax(-1)
        same += int((a == b).sum())
        total += int(masked.sum())
    return same / total, total


def heldout_accuracy(sessions: dict, shards, tokenizer, *, sequences: int, name: str) -> dict:
    """Masked accuracy of each ONNX Runtime session (runtime name -> session) on the first
    `sequences` sequences of the eval split of `shards`, and int8's top-1 agreement with fp32
    there when both are given. The batches are the trainer's held-out ones (data_pipeline/
    eval_batches.py: seeded masks, the same positions every time)."""
    from data_pipeline.eval_batches import EvalBatches
    from data_pipeline.masking import IGNORE_INDEX
    from data_pipeline.shards.manifest import tokenizer_info

    held = EvalBatches(shards, HELDOUT_BATCH, tokenizer=tokenizer_info(tokenizer, name=name))
    both = {"ONNX Runtime fp32", "ONNX Runtime int8"} <= sessions.keys()
    correct = dict.fromkeys(sessions, 0)
    same = positions = used = 0
    for batch in held:
        if used >= sequences:
            break
        batch = {k: v[: sequences - used] for k, v in batch.items()}
        used += len(batch["input_ids"])
        feed = {k: batch[k].numpy() for k in INPUTS}
        labels = batch["labels"].numpy()
        rows = labels != IGNORE_INDEX
        top = {k: s.run([OUTPUT], feed)[0][rows].argmax(-1) for k, s in sessions.items()}
        for k, t in top.items():
            correct[k] += int((t == labels[rows]).sum())
        if both:
            same += int((top["ONNX Runtime fp32"] == top["ONNX Runtime int8"]).sum())
        positions += int(rows.sum())
    if positions == 0:
        raise UserError(f"{held.shards.source}: no masked position in its eval split")
    out = {
        "shards": str(held.shards.source),
        "sequences": used,
        "masked_positions": positions,
        "masked_acc": {k: c / positions for k, c in correct.items()},
    }
    if both:
        out["int8_top1_agreement"] = same / positions
    return out


def add_onnx(
    export_dir: Path,
    *,
    int8: bool = False,
    repeats: int = 20,
    eval_shards=None,
    eval_sequences: int = HELDOUT_SEQUENCES,
    log: Callable[[str], None] = print,
) -> dict:
    """Add model.onnx (and with `int8` model.int8.onnx) to the export `export_dir`, checked and
    recorded; returns the "onnx" entry written into its EXPORT.json. With `eval_shards` (shards
    of the export's vocabulary with an eval split) the entry gets "heldout": masked accuracy on
    real text in each ONNX runtime. A directory that is not a verified export is refused
    (UserError) before any work."""
    require_onnx()
    export_dir = Path(export_dir)
    problem = not_an_export(export_dir) if export_dir.is_dir() else "is not a directory"
    problem = problem or verify_export(export_dir)
    if problem is not None:
        raise UserError(f"{export_dir}: {problem}; --onnx needs an export of this trainer")
    record = read_json(export_dir / EXPORT_RECORD)
    with disk_full_is_an_error(export_dir, "writing ONNX files", "the export is as it was"):
        tmp = Path(tempfile.mkdtemp(prefix=f".{export_dir.name}.", dir=export_dir.parent))
        try:
            for rel in record["files"]:
                if rel not in ONNX_FILES:
                    (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(export_dir / rel, tmp / rel)
            entry = _write_and_check(
                tmp,
                export_dir.name,
                int8=int8,
                repeats=repeats,
                heldout=(eval_shards, eval_sequences) if eval_shards is not None else None,
                log=log,
            )
            card = tmp / "README.md"
            if card.is_file():
                card.write_text(with_onnx_section(card.read_text("utf-8"), entry), "utf-8")
            kept = {k: v for k, v in record.items() if k not in ("files", "onnx")}
            seal(tmp, export_dir, {**kept, "onnx": entry})
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return entry


def _write_and_check(
    directory: Path, name: str, *, int8: bool, repeats: int, heldout: tuple | None, log
) -> dict:
    import onnxruntime
    from transformers import AutoTokenizer

    model = load_masked_lm(directory)
    config = model.config
    tokenizer = AutoTokenizer.from_pretrained(directory)
    specials = set(tokenizer.all_special_ids)
    threads = torch.get_num_threads()
    length = min(LATENCY_SEQ, usable_length(config))

    if int8 and tokenizer.mask_token_id is None:
        raise UserError(f"{name}: its tokenizer has no mask token (int8's agreement needs one)")
    log(f"{name}: exporting {ONNX_FILE} (torch.onnx, dynamo)")
    export_fp32(model, directory / ONNX_FILE)
    fp32 = session(directory / ONNX_FILE, threads)
    shapes = [(1, length), (2, max(8, length // 2)), (4, max(8, length // 4) + 3)]
    checks = token_batches(config, shapes, seed=0, specials=specials)  # model.onnx's and int8's
    diff = max_abs_diff(model, fp32, checks)
    if not diff <= ATOL:
        raise OnnxCheckFailed(
            f"{name}: {ONNX_FILE}: ONNX Runtime's logits differ from PyTorch's by {diff:.3g} "
            f"(more than {ATOL}): the exporter changed the model; not written"
        )
    log(f"   {ONNX_FILE}: logits equal PyTorch's to {diff:.2g} (<= {ATOL}), {len(shapes)} batches")
    files = {"PyTorch fp32": _weights_file(directory), "ONNX Runtime fp32": ONNX_FILE}
    entry: dict = {
        "exporter": f"torch.onnx (dynamo), torch {torch.__version__}",
        "onnxruntime": onnxruntime.__version__,
        "inputs": list(INPUTS),
        "output": OUTPUT,
        "check_batches": [list(s) for s in shapes],
        "max_abs_diff": diff,
        "atol": ATOL,
    }
    sessions = {"ONNX Runtime fp32": fp32}
    if int8:
        log(f"{name}: quantizing {INT8_FILE} (dynamic int8)")
        entry["int8_from"] = write_int8(
            model, directory / ONNX_FILE, directory / INT8_FILE, checks, threads, log
        )
        q = session(directory / INT8_FILE, threads)
        sessions["ONNX Runtime int8"] = q
        files["ONNX Runtime int8"] = INT8_FILE
        batches = token_batches(config, [(8, length)] * 4, seed=1, specials=specials)
        agreement, positions = masked_agreement(fp32, q, batches, tokenizer.mask_token_id, 2)
        entry["int8_top1_agreement"] = agreement
        entry["int8_agreement_positions"] = positions
        log(
            f"   {INT8_FILE}: top-1 agreement with fp32 at masked positions {agreement:.4f} "
            f"({positions} positions of random tokens)"
        )

    if heldout is not None:
        shards, sequences = heldout
        held = heldout_accuracy(sessions, shards, tokenizer, sequences=sequences, name=name)
        entry["heldout"] = held
        accs = ", ".join(f"{k} {v:.4f}" for k, v in held["masked_acc"].items())
        agree = held.get("int8_top1_agreement")
        log(
            f"   held-out masked accuracy ({held['masked_positions']} positions of "
            f"{held['shards']}): {accs}"
            + (f"; int8 agrees with fp32 at {agree:.4f}" if agree is not None else "")
        )

    feed = token_batches(config, [(1, length)], seed=3, specials=specials)[0]
    calls = {"PyTorch fp32": lambda: torch_logits(model, feed)}
    calls.update({name: (lambda s=s: s.run([OUTPUT], feed)) for name, s in sessions.items()})
    latency = {}
    for name, call in calls.items():
        latency[name] = statistics.median(timings(call, repeats)) * 1000
        log(f"   {name}: {latency[name]:.2f} ms (batch 1, seq {length}, median of {repeats})")
    entry["latency_ms"] = {
        "batch": 1,
        "seq": length,
        "median_of": repeats,
        "threads": threads,
        "cpu": cpu_name(),
        **{name: round(ms, 3) for name, ms in latency.items()},
    }
    entry["file_bytes"] = {name: (directory / f).stat().st_size for name, f in files.items()}
    entry["files"] = files
    return entry


def write_int8(model: nn.Module, src: Path, dst: Path, checks: list, threads: int, log) -> str:
    """Dynamic int8 of `src` (model.onnx of `model`) into `dst`, quantized from the graph after
    onnxruntime's fusions when those keep PyTorch's logits to ATOL on `checks`; returns what it
    was quantized from: "fused" or model.onnx (the fusions changed the model, or the optimizer
    failed on this graph: onnxruntime 1.32's SkipLayerNormalization fusion raises IndexError on
    ModernBERT's). The fused graph is a temporary file beside `dst`, removed in any case."""
    fused = dst.parent / f".{dst.stem}.fused.onnx"
    source = None
    try:
        try:
            fuse_for_onnxruntime(src, fused, model.config)
        except Exception as e:  # noqa: BLE001 - an optimisation: the plain graph still quantizes
            log(f"   onnxruntime's fusions failed ({type(e).__name__}): int8 from {src.name}")
        else:
            diff = max_abs_diff(model, session(fused, threads), checks)
            if diff <= ATOL:
                source = fused
            else:
                log(f"   the fused graph differs from PyTorch by {diff:.3g}: int8 from {src.name}")
        quantize_int8(source or src, dst)
    finally:
        fused.unlink(missing_ok=True)
    return "fused" if source is not None else src.name


def _weights_file(directory: Path) -> str:
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (directory / name).is_file():
            return name
    raise UserError(f"{directory}: no model.safetensors")


def with_onnx_section(card: str, entry: dict) -> str:
    """The card with its ONNX section (sizes, latencies, checks) put in or replaced, before
    `## Use` (at the end when there is none)."""
    lat = entry["latency_ms"]
    lines = [
        CARD_HEADING,
        "",
        "| runtime | file | size | latency (batch 1, seq {}, median) |".format(lat["seq"]),
        "|---|---|---|---|",
    ]
    for name in (n for n in RUNTIME_NAMES if n in entry["files"]):
        file = entry["files"][name]
        size = entry["file_bytes"][name] / 1e6
        lines.append(f"| {name} | `{file}` | {size:,.1f} MB | {lat[name]:.2f} ms |")
    lines += [
        "",
        f"Measured at export on {lat['cpu']}, {lat['threads']} threads, median of "
        f"{lat['median_of']} runs (beside whatever else that machine ran). ONNX Runtime's fp32 "
        f"logits equal PyTorch's to {entry['max_abs_diff']:.1g} (checked <= {entry['atol']}).",
    ]
    if "int8_top1_agreement" in entry:
        lines[-1] += (
            f" Dynamic int8 agrees with fp32 on the top-1 token at "
            f"{entry['int8_top1_agreement']:.1%} of {entry['int8_agreement_positions']} masked "
            "positions of random token ids."
        )
    if "heldout" in entry:
        held = entry["heldout"]
        acc = held["masked_acc"]
        lines[-1] += (
            f" On {held['masked_positions']:,} masked positions of held-out text, masked "
            "accuracy is "
            + ", ".join(f"{acc[k]:.2%} in {k}" for k in RUNTIME_NAMES if k in acc)
            + (
                f"; int8 agrees with fp32 on the top-1 token at {held['int8_top1_agreement']:.1%}."
                if "int8_top1_agreement" in held
                else "."
            )
        )
    lines += [
        "",
        "```python",
        "import onnxruntime",
        "from transformers import AutoTokenizer",
        "",
        f'tokenizer = AutoTokenizer.from_pretrained("{UNSET_ID}")',
        f'session = onnxruntime.InferenceSession("{UNSET_ID}/{ONNX_FILE}")',
        'enc = tokenizer([f"Aspirin inhibits {tokenizer.mask_token} synthesis."], '
        'return_tensors="np")',
        'feed = {k: enc[k] for k in ("input_ids", "attention_mask")}',
        'logits = session.run(["logits"], feed)[0]  # (batch, sequence, vocabulary)',
        "```",
        "",
        "",
    ]
    section = "\n".join(lines)
    old = re.compile(rf"^{re.escape(CARD_HEADING)}\n.*?(?=^## |\Z)", re.MULTILINE | re.DOTALL)
    if old.search(card):
        return old.sub(lambda _: section, card, count=1)
    use = re.search(r"^## Use\b", card, re.MULTILINE)
    if use is None:
        return card.rstrip("\n") + "\n\n" + section.rstrip("\n") + "\n"
    return card[: use.start()] + section + card[use.start() :]


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """torch.onnx's dynamo exporter prints its progress on stdout, logs every operator it
    cannot register and warns about axis names; the export's own lines say what happened."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)  # "torchvision is not installed. Skipping ...", per operator
    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)
