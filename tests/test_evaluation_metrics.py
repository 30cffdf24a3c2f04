"""Evaluation scores against values worked out by hand (and sklearn where it applies).

Run: .venv/bin/pytest tests/test_evaluation_metrics.py -q
"""

from __future__ import annotations

import pytest
import torch
from sklearn.metrics import precision_recall_fscore_support

from evaluation.metrics import ner_scores, qa_factoid_scores, re_binary_scores, re_micro_scores
from evaluation.qa_answers import question_id, rank_answers, snippet_answers, window_spans


def test_ner_entity_f1_by_hand():
    # Gold entities: s1 words 0-1 and 3, s2 words 1-3 (3 in all). Predicted: s1 0-1 (right),
    # s2 1-2 (wrong boundary): 2 predicted, 1 correct -> P 1/2, R 1/3, F1 2PR/(P+R) = 0.4.
    gold = [["B", "I", "O", "B"], ["O", "B", "I", "I"]]
    pred = [["B", "I", "O", "O"], ["O", "B", "I", "O"]]
    s = ner_scores(gold, pred)
    assert s["precision"] == pytest.approx(1 / 2)
    assert s["recall"] == pytest.approx(1 / 3)
    assert s["f1"] == pytest.approx(0.4)


def test_ner_typed_entities_need_the_right_type_and_follow_conlleval():
    # Right span, wrong type counts as a miss; a lone I- after O opens an entity (conlleval).
    gold = [["B-Chemical", "O", "B-Disease", "I-Disease"]]
    pred = [["B-Disease", "O", "I-Disease", "I-Disease"]]
    s = ner_scores(gold, pred)
    assert (s["precision"], s["recall"], s["f1"]) == pytest.approx((1 / 2, 1 / 2, 1 / 2))
    assert ner_scores(gold, gold)["f1"] == 1.0
    assert ner_scores([["O", "O"]], [["O", "O"]])["f1"] == 0.0  # no entities: 0, not an error


def test_re_binary_scores_positive_class_by_hand():
    gold = ["1", "1", "0", "0", "1"]
    pred = ["1", "0", "0", "1", "1"]  # tp 2, fn 1, fp 1, tn 1
    s = re_binary_scores(gold, pred)
    assert s == pytest.approx(
        {"precision": 2 / 3, "recall": 2 / 3, "f1": 2 / 3, "specificity": 1 / 2}
    )
    p, r, f, _ = precision_recall_fscore_support(gold, pred)  # BioBERT's re_eval.py: index 1
    assert (s["precision"], s["recall"], s["f1"]) == pytest.approx((p[1], r[1], f[1]))


def test_chemprot_micro_scores_exclude_false_by_hand():
    gold = ["CPR:3", "CPR:4", "false", "CPR:9", "false", "CPR:6"]
    pred = ["CPR:3", "CPR:3", "CPR:4", "false", "false", "CPR:6"]
    # tp: rows 0 and 5 -> 2; fp: predicted CPR but wrong, rows 1 and 2 -> 2;
    # fn: gold CPR but missed, rows 1 and 3 -> 2. P = R = F1 = 2/4.
    s = re_micro_scores(gold, pred)
    assert s == pytest.approx({"precision": 0.5, "recall": 0.5, "f1": 0.5})
    cpr = ["CPR:3", "CPR:4", "CPR:5", "CPR:6", "CPR:9"]
    p, r, f, _ = precision_recall_fscore_support(gold, pred, labels=cpr, average="micro")
    assert (s["precision"], s["recall"], s["f1"]) == pytest.approx((p, r, f))


def test_qa_strict_lenient_mrr_by_hand():
    golden = {"q1": ["BRCA1", "breast cancer 1"], "q2": ["TP53"], "q3": ["insulin"], "q4": ["x"]}
    ranked = {
        "q1": ["Breast Cancer 1", "EGFR"],  # a synonym, any case, first: strict hit, RR 1
        "q2": ["p53", "MDM2", "tp53"],  # third: lenient hit, RR 1/3
        "q3": ["a", "b", "c", "d", "e", "insulin"],  # sixth: beyond the five that count
    }  # q4 unanswered: 0
    s = qa_factoid_scores(ranked, golden)
    assert s["strict_acc"] == pytest.approx(1 / 4)
    assert s["lenient_acc"] == pytest.approx(2 / 4)
    assert s["mrr"] == pytest.approx((1 + 1 / 3) / 4)


def test_snippet_answers_softmax_over_distinct_texts():
    answers = snippet_answers([(2.0, "BRCA1"), (1.0, "TP53"), (1.5, "BRCA1"), (0.0, "")], 20)
    probs = dict(answers)
    z = sum(torch.tensor([2.0, 1.0, 0.0]).exp().tolist())
    assert probs["BRCA1"] == pytest.approx(torch.tensor(2.0).exp().item() / z)
    assert sum(probs.values()) == pytest.approx(1.0)
    assert [t for t, _ in snippet_answers([(3.0, "a"), (2.0, "b"), (1.0, "c")], 2)] == ["a", "b"]


def test_rank_answers_sums_snippets_by_lower_case_and_keeps_five():
    snippets = [
        [("BRCA1", 0.6), ("TP53", 0.4)],
        [("brca1", 0.3), ("EGFR", 0.7), ("", 0.9), ("x" * 101, 0.95)],
        [("a", 0.05), ("b", 0.04), ("c", 0.03)],
    ]
    assert rank_answers(snippets) == ["BRCA1", "EGFR", "TP53", "a", "b"]  # 0.9, 0.7, 0.4, ...


def test_window_spans_stay_in_the_context_and_under_the_length_limit():
    # tokens: [CLS] q q [SEP] c0 c1 c2 [SEP]; the context tokens cover characters 0-2, 3-5, 6-8
    offsets = [None, None, None, None, (0, 2), (3, 5), (6, 8), None]
    start = torch.tensor([9.0, 8.0, 0, 0, 1.0, 5.0, 0.5, 0])
    end = torch.tensor([9.0, 0, 0, 0, 4.0, 0.2, 3.0, 0])
    spans = window_spans(start, end, offsets, n_best=8, max_answer_length=2)
    best = max(spans)
    assert best == (5.0 + 3.0, 3, 8)  # c1..c2; [CLS] and question tokens never chosen
    assert all(b > a for _, a, b in spans)
    assert (1.0 + 3.0, 0, 8) not in spans  # c0..c2 is 3 tokens, over the limit


def test_question_id_drops_the_snippet_suffix():
    assert question_id("55031181e9bde69634000014_003") == "55031181e9bde69634000014"
    assert question_id("55031181e9bde69634000014") == "55031181e9bde69634000014"
