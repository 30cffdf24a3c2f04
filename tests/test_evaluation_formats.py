"""Benchmark files in BioBERT's exact formats: readers, the layout, clear errors, settings.

Run: .venv/bin/pytest tests/test_evaluation_formats.py -q

The writers below produce tiny files byte for byte in the released formats (NER CoNLL TSV with
bare B/I/O labels, RE TSV with masked entities and a header on test.tsv only, BioASQ factoid
SQuAD JSON with '<question id>_<nnn>' test ids and a golden file with synonym lists). They are
also the fixtures of tests/test_evaluation_run.py.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from data_pipeline.errors import UserError
from evaluation import ner, qa, relation
from evaluation.__main__ import main
from evaluation.catalog import BY_NAME, DataError, locate, select_datasets
from evaluation.config import EvalSettings, build_settings

DISEASES = ["breast cancer", "diabetes", "asthma", "sepsis", "lung cancer", "malaria"]
VERBS = ["unrelated", "causes", "inhibits", "binds", "activates", "degrades"]
FILLER = "the patients with a history of were treated in this cohort study and".split()


def ner_sentences(n: int, seed: int) -> list[list[tuple[str, str]]]:
    """Sentences whose disease mentions are labelled B (first word) and I (the rest)."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        words = [(w, "O") for w in rng.sample(FILLER, 4)]
        mention = rng.choice(DISEASES).split()
        words += [(w, "B" if i == 0 else "I") for i, w in enumerate(mention)]
        words += [(w, "O") for w in rng.sample(FILLER, 3)] + [(".", "O")]
        out.append(words)
    return out


def write_ner(root: Path, name: str = "NCBI-disease", n_train: int = 24, n_test: int = 8) -> Path:
    folder = root / "NER" / name
    folder.mkdir(parents=True, exist_ok=True)
    for split, n, seed in (("train", n_train, 1), ("devel", 4, 2), ("test", n_test, 3)):
        text = "".join(
            "".join(f"{w}\t{label}\n" for w, label in s) + "\n" for s in ner_sentences(n, seed)
        )
        (folder / f"{split}.tsv").write_text(text, encoding="utf-8")
    return folder


def re_rows(n: int, seed: int, labels: list[str]) -> list[tuple[str, str]]:
    """Masked sentences whose verb gives the label away (learnable by a tiny model)."""
    rng = random.Random(seed)
    verbs = dict(zip(labels, VERBS, strict=False))
    rows = []
    for i in range(n):
        label = labels[i % len(labels)]
        a, b = ("@GENE$", "@DISEASE$") if labels == ["0", "1"] else ("@CHEMICAL$", "@GENE$")
        rows.append(
            (f"{rng.choice(FILLER)} {a} {verbs[label]} {b} in {rng.choice(FILLER)} .", label)
        )
    return rows


def write_re_split(folder: Path, labels: list[str], n_train: int, n_test: int, dev: bool) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    train = "".join(f"{s}\t{y}\n" for s, y in re_rows(n_train, 1, labels))
    (folder / "train.tsv").write_text(train, encoding="utf-8")
    if dev:
        (folder / "dev.tsv").write_text(train[: train.index("\n") + 1], encoding="utf-8")
    test = "index\tsentence\tlabel\n" + "".join(
        f"{i}\t{s}\t{y}\n" for i, (s, y) in enumerate(re_rows(n_test, 2, labels))
    )
    (folder / "test.tsv").write_text(test, encoding="utf-8")


def write_gad(root: Path, folds: int = 2, n_train: int = 24, n_test: int = 8) -> Path:
    for k in range(1, folds + 1):
        write_re_split(root / "RE" / "GAD" / str(k), ["0", "1"], n_train, n_test, dev=False)
    return root / "RE" / "GAD"


def write_chemprot(root: Path, n_train: int = 24, n_test: int = 12) -> Path:
    labels = ["CPR:3", "CPR:4", "CPR:5", "CPR:6", "CPR:9", "false"]
    write_re_split(root / "RE" / "ChemProt", labels, n_train, n_test, dev=True)
    return root / "RE" / "ChemProt"


QUESTIONS = [  # (24-character BioASQ id, question, answer, synonyms)
    (
        "55031181e9bde69634000014",
        "Which gene is mutated in the cohort?",
        "BRCA1",
        ["breast cancer 1"],
    ),
    (
        "5503145ee9bde69634000015",
        "Which drug was given to the patients?",
        "metformin",
        ["Glucophage"],
    ),
    ("55046d5ff8aee20f27000007", "Which disease did the children have?", "asthma", []),
]


def qa_context(answer: str, seed: int) -> str:
    rng = random.Random(seed)
    return f"In this {rng.choice(FILLER)} study the answer was {answer} for most patients ."


def write_bioasq(root: Path, year: str = "6b", batches: int = 1) -> Path:
    folder = root / "QA" / "BioASQ"
    folder.mkdir(parents=True, exist_ok=True)
    paragraphs = []
    for i in range(12):
        qid, question, answer, _ = QUESTIONS[i % len(QUESTIONS)]
        context = qa_context(answer, i)
        qas = [{"id": f"{qid}_{i:03d}", "question": question,
                "answers": [{"text": answer, "answer_start": context.index(answer)}]}]  # fmt: skip
        paragraphs.append({"context": context, "qas": qas})
    train = {"version": f"BioASQ{year}", "data": [{"title": "BioASQ", "paragraphs": paragraphs}]}
    (folder / f"BioASQ-train-factoid-{year}.json").write_text(json.dumps(train), encoding="utf-8")
    for k in range(1, batches + 1):
        paragraphs = [
            {"context": qa_context(ans, 100 + 10 * n + s),
             "qas": [{"id": f"{qid}_{s:03d}", "question": q}]}
            for n, (qid, q, ans, _) in enumerate(QUESTIONS) for s in range(2)
        ]  # fmt: skip
        test = {"version": f"BioASQ{year}", "data": [{"title": "BioASQ", "paragraphs": paragraphs}]}
        name = f"BioASQ-test-factoid-{year}-{k}.json"
        (folder / name).write_text(json.dumps(test), encoding="utf-8")
        golden = {
            "questions": [
                {"id": qid, "type": "factoid", "body": q, "exact_answer": [[ans, *syn]],
                 "ideal_answer": ["dummy"]}
                for qid, q, ans, syn in QUESTIONS
            ]
            + [{"id": "55046d5ff8aee20f27000099", "type": "yesno", "exact_answer": "yes"}]
        }  # fmt: skip
        (folder / f"{year[0].upper()}B{k}_golden.json").write_text(json.dumps(golden))
    return folder


def write_benchmark(root: Path) -> Path:
    """One dataset of each kind: NCBI-disease, GAD (2 folds), ChemProt, BioASQ-6b."""
    write_ner(root)
    write_gad(root)
    write_chemprot(root)
    write_bioasq(root)
    return root


# ------------------------------------------------------------------------------ readers


def test_ner_reader_keeps_sentences_and_bare_iob_labels(tmp_path):
    write_ner(tmp_path)
    (split,) = locate(BY_NAME["NCBI-disease"], tmp_path)
    data = ner.read(split)
    assert data.sizes == (24, 8)
    assert data.labels == ["O", "B", "I"]
    first = ner_sentences(24, 1)[0]
    assert data.train.words[0] == [w for w, _ in first]
    assert data.train.labels[0] == [label for _, label in first]


def test_re_reader_skips_the_test_header_and_reads_labels(tmp_path):
    write_gad(tmp_path, folds=2)
    splits = locate(BY_NAME["GAD"], tmp_path)
    assert [s.fold for s in splits] == [1, 2]
    data = relation.read(splits[0])
    assert data.sizes == (24, 8)
    assert data.test.labels[:2] == ["0", "1"]
    assert "@GENE$" in data.test.sentences[0]
    chem = relation.read(locate(BY_NAME["ChemProt"], write_chemprot(tmp_path).parents[1])[0])
    assert set(chem.test.labels) == {"CPR:3", "CPR:4", "CPR:5", "CPR:6", "CPR:9", "false"}


def test_bioasq_reader_pairs_test_batches_with_golden_synonyms(tmp_path):
    write_bioasq(tmp_path, batches=2)
    (split,) = locate(BY_NAME["BioASQ-6b"], tmp_path)
    assert [p.name for p in split.golden] == ["6B1_golden.json", "6B2_golden.json"]
    data = qa.read(split)
    assert data.sizes == (12, 12)  # 12 answers; 2 batches x 3 questions x 2 snippets
    golden = data.batches[0].golden
    assert golden["55031181e9bde69634000014"] == ["BRCA1", "breast cancer 1"]
    assert "55046d5ff8aee20f27000099" not in golden  # yes/no questions are not factoid
    e = data.train[0]
    assert e.context[e.answer_start : e.answer_start + len(e.answer_text)] == e.answer_text


def test_bioasq_answer_with_wrong_offset_is_found_or_skipped(tmp_path):
    folder = write_bioasq(tmp_path)
    path = folder / "BioASQ-train-factoid-6b.json"
    doc = json.loads(path.read_text())
    answers = [p["qas"][0]["answers"][0] for p in doc["data"][0]["paragraphs"]]
    answers[0]["answer_start"] = 0  # wrong offset: found by search
    answers[1]["text"] = "not in the context"  # absent: skipped and counted
    path.write_text(json.dumps(doc))
    entries, skipped = qa.read_squad(path, train=True)
    assert skipped == 1 and len(entries) == 11
    assert entries[0].context[entries[0].answer_start :].startswith(entries[0].answer_text)


# ------------------------------------------------------------------------------ clear errors


def _error(fn, *args) -> str:
    with pytest.raises(DataError) as e:
        fn(*args)
    return str(e.value)


def test_missing_dataset_names_the_folder_and_the_layout(tmp_path):
    msg = _error(locate, BY_NAME["BC5CDR-chem"], tmp_path)
    assert str(tmp_path / "NER" / "BC5CDR-chem") in msg and "token<TAB>label" in msg
    assert "--datasets" not in msg  # nothing there to suggest
    write_gad(tmp_path, folds=1)
    (tmp_path / "NER" / "NCBI-disease").mkdir(parents=True)
    msg = _error(locate, BY_NAME["BC5CDR-chem"], tmp_path)
    assert msg.endswith("to run only the datasets that are there, pass --datasets NCBI-disease,GAD")
    (tmp_path / "RE" / "GAD" / "1" / "test.tsv").unlink()
    msg = _error(locate, BY_NAME["GAD"], tmp_path)
    assert str(tmp_path / "RE" / "GAD" / "1" / "test.tsv") in msg and "file not found" in msg
    assert "fold 3 not found" in _error(locate, BY_NAME["GAD"], tmp_path, [3])


def test_bioasq_test_batch_without_golden_file_is_an_error(tmp_path):
    write_bioasq(tmp_path)
    (tmp_path / "QA" / "BioASQ" / "6B1_golden.json").unlink()
    msg = _error(locate, BY_NAME["BioASQ-6b"], tmp_path)
    assert "6B1_golden.json" in msg
    assert "BioASQ-train-factoid-4b.json: file not found" in _error(
        locate, BY_NAME["BioASQ-4b"], tmp_path
    )


@pytest.mark.parametrize(
    "line, fragment",
    [
        ("cancer\tB\tX\n", "expected 'word<TAB>label'"),
        ("cancer B\n", "expected 'word<TAB>label'"),
        ("cancer\tDisease\n", "IOB label"),
    ],
)
def test_ner_malformed_line_names_file_and_line(tmp_path, line, fragment):
    path = tmp_path / "train.tsv"
    path.write_text("Aspirin\tO\n" + line, encoding="utf-8")
    msg = _error(ner.read_conll, path)
    assert f"{path}:2:" in msg and fragment in msg


def test_re_format_errors_name_file_and_line(tmp_path):
    labels = ["0", "1"]
    test = tmp_path / "test.tsv"
    test.write_text("0\t@GENE$ causes @DISEASE$ .\t1\n", encoding="utf-8")
    assert "'index<TAB>sentence<TAB>label'" in _error(relation.read_tsv, test, labels, True)
    train = tmp_path / "train.tsv"
    train.write_text("@GENE$ causes @DISEASE$ .\t1\n@GENE$ and @DISEASE$\tmaybe\n")
    msg = _error(relation.read_tsv, train, labels, False)
    assert f"{train}:2:" in msg and "'maybe' is not one of 0, 1" in msg
    train.write_text("BRCA1 causes breast cancer .\t1\n")
    assert "no masked entity" in _error(relation.read_tsv, train, labels, False)
    train.write_text("index\tsentence\tlabel\n7\t@GENE$ causes @DISEASE$ .\t1\n")  # BLUE layout
    assert relation.read_tsv(train, labels, False).labels == ["1"]
    train.write_text("sentence\tlabel\n@GENE$ causes @DISEASE$ .\t1\n7\t@GENE$ x @DISEASE$\t0\n")
    assert f"{train}:3: expected 'sentence<TAB>label'" in _error(
        relation.read_tsv, train, labels, False
    )


def test_qa_format_errors_name_file_and_json_path(tmp_path):
    path = tmp_path / "train.json"
    path.write_text("{not json")
    assert "not valid JSON" in _error(qa.read_squad, path, True)
    path.write_text(
        json.dumps({"data": [{"paragraphs": [{"context": "c", "qas": [{"id": "x"}]}]}]})
    )
    msg = _error(qa.read_squad, path, True)
    assert str(path) in msg and "data[0].paragraphs[0].qas[0].question" in msg
    golden = tmp_path / "6B1_golden.json"
    golden.write_text(
        json.dumps({"questions": [{"id": "q", "type": "factoid", "exact_answer": [1]}]})
    )
    assert "questions[0] (q).exact_answer" in _error(qa.read_golden, golden)


def test_golden_file_of_other_questions_is_an_error(tmp_path):
    folder = write_bioasq(tmp_path)
    other = {
        "questions": [{"id": "ffffffffffffffffffffffff", "type": "factoid", "exact_answer": ["x"]}]
    }
    (folder / "6B1_golden.json").write_text(json.dumps(other))
    (split,) = locate(BY_NAME["BioASQ-6b"], tmp_path)
    assert "none of its factoid questions" in _error(qa.read, split)


def test_cli_reports_bad_data_in_one_line_and_exits_2(tmp_path, capsys):
    write_ner(tmp_path)
    bad = tmp_path / "NER" / "NCBI-disease" / "test.tsv"
    bad.write_text("x\ty\tz\n")
    model = tmp_path / "model"
    model.mkdir()  # never loaded: the data are checked first
    code = main(["run", "--models", str(model), "--tasks", "ner", "--datasets", "NCBI-disease",
                 "--data", str(tmp_path), "--output", str(tmp_path / "out")])  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert err.startswith(f"error: {bad}:1: expected 'word<TAB>label'")
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------ settings


def test_overrides_set_typed_values_and_reject_unknown_keys():
    s = build_settings(["ner.lr=3e-5", "qa.max_length=256", "qa.stride=64", "re.schedule=linear"])
    assert (s.ner.lr, s.qa.max_length, s.qa.stride, s.re.schedule) == (3e-5, 256, 64, "linear")
    assert (s.re.lr, s.re.batch_size, s.re.epochs, s.re.max_length) == (5e-5, 32, 3, 128)
    with pytest.raises(
        ValueError, match="unknown key 'ner.learning_rate'; allowed in 'ner': lr, batch_size"
    ):
        build_settings(["ner.learning_rate=1"])
    with pytest.raises(ValueError, match="ner.epochs='five': expected an integer >= 1"):
        build_settings(["ner.epochs=five"])
    with pytest.raises(ValueError, match="qa.stride=400"):
        build_settings(["qa.stride=400"])
    with pytest.raises(ValueError, match="re.schedule='step'"):
        build_settings(["re.schedule=step"])


@pytest.mark.parametrize(
    "override, message",
    [
        ("nre.lr=1", "^unknown key 'nre'; allowed in the evaluation settings: ner, re, qa, speed$"),
        ("ner.lr=0", "^ner.lr=0.0: expected a number > 0$"),
        ("ner.lr=true", "^ner.lr=True: expected a number > 0$"),
        ("re.batch_size=2.5", "^re.batch_size=2.5: expected an integer >= 1$"),
        ("qa.max_length=8", "^qa.max_length=8: expected an integer >= 16$"),
        ("qa.stride=384", "^qa.stride=384: expected an integer in \\(0, qa.max_length=384\\)$"),
        ("re.weight_decay=1", "^re.weight_decay=1.0: expected a number in \\[0, 1\\)$"),
        ("speed.warmup=-1", "^speed.warmup=-1: expected an integer >= 0$"),
        ("ner=3", "^ner=3: expected a mapping with keys lr, batch_size, epochs"),
        ("ner.lr", "^override 'ner.lr': expected key.sub=value$"),
    ],
)
def test_bad_settings_are_one_line_naming_the_key(override, message):
    with pytest.raises(UserError, match=message):
        build_settings([override])


def test_settings_overrides_read_yaml_numbers_as_the_recipe_does():
    s = build_settings(["ner.epochs=1e1", "speed.iters=20", "re.warmup_ratio=0"])
    assert (s.ner.epochs, s.speed.iters, s.re.warmup_ratio) == (10, 20, 0.0)
    assert type(s.ner.epochs) is int and type(s.re.warmup_ratio) is float
    assert build_settings([]) == EvalSettings()


def test_every_setting_has_a_description():
    s = EvalSettings()
    for section in ("ner", "re", "qa", "speed"):
        fields = type(getattr(s, section)).model_fields
        assert [k for k, f in fields.items() if not f.description] == [], section


def test_dataset_selection_follows_tasks_and_the_paper_order():
    assert [d.name for d in select_datasets(["re"], None)] == ["GAD", "EU-ADR", "ChemProt"]
    assert [d.name for d in select_datasets(["ner", "qa"], ["BioASQ-6b", "NCBI-disease"])] == [
        "NCBI-disease",
        "BioASQ-6b",
    ]
    with pytest.raises(ValueError, match="unknown dataset 'GADD'"):
        select_datasets(["re"], ["GADD"])
    with pytest.raises(ValueError, match="GAD is a re dataset"):
        select_datasets(["ner"], ["GAD"])
