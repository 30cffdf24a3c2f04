"""The trainer's writers write only what is theirs: teacher.build, the run directory, exports.

    .venv/bin/python -m pytest tests/test_ownership_runs.py -q

Each test plants a user's files where a writer would write and shows them byte-identical
afterwards: a teacher directory the build did not make is loaded as the teacher (never rebuilt
into), a run directory holding a user's files is refused, `python -m trainer.export --output`
never replaces a directory that is not an export of this trainer.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from multirank import run_distributed
from test_trainer_runs import train
from trainer_setup import ds_config, recipe, teacher_config, write_recipe
from transformers import AutoTokenizer, BertConfig, BertForMaskedLM

from data_pipeline.shards.manifest import Manifest
from trainer.cli.teacher_cache import BUILT, ownership
from trainer.export.hf_export import EXPORT_RECORD, not_an_export
from trainer.export.hf_export import main as export_main


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file under `root` with its bytes."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def users_teacher_run(tmp_path_factory, tiny_shards, tokenizer_dir):
    """A run of a recipe with teacher.build whose teacher.path is the user's own BERT."""
    root = tmp_path_factory.mktemp("owned")
    vocab = Manifest.load(tiny_shards).tokenizer.vocab_size
    users = root / "my-bert"
    torch.manual_seed(0)
    BertForMaskedLM(BertConfig(**teacher_config(vocab))).save_pretrained(users)
    AutoTokenizer.from_pretrained(tokenizer_dir).save_pretrained(users)
    (users / "NOTES.md").write_text("my fine-tuned teacher; do not touch\n")
    before = snapshot(users)
    build = recipe(tiny_shards, root / "runs", vocab, name="build", steps=2)
    build["students"] = build["students"][2:]  # one student: the teacher it would build
    build["teacher"] = None
    data = recipe(tiny_shards, root / "runs", vocab, name="distil", steps=2)
    data["teacher"] = {"path": str(users), "build": str(write_recipe(root / "b.yaml", build))}
    data["data"]["tokenizer"] = str(tokenizer_dir)
    argv = [
        *("--ds_config", str(ds_config(root / "ds.json", bf16=False))),
        *("--recipe", str(write_recipe(root / "r.yaml", data)), "--students", "DistilBioBERT"),
    ]
    (result,) = run_distributed(train, 1, argv)
    return {"root": root, "users": users, "before": before, "result": result, "argv": argv}


@pytest.mark.slow
def test_a_teacher_directory_the_build_did_not_make_is_loaded_never_rebuilt(users_teacher_run):
    run = users_teacher_run
    assert run["result"]["rc"] == 0, run["result"]["stderr"][-2000:]
    assert snapshot(run["users"]) == run["before"]  # byte-identical, nothing added
    log = run["result"]["stderr"]
    assert f"teacher: {run['users']} holds NOTES.md, config.json, model.safetensors and" in log
    assert "loading it as the teacher; teacher.build=" in log and "is not used" in log
    assert not (run["root"] / "runs" / "build").exists()  # the build never ran
    mark = json.loads((run["root"] / "runs" / "distil" / "TEACHER.json").read_text())
    assert mark == {"teacher": str(run["users"].resolve())}


@pytest.mark.slow
def test_export_never_replaces_a_directory_that_is_no_export(users_teacher_run, capsys):
    run = users_teacher_run
    assert run["result"]["rc"] == 0, run["result"]["stderr"][-2000:]
    ckpt = max((run["root"] / "runs" / "distil" / "checkpoints").glob("step-*"))
    out = run["root"] / "exports"
    (out / "DistilBioBERT").mkdir(parents=True)
    (out / "DistilBioBERT" / "mine.txt").write_text("the user's")
    (out / "other.txt").write_text("the user's, beside")
    before = snapshot(out)
    assert export_main([str(ckpt), "--output", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {out / 'DistilBioBERT'}: holds mine.txt and no {EXPORT_RECORD}")
    assert "export to another directory (--output) or move it away" in err
    assert snapshot(out) == before
    # its own export it replaces; a user's file dropped into it since stops that
    (out / "DistilBioBERT" / "mine.txt").unlink()
    assert export_main([str(ckpt), "--output", str(out)]) == 0
    assert export_main([str(ckpt), "--output", str(out)]) == 0
    record = json.loads((out / "DistilBioBERT" / EXPORT_RECORD).read_text())
    assert {"config.json", "model.safetensors", "README.md"} <= set(record["files"])
    (out / "DistilBioBERT" / "notes.txt").write_text("added by the user")
    before = snapshot(out)
    assert export_main([str(ckpt), "--output", str(out)]) == 2
    assert "holds notes.txt besides the export" in capsys.readouterr().err
    assert snapshot(out) == before


@pytest.mark.slow
def test_a_run_directory_holding_the_users_files_is_refused(users_teacher_run, tmp_path):
    run = users_teacher_run
    theirs = run["root"] / "runs" / "theirs"
    theirs.mkdir()
    (theirs / "results.csv").write_text("a,b\n1,2\n")
    before = snapshot(theirs)
    (result,) = run_distributed(train, 1, [*run["argv"], "run.name=theirs"])
    assert result["rc"] == 2
    assert f"error: {theirs}: holds results.csv and no .lock or " in result["stderr"]
    assert "set run.name or run.output_dir to another directory" in result["stderr"]
    assert snapshot(theirs) == before


def test_what_the_teacher_build_owns(tmp_path):
    teacher = tmp_path / "teacher"
    assert ownership(teacher) is None  # absent
    assert ownership(Path("dmis-lab/biobert-base-cased-v1.2")) == "looks like a hub name"
    teacher.mkdir()
    assert ownership(teacher) is None  # empty
    (teacher / "model.safetensors").write_bytes(b"x")
    assert ownership(teacher) == f"holds model.safetensors and no {BUILT}"
    (teacher / BUILT).write_text("{not json")
    assert ownership(teacher) == f"holds {BUILT}, model.safetensors and an unreadable {BUILT}"
    (teacher / BUILT).write_text(json.dumps({"files": ["model.safetensors"]}))
    assert ownership(teacher) is None  # a teacher it built
    (teacher / "notes.txt").write_text("mine")
    assert ownership(teacher) == f"holds notes.txt besides the teacher its {BUILT} lists"
    (teacher / BUILT).write_text(json.dumps({"recipe": "r.yaml"}))  # before the file list
    assert ownership(teacher) is None
    (teacher / BUILT).write_text(json.dumps({"files": "notes.txt model.safetensors"}))  # no list
    assert (
        ownership(teacher)
        == f"holds {BUILT}, model.safetensors, notes.txt and an unreadable {BUILT}"
    )
    file = tmp_path / "file"
    file.write_text("x")
    assert ownership(file) == "is a file"


def test_what_an_export_may_replace(tmp_path):
    out = tmp_path / "S"
    assert not_an_export(out) is None
    out.mkdir()
    assert not_an_export(out) is None
    (out / "config.json").write_text("{}")
    (out / "README.md").write_text("---\ntags:\n- biomedical\n---\n")
    assert not_an_export(out) == f"holds README.md, config.json and no {EXPORT_RECORD}"
    (out / "README.md").write_text("---\ntags:\n- biodistill\n---\n")  # written before the record
    assert not_an_export(out) is None
    shutil.rmtree(out)
    out.mkdir()
    (out / "config.json").write_text("{}")
    (out / EXPORT_RECORD).write_text(json.dumps({"files": {"config.json": {}}}))
    assert not_an_export(out) is None
    (out / "sub").mkdir()
    (out / "sub" / "x.bin").write_bytes(b"x")
    assert not_an_export(out) == "holds sub/x.bin besides the export"
