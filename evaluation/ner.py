"""NER: BioBERT's CoNLL-style files, token-classification features, word-level entity F1.

    python -m evaluation run ... --tasks ner

File format (NER/<dataset>/{train,devel,test}.tsv, UTF-8): one word per line as `word<TAB>label`,
a blank line between sentences, `-DOCSTART-` lines ignored. Labels are IOB: BioBERT's files use
bare `B` / `I` / `O`; typed `B-Disease` / `I-Disease` work the same way.

Features: the words are tokenized as pre-split words (a byte-level BPE tokenizer with its
add_prefix_space on, so that every word is spelt as inside a sentence: evaluation/models.py
`for_split_words`); the first sub-token of each word carries its label, the other sub-tokens
and the special tokens -100 (ignored by the loss). Prediction takes the label at each word's
first sub-token, so scores are at the word level, as conlleval (BioBERT's scorer) computes them;
words cut off by max_length are predicted O (they count as misses, never silently dropped).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from evaluation.catalog import FORMAT_HINT, DataError, Split
from evaluation.finetune import IGNORE_INDEX
from evaluation.metrics import ner_scores
from evaluation.models import for_split_words

LABEL = re.compile(r"O|[BI](-\S+)?")


@dataclass
class Sentences:
    words: list[list[str]]
    labels: list[list[str]]


@dataclass
class NerData:
    train: Sentences
    test: Sentences
    labels: list[str]  # the classifier's label set, "O" first

    @property
    def sizes(self) -> tuple[int, int]:
        return len(self.train.words), len(self.test.words)


def read_conll(path: Path) -> Sentences:
    """Sentences of a `word<TAB>label` file; a malformed line is a DataError naming it."""
    words: list[list[str]] = []
    labels: list[list[str]] = []
    cur_w: list[str] = []
    cur_l: list[str] = []
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DataError(
            f"{path}: not UTF-8 text ({e.reason}); expected {FORMAT_HINT['ner']}"
        ) from None
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.startswith("-DOCSTART-"):
            if cur_w:
                words.append(cur_w)
                labels.append(cur_l)
                cur_w, cur_l = [], []
            continue
        fields = line.rstrip("\r").split("\t")
        if len(fields) != 2 or not fields[0].strip() or not LABEL.fullmatch(fields[1].strip()):
            raise DataError(
                f"{path}:{lineno}: expected 'word<TAB>label' with an IOB label "
                f"(O, B, I, B-TYPE, I-TYPE), found {line[:80]!r}; the file must hold "
                f"{FORMAT_HINT['ner']}"
            )
        cur_w.append(fields[0].strip())
        cur_l.append(fields[1].strip())
    if cur_w:
        words.append(cur_w)
        labels.append(cur_l)
    if not words:
        raise DataError(f"{path}: no sentences; expected {FORMAT_HINT['ner']}")
    return Sentences(words, labels)


def read(split: Split) -> NerData:
    train, test = read_conll(split.train), read_conll(split.test[0])
    seen = {label for s in train.labels + test.labels for label in s}
    if split.dev is not None:
        seen |= {label for s in read_conll(split.dev).labels for label in s}
    return NerData(train, test, ["O"] + sorted(seen - {"O"}))


def _encode(sentences: Sentences, tokenizer, max_length: int, token_types: bool):
    return for_split_words(tokenizer)(
        sentences.words,
        is_split_into_words=True,
        truncation=True,
        max_length=max_length,
        return_token_type_ids=token_types,
    )


def _first_tokens(enc, i: int, n_words: int) -> list[int | None]:
    """Position of each word's first sub-token in sequence `i` (None: truncated or no tokens)."""
    first: list[int | None] = [None] * n_words
    for pos, w in enumerate(enc.word_ids(i)):
        if w is not None and first[w] is None:
            first[w] = pos
    return first


def train_features(data: NerData, tokenizer, max_length: int, token_types: bool) -> list[dict]:
    label_id = {label: i for i, label in enumerate(data.labels)}
    enc = _encode(data.train, tokenizer, max_length, token_types)
    feats = []
    for i, sent_labels in enumerate(data.train.labels):
        ids = [IGNORE_INDEX] * len(enc["input_ids"][i])
        for w, pos in enumerate(_first_tokens(enc, i, len(sent_labels))):
            if pos is not None:
                ids[pos] = label_id[sent_labels[w]]
        feats.append({k: enc[k][i] for k in enc.keys()} | {"labels": ids})
    return feats


def evaluate(data: NerData, tokenizer, max_length: int, token_types: bool, predict_fn) -> dict:
    """Entity-level scores on the test sentences; `predict_fn(features)` gives logits[L, C]."""
    enc = _encode(data.test, tokenizer, max_length, token_types)
    feats = [{k: enc[k][i] for k in enc.keys()} for i in range(len(data.test.words))]
    logits = predict_fn(feats)
    pred = []
    truncated = 0
    for i, gold in enumerate(data.test.labels):
        best = logits[i][0].argmax(-1).tolist()
        firsts = _first_tokens(enc, i, len(gold))
        truncated += sum(p is None for p in firsts)
        pred.append([data.labels[best[p]] if p is not None else "O" for p in firsts])
    return {**ner_scores(data.test.labels, pred), "words_unpredicted": truncated}
