"""ONNX files of an export (`python -m trainer.export EXPORT --onnx --int8`): the fp32 graph gives
PyTorch's logits, the int8 one loads and its agreement is recorded, EXPORT.json vouches for both
(a flipped byte is caught), and only an export of this trainer is taken. Tiny masked LMs (2
layers, hidden 64) of each family the exporter must not care about.

    .venv/bin/python -m pytest -q tests/test_onnx.py
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from corrupt import flip_byte
from transformers import AutoTokenizer, BertConfig, BertForMaskedLM

from data_pipeline.demo.synth import train_wordpiece
from trainer.export.hf_export import EXPORT_RECORD, main, verify_export, write_export
from trainer.export.model_card import UNSET_ID

pytest.importorskip("onnxruntime")  # NOTE: the dev extra installs it; CI runs these
pytest.importorskip("onnxscript")
from trainer.export import onnx as onnx_export  # noqa: E402 - after the skips
from trainer.export.onnx import (  # noqa: E402 - after the skips
    ATOL,
    CARD_HEADING,
    INT8_FILE,
    ONNX_FILE,
    OnnxCheckFailed,
    add_onnx,
    session,
    token_batches,
    torch_logits,
)

VOCAB = 120
TINY = {
    "vocab_size": VOCAB,
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "intermediate_size": 128,
    "max_position_embeddings": 64,
}
CARD = "---\nlicense: other\n---\n\n# S\n\n## Use\n\n```python\nfill = 1\n```\n"


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    out = tmp_path_factory.mktemp("tokenizer")
    texts = ["Aspirin inhibits prostaglandin synthesis in platelets of patients."] * 40
    train_wordpiece(texts, out, vocab_size=VOCAB)
    return AutoTokenizer.from_pretrained(out)


@pytest.fixture(scope="module")
def exported(tmp_path_factory, tokenizer) -> tuple[Path, dict, BertForMaskedLM]:
    """One tiny BERT export with both ONNX files, made once through the command line."""
    torch.manual_seed(0)
    model = BertForMaskedLM(BertConfig(**TINY)).eval()
    out = write_export(model, tokenizer, CARD, tmp_path_factory.mktemp("runs") / "S")
    assert main([str(out), "--onnx", "--int8"]) == 0
    return out, json.loads((out / EXPORT_RECORD).read_text()), model


def test_onnx_logits_equal_pytorch_on_batches_it_was_not_checked_on(exported):
    out, record, model = exported
    sess = session(out / ONNX_FILE, threads=1)
    assert [i.name for i in sess.get_inputs()] == ["input_ids", "attention_mask"]
    assert [o.name for o in sess.get_outputs()] == ["logits"]
    shapes = [(1, 1), (3, 17), (5, 62)]  # batch and sequence are dynamic
    for feed in token_batches(model.config, shapes, seed=9, specials=set(range(5))):
        got, want = sess.run(["logits"], feed)[0], torch_logits(model, feed)
        keep = feed["attention_mask"].astype(bool)
        assert got.shape == (*feed["input_ids"].shape, VOCAB)
        np.testing.assert_allclose(got[keep], want[keep], rtol=0, atol=ATOL)
    assert record["onnx"]["max_abs_diff"] <= ATOL


def test_int8_file_loads_and_its_agreement_is_recorded(exported, capsys):
    out, record, model = exported
    q = session(out / INT8_FILE, threads=1)
    feed = token_batches(model.config, [(2, 20)], seed=4, specials=set(range(5)))[0]
    assert q.run(["logits"], feed)[0].shape == (2, 20, VOCAB)
    entry = record["onnx"]
    assert 0.0 <= entry["int8_top1_agreement"] <= 1.0 and entry["int8_agreement_positions"] > 0
    assert entry["int8_from"] == "fused"  # onnxruntime's fusions kept PyTorch's logits
    assert not (out / ".model.int8.fused.onnx").exists()
    # int8 weights: a quarter of the fp32 matrices, plus the fp32 embeddings it leaves alone
    assert (out / INT8_FILE).stat().st_size < (out / ONNX_FILE).stat().st_size
    card = (out / "README.md").read_text()
    assert CARD_HEADING in card and card.index(CARD_HEADING) < card.index("## Use")
    assert f"`{INT8_FILE}`" in card and f"{entry['int8_top1_agreement']:.1%}" in card
    assert entry["latency_ms"]["threads"] >= 1 and entry["latency_ms"]["ONNX Runtime int8"] > 0


def test_export_record_lists_the_onnx_files_and_a_flipped_byte_is_caught(exported, tmp_path):
    out, record, _ = exported
    for name in (ONNX_FILE, INT8_FILE, "README.md"):
        path = out / name
        assert record["files"][name]["bytes"] == path.stat().st_size
    assert verify_export(out) is None
    copy = tmp_path / "S"
    copy.mkdir()
    for p in out.iterdir():
        copy.joinpath(p.name).write_bytes(p.read_bytes())
    flip_byte(copy / ONNX_FILE)
    assert verify_export(copy) == (
        f"{ONNX_FILE}: its SHA-256 differs from the one in {EXPORT_RECORD} (corrupted)"
    )
    # what consumes the export refuses it: a second --onnx, a push
    assert main([str(copy), "--onnx"]) == 2
    assert main([str(copy), "--push-to-hub", "me/S"]) == 2


def test_a_second_onnx_run_replaces_the_section_and_drops_a_stale_int8(exported, tmp_path):
    out, _, _ = exported
    copy = tmp_path / "S"
    copy.mkdir()
    for p in out.iterdir():
        copy.joinpath(p.name).write_bytes(p.read_bytes())
    entry = add_onnx(copy, int8=False, repeats=2, log=lambda _: None)
    assert "int8_top1_agreement" not in entry and not (copy / INT8_FILE).exists()
    record = json.loads((copy / EXPORT_RECORD).read_text())
    assert ONNX_FILE in record["files"] and INT8_FILE not in record["files"]
    assert (copy / "README.md").read_text().count(CARD_HEADING) == 1
    assert verify_export(copy) is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["S"]  # no temporary left beside it


def test_a_graph_that_does_not_give_pytorchs_logits_is_never_written(
    exported, tmp_path, monkeypatch
):
    out, _, _ = exported
    copy = tmp_path / "S"
    copy.mkdir()
    for p in out.iterdir():
        copy.joinpath(p.name).write_bytes(p.read_bytes())
    before = {p.name: p.read_bytes() for p in copy.iterdir()}
    real = onnx_export.export_fp32

    def off_by_a_little(model, path):  # what an exporter bug would do, 10x the tolerance
        with torch.no_grad():
            model.cls.predictions.decoder.bias.add_(10 * ATOL)
        try:
            real(model, path)
        finally:
            with torch.no_grad():
                model.cls.predictions.decoder.bias.sub_(10 * ATOL)

    monkeypatch.setattr(onnx_export, "export_fp32", off_by_a_little)
    with pytest.raises(OnnxCheckFailed, match="differ from PyTorch.s"):
        add_onnx(copy, int8=True, repeats=1, log=lambda _: None)
    assert {p.name: p.read_bytes() for p in copy.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["S"]


@pytest.mark.parametrize(
    "make, says",
    [
        (lambda d: (d / "notes.txt").write_text("mine"), "no COMPLETE.json"),
        (lambda d: (d / "config.json").write_text("{}"), f"no {EXPORT_RECORD}"),
        (lambda d: None, "no COMPLETE.json"),
    ],
    ids=["user-files", "hf-dir-without-record", "empty"],
)
def test_onnx_on_a_directory_that_is_not_an_export_is_refused_in_one_line(
    tmp_path, capsys, make, says
):
    target = tmp_path / "d"
    target.mkdir()
    make(target)
    before = sorted(p.name for p in target.iterdir())
    assert main([str(target), "--onnx"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {target}") and says in err and err.count("\n") == 1
    assert sorted(p.name for p in target.iterdir()) == before


@pytest.fixture(scope="module")
def heldout_shards(tmp_path_factory, tokenizer) -> Path:
    """Shards of the export's vocabulary with an eval split of 20 sequences."""
    from data_pipeline.shards.writer import run_shard

    root = tmp_path_factory.mktemp("heldout")
    tokenizer.save_pretrained(root / "tokenizer")
    words = "aspirin inhibits prostaglandin synthesis in platelets of patients".split()
    rng = np.random.default_rng(0)
    lines = [" ".join(rng.choice(words, size=12)).capitalize() + "." for _ in range(40)]
    (root / "docs.txt").write_text("\n".join(lines) + "\n")
    run_shard(
        [str(root / "docs.txt")], str(root / "tokenizer"), str(root / "shards"),
        max_len=32, eval_fraction=0.5, samples_per_shard=8, progress=False,
    )  # fmt: skip
    return root / "shards"


def test_heldout_accuracy_of_each_onnx_runtime_equals_an_independent_count(
    exported, heldout_shards, tmp_path
):
    """--eval-shards: masked accuracy in ONNX Runtime fp32 and int8, and int8's agreement, on the
    first N held-out sequences, each equal to a count made here over the same masked batches.
    (A random tiny model's logits nearly tie: PyTorch's top-1, or the same file's at another
    padded length, can differ within the 1e-4 check, so the count runs each file on the same
    batches.)"""
    from data_pipeline.eval_batches import EvalBatches

    out, _, _ = exported
    copy = tmp_path / "S"
    copy.mkdir()
    for p in out.iterdir():
        copy.joinpath(p.name).write_bytes(p.read_bytes())
    n = 13  # not a multiple of the held-out batch: the last batch is cut
    assert main([str(copy), "--onnx", "--int8", "--eval-shards", str(heldout_shards),
                 "--eval-sequences", str(n)]) == 0  # fmt: skip
    held = json.loads((copy / EXPORT_RECORD).read_text())["onnx"]["heldout"]

    fp32, q = session(copy / ONNX_FILE, threads=1), session(copy / INT8_FILE, threads=1)
    right = {"fp32": 0, "int8": 0}
    same = positions = seen = 0
    for batch in EvalBatches(heldout_shards, onnx_export.HELDOUT_BATCH):
        take = min(n - seen, len(batch["input_ids"]))
        if take <= 0:
            break
        seen += take
        feed = {k: batch[k][:take].numpy() for k in ("input_ids", "attention_mask")}
        labels = batch["labels"][:take].numpy()
        rows = labels != -100
        a = fp32.run(["logits"], feed)[0][rows].argmax(-1)
        b = q.run(["logits"], feed)[0][rows].argmax(-1)
        right["fp32"] += int((a == labels[rows]).sum())
        right["int8"] += int((b == labels[rows]).sum())
        same += int((a == b).sum())
        positions += int(rows.sum())
    assert held["sequences"] == n and held["masked_positions"] == positions > 0
    assert held["masked_acc"]["ONNX Runtime fp32"] == right["fp32"] / positions
    assert held["masked_acc"]["ONNX Runtime int8"] == right["int8"] / positions
    assert held["int8_top1_agreement"] == same / positions
    assert f"{positions:,} masked positions of held-out text" in (copy / "README.md").read_text()


def test_heldout_shards_of_another_vocabulary_are_refused_naming_both(
    exported, tiny_shards, capsys
):
    out, _, _ = exported
    before = (out / EXPORT_RECORD).read_bytes()
    assert main([str(out), "--onnx", "--eval-shards", str(tiny_shards)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "shards were made with tokenizer" in err[0], err
    assert (out / EXPORT_RECORD).read_bytes() == before  # nothing changed


@pytest.mark.parametrize(
    "argv",
    [["--eval-shards", "x"], ["--onnx", "--eval-sequences", "5"],
     ["--onnx", "--eval-shards", "x", "--eval-sequences", "0"]],
)  # fmt: skip
def test_heldout_options_without_what_they_need_are_usage_errors(tmp_path, argv):
    with pytest.raises(SystemExit) as e:
        main([str(tmp_path), *argv])
    assert e.value.code == 2


def test_int8_without_onnx_is_a_usage_error(tmp_path):
    with pytest.raises(SystemExit) as e:
        main([str(tmp_path), "--int8"])
    assert e.value.code == 2


@pytest.mark.slow
@pytest.mark.parametrize("family", ["roberta", "modernbert"])
def test_other_families_export_through_the_same_code(family, tokenizer, tmp_path):
    """The exporter reads AutoModelForMaskedLM only: RoBERTa and ModernBERT masked LMs (sliding
    window attention on a sequence longer than the window) export and match PyTorch."""
    from transformers import AutoModelForMaskedLM, ModernBertConfig, RobertaConfig

    specials = {"pad_token_id": 0, "bos_token_id": 2, "eos_token_id": 3}
    if family == "roberta":
        config = RobertaConfig(**{**TINY, "max_position_embeddings": 66}, **specials)
    else:
        config = ModernBertConfig(
            **TINY, **specials, cls_token_id=2, sep_token_id=3, local_attention=16
        )
    torch.manual_seed(0)
    model = AutoModelForMaskedLM.from_config(config).eval()
    out = write_export(model, tokenizer, CARD, tmp_path / "S")
    entry = add_onnx(out, int8=True, repeats=2, log=lambda _: None)
    assert entry["max_abs_diff"] <= ATOL
    # onnxruntime 1.32's fusions fail on ModernBERT's graph (IndexError): int8 from model.onnx
    assert entry["int8_from"] in ("fused", ONNX_FILE)
    assert not (out / ".model.int8.fused.onnx").exists()
    sess = session(out / ONNX_FILE, threads=1)
    for feed in token_batches(config, [(2, 40)], seed=5, specials=set(range(5))):
        keep = feed["attention_mask"].astype(bool)
        np.testing.assert_allclose(
            sess.run(["logits"], feed)[0][keep], torch_logits(model, feed)[keep], atol=ATOL, rtol=0
        )


@pytest.mark.parametrize("fusion", ["changes the logits", "raises"])
def test_int8_is_quantized_from_model_onnx_when_the_fused_graph_is_not_faithful(
    exported, tmp_path, monkeypatch, fusion
):
    """A fused graph whose logits are not PyTorch's (to 1e-4), or an optimizer that fails, leaves
    int8 to model.onnx as it is: recorded, no temporary file left, the export verifies."""
    import onnx
    from onnx import numpy_helper

    def fuse(src, dst, config):
        if fusion == "raises":
            raise IndexError("list index out of range")
        graph = onnx.load(str(src))
        weight = max(graph.graph.initializer, key=lambda t: np.prod(t.dims))
        value = numpy_helper.to_array(weight)
        noise = np.random.default_rng(0).normal(size=value.shape).astype(value.dtype)
        weight.CopyFrom(numpy_helper.from_array(value + noise, weight.name))
        onnx.save(graph, str(dst))

    monkeypatch.setattr(onnx_export, "fuse_for_onnxruntime", fuse)
    out, _, _ = exported
    copy = tmp_path / "S"
    copy.mkdir()
    for p in out.iterdir():
        copy.joinpath(p.name).write_bytes(p.read_bytes())
    entry = add_onnx(copy, int8=True, repeats=1, log=lambda _: None)
    assert entry["int8_from"] == ONNX_FILE
    assert not (copy / ".model.int8.fused.onnx").exists() and verify_export(copy) is None
    assert entry["int8_top1_agreement"] > 0.5  # quantized from the model, not the perturbed graph


def test_the_cards_onnx_snippet_runs_against_the_export(exported):
    out, _, _ = exported
    card = (out / "README.md").read_text()
    section = card[card.index(CARD_HEADING) : card.index("## Use")]
    code = section.split("```python\n")[1].split("```")[0].replace(UNSET_ID, str(out))
    scope: dict = {}
    exec(code, scope)
    assert scope["logits"].shape[-1] == VOCAB


def test_onnx_from_a_checkpoint_exports_then_adds_the_files(tokenizer, tmp_path, monkeypatch):
    """`python -m trainer.export CHECKPOINT --onnx`: a checkpoint made by hand as in
    tests/test_export.py (skeleton, marker, the weights zero_to_fp32 would return)."""
    import deepspeed.utils.zero_to_fp32 as zero_to_fp32

    from trainer.export.hf_export import write_skeleton

    torch.manual_seed(1)
    model = BertForMaskedLM(BertConfig(**TINY)).eval()
    ckpt = tmp_path / "checkpoints" / "step-00000001"
    write_skeleton(ckpt / "S" / "hf", model, tokenizer, CARD, None)
    (ckpt / "COMPLETE.json").write_text(json.dumps({"step": 1}))
    state = {f"mlm.{k}": v.clone() for k, v in model.state_dict().items()}
    monkeypatch.setattr(zero_to_fp32, "get_fp32_state_dict_from_zero_checkpoint", lambda d: state)
    assert main([str(ckpt), "--onnx"]) == 0
    out = tmp_path / "export-step-00000001" / "S"
    record = json.loads((out / EXPORT_RECORD).read_text())
    assert ONNX_FILE in record["files"] and INT8_FILE not in record["files"]
    assert verify_export(out) is None
    feed = token_batches(model.config, [(2, 30)], seed=6, specials=set(range(5)))[0]
    keep = feed["attention_mask"].astype(bool)
    got = session(out / ONNX_FILE, threads=1).run(["logits"], feed)[0]
    np.testing.assert_allclose(got[keep], torch_logits(model, feed)[keep], atol=ATOL, rtol=0)


def test_export_onnx_without_the_onnx_extra_is_refused_before_training(monkeypatch):
    """LiveExports is built with the trainer, before the first step: a missing package is one
    line naming the key, not a failure days later at the first export."""
    import sys
    from types import SimpleNamespace

    from data_pipeline.errors import UserError
    from trainer.export.hf_export import LiveExports

    monkeypatch.setitem(sys.modules, "onnxscript", None)  # `import onnxscript` raises ImportError
    cfg = SimpleNamespace(export=SimpleNamespace(onnx="int8"))
    with pytest.raises(UserError, match=r"^export.onnx=int8 needs onnxscript: pip install"):
        LiveExports(cfg, None, Path("."), None, ())
    LiveExports(SimpleNamespace(export=SimpleNamespace(onnx=None)), None, Path("."), None, ())


def run_one_rank(rank: int, world: int, argv: list[str], fail_check: bool) -> dict:
    """One rank of a run (`trainer.main.main`), with the ONNX check made to fail if asked."""
    import contextlib
    import io

    from trainer.main import main as train_main

    if fail_check:
        onnx_export.max_abs_diff = lambda *a: 10 * ATOL  # an exporter that changed the model
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        rc = train_main(argv)
    return {"rc": rc, "stderr": err.getvalue()}


@pytest.fixture(scope="module")
def run_recipe(tmp_path_factory, tiny_shards, tokenizer_dir):
    """A 2-step run of two tiny students (and their twins) with export.onnx=int8, and a
    DeepSpeed JSON: (recipe path, ds path, run directory)."""
    from trainer_setup import ds_config, recipe, write_recipe

    from data_pipeline.shards.manifest import Manifest

    root = tmp_path_factory.mktemp("onnx-run")
    vocab = Manifest.load(tiny_shards).tokenizer.vocab_size
    data = recipe(tiny_shards, root / "runs", vocab, name="onnx", steps=2)
    data["data"]["tokenizer"] = str(tokenizer_dir)
    data["students"] = [s for s in data["students"] if s["name"] != "CompactBioBERT"]
    data["train"] |= {"mlm_twins": True, "eval_batches": 1, "save_every": 2}
    data["export"] = {"onnx": "int8"}
    return root, write_recipe(root / "onnx.yaml", data), ds_config(root / "ds.json", bf16=False)


@pytest.mark.slow
def test_a_run_with_export_onnx_writes_checked_onnx_files_into_every_export(run_recipe):
    """export.onnx=int8: at the run's end every student's export holds model.onnx and
    model.int8.onnx, listed in EXPORT.json with their checks, and verifies; summary.json states
    their sizes beside the PyTorch latency."""
    from multirank import run_distributed

    root, recipe_path, ds = run_recipe
    argv = ["--ds_config", str(ds), "--recipe", str(recipe_path)]
    (result,) = run_distributed(run_one_rank, 1, argv, False)
    assert result["rc"] == 0, result["stderr"][-3000:]
    run_dir = root / "runs" / "onnx"
    names = ["DistilBioBERT", "DistilBioBERT-MLM", "TinyBioBERT", "TinyBioBERT-MLM"]
    assert sorted(p.name for p in (run_dir / "export").iterdir()) == sorted(names)
    summary = json.loads((run_dir / "summary.json").read_text())
    for name in names:
        out = run_dir / "export" / name
        record = json.loads((out / EXPORT_RECORD).read_text())
        assert {ONNX_FILE, INT8_FILE} <= set(record["files"]), name
        assert record["onnx"]["max_abs_diff"] <= ATOL
        assert 0 <= record["onnx"]["int8_top1_agreement"] <= 1
        assert verify_export(out) is None, name
        row = summary["models"][name]
        assert row["size_onnx_bytes"] == (out / ONNX_FILE).stat().st_size
        assert row["size_int8_onnx_bytes"] == (out / INT8_FILE).stat().st_size
        assert row["latency_speedup_vs_teacher"] > 0
        # held-out accuracy on what the run's held-out evaluation read (train.eval_batches: 1)
        held = record["onnx"]["heldout"]
        assert held["sequences"] == 8 and held["masked_positions"] > 0  # 1 rank x micro-batch 8
        acc = held["masked_acc"]
        assert row["int8_masked_acc"] == acc["ONNX Runtime int8"]
        change = 100 * (acc["ONNX Runtime int8"] - acc["ONNX Runtime fp32"])
        assert row["int8_acc_change"] == round(change, 3)
        assert row["int8_top1_agreement"] == held["int8_top1_agreement"]
    assert "latency_ms_median" in summary["models"]["teacher"]
    # TensorBoard's Text tab ends with the summary that has the deployment columns
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.util.tensor_util import make_ndarray

    acc = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"tensors": 0})
    acc.Reload()
    texts = [
        make_ndarray(e.tensor_proto).item().decode() for e in acc.Tensors("summary/text_summary")
    ]
    assert "speed-up" not in texts[0] and "speed-up" in texts[-1]


@pytest.mark.slow
def test_a_run_whose_onnx_check_fails_stops_with_one_line(run_recipe):
    """The 1e-4 check failing at a run's end: exit 2, one line naming the student and the file;
    the Hugging Face export is there and verifies, without ONNX files."""
    from multirank import run_distributed

    root, recipe_path, ds = run_recipe
    argv = ["--ds_config", str(ds), "--recipe", str(recipe_path), "run.name=onnx-bad"]
    (result,) = run_distributed(run_one_rank, 1, argv, True)
    assert result["rc"] == 2, result["stderr"][-3000:]
    errors = [line for line in result["stderr"].splitlines() if line.startswith("error")]
    assert len(errors) == 1 and "Traceback" not in result["stderr"]
    assert f"DistilBioBERT: {ONNX_FILE}: ONNX Runtime's logits differ" in errors[0]
    out = root / "runs" / "onnx-bad" / "export" / "DistilBioBERT"
    assert verify_export(out) is None and not (out / ONNX_FILE).exists()
