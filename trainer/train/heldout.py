"""Held-out evaluation: MLM loss and accuracy of every student and the teacher on the eval shards,
each student's top-1 agreement with the teacher at the masked positions, and, given entity words
(`data.entities`), the accuracy at the masked positions whose label is an entity.

    metrics = heldout_metrics(students, teacher, inputs.eval_iter(), rt, entities=table)
    # {"eval/<student>/mlm_loss", ".../mlm_acc", ".../teacher_agreement", ".../entity_acc",
    #  "eval/teacher/..."}

Sums (loss, correct, agreeing rows) stay on the device over the batches and are reduced over
ranks once at the end: averages over every masked row of the split, whatever the world size.
Students run in eval mode (no dropout) and are put back in training mode afterwards. The frozen
teacher's results on a batch never change, so with a `teacher_cache` (a list kept across calls
over the same batches) it runs on the first call only.
"""

from __future__ import annotations

import torch

from trainer.distill.losses import mlm_loss_sum
from trainer.distill.teacher_signals import LOGITS, Need
from trainer.runtime.distributed import Runtime
from trainer.train.batch import DeviceBatch


@torch.no_grad()
def heldout_metrics(
    students: list,
    teacher,
    batches,
    rt: Runtime,
    entities: torch.Tensor | None = None,
    teacher_cache: list | None = None,
) -> dict[str, float]:
    """`entities`: a bool table over the vocabulary, True for entity tokens (None: no entity
    accuracy). `teacher_cache`: per batch, the teacher's top predictions and sums, filled on the
    first call and read on later ones (the batches must be the same every call). NOTE:
    collective (every rank passes its share of the split, the same number of batches)."""
    names = [s.name for s in students]
    rows = len(names) + (1 if teacher is not None else 0)
    # per model: loss sum, correct, agreeing with the teacher, correct at entity rows
    sums = torch.zeros(rows, 4, dtype=torch.float64, device=rt.device)
    counts = torch.zeros(2, dtype=torch.float64, device=rt.device)  # masked rows, entity rows
    table = entities.to(rt.device) if entities is not None else None
    for s in students:
        s.engine.eval()

    def score(logits: torch.Tensor, labels: torch.Tensor, entity: torch.Tensor | None):
        """Top predictions and this batch's (loss sum, correct, 0, entity correct)."""
        top = logits.argmax(-1)
        out = torch.zeros(4, dtype=torch.float64, device=rt.device)
        out[0] = mlm_loss_sum(logits, labels).double()
        out[1] = (top == labels).sum()
        if entity is not None:
            out[3] = ((top == labels) & entity).sum()
        return top, out

    try:
        for index, host_batch in enumerate(batches):
            batch = DeviceBatch.from_host(host_batch, rt.device)
            labels = batch.masked_labels
            entity = table[labels] if table is not None else None
            counts[0] += batch.masked
            if entity is not None:
                counts[1] += entity.sum()
            teacher_top = None
            if teacher is not None:
                if teacher_cache is not None and index < len(teacher_cache):
                    teacher_top, batch_sums = teacher_cache[index]
                else:
                    logits = teacher(batch, Need(logits=True))[LOGITS].float()
                    teacher_top, batch_sums = score(logits, labels, entity)
                    if teacher_cache is not None:
                        teacher_cache.append((teacher_top, batch_sums))
                sums[rows - 1] += batch_sums
            for i, s in enumerate(students):
                out = s.engine(
                    batch.input_ids, batch.attention_mask, batch.masked_index, logits_only=True
                )
                top, sums_i = score(out[LOGITS].float(), labels, entity)
                sums[i] += sums_i
                if teacher_top is not None:
                    sums[i, 2] += (top == teacher_top).sum()
    finally:
        for s in students:
            s.engine.train()
    flat = rt.all_reduce_sum(torch.cat([sums.flatten(), counts])).cpu()
    masked, entity_rows = max(flat[-2].item(), 1.0), flat[-1].item()
    values = flat[:-2].view(rows, 4).tolist()
    out: dict[str, float] = {}
    for name, (loss, correct, agree, entity_correct) in zip(
        [*names, "teacher"], values, strict=False
    ):
        out[f"eval/{name}/mlm_loss"] = loss / masked
        out[f"eval/{name}/mlm_acc"] = correct / masked
        if teacher is not None and name != "teacher":
            out[f"eval/{name}/teacher_agreement"] = agree / masked
        if table is not None and entity_rows > 0:
            out[f"eval/{name}/entity_acc"] = entity_correct / entity_rows
    return out
