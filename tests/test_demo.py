"""The embedded demo corpus builds offline through the pipeline's own commands, once.

.venv/bin/python -m pytest tests/test_demo.py -q
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from data_pipeline.demo.build import DEMO_MAX_LEN, NER_DIR, build_demo
from data_pipeline.demo.ner import DATASETS, SIZES
from data_pipeline.errors import UserError
from data_pipeline.shards.manifest import Manifest, load_tokenizer, tokenizer_info


def test_demo_builds_once_and_is_consistent(tmp_path):
    out = tmp_path / "demo"
    shards = build_demo(out, articles=300, files=3, workers=1, log=lambda *_: None)
    manifest = Manifest.load(shards)
    assert manifest.max_len == DEMO_MAX_LEN and manifest.mode == "truncate"
    assert manifest.splits["train"].samples > 0 and manifest.splits["eval"].samples > 0
    # The shards record the demo tokenizer, so the loader's tokenizer check accepts them.
    manifest.check_tokenizer(tokenizer_info(load_tokenizer(str(out / "tokenizer"))))
    report = json.loads((out / "records" / "report.json").read_text())
    assert report["deletions"] > 0 and report["duplicates"] > 0  # the update file did its work

    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    messages: list[str] = []
    build_demo(out, articles=300, files=3, workers=1, log=messages.append)
    assert messages == []  # complete: nothing is redone, nothing said
    changed = [p for p, t in stamps.items() if p.exists() and p.stat().st_mtime_ns != t]
    assert not [p for p in changed if p.suffix in (".tar", ".gz") or p.name == "tokenizer.json"]


def test_a_changed_generator_rebuilds_the_demo_and_says_so(tmp_path, monkeypatch):
    from data_pipeline.demo import build as demo

    out = tmp_path / "demo"
    build_demo(out, articles=200, files=2, workers=1, log=lambda *_: None)
    kb = json.loads((out / "knowledge.json").read_text())
    monkeypatch.setattr(demo, "generator_digest", lambda: "another generator")
    messages: list[str] = []
    build_demo(out, articles=200, files=2, workers=1, log=messages.append)
    assert messages[0].startswith("demo: generator changed since") and "rebuilding" in messages[0]
    assert any("generating" in m for m in messages)
    assert json.loads((out / "knowledge.json").read_text()) == kb  # same generator output
    # once rebuilt, it is current again: nothing is redone
    messages.clear()
    build_demo(out, articles=200, files=2, workers=1, log=messages.append)
    assert messages == []


def test_the_demo_corpus_is_the_same_on_every_build(tmp_path):
    """Tokenizer, shards and knowledge base are functions of the settings alone."""
    for name in ("a", "b"):
        build_demo(tmp_path / name, articles=200, files=2, workers=1, log=lambda *_: None)
    ner = [f"datasets/NER/{d}/{f}.tsv" for d in DATASETS.values() for f in SIZES]
    for rel in ("tokenizer/tokenizer.json", "knowledge.json", "xml/mentions.jsonl.gz", *ner):
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel
    shards = sorted(p.name for p in (tmp_path / "a" / "shards").glob("*.tar"))
    assert shards
    for name in shards:
        a, b = (tmp_path / d / "shards" / name for d in ("a", "b"))
        assert a.read_bytes() == b.read_bytes(), name


def test_a_build_that_stopped_before_its_last_step_completes_the_ner_datasets(tmp_path):
    """knowledge.json is written last: without it the NER datasets are written again."""
    out = tmp_path / "demo"
    build_demo(out, articles=200, files=2, workers=1, log=lambda *_: None)
    test = out / NER_DIR / "NER" / "BC2GM" / "test.tsv"
    whole = test.read_bytes()
    test.write_bytes(whole[: len(whole) // 2])  # as a crash mid-write of a non-atomic writer
    (out / "knowledge.json").unlink()
    messages: list[str] = []
    build_demo(out, articles=200, files=2, workers=1, log=messages.append)
    assert any("NER datasets" in m for m in messages)
    assert test.read_bytes() == whole and (out / "knowledge.json").is_file()


class _OneRank:
    is_main = True

    def barrier(self) -> None:
        pass


@pytest.mark.parametrize(
    ("recipe", "overrides", "built_in"),
    [
        ("recipes/demo.yaml", [], "data/demo"),
        ("recipes/demo_teacher.yaml", [], "data/demo"),
        # the demo's path alone builds nothing: only the key does
        ("recipes/demo.yaml", ["data.build_demo=false"], None),
        ("recipes/demo.yaml", ["data.train_shards=elsewhere/shards"], "elsewhere"),
    ],
)
def test_the_demo_is_built_where_a_recipe_says_so(monkeypatch, recipe, overrides, built_in):
    """`data.build_demo: true` (the demo recipes) makes data.train_shards, DIR/shards, the demo's:
    built in DIR on first use. Without it no recipe builds anything, whatever its paths."""
    from data_pipeline.demo import build as demo
    from trainer.config.recipe import ROOT, load_config
    from trainer.train.inputs import ensure_demo

    built: list[Path] = []
    monkeypatch.setattr(demo, "build_demo", lambda root, log, tokenizer: built.append(Path(root)))
    ensure_demo(load_config(ROOT / recipe, overrides), _OneRank())
    assert built == ([Path(built_in)] if built_in else [])


def test_building_the_demo_into_a_path_that_is_not_a_shard_directory_is_refused(monkeypatch):
    from data_pipeline.demo import build as demo
    from trainer.config.recipe import ROOT, load_config
    from trainer.train.inputs import ensure_demo

    monkeypatch.setattr(demo, "build_demo", lambda root, log, tokenizer: pytest.fail("built"))
    cfg = load_config(ROOT / "recipes/demo.yaml", ["data.train_shards=data/mine"])
    with pytest.raises(UserError, match=r"data.train_shards='data/mine': .* expected DIR/shards"):
        ensure_demo(cfg, _OneRank())
