"""The demo's downstream task: NER datasets in BioBERT's layout, written from the knowledge base.

    write_ner_datasets(kb, root / "datasets", seed=2023)
    python -m evaluation run --models ... --tasks ner --data data/demo/datasets \
        --datasets NCBI-disease,BC5CDR-chem,BC2GM

One dataset per entity type, under the name of the paper's dataset for that type, so that
`python -m evaluation` reads them as it reads BioBERT's (evaluation/catalog.py):

    NER/NCBI-disease/   diseases         NER/BC5CDR-chem/   chemicals      NER/BC2GM/   genes
        train.tsv, devel.tsv, test.tsv: `word<TAB>label` per line (B or O: every name is one
        word), a blank line between sentences; README.md says what they are

The sentences are the knowledge articles' fact sentences (data_pipeline/demo/knowledge.py), drawn
afresh from a seed of their own, and as many keyword lists ("Keywords : REB9 , Garoosis , liver
."), split into words and punctuation as BioBERT's files are. A word is labelled B when it is a
name of the dataset's type; the other types' names are O. Half the names of every type (a fixed
draw) occur only in test, the others only in train and devel. In a fact sentence the template
gives a name's type away; in a keyword list only the name itself does, so the test F1 there
measures what a model knows about names it never saw labelled: that `Garoosis` is a disease can
only come from pre-training on the corpus, where genes cause it and chemicals treat it.
"""

from __future__ import annotations

import random
import re
from pathlib import Path

from data_pipeline.demo.knowledge import KnowledgeBase
from data_pipeline.io_utils import atomic_write_bytes

DATASETS = {"disease": "NCBI-disease", "chemical": "BC5CDR-chem", "gene": "BC2GM"}
SIZES = {"train": 1200, "devel": 300, "test": 600}  # sentences
NEGATIVES = 0.25  # the share of sentences without a name of the type that is kept
LISTS = 0.5  # the share of keyword lists among the sentences
_WORDS = re.compile(r"\w+|[^\w\s]")


def split_names(kb: KnowledgeBase, kind: str, seed: int) -> tuple[list[str], list[str]]:
    """The type's names seen in train/devel and those held out for test (half, a fixed draw)."""
    names = sorted(kb.entities[kind])
    random.Random(f"ner-names-{seed}-{kind}").shuffle(names)
    half = len(names) // 2
    return sorted(names[half:]), sorted(names[:half])


def draw(kb: KnowledgeBase, rng: random.Random, pool: list[str], keywords: bool) -> list[str]:
    """As words and punctuation: a keyword list of 3 to 5 names from `pool`, or one fact
    sentence of a freshly drawn knowledge article."""
    if keywords:
        names = rng.sample(pool, rng.randint(3, 5))
        return ["Keywords", ":", *" , ".join(names).split(" "), "."]
    facts = kb.article_facts(rng)
    parts = kb.render(rng, facts, rng.randrange(len(facts.facts)), title=False)
    return _WORDS.findall("".join(text for text, _, _ in parts))


def sentences(kb: KnowledgeBase, kind: str, pool: list[str], n: int, rng: random.Random):
    """`n` sentences (a share LISTS of them keyword lists) that name no entity outside `pool`,
    each as (words, labels), the names of `kind` labelled B; of those that name none of them, a
    share NEGATIVES is kept."""
    barred = set(kb.words) - set(pool)
    targets = set(kb.entities[kind])
    out = []
    for _ in range(n):
        keywords = rng.random() < LISTS
        while True:
            words = draw(kb, rng, pool, keywords)
            labels = ["B" if w in targets else "O" for w in words]
            if barred.isdisjoint(words) and ("B" in labels or rng.random() < NEGATIVES):
                break
        out.append((words, labels))
    return out


def conll(rows) -> bytes:
    return "".join(
        "".join(f"{w}\t{lab}\n" for w, lab in zip(words, labels, strict=True)) + "\n"
        for words, labels in rows
    ).encode()


def write_ner_datasets(kb: KnowledgeBase, root: str | Path, seed: int = 2023) -> list[Path]:
    """Write the three datasets under `root` (BioBERT's NER/<name>/ layout); their directories.
    Each file is written atomically; the same seed writes the same bytes (data/demo's
    knowledge.json, written after them, marks the demo complete)."""
    root = Path(root)
    written = []
    halves = {t: split_names(kb, t, seed) for t in kb.entities}
    pools = [sorted(w for t in halves for w in halves[t][k]) for k in (0, 1)]  # seen, unseen
    for kind, name in DATASETS.items():
        rng = random.Random(f"ner-{seed}-{kind}")
        out = root / "NER" / name
        for split, n in SIZES.items():
            pool = pools[split == "test"]
            atomic_write_bytes(out / f"{split}.tsv", conll(sentences(kb, kind, pool, n, rng)))
        atomic_write_bytes(out / "README.md", _readme(name, kind, *halves[kind]).encode())
        written.append(out)
    return written


def _readme(name: str, kind: str, seen: list[str], unseen: list[str]) -> str:
    return (
        f"# {name} (biodistill demo)\n\n"
        f"Generated by data_pipeline/demo/ner.py from the demo's knowledge base: {kind} names "
        f"tagged B, every other word O, in BioBERT's `word<TAB>label` layout. It stands in for "
        f"the paper's {name} in `python -m evaluation`; it is not that dataset.\n\n"
        f"- train.tsv, devel.tsv: {SIZES['train']} and {SIZES['devel']} sentences naming only "
        f"{', '.join(seen)}\n"
        f"- test.tsv: {SIZES['test']} sentences naming only {', '.join(unseen)}, names never "
        f"labelled in train (likewise half of every other type's names)\n"
    )
