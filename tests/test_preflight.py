"""`--dry-run`'s pre-flight (trainer/cli/preflight.py): one line per check, ok or the problem and
its fix, exit 2 when one fails; offline, hub names fail at once with the way out.

Run: .venv/bin/pytest tests/test_preflight.py -q
"""

from __future__ import annotations

import json
import shutil
import socket
from pathlib import Path

import pytest
from trainer_setup import ds_config, recipe, teacher_config, write_recipe

from data_pipeline.shards.manifest import Manifest
from trainer.cli import preflight
from trainer.config.recipe import ROOT
from trainer.main import main


@pytest.fixture
def make(tmp_path, tiny_shards, monkeypatch):
    """A runnable recipe and DeepSpeed JSON (optionally changed) -> the dry-run's (rc, lines)."""
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)  # restored after the test
    vocab = Manifest.load(tiny_shards).tokenizer.vocab_size

    def run(capsys, change=lambda data: None, ds_change=None, overrides=()):
        data = recipe(tiny_shards, tmp_path / "runs", vocab)
        change(data)
        path = write_recipe(tmp_path / "r.yaml", data)
        ds = ds_config(tmp_path / "ds.json", bf16=False)
        if ds_change is not None:
            raw = json.loads(ds.read_text())
            ds_change(raw)
            ds.write_text(json.dumps(raw))
        rc = main(["--ds_config", str(ds), "--recipe", str(path), "--dry-run", *overrides])
        out, err = capsys.readouterr()
        checks = out.split("# pre-flight\n", 1)[1].splitlines()
        return rc, checks, err

    return run


def by_name(checks: list[str]) -> dict[str, str]:
    return {line[6:].split(":")[0]: line for line in checks}


def test_a_runnable_recipe_passes_every_check(make, capsys, tiny_shards):
    rc, checks, err = make(capsys)
    assert rc == 0, checks
    assert all(line.startswith("ok    ") for line in checks), checks
    lines = by_name(checks)
    assert sorted(lines) == [
        "batch", "data.eval_shards", "data.train_shards", "positions", "run directory",
        "student CompactBioBERT",
        "student DistilBioBERT", "student TinyBioBERT", "teacher", "tokenizer",
    ]  # fmt: skip
    m = Manifest.load(tiny_shards)
    samples = sum(s.samples for s in m.splits["train"].shards)
    assert lines["data.train_shards"] == (
        f"ok    data.train_shards: {tiny_shards}/manifest.json: {len(m.splits['train'].shards)} "
        f"shards, {samples:,} samples, max_len 64"
    )
    assert lines["batch"] == (
        "ok    batch: global batch 8 = 1 rank x 8 x accumulation 1 (the recipe sets no "
        "train.global_batch, so it changes with the number of ranks)"
    )
    assert "network" not in lines  # no hub name in the recipe: nothing is looked up
    assert err == ""


def _set(section: str, key: str, value):
    def change(data):
        data[section][key] = value

    return change


def _student(name: str, key: str, value):
    def change(data):
        student = next(s for s in data["students"] if s["name"] == name)
        student["init"] = {key: value}

    return change


@pytest.mark.parametrize(
    "case, change, failed, message",
    [
        (
            "shards missing",
            _set("data", "train_shards", "{tmp}/nowhere"),
            "data.train_shards",
            "FAIL  data.train_shards: {tmp}/nowhere: not found; expected a shard directory "
            "holding manifest.json",
        ),
        (
            "shards of another max_len",
            lambda data: data["data"].update(max_len=32, eval_shards=None),
            "data.train_shards",
            "FAIL  data.train_shards: {shards}/manifest.json: made with max_len 64; set "
            "data.max_len=64 or re-shard",
        ),
        (
            "teacher directory without weights",
            lambda data: (
                data.update(teacher={"path": "{tmp}/teacher"})
                or data["data"].update(tokenizer="{tokenizer}")
            ),
            "teacher",
            "FAIL  teacher: {tmp}/teacher: no weights (model.safetensors, "
            "model.safetensors.index.json, pytorch_model.bin); save the model there in full",
        ),
        (
            "copied layers a saved teacher lacks",
            lambda data: (
                _student("DistilBioBERT", "from_teacher_layers", [0, 4])(data)
                or data.update(teacher={"path": "{tmp}/saved-teacher"})
                or data["data"].update(tokenizer="{tokenizer}")
            ),
            "student DistilBioBERT",
            "FAIL  student DistilBioBERT: init.from_teacher_layers [0, 4]: the teacher has 4 "
            "layers (0..3)",
        ),
        (
            "a student with too few positions",
            _student(
                "TinyBioBERT",
                "config",
                {
                    "num_hidden_layers": 2,
                    "hidden_size": 16,
                    "num_attention_heads": 2,
                    "intermediate_size": 32,
                    "max_position_embeddings": 32,
                },
            ),  # fmt: skip
            "positions",
            "FAIL  positions: data.max_len=64: longer than student TinyBioBERT's 32; re-shard "
            "with `--max-len 32` (or less) and set data.max_len to it",
        ),
        (
            "another tokenizer",
            _set("data", "tokenizer", "{other_tokenizer}"),
            "tokenizer",
            "FAIL  tokenizer: data.train_shards={shards}: shards were made with tokenizer ",
        ),
    ],
    ids=[
        "shards-missing",
        "max-len",
        "teacher-no-weights",
        "copied-layers",
        "positions",
        "tokenizer",
    ],
)
def test_each_missing_piece_fails_its_check_with_the_fix(
    make, capsys, tmp_path, tiny_shards, tokenizer_dir, case, change, failed, message
):
    other = tmp_path / "other-tokenizer"
    if case == "another tokenizer":
        from data_pipeline.demo.synth import train_wordpiece

        train_wordpiece(["alpha beta gamma delta"] * 50, other, vocab_size=200)
    if case == "teacher directory without weights":
        (tmp_path / "teacher").mkdir()
        (tmp_path / "teacher" / "config.json").write_text("{}")
    if case == "copied layers a saved teacher lacks":  # 4 layers, known from its config.json
        from transformers import BertConfig, BertForMaskedLM

        vocab = Manifest.load(tiny_shards).tokenizer.vocab_size
        BertForMaskedLM(BertConfig(**teacher_config(vocab))).save_pretrained(
            tmp_path / "saved-teacher"
        )
        capsys.readouterr()  # save_pretrained's progress bar (shown unless a test turned it off)
    names = {
        "tmp": tmp_path,
        "shards": tiny_shards,
        "other_tokenizer": other,
        "tokenizer": tokenizer_dir,
    }

    def fill(value):
        return value.format(**names) if isinstance(value, str) else value

    def changed(data):
        change(data)
        for section in ("data", "teacher"):
            data[section] = {k: fill(v) for k, v in data[section].items()}

    rc, checks, err = make(capsys, changed)
    assert rc == 2
    lines = by_name(checks)
    assert err == f"{lines[failed]}\nerror: 1 of {len(checks)} pre-flight checks failed\n"
    assert lines[failed].startswith(fill(message)), lines[failed]
    assert [x for x in checks if x.startswith("FAIL")] == [lines[failed]]


def test_a_global_batch_the_ranks_cannot_share_fails(make, capsys, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    rc, checks, _ = make(capsys, overrides=["train.global_batch=25"])
    assert rc == 2
    assert by_name(checks)["batch"] == (
        "FAIL  batch: global batch 25 cannot be shared by 2 ranks: set train.global_batch to a "
        "multiple of 2 (e.g. 24 or 26), or run on a number of ranks that divides 25"
    )


def test_a_global_batch_and_another_train_batch_size_fail(make, capsys):
    def change(ds):
        ds["train_batch_size"] = 25

    rc, checks, _ = make(capsys, ds_change=change, overrides=["train.global_batch=24"])
    assert rc == 2
    assert by_name(checks)["batch"] == (
        "FAIL  batch: train.global_batch=24 but the DeepSpeed JSON's train_batch_size is 25: "
        "drop one of them (or make them equal)"
    )


def test_offline_the_hub_teacher_fails_at_once_with_the_way_out(make, capsys, monkeypatch):
    """No route to the hub: one network line, the process goes offline (so nothing retries), and
    the teacher's check names the download and the key to set."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    asked = []

    def no_route(address, timeout=None):
        asked.append((address, timeout))
        raise OSError(101, "Network is unreachable")

    monkeypatch.setattr(socket, "create_connection", no_route)
    hub = "dmis-lab/biobert-base-cased-v1.2"
    rc, checks, _ = make(capsys, lambda data: data.update(teacher={"path": hub}))
    assert rc == 2
    assert asked == [(("huggingface.co", 443), preflight.NETWORK_TIMEOUT_S)]  # once, briefly
    lines = by_name(checks)
    assert lines["network"] == (
        "ok    network: offline (no connection to huggingface.co:443: Network is unreachable); "
        "hub names come from the local cache only (HF_HUB_OFFLINE=1)"
    )
    assert lines["teacher"] == (
        f"FAIL  teacher: {hub}: not in the local hub cache and offline; download it where there "
        f"is network (`hf download {hub} --local-dir DIR`) and set teacher.path=DIR"
    )
    assert huggingface_hub.constants.HF_HUB_OFFLINE is True


def test_the_demo_recipe_passes_before_its_corpus_is_built(monkeypatch, capsys, tmp_path):
    """The demo's shards and teacher are made by the run itself: not missing."""
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    shutil.copytree(ROOT / "recipes", tmp_path / "recipes")
    monkeypatch.chdir(tmp_path)  # the recipes, and no data/demo
    zero2 = str(ROOT / "ds_configs" / "zero2.json")
    assert main(["--ds_config", zero2, "--recipe", str(ROOT / "recipes" / "demo.yaml"),
                 "--dry-run"]) == 0  # fmt: skip
    checks = capsys.readouterr().out.split("# pre-flight\n", 1)[1].splitlines()
    lines = by_name(checks)
    assert lines["teacher"] == (
        "ok    teacher: data/demo/teacher: made first by recipes/demo_teacher.yaml"
    )
    assert lines["shards"] == "ok    shards: data/demo: the demo corpus, built on first use"
    assert not Path("data").exists()
