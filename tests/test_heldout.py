"""trainer/train/heldout.py: held-out MLM loss, accuracy, teacher agreement and accuracy at entity
positions, any world size; the teacher's results cached across evaluations.

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
from data_pipeline.shards.manifest import Manifest
from trainer.distill.teacher_signals import LOGITS, Need
from trainer.models.students import StudentModule
from trainer.models.teacher import Teacher
from trainer.runtime.distributed import Runtime
from trainer.train.heldout import heldout_metrics

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


def _entities(shards) -> torch.Tensor:
    """Entity ids for the test: the odd ids, and the ids the teacher gets right somewhere (so
    that some entity rows are right and some wrong)."""
    vocab = Manifest.load(shards).tokenizer.vocab_size
    teacher, _ = _models(vocab)
    table = torch.zeros(vocab, dtype=torch.bool)
    table[1::2] = True
    for batch in EvalBatches(shards, 8, seed=5):
        mask = batch["labels"] != -100
        with torch.no_grad():
            top = teacher.model(batch["input_ids"], attention_mask=batch["attention_mask"])
        hits = top.logits[mask].argmax(-1) == batch["labels"][mask]
        table[batch["labels"][mask][hits]] = True
    return table


class _Counting:
    """A teacher that counts its forwards."""

    def __init__(self, teacher) -> None:
        self.teacher, self.calls = teacher, 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.teacher(*args, **kwargs)


def _metrics(rank: int, world: int, shards: str) -> dict[str, float]:
    rt = Runtime.start() if world > 1 else Runtime(0, 1, 0, torch.device("cpu"))
    try:
        vocab = Manifest.load(shards).tokenizer.vocab_size
        teacher, students = _models(vocab)
        batches = EvalBatches(shards, 8, rank=rank, world_size=world, seed=5)
        counting, cache, entities = _Counting(teacher), [], _entities(shards)
        first = heldout_metrics(students, counting, iter(batches), rt, entities, cache)
        calls = counting.calls
        again = heldout_metrics(students, counting, iter(batches), rt, entities, cache)
        # the teacher's results come from the cache the second time, unchanged
        assert calls == len(batches) and counting.calls == calls and again == first
        return first
    finally:
        if world > 1:
            rt.close()


def _expected(shards) -> dict[str, float]:
    vocab = Manifest.load(shards).tokenizer.vocab_size
    teacher, students = _models(vocab)
    models = {"teacher": teacher.model, **{s.name: s.engine.mlm for s in students}}
    totals = {name: [0.0, 0, 0, 0] for name in models}  # loss sum, correct, agree, entity
    rows = entity_rows = 0
    entity = _entities(shards)
    for batch in EvalBatches(shards, 8, seed=5):
        mask = batch["labels"] != -100
        labels = batch["labels"][mask]
        rows += int(mask.sum())
        is_entity = entity[labels]
        entity_rows += int(is_entity.sum())
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
            totals[name][3] += int(((lg.argmax(-1) == labels) & is_entity).sum())
    assert 0 < entity_rows < rows
    out = {}
    for name, (loss, correct, agree, entity_correct) in totals.items():
        out[f"eval/{name}/mlm_loss"] = loss / rows
        out[f"eval/{name}/mlm_acc"] = correct / rows
        if name != "teacher":
            out[f"eval/{name}/teacher_agreement"] = agree / rows
        out[f"eval/{name}/entity_acc"] = entity_correct / entity_rows
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


class _Oracle:
    """A student engine right at every other masked row (it is handed the labels)."""

    def __init__(self, labels: list[torch.Tensor], vocab: int) -> None:
        self.labels, self.vocab, self.calls = labels, vocab, 0

    def eval(self):
        return self

    def train(self):
        return self

    def __call__(self, input_ids, attention_mask, masked_index, logits_only=False):
        labels = self.labels[self.calls].clone()
        self.calls += 1
        labels[1::2] = (labels[1::2] + 1) % self.vocab  # wrong at odd rows
        return {LOGITS: F.one_hot(labels, self.vocab).float() * 10}


def test_entity_accuracy_counts_only_rows_labelled_with_entities(tiny_shards):
    vocab = Manifest.load(tiny_shards).tokenizer.vocab_size
    batches = list(EvalBatches(tiny_shards, 8, seed=5))
    labels = [b["labels"][b["labels"] != -100] for b in batches]
    table = torch.zeros(vocab, dtype=torch.bool)
    table[1::3] = True
    right = wrong = 0
    for row in labels:
        is_entity = table[row]
        right += int(is_entity[0::2].sum())
        wrong += int(is_entity[1::2].sum())
    student = SimpleNamespace(name="oracle", engine=_Oracle(labels, vocab))
    rt = Runtime(0, 1, 0, torch.device("cpu"))
    out = heldout_metrics([student], None, iter(batches), rt, table)
    assert 0 < right and 0 < wrong
    assert out["eval/oracle/entity_acc"] == pytest.approx(right / (right + wrong))
    rows = sum(len(r) for r in labels)
    assert out["eval/oracle/mlm_acc"] == pytest.approx(
        sum((len(r) + 1) // 2 for r in labels) / rows
    )
    assert "eval/teacher/entity_acc" not in out
    plain = heldout_metrics([SimpleNamespace(name="oracle", engine=_Oracle(labels, vocab))], None,
                            iter(batches), rt)  # fmt: skip
    assert "eval/oracle/entity_acc" not in plain  # no entity words, no entity accuracy
