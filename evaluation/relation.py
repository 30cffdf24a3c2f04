"""RE: BioBERT's relation TSVs, sequence-classification features, BioBERT's P / R / F1.

    python -m evaluation run ... --tasks re

File format (BioBERT's released RE data, UTF-8, tab-separated, no quoting):
- train.tsv, dev.tsv: `sentence<TAB>label`, no header. Also accepted: a `sentence<TAB>label`
  header (biobert-pytorch's preprocess.sh writes one) and the test layout below (BLUE's
  ChemProt files use it everywhere);
- test.tsv: the header `index<TAB>sentence<TAB>label`, then `index<TAB>sentence<TAB>label` rows.
Entities are masked in the sentences (@GENE$, @DISEASE$, @CHEMICAL$); a file without any masked
entity is refused (raw text is not this benchmark). Labels: 0 / 1 for GAD and EU-ADR;
CPR:3, CPR:4, CPR:5, CPR:6, CPR:9, false for ChemProt.

The sentence (masks and all) is the single input sequence; the classifier reads [CLS], as in
BioBERT's run_re.py.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from evaluation.catalog import FORMAT_HINT, DataError, Split
from evaluation.metrics import re_binary_scores, re_micro_scores

LABELS = {"binary": ["0", "1"], "chemprot": ["CPR:3", "CPR:4", "CPR:5", "CPR:6", "CPR:9", "false"]}
MASK = re.compile(r"@[A-Z]+\$")
TEST_HEADER = ["index", "sentence", "label"]


@dataclass
class Examples:
    sentences: list[str]
    labels: list[str]


@dataclass
class ReData:
    train: Examples
    test: Examples
    labels: list[str]
    scoring: str  # binary | chemprot

    @property
    def sizes(self) -> tuple[int, int]:
        return len(self.train.sentences), len(self.test.sentences)


def read_tsv(path: Path, labels: list[str], test: bool) -> Examples:
    """Sentences and labels of one RE file; anything off is a DataError naming file and line."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise DataError(
            f"{path}: not UTF-8 text ({e.reason}); expected {FORMAT_HINT['re']}"
        ) from None
    rows = [(n, line.split("\t")) for n, line in enumerate(lines, 1) if line.strip()]
    header = [f.strip() for f in rows[0][1]] if rows else []
    if test and header != TEST_HEADER:
        raise DataError(
            f"{path}:1: expected the header 'index<TAB>sentence<TAB>label' "
            f"(BioBERT's RE test.tsv), found {lines[0][:80] if lines else ''!r}"
        )
    indexed = header == TEST_HEADER
    if indexed or header == ["sentence", "label"]:
        rows = rows[1:]
    width = 3 if indexed else 2
    shape = "index<TAB>sentence<TAB>label" if indexed else "sentence<TAB>label"
    out = Examples([], [])
    for n, fields in rows:
        if len(fields) != width or not fields[-2].strip():
            raise DataError(
                f"{path}:{n}: expected '{shape}' ({len(fields)} tab-separated fields found); "
                f"the file must be {FORMAT_HINT['re']}"
            )
        label = fields[-1].strip()
        if label not in labels:
            raise DataError(f"{path}:{n}: label {label!r} is not one of {', '.join(labels)}")
        out.sentences.append(fields[-2].strip())
        out.labels.append(label)
    if not out.sentences:
        raise DataError(f"{path}: no examples; expected {FORMAT_HINT['re']}")
    if not any(MASK.search(s) for s in out.sentences):
        raise DataError(
            f"{path}: no masked entity (@GENE$, @DISEASE$, @CHEMICAL$) in any sentence; "
            "expected BioBERT's pre-processed RE sentences"
        )
    return out


def read(split: Split) -> ReData:
    labels = LABELS[split.dataset.scoring]
    if split.dev is not None:  # unused; its format is checked
        read_tsv(split.dev, labels, test=False)
    return ReData(
        train=read_tsv(split.train, labels, test=False),
        test=read_tsv(split.test[0], labels, test=True),
        labels=labels,
        scoring=split.dataset.scoring,
    )


def _features(examples: Examples, tokenizer, max_length: int, token_types: bool) -> list[dict]:
    enc = tokenizer(
        examples.sentences,
        truncation=True,
        max_length=max_length,
        return_token_type_ids=token_types,
    )
    return [{k: enc[k][i] for k in enc.keys()} for i in range(len(examples.sentences))]


def train_features(data: ReData, tokenizer, max_length: int, token_types: bool) -> list[dict]:
    label_id = {label: i for i, label in enumerate(data.labels)}
    feats = _features(data.train, tokenizer, max_length, token_types)
    return [f | {"labels": label_id[y]} for f, y in zip(feats, data.train.labels, strict=True)]


def evaluate(data: ReData, tokenizer, max_length: int, token_types: bool, predict_fn) -> dict:
    """P / R / F1 on the test file; `predict_fn(features)` gives logits[C] per sentence."""
    logits = predict_fn(_features(data.test, tokenizer, max_length, token_types))
    pred = [data.labels[int(out[0].argmax())] for out in logits]
    if data.scoring == "binary":
        return re_binary_scores(data.test.labels, pred)
    return re_micro_scores(data.test.labels, pred)
