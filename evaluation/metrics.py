"""Scores as the BioBERT benchmarks define them: pure functions of gold and predicted labels.

    .venv/bin/pytest tests/test_evaluation_metrics.py -q

- NER: entity-level precision / recall / F1 (exact span and type match) with seqeval's default
  mode, which reproduces conlleval.pl (BioBERT's NER scorer): an I- label after O starts an
  entity, and bare B / I labels (BioBERT's files have no types) are one untyped class.
- RE, GAD and EU-ADR: precision / recall / F1 of the positive class "1" (BioBERT's re_eval.py
  reads f[1], r[1], p[1] of sklearn's per-class scores; also its specificity, recall of "0").
- RE, ChemProt: micro-averaged over the five classes CPR:3, 4, 5, 6, 9, "false" excluded
  (re_eval.py --task chemprot: labels=[0..4], average="micro").
- QA, BioASQ factoid (the official evaluator, EvaluatorTask1b -e 5): up to five ranked answers
  per question, compared lower-cased and exactly with every golden synonym; strict accuracy:
  the first answer matches, lenient: any of the five, MRR: 1/rank of the first match (0 if none).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence


def ner_scores(gold: Sequence[Sequence[str]], pred: Sequence[Sequence[str]]) -> dict[str, float]:
    """Entity-level scores over sentences of IOB labels (word level, conlleval rules)."""
    from seqeval.metrics import f1_score, precision_score, recall_score

    if len(gold) != len(pred) or any(len(g) != len(p) for g, p in zip(gold, pred, strict=False)):
        raise ValueError("ner_scores: gold and predicted sentences differ in number or length")
    lists = [list(s) for s in gold], [list(s) for s in pred]
    return {
        "precision": float(precision_score(*lists, zero_division=0)),
        "recall": float(recall_score(*lists, zero_division=0)),
        "f1": float(f1_score(*lists, zero_division=0)),
    }


def _ratio(a: int, b: int) -> float:
    return a / b if b else 0.0


def _prf(tp: int, fp: int, fn: int) -> dict[str, float]:
    p, r = _ratio(tp, tp + fp), _ratio(tp, tp + fn)
    return {"precision": p, "recall": r, "f1": _ratio(2 * p * r, p + r)}


def re_binary_scores(
    gold: Sequence[str], pred: Sequence[str], positive: str = "1"
) -> dict[str, float]:
    """Precision / recall / F1 of the positive class, and specificity (recall of the rest)."""
    _same_length(gold, pred)
    pairs = list(zip(gold, pred, strict=True))
    tp = sum(g == positive and p == positive for g, p in pairs)
    fp = sum(g != positive and p == positive for g, p in pairs)
    fn = sum(g == positive and p != positive for g, p in pairs)
    tn = len(pairs) - tp - fp - fn
    return {**_prf(tp, fp, fn), "specificity": _ratio(tn, tn + fp)}


def re_micro_scores(
    gold: Sequence[str], pred: Sequence[str], negative: str = "false"
) -> dict[str, float]:
    """Micro-averaged precision / recall / F1 over every class except `negative` (ChemProt)."""
    _same_length(gold, pred)
    pairs = list(zip(gold, pred, strict=True))
    tp = sum(g == p and p != negative for g, p in pairs)
    fp = sum(p != negative and g != p for g, p in pairs)
    fn = sum(g != negative and g != p for g, p in pairs)
    return _prf(tp, fp, fn)


def qa_factoid_scores(
    ranked: Mapping[str, Sequence[str]], golden: Mapping[str, Sequence[str]], k: int = 5
) -> dict[str, float]:
    """Strict / lenient accuracy and MRR over the golden questions.

    `ranked[qid]` holds the system's answers best first (only the first `k` count), `golden[qid]`
    every synonym of the answer. A golden question without a ranked list scores 0.
    """
    if not golden:
        raise ValueError("qa_factoid_scores: no golden questions")
    strict = lenient = rr = 0.0
    for qid, synonyms in golden.items():
        gold = {s.lower() for s in synonyms}
        answers = [a.lower() for a in ranked.get(qid, ())][:k]
        hits = [i for i, a in enumerate(answers) if a in gold]
        if hits:
            strict += hits[0] == 0
            lenient += 1
            rr += 1 / (hits[0] + 1)
    n = len(golden)
    return {"strict_acc": strict / n, "lenient_acc": lenient / n, "mrr": rr / n}


def _same_length(gold: Sequence[str], pred: Sequence[str]) -> None:
    if len(gold) != len(pred):
        raise ValueError(f"{len(gold)} gold labels but {len(pred)} predictions")
