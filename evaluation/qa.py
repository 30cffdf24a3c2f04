"""QA: BioASQ factoid sets in SQuAD format, extractive start/end features, strict/lenient/MRR.

    python -m evaluation run ... --tasks qa

Files (QA/BioASQ/, UTF-8 JSON, the names catalog.py lists):
- BioASQ-train-factoid-<y>.json and BioASQ-test-factoid-<y>-<k>.json, SQuAD v1 format:
  {"data": [{"paragraphs": [{"context": str, "qas": [{"id": str, "question": str,
  "answers": [{"text": str, "answer_start": int}]}]}]}]}. Train entries need answers (one training
  example per answer, as the paper's code did; an answer whose text is not at answer_start is
  looked up in the context, and skipped, counted, when absent); test answers are ignored.
  A test question comes as one entry per snippet with the id `<question id>_<nnn>`.
- <Y>B<k>_golden.json, BioASQ's golden file: {"questions": [{"id": str, "type": "factoid",
  "exact_answer": [...]}]}; exact_answer is a list of synonyms or a list of such lists (every
  synonym counts). Other question types are ignored; scores cover the golden factoid questions
  of the test batch (the official evaluator's rule), then average over the batches.

Windows: question (cut to max_query_length tokens) + context in windows of max_length tokens that
overlap by `stride` tokens (HF tokenizer semantics, the paper's code); a training window that
does not hold the whole answer points at [CLS].
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from evaluation.catalog import FORMAT_HINT, DataError, Split
from evaluation.config import QaSettings
from evaluation.metrics import qa_factoid_scores
from evaluation.qa_answers import question_id, rank_answers, snippet_answers, window_spans


@dataclass
class Entry:
    id: str
    question: str
    context: str
    answer_start: int = -1
    answer_text: str = ""


@dataclass
class TestBatch:
    path: Path
    entries: list[Entry]
    golden: dict[str, list[str]]  # question id -> synonyms


@dataclass
class QaData:
    train: list[Entry]
    batches: list[TestBatch]
    skipped_answers: int

    @property
    def sizes(self) -> tuple[int, int]:
        return len(self.train), sum(len(b.entries) for b in self.batches)


def _load_json(path: Path) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: not valid JSON ({e}); expected {FORMAT_HINT['qa']}") from None


def _field(obj: Any, key: str, kind: type | tuple, path: Path, where: str) -> Any:
    if not isinstance(obj, dict) or key not in obj or not isinstance(obj[key], kind):
        name = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise DataError(f"{path}: {where}.{key}: expected {name}; the file must be {_HINT}")
    return obj[key]


_HINT = "SQuAD-format BioASQ factoid JSON ({'data': [{'paragraphs': [{'context', 'qas'}]}]})"


def read_squad(path: Path, train: bool) -> tuple[list[Entry], int]:
    """The entries of a SQuAD-format file (train: one per answer) and the answers skipped."""
    doc = _load_json(path)
    entries, skipped = [], 0
    for a, article in enumerate(_field(doc, "data", list, path, "")):
        for p, par in enumerate(_field(article, "paragraphs", list, path, f"data[{a}]")):
            where = f"data[{a}].paragraphs[{p}]"
            context = _field(par, "context", str, path, where)
            for q, qa in enumerate(_field(par, "qas", list, path, where)):
                at = f"{where}.qas[{q}]"
                qid = _field(qa, "id", str, path, at)
                question = _field(qa, "question", str, path, at)
                if not train:
                    entries.append(Entry(qid, question, context))
                    continue
                answers = _field(qa, "answers", list, path, at)
                if not answers:
                    raise DataError(f"{path}: {at}.answers: a training question needs an answer")
                for n, ans in enumerate(answers):
                    text = _field(ans, "text", str, path, f"{at}.answers[{n}]")
                    start = _field(ans, "answer_start", int, path, f"{at}.answers[{n}]")
                    if context[start : start + len(text)] != text:
                        start = context.find(text)  # BioASQ offsets are sometimes off
                    if not text or start < 0:
                        skipped += 1
                        continue
                    entries.append(Entry(qid, question, context, start, text))
    if not entries:
        raise DataError(f"{path}: no usable questions; expected {_HINT}")
    return entries, skipped


def read_golden(path: Path) -> dict[str, list[str]]:
    """Question id -> every synonym of its exact answer, for the factoid questions."""
    doc = _load_json(path)
    golden = {}
    for i, q in enumerate(_field(doc, "questions", list, path, "")):
        if _field(q, "type", str, path, f"questions[{i}]") != "factoid":
            continue
        qid = _field(q, "id", str, path, f"questions[{i}]")
        exact = _field(q, "exact_answer", (list, str), path, f"questions[{i}]")
        flat = [exact] if isinstance(exact, str) else []
        for item in exact if isinstance(exact, list) else []:
            flat.extend(item if isinstance(item, list) else [item])
        if not flat or not all(isinstance(s, str) for s in flat):
            raise DataError(
                f"{path}: questions[{i}] ({qid}).exact_answer: expected a list of answer strings "
                "or a list of synonym lists (BioASQ golden format)"
            )
        golden[qid] = flat
    return golden


def read(split: Split) -> QaData:
    train, skipped = read_squad(split.train, train=True)
    batches = []
    for test_path, golden_path in zip(split.test, split.golden, strict=True):
        entries, _ = read_squad(test_path, train=False)
        asked = {question_id(e.id) for e in entries}
        golden = {q: s for q, s in read_golden(golden_path).items() if q in asked}
        if not golden:
            raise DataError(
                f"{golden_path}: none of its factoid questions is asked in {test_path.name} "
                "(test ids are '<question id>_<nnn>')"
            )
        batches.append(TestBatch(test_path, entries, golden))
    return QaData(train, batches, skipped)


def window_settings(s: QaSettings, max_length: int, tokenizer) -> tuple[int, int]:
    """(question tokens, stride) that fit `max_length` (a model may allow under s.max_length)."""
    room = max_length - tokenizer.num_special_tokens_to_add(pair=True)
    max_query = min(s.max_query_length, room // 2)
    return max_query, max(1, min(s.stride, (room - max_query) // 2))


def _encode(entries: list[Entry], tokenizer, max_length: int, s: QaSettings, token_types: bool):
    max_query, stride = window_settings(s, max_length, tokenizer)
    cut = tokenizer(
        [e.question for e in entries], add_special_tokens=False, return_offsets_mapping=True
    )["offset_mapping"]
    questions = [
        e.question if len(offs) <= max_query else e.question[: offs[max_query - 1][1]]
        for e, offs in zip(entries, cut, strict=True)
    ]
    return tokenizer(
        questions,
        [e.context for e in entries],
        truncation="only_second",
        max_length=max_length,
        stride=stride,
        return_overflowing_tokens=True,
        return_offsets_mapping=True,
        return_token_type_ids=token_types,
    )


def _inputs(enc, i: int) -> dict:
    return {k: enc[k][i] for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc}


def train_features(
    data: QaData, tokenizer, max_length: int, token_types: bool, s: QaSettings
) -> list[dict]:
    enc = _encode(data.train, tokenizer, max_length, s, token_types)
    feats = []
    for i, offsets in enumerate(enc["offset_mapping"]):
        e = data.train[enc["overflow_to_sample_mapping"][i]]
        seq = enc.sequence_ids(i)
        ctx = [t for t, sid in enumerate(seq) if sid == 1]
        first, last = e.answer_start, e.answer_start + len(e.answer_text)
        start = end = 0  # [CLS]: this window does not hold the whole answer
        if ctx and offsets[ctx[0]][0] <= first and offsets[ctx[-1]][1] >= last:
            start = next(t for t in ctx if offsets[t][1] > first)
            end = next(t for t in reversed(ctx) if offsets[t][0] < last)
        feats.append(_inputs(enc, i) | {"start_positions": start, "end_positions": end})
    return feats


def evaluate(
    data: QaData, tokenizer, max_length: int, token_types: bool, s: QaSettings, predict_fn
) -> dict:
    """Strict / lenient accuracy and MRR, averaged over the test batches (each also reported)."""
    per_batch = {}
    for batch in data.batches:
        enc = _encode(batch.entries, tokenizer, max_length, s, token_types)
        logits = predict_fn([_inputs(enc, i) for i in range(len(enc["input_ids"]))])
        spans: list[list[tuple[float, str]]] = [[] for _ in batch.entries]
        for i, (start, end) in enumerate(logits):
            k = enc["overflow_to_sample_mapping"][i]
            seq = enc.sequence_ids(i)
            offsets = [
                o if sid == 1 else None
                for o, sid in zip(enc["offset_mapping"][i], seq, strict=True)
            ]
            context = batch.entries[k].context
            for score, a, b in window_spans(start, end, offsets, s.n_best, s.max_answer_length):
                spans[k].append((score, context[a:b]))
        by_question: dict[str, list] = {}
        for entry, cands in zip(batch.entries, spans, strict=True):
            by_question.setdefault(question_id(entry.id), []).append(
                snippet_answers(cands, s.n_best)
            )
        ranked = {q: rank_answers(snippets) for q, snippets in by_question.items()}
        per_batch[batch.path.name] = qa_factoid_scores(ranked, batch.golden) | {
            "questions": len(batch.golden)
        }
    keys = ("strict_acc", "lenient_acc", "mrr")
    mean = {k: sum(b[k] for b in per_batch.values()) / len(per_batch) for k in keys}
    return mean | {"batches": per_batch, "train_answers_skipped": data.skipped_answers}
