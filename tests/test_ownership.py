"""No command touches what the user owns: every writer writes only into a directory that is
absent, empty or marked as its own (its record, or what an unfinished run of it leaves), refuses
any other in one line naming the path and what is there, and inside its own directory leaves the
user's files byte for byte.

Run: .venv/bin/python -m pytest tests/test_ownership.py -q

Each writer is run as the user runs it for the refusal (a subprocess: exit status and the one
line on stderr), and in-process for the rerun, at the smallest sizes it takes.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # benchmarks/ is a folder of the checkout, not an installed package

from benchmarks import gpu_check  # noqa: E402
from data_pipeline.demo.build import MARK  # noqa: E402

USER_FILE = "notes.md"  # not a record file: shard reads *.txt in an extract output as records
USER_BYTES = b"the user's own notes\n\x00\xff binary too\n"
EVAL_FAST = ["ner.epochs=1", "ner.batch_size=8", "speed.batch_size=2", "speed.seq_len=16"]
EVAL_FAST += ["speed.iters=1", "--seeds", "1", "--log-every", "0"]


def plant(directory: Path, name: str = USER_FILE) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_bytes(USER_BYTES)
    return path


def interrupt(*_args, **_kwargs):
    raise KeyboardInterrupt  # Ctrl-C in the middle of the work


def tree(directory: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(directory)): p.read_bytes() if p.is_file() else b"<dir>"
        for p in sorted(directory.rglob("*"))
    }


# ---- the writers, as the user runs them ---------------------------------------------------------


@pytest.fixture(scope="module")
def records(tmp_path_factory, small_corpus) -> Path:
    """extract's output of the small corpus (with its .parts), the input of tokenize and shard."""
    from data_pipeline.extract import run_extract

    out = tmp_path_factory.mktemp("own-records") / "records"
    run_extract([str(f) for f in small_corpus.files], str(out), progress=False)
    return out


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    from test_evaluation_run import save_tiny_model

    return save_tiny_model(tmp_path_factory.mktemp("own-model") / "TinyTestBERT")


@pytest.fixture(scope="module")
def ner_data(tmp_path_factory) -> Path:
    from test_evaluation_formats import write_ner

    root = tmp_path_factory.mktemp("own-datasets")
    write_ner(root)
    return root


def extract_argv(request, out: Path) -> list[str]:
    files = [str(f) for f in request.getfixturevalue("small_corpus").files]
    return ["-m", "data_pipeline", "extract", "--input", *files, "--output", str(out)]


def tokenize_argv(request, out: Path) -> list[str]:
    files = [str(f) for f in request.getfixturevalue("small_corpus").files]
    records = request.getfixturevalue("records")
    tokenizer = request.getfixturevalue("tokenizer_dir")
    return ["-m", "data_pipeline", "tokenize", "--input", *files, "--records", str(records),
            "--tokenizer", str(tokenizer), "--cache", str(out), "--max-len", "64"]  # fmt: skip


def shard_argv(request, out: Path) -> list[str]:
    records = request.getfixturevalue("records")
    tokenizer = request.getfixturevalue("tokenizer_dir")
    return ["-m", "data_pipeline", "shard", "--input", str(records), "--tokenizer",
            str(tokenizer), "--output", str(out), "--max-len", "64"]  # fmt: skip


def demo_argv(request, out: Path) -> list[str]:
    return ["-m", "data_pipeline", "demo", "--output", str(out), "--articles", "200",
            "--files", "2", "--workers", "1"]  # fmt: skip


def evaluation_argv(request, out: Path) -> list[str]:
    model, data = request.getfixturevalue("tiny_model"), request.getfixturevalue("ner_data")
    return ["-m", "evaluation", "run", "--models", str(model), "--tasks", "ner", "--datasets",
            "NCBI-disease", "--data", str(data), "--output", str(out), *EVAL_FAST]  # fmt: skip


def gpu_check_argv(request, out: Path) -> list[str]:
    return ["benchmarks/gpu_check.py", str(out), "--dry", "--parts", "env"]


WRITERS: dict[str, Callable] = {
    "extract": extract_argv,
    "tokenize": tokenize_argv,
    "shard": shard_argv,
    "demo": demo_argv,
    "evaluation": evaluation_argv,
    "gpu_check": gpu_check_argv,
}


# ---- (a) a directory the user owns is refused in one line and left as it is ---------------------


@pytest.mark.parametrize("writer", sorted(WRITERS))
def test_a_directory_the_user_owns_is_refused_in_one_line_and_left_as_it_is(
    writer, request, tmp_path
):
    out = tmp_path / "mine"
    planted = plant(out)
    (out / "results").mkdir()  # and a folder of theirs
    before = tree(out)
    argv = WRITERS[writer](request, out)
    env = {**os.environ, "PYTHON": sys.executable, "WHEELS": "/nonexistent"}
    if writer == "gpu_check":  # the user's command is the shell script
        command = ["bash", "benchmarks/gpu_check.sh", *argv[1:]]
    else:
        command = [sys.executable, *argv]
    proc = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-3000:]  # each CLI's status for bad input
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr[-3000:]
    assert str(out) in lines[0] and USER_FILE in lines[0], lines[0]
    assert tree(out) == before  # nothing written, nothing removed
    assert planted.read_bytes() == USER_BYTES


# ---- (b) inside its own directory a writer leaves the user's files alone ------------------------


def test_extract_rerun_leaves_the_users_files(small_corpus, tmp_path):
    from data_pipeline.extract import run_extract

    out = tmp_path / "records"
    files = [str(f) for f in small_corpus.files]
    run_extract(files, str(out), progress=False)
    planted = [plant(out), plant(out / ".parts"), plant(out, "extra.json")]
    # a report edited by hand to name a user's file as an output
    report = json.loads((out / "report.json").read_text())
    report["files"].append({**report["files"][0], "output": USER_FILE})
    (out / "report.json").write_text(json.dumps(report))
    # fewer inputs: the outputs of the dropped ones go (listed in the previous report), and
    # every output is written again
    report = run_extract(files[1:], str(out), progress=False, keep_no_abstract=True)
    assert not (out / f"{small_corpus.files[0].name.split('.')[0]}.jsonl.gz").exists()
    assert report["records_out"] > 0
    assert all(p.read_bytes() == USER_BYTES for p in planted)


def test_tokenize_rerun_leaves_the_users_files(small_corpus, records, tokenizer_dir, tmp_path):
    from data_pipeline.token_cache import run_tokenize

    out = tmp_path / "cache"
    files = [str(f) for f in small_corpus.files]
    run_tokenize(files, str(records), str(tokenizer_dir), str(out), max_len=64, progress=False)
    planted = plant(out)
    # another cut: every entry is written again
    done = run_tokenize(
        files, str(records), str(tokenizer_dir), str(out), max_len=32, progress=False
    )
    assert done["tokenized"] == len(files)
    assert planted.read_bytes() == USER_BYTES


def test_shard_resume_leaves_the_users_files(records, tokenizer_dir, tmp_path, monkeypatch):
    """A run stopped before its manifest, resumed: the user's files in the shard directory and
    in its resume journal survive (the journal goes once the manifest is written)."""
    from data_pipeline.shards.journal import STATE_DIR
    from data_pipeline.shards.manifest import Manifest
    from data_pipeline.shards.writer import run_shard

    out = tmp_path / "shards"
    args = ([str(records)], str(tokenizer_dir), str(out))
    kw = {"max_len": 64, "eval_fraction": 0.1, "samples_per_shard": 32, "progress": False}

    with monkeypatch.context() as m:
        m.setattr(Manifest, "save", interrupt)
        with pytest.raises(KeyboardInterrupt):
            run_shard(*args, **kw)
    # a shard-like name too: only the shard a crash can leave past the journal may go
    planted = [plant(out), plant(out / STATE_DIR), plant(out, "train-000999.tar")]
    manifest = run_shard(*args, **kw)
    assert manifest.splits["train"].samples > 0
    assert [p.read_bytes() for p in planted] == [USER_BYTES] * 3
    assert run_shard(*args, **kw) == manifest  # complete: nothing to do
    assert [p.read_bytes() for p in planted] == [USER_BYTES] * 3


def test_demo_rebuild_leaves_the_users_files(tmp_path, monkeypatch):
    """A build stopped while generating is resumed; a changed generator rebuilds the demo: only
    the demo's own files go, in every folder."""
    from data_pipeline.demo import build as demo
    from data_pipeline.shards.manifest import Manifest

    out = tmp_path / "demo"
    with monkeypatch.context() as m:
        m.setattr(demo, "write_mentions", interrupt)  # after the XML files, before their mark
        with pytest.raises(KeyboardInterrupt):
            demo.build_demo(out, articles=200, files=2, workers=1, log=lambda *_: None)
    first = plant(out)
    demo.build_demo(out, articles=200, files=2, workers=1, log=lambda *_: None)
    folders = ("xml", "records", "records/.parts", "tokenizer", "shards", "datasets")
    planted = [first, *(plant(out / f) for f in folders)]
    monkeypatch.setattr(demo, "generator_digest", lambda: "another generator")
    messages: list[str] = []
    shards = demo.build_demo(out, articles=200, files=2, workers=1, log=messages.append)
    assert any("rebuilding" in m for m in messages)
    assert Manifest.load(shards).splits["train"].samples > 0
    assert [p.read_bytes() for p in planted] == [USER_BYTES] * len(planted)


def test_evaluation_rerun_leaves_the_users_files(tiny_model, ner_data, tmp_path, monkeypatch):
    """A run stopped in its first cell is resumed, then rerun with other settings."""
    from evaluation import finetune
    from evaluation.__main__ import main

    out = tmp_path / "eval"
    args = ["run", "--models", str(tiny_model), "--tasks", "ner", "--datasets", "NCBI-disease",
            "--data", str(ner_data), "--output", str(out), *EVAL_FAST]  # fmt: skip
    with monkeypatch.context() as m:
        m.setattr(finetune, "train", interrupt)
        assert main(args) == 130
    planted = [plant(out)]
    assert main(args) == 0
    planted += [plant(out / "cells"), plant(out / "models")]
    assert main([*args, "ner.lr=1e-3", "--rerun-stale"]) == 0  # every cell again, and the report
    assert (out / "results.json").is_file()
    assert [p.read_bytes() for p in planted] == [USER_BYTES] * 3


def test_gpu_check_rerun_leaves_the_users_files(tmp_path, monkeypatch):
    """A check killed in its first part is rerun into the same OUT_DIR, twice."""
    out = tmp_path / "check"
    with monkeypatch.context() as m:
        m.setattr(gpu_check, "run_part", interrupt)
        with pytest.raises(KeyboardInterrupt):
            gpu_check.main([str(out), "--dry", "--parts", "env"])
    planted = plant(out)
    for _ in range(2):
        assert gpu_check.main([str(out), "--dry", "--parts", "env"]) == 0
    assert planted.read_bytes() == USER_BYTES


# ---- make clean ---------------------------------------------------------------------------------

# What `make clean` may remove, each with the record that says this checkout made it. (It removes
# whole folders, so there is no rerun to leave a user's file inside one.)
CLEANED = {
    "venv": ".installed",  # make install
    "data/demo": MARK,  # python -m data_pipeline demo
    "runs/demo": ".lock",  # the trainer's run directory
    "runs/demo.stale-1": "recipe.resolved.yaml",
    "runs/demo-teacher": "recipe.resolved.yaml",
    "runs/demo-teacher.stale-2": ".lock",
    ".pytest_cache": "CACHEDIR.TAG",
}


def make_clean(tmp_path: Path) -> subprocess.CompletedProcess:
    shutil.copy(ROOT / "Makefile", tmp_path / "Makefile")
    return subprocess.run(
        ["make", "-s", "clean", f"VENV={tmp_path / 'venv'}"],
        cwd=tmp_path, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def test_make_clean_removes_what_the_checkout_made(tmp_path):
    for folder, record in CLEANED.items():
        plant(tmp_path / folder, record)
        plant(tmp_path / folder / "sub")
    proc = make_clean(tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert not [f for f in CLEANED if (tmp_path / f).exists()]


def test_make_clean_leaves_a_users_folder_of_the_same_name(tmp_path):
    planted = [plant(tmp_path / folder) for folder in CLEANED]
    proc = make_clean(tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert [p.read_bytes() for p in planted] == [USER_BYTES] * len(planted)
    said = (proc.stdout + proc.stderr).strip().splitlines()
    assert len(said) == len(CLEANED), said  # one line each, naming the folder and what it lacks
    for folder, record in CLEANED.items():
        name = str(tmp_path / folder) if folder == "venv" else folder
        assert [line for line in said if f" {name}: " in line and record in line], (folder, said)
