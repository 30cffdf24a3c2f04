"""Held-out evaluation: MLM loss and accuracy of every student and the teacher on the eval shards,
and each student's top-1 agreement with the teacher at the masked positions.

    metrics = heldout_metrics(students, teacher, inputs.eval_iter(), rt)
    # {"eval/<student>/mlm_loss", ".../mlm_acc", ".../teacher_agreement", "eval/teacher/..."}

Sums (loss, correct, agreeing rows) stay on the device over the batches and are reduced over
ranks once at the end: averages over every masked row of the split, whatever the world size.
Students run in eval mode (no dropout) and are put back in training mode afterwards.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from trainer.batch import DeviceBatch
from trainer.runtime import Runtime
from trainer.signals import LOGITS, Need


@torch.no_grad()
def heldout_metrics(students: list, teacher, batches, rt: Runtime) -> dict[str, float]:
    """NOTE: collective (every rank passes its share of the split, the same number of batches)."""
    names = [s.name for s in students]
    rows = len(names) + (1 if teacher is not None else 0)
    sums = torch.zeros(rows, 3, dtype=torch.float64, device=rt.device)  # loss, correct, agree
    masked = torch.zeros(1, dtype=torch.float64, device=rt.device)
    for s in students:
        s.engine.eval()
    try:
        for host_batch in batches:
            batch = DeviceBatch.from_host(host_batch, rt.device)
            labels = batch.masked_labels
            masked += batch.masked
            teacher_top = None
            if teacher is not None:
                logits = teacher(batch, Need(logits=True))[LOGITS].float()
                teacher_top = logits.argmax(-1)
                sums[-1, 0] += F.cross_entropy(logits, labels, reduction="sum").double()
                sums[-1, 1] += (teacher_top == labels).sum()
            for i, s in enumerate(students):
                out = s.engine(
                    batch.input_ids, batch.attention_mask, batch.masked_index, logits_only=True
                )
                logits = out[LOGITS].float()
                top = logits.argmax(-1)
                sums[i, 0] += F.cross_entropy(logits, labels, reduction="sum").double()
                sums[i, 1] += (top == labels).sum()
                if teacher_top is not None:
                    sums[i, 2] += (top == teacher_top).sum()
    finally:
        for s in students:
            s.engine.train()
    flat = rt.all_reduce_sum(torch.cat([sums.flatten(), masked])).cpu()
    count = max(flat[-1].item(), 1.0)
    table = (flat[:-1].view(rows, 3) / count).tolist()
    out: dict[str, float] = {}
    for name, (loss, acc, agree) in zip([*names, "teacher"], table, strict=False):
        out[f"eval/{name}/mlm_loss"] = loss
        out[f"eval/{name}/mlm_acc"] = acc
        if teacher is not None and name != "teacher":
            out[f"eval/{name}/teacher_agreement"] = agree
    return out
