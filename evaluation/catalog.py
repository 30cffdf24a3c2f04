"""The paper's benchmark datasets and where their files live under `--data` (BioBERT's layout).

    python -m evaluation run ... --data datasets/ [--datasets NCBI-disease,GAD,BioASQ-6b]

`--data` is the root of BioBERT's released pre-processed "datasets" folder:

    NER/<dir>/train.tsv, devel.tsv, test.tsv    token<TAB>IOB-label lines, blank line between
                                                sentences (<dir>: BC5CDR-chem, BC5CDR-disease,
                                                NCBI-disease, BC2GM, JNLPBA, linnaeus, s800)
    RE/GAD/<k>/train.tsv, test.tsv              10 cross-validation folds, k = 1..10
    RE/euadr/<k>/train.tsv, test.tsv            same
    RE/ChemProt/train.tsv, dev.tsv, test.tsv
    QA/BioASQ/BioASQ-train-factoid-<y>.json     SQuAD-format training set, y = 4b, 5b, 6b
    QA/BioASQ/BioASQ-test-factoid-<y>-<k>.json  test batch k (SQuAD format, one entry per snippet)
    QA/BioASQ/<Y>B<k>_golden.json               its BioASQ golden answers (4B1_golden.json, ...)

Training uses train only and scores test after a fixed number of epochs (the paper's protocol);
devel.tsv / dev.tsv are checked when present and otherwise unused. This module only locates files;
the task modules (ner.py, relation.py, qa.py) read and check their contents.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from data_pipeline.errors import UserError

TASKS = ("ner", "re", "qa")


class DataError(UserError):
    """A dataset that is missing or malformed: the message names the file and what was expected."""


@dataclass(frozen=True)
class DatasetSpec:
    name: str  # the table column and the --datasets handle
    task: str  # ner | re | qa
    subdir: str  # under --data
    scoring: str = ""  # re: "binary" (GAD, EU-ADR) or "chemprot"; qa: the BioASQ year ("6b")
    folds: bool = False  # re: <subdir>/<k>/ cross-validation folds


PAPER_DATASETS: tuple[DatasetSpec, ...] = (
    DatasetSpec("NCBI-disease", "ner", "NER/NCBI-disease"),
    DatasetSpec("BC5CDR-disease", "ner", "NER/BC5CDR-disease"),
    DatasetSpec("BC5CDR-chem", "ner", "NER/BC5CDR-chem"),
    DatasetSpec("BC2GM", "ner", "NER/BC2GM"),
    DatasetSpec("JNLPBA", "ner", "NER/JNLPBA"),
    DatasetSpec("LINNAEUS", "ner", "NER/linnaeus"),
    DatasetSpec("Species-800", "ner", "NER/s800"),
    DatasetSpec("GAD", "re", "RE/GAD", scoring="binary", folds=True),
    DatasetSpec("EU-ADR", "re", "RE/euadr", scoring="binary", folds=True),
    DatasetSpec("ChemProt", "re", "RE/ChemProt", scoring="chemprot"),
    DatasetSpec("BioASQ-4b", "qa", "QA/BioASQ", scoring="4b"),
    DatasetSpec("BioASQ-5b", "qa", "QA/BioASQ", scoring="5b"),
    DatasetSpec("BioASQ-6b", "qa", "QA/BioASQ", scoring="6b"),
)
BY_NAME = {d.name: d for d in PAPER_DATASETS}

FORMAT_HINT = {
    "ner": "CoNLL-style 'token<TAB>label' lines (IOB labels: O, B, I or B-TYPE, I-TYPE), "
    "a blank line between sentences",
    "re": "BioBERT RE TSV: train/dev 'sentence<TAB>label' without header, test with the header "
    "'index<TAB>sentence<TAB>label'",
    "qa": "BioASQ factoid JSON in SQuAD format ({'data': [{'paragraphs': [{'context', 'qas'}]}]}) "
    "plus the BioASQ golden file",
}


@dataclass(frozen=True)
class Split:
    """The files of one fine-tuning run: train, test and, for QA, the golden answers per batch."""

    dataset: DatasetSpec
    fold: int | None  # RE cross-validation fold; None elsewhere
    train: Path
    test: tuple[Path, ...]  # QA: one file per test batch; else one file
    golden: tuple[Path, ...] = ()  # QA: the golden file of each test batch
    dev: Path | None = None  # checked when present, not used

    @property
    def key(self) -> str:
        return self.dataset.name if self.fold is None else f"{self.dataset.name}/fold{self.fold}"


def select_datasets(tasks: list[str], names: list[str] | None) -> list[DatasetSpec]:
    """The datasets to run: `names` (any order, validated) or every paper dataset of `tasks`."""
    for t in tasks:
        if t not in TASKS:
            raise UserError(f"--tasks: unknown task {t!r}; allowed: {', '.join(TASKS)}")
    if not names:
        return [d for d in PAPER_DATASETS if d.task in tasks]
    chosen = []
    for n in names:
        if n not in BY_NAME:
            raise UserError(f"--datasets: unknown dataset {n!r}; allowed: {', '.join(BY_NAME)}")
        if BY_NAME[n].task not in tasks:
            raise UserError(
                f"--datasets: {n} is a {BY_NAME[n].task} dataset but --tasks is {','.join(tasks)}"
            )
        chosen.append(BY_NAME[n])
    return [d for d in PAPER_DATASETS if d in chosen]  # the paper's column order


def locate(spec: DatasetSpec, data_dir: Path, folds: list[int] | None = None) -> list[Split]:
    """The splits of `spec` under `data_dir`; a missing file or folder is a DataError naming it."""
    root = Path(data_dir) / spec.subdir
    if spec.task == "qa":
        return [_locate_qa(spec, root)]
    if not spec.folds:
        return [_locate_plain(spec, root, None)]
    found = sorted(int(p.name) for p in _dir(root, spec).iterdir() if p.name.isdigit())
    if not found:
        raise DataError(
            f"{root}: no fold directories; expected {spec.subdir}/1/train.tsv ... "
            f"{spec.subdir}/10/test.tsv (BioBERT's 10-fold layout)"
        )
    wanted = folds or found
    missing = [k for k in wanted if k not in found]
    if missing:
        raise DataError(f"{root / str(missing[0])}: fold {missing[0]} not found (have {found})")
    return [_locate_plain(spec, root / str(k), k) for k in wanted]


def _dir(root: Path, spec: DatasetSpec) -> Path:
    if not root.is_dir():
        data_dir = root.parents[len(Path(spec.subdir).parts) - 1]
        present = [d.name for d in PAPER_DATASETS if (data_dir / d.subdir).is_dir()]
        hint = (
            f"; to run only the datasets that are there, pass --datasets {','.join(present)}"
            if present
            else ""
        )
        raise DataError(
            f"{root}: dataset {spec.name} not found; expected the folder {spec.subdir} under "
            f"--data (BioBERT's datasets layout) holding {FORMAT_HINT[spec.task]}{hint}"
        )
    return root


def _file(path: Path, spec: DatasetSpec) -> Path:
    if not path.is_file():
        raise DataError(
            f"{path}: file not found; {spec.name} needs it in BioBERT's layout "
            f"({FORMAT_HINT[spec.task]})"
        )
    return path


def _locate_plain(spec: DatasetSpec, root: Path, fold: int | None) -> Split:
    _dir(root, spec)
    dev_name = "devel.tsv" if spec.task == "ner" else "dev.tsv"
    dev = root / dev_name
    return Split(
        dataset=spec,
        fold=fold,
        train=_file(root / "train.tsv", spec),
        test=(_file(root / "test.tsv", spec),),
        dev=dev if dev.is_file() else None,
    )


def _locate_qa(spec: DatasetSpec, root: Path) -> Split:
    _dir(root, spec)
    year = spec.scoring
    train = _file(root / f"BioASQ-train-factoid-{year}.json", spec)
    pattern = re.compile(rf"BioASQ-test-factoid-{year}-(\d+)\.json")
    batches = sorted(
        (int(m.group(1)), p) for p in root.iterdir() if (m := pattern.fullmatch(p.name))
    )
    if not batches:
        raise DataError(
            f"{root}: no test batch for {spec.name}; expected BioASQ-test-factoid-{year}-1.json "
            f"... -5.json with golden files {year[0]}B1_golden.json ... {year[0]}B5_golden.json"
        )
    golden = tuple(_file(root / f"{year[0]}B{k}_golden.json", spec) for k, _ in batches)
    return Split(spec, None, train, tuple(p for _, p in batches), golden)
