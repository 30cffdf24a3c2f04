"""Exports as a Hub user meets them: AutoModel finds a pooler, the tokenizer loads under
transformers 4.x, the card names the export's directory, `--push-to-hub` builds one commit of the
export (against a stand-in for HfApi: nothing is sent). No DeepSpeed engine runs: the students
are built as the cohort builds them, and a checkpoint is a directory made by hand whose fp32
weights zero_to_fp32 would return (monkeypatched).

    .venv/bin/pytest tests/test_export.py -q
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file, save_file
from trainer_setup import one_student_config
from transformers import (
    AutoModel,
    AutoModelForMaskedLM,
    AutoTokenizer,
    BertConfig,
    BertForMaskedLM,
    BertForPreTraining,
)

from data_pipeline.demo.synth import train_wordpiece
from trainer.export.hf_export import export_student, main, write_export, write_skeleton
from trainer.export.model_card import UNSET_ID, front_matter
from trainer.models import pooler as poolers
from trainer.models.students import build_student
from trainer.models.teacher import load_teacher_model

VOCAB = 120
TEACHER = {
    "vocab_size": VOCAB,
    "hidden_size": 32,
    "num_hidden_layers": 6,
    "num_attention_heads": 4,
    "intermediate_size": 64,
    "max_position_embeddings": 64,
}
POOLER_KEYS = {"bert.pooler.dense.weight", "bert.pooler.dense.bias"}
CARD = (
    "---\nlicense: other\n---\n\n# S\n\n```python\n"
    f'fill = pipeline("fill-mask", model="{UNSET_ID}")\n```\n'
)


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    """A WordPiece tokenizer saved as data_pipeline/demo/synth.py saves the demo's (transformers 5
    calls it TokenizersBackend)."""
    out = tmp_path_factory.mktemp("tokenizer")
    texts = ["Aspirin inhibits prostaglandin synthesis in platelets of patients."] * 40
    train_wordpiece(texts, out, vocab_size=VOCAB)
    return AutoTokenizer.from_pretrained(out)


def _save(model, directory: Path, tokenizer) -> Path:
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, tokenizer) -> dict[str, Path]:
    """Teachers as the Hub has them: with a pooler (BioBERT is a pre-training checkpoint) and
    without (a masked LM saved alone, like the demo teacher before exports carried one)."""
    root = tmp_path_factory.mktemp("checkpoints")
    torch.manual_seed(0)
    return {
        "with_pooler": _save(BertForPreTraining(BertConfig(**TEACHER)), root / "bio", tokenizer),
        "no_pooler": _save(BertForMaskedLM(BertConfig(**TEACHER)), root / "mlm", tokenizer),
    }


def _cfg(init: dict, kind: str, teacher: str | None) -> object:
    return one_student_config(
        init,
        kind,
        teacher={"path": teacher} if teacher else None,
        run={"name": "t"},
        data={"train_shards": "x", "max_len": 32},
        student="S",
        max_steps=3,
    )


def _teacher_pooler(path: Path) -> dict[str, torch.Tensor] | None:
    state = load_file(str(path / "model.safetensors"))
    return {k.removeprefix("bert."): v for k, v in state.items() if k.startswith("bert.pooler.")}


# (init, objective kind, teacher checkpoint, where the export's pooler must come from)
CASES = {
    "from_teacher_layers": (
        {"from_teacher_layers": [0, 2]},
        "distilbiobert",
        "with_pooler",
        "teacher",
    ),
    "from_teacher_layers_teacher_without_pooler": (
        {"from_teacher_layers": [1, 3]},
        "distilbiobert",
        "no_pooler",
        "identity",
    ),
    "config_other_width": (
        {
            "config": {
                "hidden_size": 16,
                "num_hidden_layers": 2,
                "num_attention_heads": 4,  # the teacher's: ATT_MSE compares head by head
                "intermediate_size": 32,
                "max_position_embeddings": 64,
                "vocab_size": VOCAB,
            }
        },
        "tinybiobert",
        "with_pooler",
        "identity",
    ),
    "pretrained_with_pooler": ({"pretrained": "with_pooler"}, "mlm", None, "teacher"),
    "pretrained_without_pooler": ({"pretrained": "no_pooler"}, "mlm", None, "identity"),
}


def _built(case: str, checkpoints: dict[str, Path]):
    init, kind, teacher_key, expected = CASES[case]
    if "pretrained" in init:
        teacher_key = init["pretrained"]
        init = {"pretrained": str(checkpoints[teacher_key])}
        teacher_path = None
    else:
        teacher_path = str(checkpoints[teacher_key])
    cfg = _cfg(init, kind, teacher_path)
    teacher = None
    if teacher_path is not None:
        teacher = load_teacher_model(cfg.teacher, seed=1, vocab_size=VOCAB)
    built = build_student(
        cfg.students[0], teacher_model=teacher, vocab_size=VOCAB, seed=3, teacher_path=teacher_path
    )
    return built, checkpoints[teacher_key], expected


def _live_export(built, tokenizer, out: Path) -> Path:
    student = SimpleNamespace(module=built.module, pooler=built.pooler)
    return export_student(
        student, SimpleNamespace(is_main=True), out_dir=out, tokenizer=tokenizer, card=CARD
    )


def _assert_pooler(export: Path, source: Path, expected: str, caplog) -> None:
    """AutoModel finds every weight (no MISSING pooler in its load report) and the pooler is the
    source checkpoint's or the identity one; the masked LM loads complete, the pooler unused."""
    with caplog.at_level(logging.WARNING, logger="transformers"):
        model, info = AutoModel.from_pretrained(export, output_loading_info=True)
    assert info["missing_keys"] == set(), info
    assert "MISSING" not in caplog.text and "newly initialized" not in caplog.text
    state = model.pooler.state_dict()
    if expected == "teacher":
        want = {k.removeprefix("pooler."): v for k, v in _teacher_pooler(source).items()}
    else:
        hidden = model.config.hidden_size
        want = {"dense.weight": torch.eye(hidden), "dense.bias": torch.zeros(hidden)}
    assert state.keys() == want.keys()
    for key in want:
        assert torch.equal(state[key], want[key]), key
    mlm, info = AutoModelForMaskedLM.from_pretrained(export, output_loading_info=True)
    assert info["missing_keys"] == set() and info["unexpected_keys"] == POOLER_KEYS


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_live_export_carries_a_pooler_automodel_loads_without_missing_weights(
    case, checkpoints, tokenizer, tmp_path, caplog
):
    built, source, expected = _built(case, checkpoints)
    assert built.pooler.source == (poolers.IDENTITY if expected == "identity" else str(source))
    export = _live_export(built, tokenizer, tmp_path / "export")
    _assert_pooler(export, source, expected, caplog)
    # the trained masked LM is what was exported, unchanged by the pooler beside it
    exported = load_file(str(export / "model.safetensors"))
    for key, value in built.module.mlm.state_dict().items():
        if key in exported:
            assert torch.equal(exported[key], value), key


@pytest.mark.parametrize("case", ["from_teacher_layers", "config_other_width"])
def test_a_checkpoint_export_carries_the_same_pooler(
    case, checkpoints, tokenizer, tmp_path, monkeypatch, caplog
):
    built, source, expected = _built(case, checkpoints)
    ckpt = _checkpoint(tmp_path, built, tokenizer, monkeypatch)
    assert (ckpt / "S" / "hf" / poolers.FILE).is_file()
    assert main([str(ckpt)]) == 0
    export = tmp_path / "export-step-00000001" / "S"
    _assert_pooler(export, source, expected, caplog)
    live = _live_export(built, tokenizer, tmp_path / "live")
    a, b = load_file(str(export / "model.safetensors")), load_file(str(live / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_checkpoint_saved_without_a_pooler_exports_as_before(
    checkpoints, tokenizer, tmp_path, monkeypatch
):
    built, *_ = _built("from_teacher_layers", checkpoints)
    ckpt = _checkpoint(tmp_path, built, tokenizer, monkeypatch)
    (ckpt / "S" / "hf" / poolers.FILE).unlink()  # as a checkpoint from before pooler.safetensors
    assert main([str(ckpt)]) == 0
    exported = load_file(str(tmp_path / "export-step-00000001" / "S" / "model.safetensors"))
    assert not POOLER_KEYS & exported.keys()


def _checkpoint(tmp_path: Path, built, tokenizer, monkeypatch) -> Path:
    """A complete checkpoint of student S as the loop writes it: the skeleton, a marker, and the
    weights DeepSpeed's zero_to_fp32 reconstructs (the StudentModule's, `mlm.` prefixed)."""
    ckpt = tmp_path / "checkpoints" / "step-00000001"
    write_skeleton(ckpt / "S" / "hf", built.module.mlm, tokenizer, CARD, built.pooler)
    (ckpt / "COMPLETE.json").write_text(json.dumps({"step": 1}))
    state = {k: v.clone() for k, v in built.module.state_dict().items()}
    import deepspeed.utils.zero_to_fp32 as zero_to_fp32

    monkeypatch.setattr(
        zero_to_fp32, "get_fp32_state_dict_from_zero_checkpoint", lambda directory: state
    )
    return ckpt


# ---------------------------------------------------------------- reading a checkpoint's pooler


@pytest.mark.parametrize("layout", ["safetensors", "sharded", "bin", "base_model_keys"])
def test_read_pooler_finds_it_in_every_checkpoint_layout(layout, tmp_path):
    torch.manual_seed(1)
    model = BertForPreTraining(BertConfig(**TEACHER))
    state = {k: v.clone() for k, v in model.state_dict().items()}  # no tied storage
    if layout == "base_model_keys":  # a BertModel's checkpoint: pooler.dense.*
        state = {k.removeprefix("bert."): v for k, v in state.items() if k.startswith("bert.")}
    if layout == "bin":
        torch.save(state, tmp_path / "pytorch_model.bin")
    elif layout == "sharded":
        pooler = {k: v for k, v in state.items() if ".pooler." in k}
        rest = {k: v for k, v in state.items() if k not in pooler}
        save_file(rest, str(tmp_path / "model-00001-of-00002.safetensors"))
        save_file(pooler, str(tmp_path / "model-00002-of-00002.safetensors"))
        weight_map = {k: "model-00001-of-00002.safetensors" for k in rest}
        weight_map |= {k: "model-00002-of-00002.safetensors" for k in pooler}
        index = {"metadata": {}, "weight_map": weight_map}
        (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    else:
        save_file(state, str(tmp_path / "model.safetensors"))
    got = poolers.read_pooler(str(tmp_path))
    assert got is not None and got.keys() == {"dense.weight", "dense.bias"}
    assert torch.equal(got["dense.weight"], model.bert.pooler.dense.weight)
    assert torch.equal(got["dense.bias"], model.bert.pooler.dense.bias)


def test_read_pooler_of_a_checkpoint_without_one_or_no_checkpoint(checkpoints, tmp_path):
    assert poolers.read_pooler(str(checkpoints["no_pooler"])) is None
    assert poolers.read_pooler(str(tmp_path / "absent")) is None


# ---------------------------------------------------------------- tokenizer for transformers 4.x


def test_the_exported_tokenizer_names_a_class_transformers_4_has(tokenizer, tmp_path):
    assert type(tokenizer).__name__ == "TokenizersBackend"  # what transformers 5 loads it as
    model = BertForMaskedLM(BertConfig(**TEACHER))
    export = write_export(model, tokenizer, CARD, tmp_path / "export")
    config = json.loads((export / "tokenizer_config.json").read_text())
    assert config["tokenizer_class"] == "PreTrainedTokenizerFast"
    back = AutoTokenizer.from_pretrained(export)
    text = "Aspirin inhibits [MASK] synthesis."
    assert back(text)["input_ids"] == tokenizer(text)["input_ids"]
    assert back.model_max_length == TEACHER["max_position_embeddings"]
    # the usage snippet names the export's directory
    card = (export / "README.md").read_text()
    assert f'model="{export.resolve()}"' in card and UNSET_ID not in card
    assert front_matter(card) == {"license": "other"}


# ---------------------------------------------------------------- --push-to-hub


class FakeHub:
    """Stands in for huggingface_hub.HfApi: records the calls, sends nothing."""

    calls: list = []  # every instance's, since the `hub` fixture emptied it

    def create_repo(self, repo_id, **kwargs):
        FakeHub.calls.append(("create_repo", repo_id, kwargs))

    def create_commit(self, repo_id, operations, commit_message, **kwargs):
        paths = [op.path_in_repo for op in operations]
        assert len(paths) == len(set(paths)), f"a file committed twice: {paths}"
        ops = {op.path_in_repo: op.path_or_fileobj for op in operations}
        FakeHub.calls.append(("create_commit", repo_id, commit_message, ops, kwargs))
        return SimpleNamespace(commit_url=f"https://huggingface.co/{repo_id}/commit/abc")


@pytest.fixture
def hub(monkeypatch) -> type[FakeHub]:
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeHub)
    monkeypatch.setattr(FakeHub, "calls", [])
    return FakeHub


@pytest.fixture
def export_dir(tokenizer, tmp_path) -> Path:
    model = BertForMaskedLM(BertConfig(**TEACHER))
    return write_export(model, tokenizer, CARD, tmp_path / "runs" / "r" / "export" / "S")


def test_push_to_hub_commits_every_file_of_the_export_with_the_hub_id_in_its_card(
    export_dir, hub, capsys
):
    before = {p.name: p.read_bytes() for p in export_dir.iterdir()}
    assert main([str(export_dir), "--push-to-hub", "me/S", "--private"]) == 0
    (create, commit) = hub.calls
    assert create == (
        "create_repo",
        "me/S",
        {"repo_type": "model", "private": True, "exist_ok": True},
    )
    _, repo_id, message, ops, kwargs = commit
    assert repo_id == "me/S" and kwargs == {"repo_type": "model"}
    assert message == "biodistill export export/S"
    assert sorted(ops) == sorted(before)  # every file, nothing else
    assert {"config.json", "model.safetensors", "tokenizer.json", "README.md"} <= ops.keys()
    assert ops["model.safetensors"] == str(export_dir / "model.safetensors")  # the export's file
    card = ops["README.md"].decode()
    assert 'fill = pipeline("fill-mask", model="me/S")' in card and str(export_dir) not in card
    assert {p.name: p.read_bytes() for p in export_dir.iterdir()} == before  # left as it was
    assert capsys.readouterr().out == "S: pushed to https://huggingface.co/me/S/commit/abc\n"


def test_push_to_hub_from_a_checkpoint_names_a_repo_per_student(
    checkpoints, tokenizer, tmp_path, monkeypatch, hub, capsys
):
    built, *_ = _built("from_teacher_layers", checkpoints)
    ckpt = _checkpoint(tmp_path, built, tokenizer, monkeypatch)
    write_skeleton(ckpt / "T" / "hf", built.module.mlm, tokenizer, CARD, built.pooler)
    capsys.readouterr()  # what building the student printed
    assert main([str(ckpt), "--push-to-hub", "me/one"]) == 2  # two students, one repository
    err = capsys.readouterr().err
    assert err.startswith("error: --push-to-hub me/one: 2 students (S, T) cannot share one")
    assert hub.calls == [] and not (tmp_path / "export-step-00000001").exists()
    assert main([str(ckpt), "--students", "S", "--push-to-hub", "me/{student}-bio"]) == 0
    _, repo_id, _, ops, _ = hub.calls[-1]
    export = tmp_path / "export-step-00000001" / "S"
    assert repo_id == "me/S-bio" and sorted(ops) == sorted(p.name for p in export.iterdir())
    assert 'model="me/S-bio"' in ops["README.md"].decode()


def test_push_to_hub_offline_is_one_line_and_exit_2(export_dir, monkeypatch, capsys):
    """The real HfApi with the Hub unreachable (offline mode: nothing leaves the machine)."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_TOKEN", "hf_not_a_real_token")
    assert main([str(export_dir), "--push-to-hub", "me/S"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith(f"error: pushing {export_dir} to the Hub as me/S failed: ")
    assert "offline" in err


def test_push_to_hub_of_a_directory_that_is_no_export(tmp_path, capsys):
    assert main([str(tmp_path), "--push-to-hub", "me/S"]) == 2
    assert capsys.readouterr().err == (
        f"error: {tmp_path}: no COMPLETE.json; not an export nor a complete checkpoint\n"
    )
    (tmp_path / "config.json").write_text("{}")
    assert main([str(tmp_path), "--push-to-hub", "me/S"]) == 2
    assert (
        capsys.readouterr().err
        == f"error: {tmp_path}: not an export (no config.json and README.md)\n"
    )
