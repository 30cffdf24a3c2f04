"""Small pure parts of the trainer: random streams, checkpoints found, the dry-run plan, the card.

.venv/bin/pytest tests/test_trainer_helpers.py -q

No engine and no process is started: checkpoint directories are made by hand, the plan is rendered
from the shipped recipes (offline: hub configs are unreachable here), the model card from a stand-in
for the cohort's Student.
"""

from __future__ import annotations

import copy
import json
import re
from types import SimpleNamespace

import pytest
import torch
import yaml
from trainer_setup import one_student_config
from transformers import BertConfig, BertForMaskedLM

from trainer.checkpoint.store import (
    MARKER,
    complete_checkpoints,
    latest_complete,
    step_dir,
    verify,
)
from trainer.cli.plan import render_plan
from trainer.config.ds_json import load_ds_config
from trainer.config.recipe import ROOT, load_config, select_students
from trainer.export.model_card import UNSET_ID, front_matter, model_card, with_model_id
from trainer.models.pooler import identity_pooler
from trainer.train.rng import RngStream, derive_seed

CPU = torch.device("cpu")


# ---------------------------------------------------------------- random streams


def test_active_stream_leaves_the_global_stream_untouched():
    torch.manual_seed(0)
    expected = [torch.rand(3), torch.rand(3)]
    torch.manual_seed(0)
    stream = RngStream(5, CPU)
    before = torch.rand(3)
    with stream.active():
        torch.rand(7)
        torch.randn(2, 2)
    after = torch.rand(3)
    assert torch.equal(before, expected[0]) and torch.equal(after, expected[1])


def test_stream_draws_continue_across_blocks_like_a_seeded_generator():
    stream, twin = RngStream(5, CPU), RngStream(5, CPU)
    torch.manual_seed(123)
    draws = []
    for _ in range(3):
        with stream.active():
            draws.append(torch.rand(4))
        torch.rand(2)  # global draws in between do not shift the stream
    with twin.active():
        twin_draws = [torch.rand(4) for _ in range(3)]
    reference = torch.Generator().manual_seed(5)
    for got, twin_got in zip(draws, twin_draws, strict=True):
        assert torch.equal(got, twin_got)
        assert torch.equal(got, torch.rand(4, generator=reference))
    with RngStream(6, CPU).active():
        assert not torch.equal(torch.rand(4), draws[0])


def test_stream_state_resumes_exactly():
    stream = RngStream(5, CPU)
    with stream.active():
        torch.rand(10)
    state = stream.state_dict()
    with stream.active():
        expected = torch.rand(6)
    with stream.active():  # the saved state is a copy, not a view of the live one
        torch.rand(3)
    resumed = RngStream(99, CPU)
    resumed.load_state_dict(state)
    with resumed.active():
        assert torch.equal(torch.rand(6), expected)
    with pytest.raises(ValueError, match="lacks"):
        resumed.load_state_dict({})


def test_derive_seed():
    seeds = {derive_seed(42, "student", name) for name in ("A", "B", "TinyBioBERT")}
    seeds |= {derive_seed(43, "student", "A"), derive_seed(42, "dropout", "A")}
    assert len(seeds) == 5
    assert derive_seed(42, "student", "A") == derive_seed(42, "student", "A")
    assert all(0 <= s < 2**63 for s in seeds)


# ---------------------------------------------------------------- checkpoint discovery


def _step(root, step: int, complete: bool):
    directory = step_dir(root, step)
    (directory / "S").mkdir(parents=True)
    if complete:
        (directory / MARKER).write_text(json.dumps({"step": step}))
    return directory


def test_latest_complete_ignores_unfinished_saves(tmp_path):
    root = tmp_path / "checkpoints"
    assert complete_checkpoints(root) == [] and latest_complete(root) is None
    root.mkdir()
    assert latest_complete(root) is None
    done = [_step(root, 20, True), _step(root, 3, True), _step(root, 100, True)]
    _step(root, 120, False)  # newest, but its save did not finish
    (root / "step-5").mkdir()  # not a step directory of ours
    (root / "notes.txt").write_text("x")
    (step_dir(root, 200) / MARKER).mkdir(parents=True)  # a marker that is no file
    assert complete_checkpoints(root) == sorted(done)
    assert [p.name for p in complete_checkpoints(root)] == [
        "step-00000003",
        "step-00000020",
        "step-00000100",
    ]
    assert latest_complete(root) == step_dir(root, 100)
    (step_dir(root, 120) / MARKER).write_text("{}")
    assert latest_complete(root) == step_dir(root, 120)


@pytest.mark.parametrize(
    "files, problem",
    [
        ({}, None),  # a marker from before checksums
        (
            {
                "S/w.pt": {
                    "size": 3,
                    "sha256": "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
                }
            },
            None,
        ),
        ({"S/w.pt": {"size": 4, "sha256": "x"}}, "S/w.pt has 3 bytes where COMPLETE.json says 4"),
        (
            {"S/w.pt": {"size": "3", "sha256": "x"}},
            "files.S/w.pt.size='3': expected an integer >= 0",
        ),
        ({"S/w.pt": {"size": 3}}, "'files.S/w.pt.sha256' is required"),
        (["S/w.pt"], "files=\\['S/w.pt'\\]: expected a mapping"),
    ],
)
def test_verify_names_a_marker_that_does_not_read_as_one(tmp_path, files, problem):
    """A marker with a key of the wrong shape fails verification (the resume then takes an older
    checkpoint) instead of stopping the start-up with a TypeError."""
    directory = _step(tmp_path, 1, complete=False)
    (directory / "S" / "w.pt").write_bytes(b"abc")
    (directory / MARKER).write_text(json.dumps({"format": 1, "step": 1, "files": files}))
    found = verify(directory)
    if problem is None:
        assert found is None
    else:
        assert re.search(problem, found), found


# ---------------------------------------------------------------- dry-run plan


def _plan_line(plan: str, prefix: str) -> str:
    lines = [line for line in plan.splitlines() if line.startswith(prefix)]
    assert len(lines) == 1, (prefix, plan)
    return lines[0]


def _params(line: str) -> int:
    return int(re.search(r": ([\d,]+) parameters", line).group(1).replace(",", ""))


def _distinct(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def _teacher_config(cfg) -> dict:
    """The demo teacher's BertConfig keys: its build recipe's one student (teacher.build)."""
    return copy.deepcopy(load_config(ROOT / cfg.teacher.build).students[0].init.config)


def _teacher_line(plan: str, cfg) -> str:
    return _plan_line(plan, f"teacher {cfg.teacher.path}: ")


def test_plan_of_the_demo_recipe(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    cfg = load_config(ROOT / "recipes" / "demo.yaml")
    ds = load_ds_config(ROOT / "ds_configs" / "zero2.json")
    plan = render_plan(cfg, ds)
    assert plan.startswith("# resolved recipe\n")
    students = {s.name: s for s in cfg.students}
    teacher = BertConfig(**_teacher_config(cfg))
    expected = {
        name: _distinct(
            BertForMaskedLM(
                BertConfig(**copy.deepcopy(s.init.config))
                if s.init.config is not None
                else BertConfig(
                    **dict(_teacher_config(cfg), num_hidden_layers=len(s.init.from_teacher_layers))
                )
            )
        )
        for name, s in students.items()
    }
    counts = {name: _params(_plan_line(plan, f"student {name}:")) for name in students}
    assert counts == expected
    assert "TinyBioBERT: 157,600 parameters (bert, 2 layers, hidden 32, eager attention)" in plan
    assert "DistilBioBERT: 378,944 parameters (bert, 2 layers, hidden 64, SDPA attention)" in plan
    # The union of the three objectives' teacher signals, worked out by hand from demo.yaml:
    # COS_last 4; CompactBioBERT hidden 2, 4 and attentions 1, 3; TinyBioBERT hidden 0, 2, 4.
    line = _teacher_line(plan, cfg)
    assert _params(line) == _distinct(BertForMaskedLM(teacher))
    assert line.endswith(
        "frozen; computes MLM logits at masked rows, hidden_states [0, 2, 4], "
        "attention maps of layers [1, 3]"
    )
    memory = _plan_line(plan, "memory per rank (estimate): ")
    total, states, teacher_gib, activations = map(float, re.findall(r"(\d+\.\d+)", memory))
    assert total > 0 and abs(total - (states + teacher_gib + activations)) <= 0.015
    # ZeRO-2 on one rank, bf16: 2 + 2 + 12 bytes of model state per parameter.
    assert states == round(16 * sum(expected.values()) / 1024**3, 2)


def test_plan_teacher_computes_the_union_of_the_students_needs(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    ds = load_ds_config(ROOT / "ds_configs" / "zero2.json")
    # The last student alone now needs no teacher logits; the others still do.
    cfg = load_config(
        ROOT / "recipes" / "demo.yaml", ["students.TinyBioBERT.objective.weights={soft_ce: 0}"]
    )
    assert _teacher_line(render_plan(cfg, ds), cfg).endswith(
        "computes MLM logits at masked rows, hidden_states [0, 2, 4], "
        "attention maps of layers [1, 3]"
    )
    only_tiny = select_students(cfg, ["TinyBioBERT"])
    assert _teacher_line(render_plan(only_tiny, ds), cfg).endswith(
        "computes hidden_states [0, 2, 4], attention maps of layers [1, 3]"
    )


def test_plan_counts_two_batches_of_teacher_signals_with_teacher_ahead(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    ds = dict(load_ds_config(ROOT / "ds_configs" / "zero2.json"), train_micro_batch_size_per_gpu=64)
    sizes = ["data.max_len=512", "train.global_batch=null"]  # the JSON's micro-batch of 64
    off = render_plan(load_config(ROOT / "recipes" / "demo.yaml", sizes), ds)
    cfg = load_config(ROOT / "recipes" / "demo.yaml", [*sizes, "train.teacher_ahead=true"])
    on = render_plan(cfg, ds)
    assert _teacher_line(on, cfg).endswith("signals of two batches alive (train.teacher_ahead)")
    # One batch's signals, by hand from demo.yaml: attention maps of 2 layers, hidden states of 3
    # and the logits at the 15% masked rows, 2 bytes an element.
    teacher = BertConfig(**_teacher_config(cfg))
    b, s = 64, 512
    maps = 2 * b * teacher.num_attention_heads * s * s
    hidden = 3 * b * s * teacher.hidden_size
    logits = 0.15 * b * s * teacher.vocab_size
    signals_gib = 2 * (maps + hidden + logits) / 1024**3

    def teacher_gib(plan: str) -> float:
        memory = _plan_line(plan, "memory per rank (estimate): ")
        return float(re.search(r"teacher (\d+\.\d+)", memory).group(1))

    assert abs(teacher_gib(on) - teacher_gib(off) - signals_gib) <= 0.011


def test_plan_offline_reports_the_hub_teacher_as_unreachable(monkeypatch):
    import huggingface_hub.constants

    # NOTE: no network here; offline mode fails at once instead of retrying for ~20 s.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    cfg = load_config(ROOT / "recipes" / "paper_distilled.yaml")
    plan = render_plan(cfg, load_ds_config(ROOT / "ds_configs" / "zero2.json"))
    assert "config not reachable" in _plan_line(plan, "teacher: unknown")
    for name in ("DistilBioBERT", "CompactBioBERT"):
        assert "parameters unknown" in _plan_line(plan, f"student {name}:")
    tiny = next(s for s in cfg.students if s.name == "TinyBioBERT")
    with torch.device("meta"):  # 14M parameters: counted, not allocated
        model = BertForMaskedLM(BertConfig(**copy.deepcopy(tiny.init.config)))
    assert _params(_plan_line(plan, "student TinyBioBERT:")) == _distinct(model)
    _plan_line(plan, "memory per rank (estimate): ")


# ---------------------------------------------------------------- model card


def _card_config(init: dict, kind: str = "distilbiobert", teacher_path: str | None = None, **run):
    teacher = {"config": {"num_hidden_layers": 4, "hidden_size": 32, "num_attention_heads": 4}}
    return one_student_config(
        init,
        kind,
        teacher={"path": teacher_path} if teacher_path else teacher,
        run={"name": "cardrun", **run},
        data={"train_shards": "data/shards", "max_len": 64},
        student="MiniBioBERT",
        max_steps=1500,
    )


def _stand_in(cfg, base_model: str | None):
    """What model_card reads from trainer/models/cohort.py's Student."""
    spec = cfg.students[0]
    config = BertConfig(num_hidden_layers=2, hidden_size=32, num_attention_heads=4, vocab_size=99)
    return SimpleNamespace(
        spec=spec,
        module=SimpleNamespace(mlm=SimpleNamespace(config=config)),
        parameters=123456,
        budget=spec.optimizer.max_steps,
        base_model=base_model,
        pooler=identity_pooler(32),
    )


def _front_matter(card: str) -> dict:
    assert card.startswith("---\n")
    front, _, _ = card[4:].partition("\n---\n")
    return yaml.safe_load(front)


def test_model_card_of_a_distilled_student():
    cfg = _card_config({"from_teacher_layers": [0, 2]})
    card = model_card(
        _stand_in(cfg, "teacher layers [0, 2]"),
        cfg,
        steps=1234,
        tokens=5_000_000,
        samples=20_000,
        metrics={"eval/MiniBioBERT/mlm_acc": 0.4321},
    )
    front = _front_matter(card)
    assert front["pipeline_tag"] == "fill-mask"
    assert front["library_name"] == "transformers"
    assert "distillation" in front["tags"]
    assert "\n# MiniBioBERT\n" in card
    assert "1,234 optimizer steps of a budget of 1,500" in card
    assert "| 123,456 | 2 | 32 | 4 | 99 |" in card
    assert "| mlm_acc | 0.4321 |" in card
    assert "Initialisation: teacher layers [0, 2]." in card


def test_model_card_of_a_continual_student():
    cfg = _card_config({"pretrained": "some/bert"}, kind="mlm")
    card = model_card(_stand_in(cfg, "some/bert"), cfg, steps=7, tokens=10, samples=2, metrics={})
    front = _front_matter(card)
    assert front["pipeline_tag"] == "fill-mask"
    assert front["base_model"] == "some/bert"
    assert "continual-pretraining" in front["tags"]
    assert "No teacher (masked-LM objective only)." in card
    assert "7 optimizer steps" in card and "# MiniBioBERT" in card
    assert "Held-out evaluation" not in card


METRICS = {
    "eval/MiniBioBERT/mlm_acc": 0.43214,
    "eval/MiniBioBERT/mlm_loss": 2.5,
    "eval/MiniBioBERT/teacher_agreement": 0.61,
}


def _card_of(tmp_path, teacher: str, *, from_layers: bool = True, **run) -> str:
    init = {"from_teacher_layers": [0, 2]} if from_layers else {"pretrained": teacher}
    kind = "distilbiobert" if from_layers else "mlm"
    cfg = _card_config(init, kind, teacher_path=teacher, **run)
    student = _stand_in(cfg, "teacher layers [0, 2]" if from_layers else teacher)
    return model_card(student, cfg, steps=9, tokens=100, samples=10, metrics=METRICS)


# where the teacher (or the continual student's start) is: (path, is it a Hub id)
SOURCES = {
    "hub_id": ("dmis-lab/biobert-base-cased-v1.2", True),
    "hub_name_alone": ("bert-base-cased", True),
    "local_dir_named_like_a_hub_id": ("{tmp}", False),
    "relative_path": ("runs/demo/teacher", False),
    "dot_path": ("./teacher", False),
    "absolute_path": ("/data/models/biobert", False),
    "home_path": ("~/models/biobert", False),
}


@pytest.mark.parametrize("from_layers", [True, False], ids=["distilled", "continual"])
@pytest.mark.parametrize("source", sorted(SOURCES))
def test_model_card_front_matter_is_what_the_hub_reads(source, from_layers, tmp_path, monkeypatch):
    """license, language, datasets, tags, pipeline_tag, a model-index of the held-out figures,
    and base_model only as a Hub id: a local teacher path is never named there."""
    from huggingface_hub import ModelCard, metadata_load

    path, is_hub_id = SOURCES[source]
    if path == "{tmp}":  # an existing directory org/name under the working directory
        monkeypatch.chdir(tmp_path)
        (tmp_path / "models" / "biobert").mkdir(parents=True)
        path = "models/biobert"
    card = _card_of(tmp_path, path, from_layers=from_layers)
    front = _front_matter(card)
    assert front["license"] == "other"
    assert front["language"] == ["en"] and front["datasets"] == ["pubmed"]
    assert front["pipeline_tag"] == "fill-mask" and front["library_name"] == "transformers"
    kind = "distilbiobert" if from_layers else "mlm"
    for tag in ("biomedical", "bert", "fill-mask", kind):
        assert tag in front["tags"]
    assert ("distillation" in front["tags"]) == from_layers
    if is_hub_id:
        assert front["base_model"] == path
    else:
        assert "base_model" not in front
        assert path not in yaml.safe_dump(front)
    (result,) = front["model-index"][0]["results"]
    assert front["model-index"][0]["name"] == "MiniBioBERT"
    assert result["task"]["type"] == "fill-mask"
    assert {m["name"]: (m["type"], m["value"]) for m in result["metrics"]} == {
        "mlm_acc": ("accuracy", 0.4321),
        "mlm_loss": ("loss", 2.5),
        "teacher_agreement": ("accuracy", 0.61),
    }
    # what the Hub itself parses: the metadata block and the model-index as evaluation results
    readme = tmp_path / "README.md"
    readme.write_text(card, encoding="utf-8")
    assert metadata_load(readme) == front
    hub_card = ModelCard.load(readme)
    assert hub_card.data.license == "other" and hub_card.data.pipeline_tag == "fill-mask"
    assert "biodistill" in hub_card.data.tags  # how an export is recognised (hf_export.py)
    assert [r.task_type for r in hub_card.data.eval_results] == ["fill-mask"] * 3
    assert {r.metric_name: r.metric_value for r in hub_card.data.eval_results} == {
        "mlm_acc": 0.4321,
        "mlm_loss": 2.5,
        "teacher_agreement": 0.61,
    }
    assert hub_card.data.base_model == (path if is_hub_id else None)


def test_model_card_license_from_the_recipe_else_the_teacher_card_else_other(tmp_path):
    teacher = tmp_path / "teacher"
    teacher.mkdir()
    assert _front_matter(_card_of(tmp_path, str(teacher)))["license"] == "other"
    (teacher / "README.md").write_text("---\nlicense: cc-by-4.0\n---\n# teacher\n")
    assert _front_matter(_card_of(tmp_path, str(teacher)))["license"] == "cc-by-4.0"
    card = _card_of(tmp_path, str(teacher), license="apache-2.0")
    assert _front_matter(card)["license"] == "apache-2.0"


@pytest.mark.parametrize(
    "readme",
    ["# teacher, no metadata\n", "---\nlicense: [unclosed\n---\n", "---\n- a list\n---\n"],
    ids=["no_metadata", "bad_yaml", "not_a_mapping"],
)
def test_model_card_license_is_other_where_the_teacher_card_says_nothing_readable(tmp_path, readme):
    teacher = tmp_path / "teacher"
    teacher.mkdir()
    (teacher / "README.md").write_text(readme)
    card = _card_of(tmp_path, str(teacher))
    assert _front_matter(card)["license"] == "other"
    assert front_matter(readme) == {}
    assert front_matter(card) == _front_matter(card)


def test_an_export_written_before_its_record_is_recognised_by_its_card(tmp_path):
    """An export from before EXPORT.json is known by its card's `biodistill` tag
    (trainer/export/hf_export.py): the card model_card writes must carry it as the Hub reads it."""
    from huggingface_hub import ModelCard

    from trainer.export.hf_export import not_an_export

    out = tmp_path / "export"
    out.mkdir()
    (out / "config.json").write_text("{}")
    (out / "README.md").write_text(_card_of(tmp_path, "dmis-lab/biobert-base-cased-v1.2"))
    assert "biodistill" in ModelCard.load(out / "README.md").data.tags
    assert not_an_export(out) is None


def test_model_card_without_metrics_has_no_model_index_and_no_stray_name():
    cfg = _card_config({"from_teacher_layers": [0, 2]})
    card = model_card(_stand_in(cfg, None), cfg, steps=1, tokens=1, samples=1, metrics={})
    front = _front_matter(card)
    assert "model-index" not in front and "model_name" not in front
    assert list(front)[:3] == ["license", "language", "library_name"]


def test_model_card_usage_names_the_model_where_it_is():
    cfg = _card_config({"from_teacher_layers": [0, 2]})
    card = model_card(_stand_in(cfg, None), cfg, steps=1, tokens=1, samples=1, metrics={})
    assert f'model="{UNSET_ID}"' in card  # in a checkpoint's hf/: not yet an export
    for where in ("/runs/demo/export/MiniBioBERT", "me/MiniBioBERT"):
        named = with_model_id(card, where)
        assert f'fill = pipeline("fill-mask", model="{where}")' in named
        assert UNSET_ID not in named
        assert with_model_id(named, "other/id").count("other/id") == 1
    assert "Pooler: not trained" in card and "tanh of the [CLS] hidden state" in card


def test_plan_says_whether_the_teacher_stage_runs_first(monkeypatch, tmp_path, tiny_shards):
    """teacher.build: the plan's stage line for shards not built yet, a missing teacher, a
    current one and a stale one (its recipe changed)."""
    from trainer.cli.teacher_build import build_config, fingerprint
    from trainer.cli.teacher_cache import BUILT

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    ds = load_ds_config(ROOT / "ds_configs" / "zero2.json")
    recipe = yaml.safe_load((ROOT / "recipes" / "demo_teacher.yaml").read_text())
    build = tmp_path / "build.yaml"
    teacher = tmp_path / "teacher"

    def stage(shards: str, lr: float = 3e-3) -> str:
        recipe["data"]["train_shards"] = shards
        recipe["students"][0]["optimizer"]["lr"] = lr
        build.write_text(yaml.safe_dump(recipe))
        cfg = load_config(
            ROOT / "recipes" / "demo.yaml",
            [f"teacher.build={build}", f"teacher.path={teacher}", f"data.train_shards={shards}"],
        )
        return _plan_line(render_plan(cfg, ds), "teacher stage"), cfg

    line, _ = stage(str(tmp_path / "not-yet"))
    assert f"cannot be checked before {tmp_path / 'not-yet'} is built" in line
    line, cfg = stage(str(tiny_shards))
    assert line.startswith(f"teacher stage first: {teacher} is missing; {build} trains ")
    assert "DemoTeacher for 1,500 steps" in line
    teacher.mkdir()
    (teacher / BUILT).write_text(json.dumps(fingerprint(cfg, build_config(cfg), ds, 1)))
    line, _ = stage(str(tiny_shards))
    assert line == f"teacher stage: {teacher} is built and current ({build})"
    line, _ = stage(str(tiny_shards), lr=1e-3)
    assert line.startswith(f"teacher stage first: {teacher} is stale: {build} changed since")
    monkeypatch.setenv("WORLD_SIZE", "2")  # the same global batch on 2 ranks: still current
    line, _ = stage(str(tiny_shards))
    assert line == f"teacher stage: {teacher} is built and current ({build})"
    (teacher / BUILT).unlink()
    (teacher / "model.safetensors").write_bytes(b"the user's")  # a directory the build did not make
    line, _ = stage(str(tiny_shards))
    assert line == (
        f"teacher stage: none: {teacher} holds model.safetensors and no {BUILT}, so it is loaded "
        f"as the teacher and teacher.build={build} is not used"
    )


def test_ds_overrides_reach_the_plan_and_bad_ones_exit_2(monkeypatch, capsys):
    from trainer.main import main

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    zero2 = str(ROOT / "ds_configs" / "zero2.json")
    assert main(["--ds_config", zero2, "--dry-run", "ds.train_micro_batch_size_per_gpu=2"]) == 0
    # the demo's global batch of 48 at the micro-batch the override allows
    assert "global batch 48 = 1 rank x 2 x accumulation 24" in capsys.readouterr().out
    assert main(["--ds_config", zero2, "--dry-run", "ds.train_micro_batch=2"]) == 2
    assert "did you mean train_micro_batch_size_per_gpu" in capsys.readouterr().err


def test_python_dash_m_trainer_is_the_trainer():
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-m", "trainer", "--help"], cwd=ROOT, capture_output=True, text=True
    )
    assert done.returncode == 0 and "ds.key.sub=value" in done.stdout


def test_an_installed_wheel_finds_its_recipes_and_ds_configs_from_any_directory(tmp_path):
    """Built and installed as a user would (not editable), then run from an empty directory:
    `python -m trainer --ds_config ds_configs/zero2.json --dry-run` finds the shipped JSON, the
    default recipe and the demo teacher's build recipe."""
    import os
    import shutil
    import subprocess
    import sys
    import zipfile

    wheels, site, elsewhere = tmp_path / "wheels", tmp_path / "site", tmp_path / "elsewhere"
    source = tmp_path / "source"  # NOTE: a copy: setuptools reuses (stale) build/ folders
    skip = (".git", ".venv", ".whl", "build", "data", "runs", "*.egg-info", "__pycache__")
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(*skip))
    pip = [sys.executable, "-m", "pip", "-q"]
    built = subprocess.run(
        [*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(wheels), str(source)],
        capture_output=True, text=True,
    )  # fmt: skip
    assert built.returncode == 0, built.stderr[-2000:]
    (wheel,) = wheels.glob("biodistill-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for folder, suffix in (("recipes", ".yaml"), ("ds_configs", ".json")):
        for f in (ROOT / folder).glob(f"*{suffix}"):
            assert f"trainer/{folder}/{f.name}" in names
    installed = subprocess.run(
        [*pip, "install", "--no-deps", "--no-index", "--target", str(site), str(wheel)],
        capture_output=True, text=True,
    )  # fmt: skip
    assert installed.returncode == 0, installed.stderr[-2000:]
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site)}
    env.pop("WORLD_SIZE", None)
    where = subprocess.run(
        [sys.executable, "-c", "import trainer; print(trainer.__file__)"],
        cwd=elsewhere, env=env, capture_output=True, text=True,
    )  # fmt: skip
    assert where.stdout.startswith(str(site))  # the installed copy, not the checkout
    run = subprocess.run(
        [sys.executable, "-m", "trainer", "--ds_config", "ds_configs/zero2.json", "--dry-run"],
        cwd=elsewhere, env=env, capture_output=True, text=True,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    assert "ok    teacher: data/demo/teacher: made first by recipes/demo_teacher.yaml" in run.stdout
    missing = subprocess.run(
        [sys.executable, "-m", "trainer", "--ds_config", "ds_configs/zero9.json", "--dry-run"],
        cwd=elsewhere, env=env, capture_output=True, text=True,
    )  # fmt: skip
    assert missing.returncode == 2
    assert (
        "error: DeepSpeed config ds_configs/zero9.json: no such file (shipped: "
        "ds_configs/zero1.json, ds_configs/zero2.json, ds_configs/zero2_offload.json, "
        "ds_configs/zero3.json)"
    ) in missing.stderr


def test_print_keys_lists_every_key_a_resolved_recipe_has(capsys):
    from trainer.config.recipe import to_dict
    from trainer.main import main

    assert main(["--print-keys"]) == 0
    printed = {line.split()[0] for line in capsys.readouterr().out.splitlines()[1:]}

    sections = ("run", "data", "teacher", "train", "init", "objective", "optimizer", "export")

    def flat(node, prefix=""):
        for key, value in node.items():
            if key == "students":
                for s in value:
                    yield from flat({k: v for k, v in s.items()}, "students.NAME.")
            elif isinstance(value, dict) and key in sections:
                yield from flat(value, f"{prefix}{key}.")
            else:
                yield prefix + key

    cfg = load_config(ROOT / "recipes" / "paper_distilled.yaml")
    keys = set(flat(to_dict(cfg)))
    assert keys and keys <= printed, keys - printed
    assert "students.NAME.optimizer.lr" in printed and "train.mlm_twins" in printed


def test_a_resumed_run_with_a_changed_recipe_or_ds_json_names_the_changed_keys(tmp_path, caplog):
    from trainer.train.builder import _keep_previous

    (tmp_path / "ds_config.json").write_text(
        json.dumps({"zero_optimization": {"stage": 2}, "train_micro_batch_size_per_gpu": 24})
    )
    new = json.dumps({"zero_optimization": {"stage": 3}, "train_micro_batch_size_per_gpu": 24,
                      "gradient_clipping": 1.0})  # fmt: skip
    with caplog.at_level("WARNING"):
        _keep_previous(tmp_path, "ds_config.json", new, "ds_config.previous.json")
    assert caplog.messages == [
        f"{tmp_path / 'ds_config.json'}: differs from the one this run directory was started "
        "with (gradient_clipping None -> 1.0, zero_optimization.stage 2 -> 3); resuming with the "
        "new one (the old is kept as ds_config.previous.json)"
    ]
    assert json.loads((tmp_path / "ds_config.previous.json").read_text())["zero_optimization"] == {
        "stage": 2
    }
    assert not (tmp_path / "ds_config.json").exists()  # written anew by the caller
    caplog.clear()
    (tmp_path / "ds_config.json").write_text(new)
    _keep_previous(tmp_path, "ds_config.json", new, "ds_config.previous.json")
    assert caplog.messages == [] and (tmp_path / "ds_config.json").read_text() == new
