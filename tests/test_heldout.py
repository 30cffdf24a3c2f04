"""trainer/heldout.py: held-out MLM loss, accuracy and teacher agreement, any world size.

    .venv/bin/python -m pytest tests/test_heldout.py -q

The expected values come from each model's plain HF forward over the whole eval split (full
logits, cross-entropy at the masked positions), not from the code under test; a 2-rank run must
give the same numbers as one rank.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from multirank import run_distributed
from transformers import BertConfig, BertForMaskedLM

from data_pipeline.eval_batches import EvalBatches
from data_pipeline.manifest import Manifest
from trainer.heldout import heldout_metrics
from trainer.runtime import Runtime
from trainer.signals import Need
from trainer.students import StudentModule
from trainer.teacher import Teacher

pytestmark = pytest.mark.usefixtures("one_thread")


def _models(vocab: int):
    def bert(layers: int, seed: int) -> BertForMaskedLM:
        torch.manual_seed(seed)
        config = BertConfig(
            vocab_size=vocab, hidden_size=32, num_hidden_layers=layers, num_attention_heads=2,
            intermediate_size=64, max_position_embeddings=64,
        )  # fmt: skip
        return BertForMaskedLM(config).eval()

    teacher = Teacher(bert(2, 1), Need(logits=True))
    near = bert(2, 1)  # the teacher's weights, slightly moved: agrees with it often, not always
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in near.parameters():
            p.add_(0.004 * torch.randn(p.shape, generator=gen))
    students = [
        SimpleNamespace(name="near", engine=StudentModule(near, Need(logits=True))),
        SimpleNamespace(name="far", engine=StudentModule(bert(1, 10), Need(logits=True))),
    ]
    return teacher, students


def _metrics(rank: int, world: int, shards: str) -> dict[str, float]:
    rt = Runtime.start() if world > 1 else Runtime(0, 1, 0, torch.device("cpu"))
    try:
        vocab = Manifest.load(shards).tokenizer.vocab_size
        teacher, students = _models(vocab)
        batches = EvalBatches(shards, 8, rank=rank, world_size=world, seed=5)
        return heldout_metrics(students, teacher, iter(batches), rt)
    finally:
        if world > 1:
            rt.close()


def _expected(shards) -> dict[str, float]:
    vocab = Manifest.load(shards).tokenizer.vocab_size
    teacher, students = _models(vocab)
    models = {"teacher": teacher.model, **{s.name: s.engine.mlm for s in students}}
    totals = {name: [0.0, 0, 0] for name in models}  # loss sum, correct, agree
    rows = 0
    for batch in EvalBatches(shards, 8, seed=5):
        mask = batch["labels"] != -100
        labels = batch["labels"][mask]
        rows += int(mask.sum())
        with torch.no_grad():
            logits = {
                name: m(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
                .logits[mask]
                .double()
                for name, m in models.items()
            }
        teacher_top = logits["teacher"].argmax(-1)
        for name, lg in logits.items():
            totals[name][0] += F.cross_entropy(lg, labels, reduction="sum").item()
            totals[name][1] += int((lg.argmax(-1) == labels).sum())
            totals[name][2] += int((lg.argmax(-1) == teacher_top).sum())
    out = {}
    for name, (loss, correct, agree) in totals.items():
        out[f"eval/{name}/mlm_loss"] = loss / rows
        out[f"eval/{name}/mlm_acc"] = correct / rows
        if name != "teacher":
            out[f"eval/{name}/teacher_agreement"] = agree / rows
    return out


def test_heldout_metrics_match_the_plain_forward_on_one_and_two_ranks(tiny_shards):
    expected = _expected(tiny_shards)
    one = _metrics(0, 1, str(tiny_shards))
    assert one.keys() == expected.keys()
    for key, value in expected.items():
        assert one[key] == pytest.approx(value, rel=1e-5, abs=1e-6), key
    assert 0.2 < one["eval/near/teacher_agreement"] < 1  # a real comparison, not 0 or 1
    assert one["eval/far/teacher_agreement"] < one["eval/near/teacher_agreement"]
    two = run_distributed(_metrics, 2, str(tiny_shards))
    assert two[0] == two[1]
    for key, value in one.items():
        assert two[0][key] == pytest.approx(value, rel=1e-5, abs=1e-6), key
