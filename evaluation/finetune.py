"""Fine-tuning and prediction: one plain-torch loop for all three tasks.

    python -m evaluation run ...   (each cell calls train() then predict())

Why plain torch and not DeepSpeed (the trainer's engine): a cell fine-tunes one model of at most
~110M parameters on one device, where AdamW's states (~1.3 GB for BERT-base) fit with room to
spare, so ZeRO partitioning buys nothing; DeepSpeed would add an engine set-up per cell (hundreds
of short runs: datasets x folds x seeds x models) and, on CPU, a first-run JIT build of its ops.
Plain torch runs the same on a laptop CPU and on a GPU: bf16 autocast where the GPU supports it
(fp32 master weights and optimizer, loss in fp32), fp32 elsewhere. Several GPUs: run one process
per GPU with `--shard I/N` (cells are independent).

Batches are features (dicts of id lists) padded to the batch's longest sequence rounded up to 8;
token-level labels pad with -100. Losses stay on the device between progress lines (no host sync
per step).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from data_pipeline.errors import UserError
from data_pipeline.masking import IGNORE_INDEX
from evaluation.config import TaskSettings
from trainer.models.parameters import param_groups

INPUT_KEYS = ("input_ids", "attention_mask", "token_type_ids")


@dataclass(frozen=True)
class Runtime:
    device: torch.device
    bf16: bool

    @property
    def precision(self) -> str:
        return "bf16" if self.bf16 else "fp32"

    def autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16)


def resolve_runtime(device: str, precision: str) -> Runtime:
    """`--device auto|cpu|cuda|cuda:N`, `--precision auto|bf16|fp32` -> where and how to run."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise UserError(f"--device {device!r}: expected auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {device}: no CUDA device is available")
    if precision not in ("auto", "bf16", "fp32"):
        raise UserError(f"--precision {precision!r}: expected auto, bf16 or fp32")
    bf16_ok = dev.type == "cuda" and torch.cuda.is_bf16_supported()
    if precision == "bf16" and not bf16_ok:
        raise UserError(f"--precision bf16: not supported on {dev} (use fp32)")
    return Runtime(dev, bf16=precision == "bf16" or (precision == "auto" and bf16_ok))


def collate(features: Sequence[dict[str, list[int] | int]], pad_id: int) -> dict[str, torch.Tensor]:
    """Pad list values to the batch maximum (rounded to 8); scalar values become a vector."""
    longest = max(len(f["input_ids"]) for f in features)
    width = 8 * math.ceil(longest / 8)
    batch = {}
    for key in features[0]:
        values = [f[key] for f in features]
        if isinstance(values[0], list):
            pad = {"input_ids": pad_id, "labels": IGNORE_INDEX}.get(key, 0)
            values = [list(v) + [pad] * (width - len(v)) for v in values]
        batch[key] = torch.tensor(values, dtype=torch.long)
    return batch


def steps_per_epoch(n_features: int, batch_size: int) -> int:
    return math.ceil(n_features / batch_size)


def train(
    model: torch.nn.Module,
    features: Sequence[dict],
    settings: TaskSettings,
    *,
    seed: int,
    runtime: Runtime,
    pad_id: int,
    on_step: Callable[[int, int, Callable[[], float]], None] | None = None,
) -> float:
    """Fine-tune `model` in place; returns the mean training loss of the last epoch.

    `on_step(step, total, loss_fn)` is called after every optimizer step; `loss_fn()` gives the
    running mean loss of the epoch and syncs with the device, so call it only when printing.
    """
    from transformers import get_scheduler

    if not features:
        raise ValueError("no training examples")
    model.to(runtime.device).train()
    per_epoch = steps_per_epoch(len(features), settings.batch_size)
    total = per_epoch * settings.epochs
    optimizer = torch.optim.AdamW(
        param_groups(model, settings.weight_decay),
        lr=settings.lr,
        betas=(0.9, 0.999),
        eps=1e-8,
        fused=runtime.device.type == "cuda",
    )
    scheduler = get_scheduler(
        settings.schedule,
        optimizer,
        num_warmup_steps=int(settings.warmup_ratio * total),
        num_training_steps=total,
    )
    order = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # dropout
    step = 0
    for _ in range(settings.epochs):
        loss_sum = torch.zeros((), device=runtime.device)
        perm = torch.randperm(len(features), generator=order).tolist()
        for i in range(per_epoch):
            rows = perm[i * settings.batch_size : (i + 1) * settings.batch_size]
            chunk = [features[j] for j in rows]
            batch = {k: v.to(runtime.device) for k, v in collate(chunk, pad_id).items()}
            with runtime.autocast():
                loss = model(**batch).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), settings.grad_clip)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            loss_sum += loss.detach().float()
            step += 1
            if on_step is not None:
                done = i + 1
                on_step(step, total, lambda s=loss_sum, d=done: float(s.item()) / d)
    mean = float(loss_sum.item()) / per_epoch
    if not math.isfinite(mean):
        raise FloatingPointError(f"training loss is {mean}; try a lower learning rate")
    return mean


@torch.inference_mode()
def predict(
    model: torch.nn.Module,
    features: Sequence[dict],
    batch_size: int,
    *,
    runtime: Runtime,
    pad_id: int,
) -> list[tuple[torch.Tensor, ...]]:
    """The model's logits per feature, on the CPU in fp32, trimmed to the feature's length.

    Sequence classification gives (logits[C],), token classification (logits[L, C],), extractive
    QA (start[L], end[L]). Features are batched by length (less padding) and returned in order.
    """
    model.to(runtime.device).eval()
    order = sorted(range(len(features)), key=lambda i: len(features[i]["input_ids"]))
    out: list[tuple[torch.Tensor, ...] | None] = [None] * len(features)
    for b in range(0, len(order), batch_size):
        idx = order[b : b + batch_size]
        batch = collate([_inputs(features[i]) for i in idx], pad_id)
        with runtime.autocast():
            result = model(**{k: v.to(runtime.device) for k, v in batch.items()})
        if hasattr(result, "start_logits"):
            heads = (result.start_logits, result.end_logits)  # [B, L] each
        else:
            heads = (result.logits,)  # [B, C] or [B, L, C]
        heads = tuple(h.float().cpu() for h in heads)
        per_token = heads[0].dim() == 3 or hasattr(result, "start_logits")
        for row, i in enumerate(idx):
            n = len(features[i]["input_ids"])
            out[i] = tuple(h[row, :n] if per_token else h[row] for h in heads)
    return out  # type: ignore[return-value]


def _inputs(feature: dict) -> dict:
    return {k: v for k, v in feature.items() if k in INPUT_KEYS}
