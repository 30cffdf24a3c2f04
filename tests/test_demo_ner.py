"""data_pipeline/demo/ner.py: the demo's NER datasets, in BioBERT's layout, read by the evaluation.

.venv/bin/python -m pytest tests/test_demo_ner.py -q
"""

from __future__ import annotations

import pytest

from data_pipeline.demo.knowledge import KnowledgeBase
from data_pipeline.demo.ner import DATASETS, SIZES, write_ner_datasets
from evaluation import ner
from evaluation.catalog import BY_NAME, locate


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    kb = KnowledgeBase.generate(2023)
    root = tmp_path_factory.mktemp("datasets")
    write_ner_datasets(kb, root, seed=2023)
    return kb, root


def test_the_evaluation_reads_them_as_the_papers_datasets(written):
    kb, root = written
    for name in DATASETS.values():
        (split,) = locate(BY_NAME[name], root)  # the paper's dataset name and folder
        data = ner.read(split)
        assert data.labels == ["O", "B"]
        assert data.sizes == (SIZES["train"], SIZES["test"])
        assert len(ner.read_conll(split.dev).words) == SIZES["devel"]


def test_labels_mark_exactly_the_names_of_the_datasets_type(written):
    kb, root = written
    names = set(kb.words)
    for kind, name in DATASETS.items():
        targets = set(kb.entities[kind])
        for f in SIZES:
            s = ner.read_conll(root / "NER" / name / f"{f}.tsv")
            pairs = [
                (w, lab)
                for ws, ls in zip(s.words, s.labels, strict=True)
                for w, lab in zip(ws, ls, strict=True)
            ]
            assert {w for w, lab in pairs if lab == "B"} <= targets
            assert all(lab == "B" for w, lab in pairs if w in targets)
            other = {w for w, _ in pairs if w in names - targets}
            assert other, f"{name}/{f}: the other types' names occur, labelled O"
            lists = sum(ws[0] == "Keywords" for ws in s.words)
            negatives = sum("B" not in ls for ls in s.labels)
            assert 0.3 < lists / len(s.words) < 0.7 and negatives > 0


def test_test_names_are_never_seen_in_train_or_devel(written):
    """Held out across every type, so that an unseen word is no evidence of the target type."""
    kb, root = written
    names = set(kb.words)
    for name in DATASETS.values():
        found = {}
        for f in SIZES:
            s = ner.read_conll(root / "NER" / name / f"{f}.tsv")
            found[f] = {w for ws in s.words for w in ws if w in names}
        assert found["test"].isdisjoint(found["train"] | found["devel"]), name
        for kind in kb.entities:  # each type has names on both sides
            ents = set(kb.entities[kind])
            assert ents & found["test"] and ents & found["train"], (name, kind)


def test_the_same_seed_writes_the_same_bytes_and_another_seed_other_ones(written, tmp_path):
    kb, root = written
    write_ner_datasets(kb, tmp_path / "same", seed=2023)
    write_ner_datasets(kb, tmp_path / "other", seed=7)
    for name in DATASETS.values():
        for f in SIZES:
            rel = f"NER/{name}/{f}.tsv"
            assert (tmp_path / "same" / rel).read_bytes() == (root / rel).read_bytes()
            assert (tmp_path / "other" / rel).read_bytes() != (root / rel).read_bytes()
