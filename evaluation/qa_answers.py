"""From start/end logits to five ranked answers per BioASQ question, the way BioBERT did it.

    .venv/bin/pytest tests/test_evaluation_metrics.py -q

1. Spans of one window (BERT's run_squad): the n_best highest start and end logits, pairs with
   both ends inside the context, end >= start, at most max_answer_length tokens; score = start +
   end logit; the text is the context between the character offsets.
2. One snippet (a test entry; its windows pooled): candidates by score, the same text kept once,
   the n_best first turned into probabilities with a softmax over their scores.
3. One question (BioBERT's transform_nbset2bioasqform.py): a BioASQ question comes as one entry
   per snippet (ids `<question id>_<nnn>`); the probabilities of the same lower-cased text are
   summed over its snippets, empty texts and texts over 100 characters dropped, and the five
   most probable texts are its ranked answers.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

import torch

SNIPPET_SUFFIX = re.compile(r"(.+)_\d+")


def question_id(entry_id: str) -> str:
    """BioBERT's test entries are `<24-character BioASQ id>_<snippet number>`."""
    m = SNIPPET_SUFFIX.fullmatch(entry_id)
    return m.group(1) if m else entry_id


def window_spans(
    start: torch.Tensor,
    end: torch.Tensor,
    offsets: Sequence[tuple[int, int] | None],
    n_best: int,
    max_answer_length: int,
) -> list[tuple[float, int, int]]:
    """(score, first character, end character) of the candidate spans of one window.

    `offsets[i]` is token i's character span in the context, None outside the context.
    """
    k = min(n_best, len(offsets))
    starts = torch.topk(start, k).indices.tolist()
    ends = torch.topk(end, k).indices.tolist()
    spans = []
    for s in starts:
        for e in ends:
            if offsets[s] is None or offsets[e] is None or e < s or e - s + 1 > max_answer_length:
                continue
            spans.append((float(start[s] + end[e]), offsets[s][0], offsets[e][1]))
    return spans


def snippet_answers(
    candidates: Sequence[tuple[float, str]], n_best: int
) -> list[tuple[str, float]]:
    """The n_best distinct texts of one snippet with softmax probabilities over their scores."""
    seen: dict[str, float] = {}
    for score, text in sorted(candidates, key=lambda c: -c[0]):
        if text not in seen:
            seen[text] = score
        if len(seen) == n_best:
            break
    if not seen:
        return [("", 1.0)]  # BERT's "empty" prediction: contributes nothing after step 3
    top = max(seen.values())
    weights = {t: math.exp(s - top) for t, s in seen.items()}
    total = sum(weights.values())
    return [(t, w / total) for t, w in weights.items()]


def rank_answers(
    snippets: Sequence[Sequence[tuple[str, float]]], k: int = 5, max_chars: int = 100
) -> list[str]:
    """A question's k most probable texts, probabilities summed over its snippets by lower case."""
    summed: dict[str, float] = {}
    shown: dict[str, str] = {}
    for answers in snippets:
        for text, prob in answers:
            if not text or len(text) > max_chars:
                continue
            key = text.lower()
            shown.setdefault(key, text)
            summed[key] = summed.get(key, 0.0) + prob
    best = sorted(summed, key=lambda t: -summed[t])[:k]
    return [shown[t] for t in best]
