"""The demo with a byte-level BPE tokenizer (`data.build_demo: bpe`, the ModernBERT demo's).

    .venv/bin/python -m pytest tests/test_demo_bpe.py -q

A tiny BPE demo (a few hundred citations) is built once per module: its entity words are single
tokens in both their forms ("ĠREB9" after a space, "REB9" at the start of a text), a vocabulary
that splits one is refused, the BPE and WordPiece demos share no file and refuse each other's
directory, whole-word masking masks whole words of it, and the ModernBERT demo's recipes run their
whole chain on it at tiny settings (the teacher built by teacher.build, the students distilled,
entity accuracy against the ceiling in the summary).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from multirank import run_distributed
from trainer_setup import ds_config, write_recipe

from data_pipeline.demo import bpe
from data_pipeline.demo.build import TOKENIZERS, build_demo
from data_pipeline.demo.knowledge import KnowledgeBase, entity_token_ids, word_tokens
from data_pipeline.errors import UserError
from data_pipeline.masking import continuation_table, mask_tokens
from data_pipeline.shards.manifest import Manifest, load_tokenizer, tokenizer_info
from trainer.config.recipe import ROOT, load_config

WORDS = KnowledgeBase.generate(2023).words  # the demo's seed


def _quiet(*_) -> None:
    pass


@pytest.fixture(scope="module")
def bpe_demo(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bpe") / "demo-bpe"
    build_demo(out, articles=200, files=2, workers=1, log=_quiet, tokenizer="bpe")
    return out


def test_every_entity_word_is_one_token_of_the_bpe_demo(bpe_demo):
    tok = load_tokenizer(str(bpe_demo / "tokenizer"))
    forms = {w: word_tokens(tok, w) for w in WORDS}
    # both spellings of a byte-level BPE word, each one token: after a space and at the start
    assert all(f == (w, f"\u0120{w}") for w, f in forms.items()), forms
    ids = entity_token_ids(tok, WORDS, "test")
    assert len(ids) == 2 * len(WORDS) and set(ids.values()) == set(WORDS)
    # RoBERTa's special tokens and template; the shards record them
    assert [tok.convert_ids_to_tokens(i) for i in range(5)] == list(bpe.SPECIAL_TOKENS)
    gene = WORDS[0]
    assert tok(f"{gene} binds it")["input_ids"][0] == 0
    assert tok(f"{gene} binds it")["input_ids"][-1] == 2
    assert tok.tokenize(f"{gene} binds it")[0] == gene
    info = Manifest.load(bpe_demo / "shards").tokenizer
    assert (info.cls_id, info.sep_id, info.pad_id, info.mask_id) == (0, 2, 1, 4)
    # the records say what the directory holds
    assert json.loads((bpe_demo / ".demo.json").read_text())["tokenizer"] == "bpe"
    knowledge = json.loads((bpe_demo / "knowledge.json").read_text())
    assert knowledge["tokenizer"] == "bpe"
    assert knowledge["ceiling"]["entity_positions"] > 0


def test_the_bpe_shards_hold_every_entity_mention_as_one_token(bpe_demo):
    """split_ceiling matched every eval mention to one entity token (it raises otherwise); the
    shards themselves hold entity tokens at the rate the mentions say."""
    import webdataset as wds

    tok = load_tokenizer(str(bpe_demo / "tokenizer"))
    ids = set(entity_token_ids(tok, WORDS, "test"))
    found = 0
    for shard in sorted((bpe_demo / "shards").glob("eval-*.tar")):
        for sample in wds.WebDataset(str(shard), shardshuffle=False).decode():
            found += sum(int(t) in ids for t in sample["input_ids.npy"])
    ceiling = json.loads((bpe_demo / "knowledge.json").read_text())["ceiling"]
    assert found == ceiling["entity_positions"]


def test_a_vocabulary_that_splits_an_entity_word_is_refused(tmp_path, monkeypatch):
    """Without the entity words counted as frequent, a small vocabulary of a small corpus has no
    room for them: the build stops, in one line naming the words."""
    monkeypatch.setattr(bpe, "WHOLE_WORD_COUNT", 0)
    texts = ["the cells were counted in the liver"] * 50
    with pytest.raises(UserError, match=r"entity words are not one token .* \['REB9'"):
        bpe.train_byte_level_bpe(texts, tmp_path / "tok", vocab_size=300, whole=["REB9"])
    assert not (tmp_path / "tok").exists()


def test_the_trained_tokenizer_keeps_the_entity_words_whole_in_a_small_corpus(tmp_path):
    texts = ["the cells were counted in the liver"] * 50
    tok = bpe.train_byte_level_bpe(texts, tmp_path / "tok", vocab_size=300, whole=["REB9"])
    assert word_tokens(tok, "REB9") == ("REB9", "\u0120REB9")
    assert word_tokens(load_tokenizer(str(tmp_path / "tok")), "REB9") == ("REB9", "\u0120REB9")


def test_the_bpe_and_wordpiece_demos_share_no_file_and_refuse_each_other(bpe_demo, tmp_path):
    wordpiece = tmp_path / "demo"
    build_demo(wordpiece, articles=200, files=2, workers=1, log=_quiet)
    assert json.loads((wordpiece / ".demo.json").read_text())["tokenizer"] == "wordpiece"
    assert json.loads((wordpiece / "knowledge.json").read_text())["tokenizer"] == "wordpiece"
    a, b = (Manifest.load(d / "shards").tokenizer.vocab_hash for d in (wordpiece, bpe_demo))
    assert a != b
    # the same corpus, other files: nothing under one is the other's
    files = [{p.resolve() for p in d.rglob("*")} for d in (wordpiece, bpe_demo)]
    assert files[0] and files[1] and not files[0] & files[1]
    stamps = {p: p.stat().st_mtime_ns for p in wordpiece.rglob("*") if p.is_file()}
    with pytest.raises(UserError, match=r"built with the wordpiece tokenizer; a bpe demo"):
        build_demo(wordpiece, articles=200, files=2, workers=1, log=_quiet, tokenizer="bpe")
    with pytest.raises(UserError, match=r"built with the bpe tokenizer; a wordpiece demo"):
        build_demo(bpe_demo, articles=200, files=2, workers=1, log=_quiet)
    assert {p: p.stat().st_mtime_ns for p in wordpiece.rglob("*") if p.is_file()} == stamps


def test_a_demo_of_before_the_kinds_is_a_wordpiece_one(tmp_path):
    """A demo built before its record named the tokenizer is WordPiece: refused for bpe."""
    out = tmp_path / "demo"
    build_demo(out, articles=200, files=2, workers=1, log=_quiet)
    (out / ".demo.json").write_text(json.dumps({"written_by": "python -m data_pipeline demo"}))
    with pytest.raises(UserError, match="built with the wordpiece tokenizer"):
        build_demo(out, articles=200, files=2, workers=1, log=_quiet, tokenizer="bpe")
    messages: list[str] = []
    build_demo(out, articles=200, files=2, workers=1, log=messages.append, tokenizer=True)
    assert messages == []  # complete as it is


def test_whole_word_masking_of_the_bpe_demo_masks_whole_words(bpe_demo):
    """A word is a token with its space marker plus the tokens after it without one: masking
    selects all of a word's tokens or none, and words of several tokens are selected too."""
    tok = load_tokenizer(str(bpe_demo / "tokenizer"))
    info = tokenizer_info(tok)
    table = continuation_table(tok)
    texts = [
        "Co-immunoprecipitation showed that REB9 interacts with unpublishable hyperlipidaemia "
        "in 3463 patients (p < 0.02).",
        "Velmaritis is caused by defects in REB9; thermostabilised micro-RNAs were abundant.",
    ] * 8
    rows = [tok(t)["input_ids"] for t in texts]
    width = max(map(len, rows))
    ids = torch.full((len(rows), width), info.pad_id)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r)
    special = torch.isin(ids, torch.tensor(info.special_ids))
    _, labels = mask_tokens(
        ids,
        special,
        vocab_size=len(tok),
        mask_id=info.mask_id,
        mask_prob=0.3,
        seeds=list(range(len(rows))),
        is_continuation=table,
    )
    selected = labels != -100
    several = 0
    for i, row in enumerate(rows):
        tokens = tok.convert_ids_to_tokens(row)
        words, current = [], []
        for j, t in enumerate(tokens):
            if row[j] in info.special_ids:
                continue
            if current and t.startswith("\u0120"):
                words.append(current)
                current = []
            current.append(j)
        words.append(current)
        assert any(len(w) > 1 for w in words)
        for w in words:
            picked = {bool(selected[i, j]) for j in w}
            assert len(picked) == 1, [tokens[j] for j in w]
            several += len(w) > 1 and picked == {True}
    assert several > 0


@pytest.mark.parametrize(
    ("recipe", "kind"),
    [
        ("recipes/demo.yaml", True),
        ("recipes/demo_teacher.yaml", True),
        ("recipes/demo_modernbert.yaml", "bpe"),
        ("recipes/demo_modernbert_teacher.yaml", "bpe"),
    ],
)
def test_the_demo_recipes_name_their_tokenizer_kind(recipe, kind):
    """`build_demo: true` (recipes written before the kinds) stays valid and means wordpiece;
    the ModernBERT demo's recipes build the BPE demo in a directory of their own."""
    cfg = load_config(ROOT / recipe, [])
    assert cfg.data.build_demo == kind
    assert ("demo-bpe" in str(cfg.data.train_shards)) == (kind == "bpe")


@pytest.mark.parametrize("value", ["true", "false", "wordpiece", "bpe"])
def test_build_demo_takes_a_bool_or_a_kind(value):
    cfg = load_config(ROOT / "recipes/demo.yaml", [f"data.build_demo={value}"])
    assert cfg.data.build_demo == yaml.safe_load(value)
    assert set(TOKENIZERS) == {"wordpiece", "bpe"}


@pytest.mark.parametrize("value", ["1", "BPE", "sentencepiece"])
def test_build_demo_refuses_other_values_in_one_line(value):
    with pytest.raises(UserError, match=r"data.build_demo=.*: expected true or false or one of"):
        load_config(ROOT / "recipes/demo.yaml", [f"data.build_demo={value}"])


class _OneRank:
    is_main = True

    def barrier(self) -> None:
        pass


@pytest.mark.parametrize(
    ("recipe", "kind"), [("recipes/demo.yaml", True), ("recipes/demo_modernbert.yaml", "bpe")]
)
def test_ensure_demo_builds_the_kind_the_recipe_names(monkeypatch, recipe, kind):
    from data_pipeline.demo import build as demo
    from trainer.train.inputs import ensure_demo

    built: list = []
    monkeypatch.setattr(
        demo, "build_demo", lambda root, log, tokenizer: built.append((Path(root), tokenizer))
    )
    ensure_demo(load_config(ROOT / recipe, []), _OneRank())
    assert built == [(Path(str(load_config(ROOT / recipe, []).data.train_shards)).parent, kind)]


# ---------------------------------------------------------------- the whole chain, tiny


def _run(rank: int, world: int, argv: list[str]) -> int:
    from trainer.main import main

    return main(argv)


def _tiny(recipe: str, demo: Path, runs: Path) -> dict:
    """A demo recipe with its paths moved under `demo` and `runs`, its steps cut."""
    data = yaml.safe_load((ROOT / recipe).read_text())
    data["run"]["output_dir"] = str(runs)
    for key in ("train_shards", "eval_shards"):
        data["data"][key] = str(demo / "shards")
    data["data"]["entities"] = str(demo / "knowledge.json")
    data["train"].update(max_steps=6, log_every=3, eval_every=100, save_every=100, eval_batches=2)
    for student in data["students"]:
        student["optimizer"].update(max_steps=6, warmup_steps=2)
    return data


@pytest.mark.slow
@pytest.mark.usefixtures("one_thread")
def test_the_modernbert_demo_runs_its_chain_on_the_bpe_demo(tmp_path):
    """The ModernBERT demo's recipes, paths moved and steps cut, on the BPE demo at its size
    (built here: the rank process, a daemon, cannot start extract's workers; the run's
    data.build_demo finds it complete): the run trains and exports the teacher (teacher.build),
    distils the students beside their twins and reports entity accuracy against the ceiling."""
    demo_dir, runs = tmp_path / "demo-bpe", tmp_path / "runs"
    build_demo(demo_dir, workers=1, log=_quiet, tokenizer="bpe")
    stamps = {p: p.stat().st_mtime_ns for p in demo_dir.rglob("*") if p.is_file()}
    teacher = _tiny("recipes/demo_modernbert_teacher.yaml", demo_dir, runs)
    teacher_recipe = write_recipe(tmp_path / "teacher.yaml", teacher)
    demo = _tiny("recipes/demo_modernbert.yaml", demo_dir, runs)
    demo["teacher"] = {"path": str(tmp_path / "teacher"), "build": str(teacher_recipe)}
    recipe = write_recipe(tmp_path / "demo.yaml", demo)
    ds = ds_config(tmp_path / "ds.json", stage=2, bf16=False, micro=8)
    argv = ["--ds_config", str(ds), "--recipe", str(recipe)]
    assert run_distributed(_run, 1, argv, timeout=900) == [0]

    assert {p: p.stat().st_mtime_ns for p in demo_dir.rglob("*") if p.is_file()} == stamps
    built = json.loads((tmp_path / "teacher" / "BUILT.json").read_text())
    assert built["recipe"] == str(teacher_recipe)
    shards = Manifest.load(demo_dir / "shards").tokenizer
    assert tokenizer_info(load_tokenizer(str(tmp_path / "teacher"))).vocab_hash == shards.vocab_hash
    summary = json.loads((runs / "demo-modernbert" / "summary.json").read_text())
    ceiling = json.loads((demo_dir / "knowledge.json").read_text())["ceiling"]["entity_acc"]
    assert summary["ceiling_entity_acc"] == pytest.approx(ceiling)
    models = summary["models"]
    assert 0.0 <= models["teacher"]["entity_acc_to_ceiling"] <= 1.0
    students = ("DistilBioBERT", "CompactBioBERT", "TinyBioBERT")
    assert set(models) == {"teacher", *students, *(f"{s}-MLM" for s in students)}
    for name in students:
        assert 0.0 <= models[name]["entity_acc"] <= 1.0
        assert models[name]["acc_to_teacher"] >= 0.0
