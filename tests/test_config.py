"""Recipes, overrides, validation and DeepSpeed JSON helpers of trainer/config/recipe.py.

.venv/bin/pytest tests/test_config.py -q
"""

from __future__ import annotations

import copy
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from data_pipeline.demo.build import DEMO_MAX_LEN, DEMO_VOCAB
from data_pipeline.errors import UserError
from trainer.config.ds_json import apply_ds_overrides, ds_config_for_student, load_ds_config
from trainer.config.overrides import apply_overrides
from trainer.config.recipe import (
    DEMO_RECIPE,
    ROOT,
    RunConfig,
    config_from_dict,
    dump_config,
    load_config,
    recipe_keys,
    render_keys,
    select_students,
    to_dict,
)
from trainer.distill.kinds import KINDS

RECIPES = sorted((ROOT / "recipes").glob("*.yaml"))
DS_CONFIGS = sorted((ROOT / "ds_configs").glob("*.json"))
DISTILLED = ROOT / "recipes" / "paper_distilled.yaml"
CONTINUAL = ROOT / "recipes" / "paper_continual.yaml"
D = "students.DistilBioBERT"


def minimal(**student) -> dict:
    """A small valid recipe dict; `student` replaces keys of its one student."""
    entry = {
        "name": "S",
        "init": {"config": {"num_hidden_layers": 2}},
        "objective": {"kind": "mlm"},
        "optimizer": {"lr": 1e-3, "weight_decay": 0.0, "warmup_steps": 2},
    }
    entry.update(student)
    return {
        "run": {"name": "t"},
        "data": {"train_shards": "shards"},
        "train": {"max_steps": 10},
        "students": [entry],
    }


def error(match: str):
    """A recipe error: one UserError line matching `match`."""
    return pytest.raises(UserError, match=match)


def ds_error(match: str):
    return pytest.raises(ValueError, match=match)


# ---------------------------------------------------------------- shipped recipes


def test_recipes_are_shipped():
    assert {p.name for p in RECIPES} >= {
        "paper_distilled.yaml",
        "paper_continual.yaml",
        "demo.yaml",
    }


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_recipe_loads_and_round_trips(path, tmp_path):
    cfg = load_config(path, [])
    assert isinstance(cfg, RunConfig)
    dump_config(cfg, tmp_path / "recipe.resolved.yaml")
    assert load_config(tmp_path / "recipe.resolved.yaml", []) == cfg


def test_paper_distilled_numbers():
    cfg = load_config(DISTILLED, [])
    assert cfg.teacher.path == "dmis-lab/biobert-base-cased-v1.2" and cfg.teacher.config is None
    assert (cfg.data.max_len, cfg.data.mask_prob, cfg.data.whole_word) == (256, 0.15, False)
    assert cfg.train.max_steps == 100_000
    s = {x.name: x for x in cfg.students}
    assert list(s) == ["DistilBioBERT", "CompactBioBERT", "TinyBioBERT"]
    expected = {  # kind, T, weights, warmup, weight decay
        "DistilBioBERT": ("distilbiobert", 2.0, {"mlm": 2.0, "kd": 5.0, "cos": 1.0}, 5000, 0.0),
        "CompactBioBERT": (
            "compactbiobert",
            1.0,
            {"mlm": 1.0, "kd": 5.0, "att": 3.0, "cos": 3.0},
            5000,
            1e-4,
        ),
        "TinyBioBERT": ("tinybiobert", 1.0, {"att": 1.0, "hid": 1.0, "soft_ce": 1.0}, 10000, 1e-4),
    }
    for name, (kind, t, weights, warmup, wd) in expected.items():
        obj, opt = s[name].objective, s[name].optimizer
        assert (obj.kind, obj.temperature, obj.weights) == (kind, t, weights)
        assert (opt.lr, opt.warmup_steps, opt.max_steps, opt.weight_decay) == (
            5e-4,
            warmup,
            1e5,
            wd,
        )
        assert (opt.betas, opt.eps) == ((0.9, 0.999), 1e-8)
    assert s["DistilBioBERT"].init.from_teacher_layers == [0, 2, 4, 6, 8, 10]
    assert s["CompactBioBERT"].init.from_teacher_layers == [1, 3, 5, 7, 9, 11]
    compact = s["CompactBioBERT"].objective
    assert compact.attention_map == [[i, 2 * i + 1] for i in range(6)]
    assert compact.hidden_map == [[i, 2 * i] for i in range(1, 7)]
    tiny = s["TinyBioBERT"]
    assert tiny.init.config == {
        "num_hidden_layers": 4,
        "hidden_size": 312,
        "intermediate_size": 1200,
        "num_attention_heads": 12,
        "vocab_size": 28996,
        "max_position_embeddings": 512,
    }
    assert tiny.objective.attention_map == [[0, 2], [1, 5], [2, 8], [3, 11]]
    assert tiny.objective.hidden_map == [[0, 0], [1, 3], [2, 6], [3, 9], [4, 12]]
    assert s["DistilBioBERT"].objective.attention_map is None


def test_paper_continual_numbers():
    cfg = load_config(CONTINUAL, [])
    assert cfg.teacher is None and cfg.train.max_steps == 200_000
    assert [(s.name, s.init.pretrained) for s in cfg.students] == [
        ("BioDistilBERT", "distilbert-base-cased"),
        ("BioTinyBERT", "huawei-noah/TinyBERT_General_4L_312D"),
        ("BioMobileBERT", "google/mobilebert-uncased"),
    ]
    for s in cfg.students:
        assert (s.objective.kind, s.objective.weights, s.objective.temperature) == (
            "mlm",
            {"mlm": 1.0},
            None,
        )
        opt = s.optimizer
        assert (opt.lr, opt.warmup_steps, opt.max_steps, opt.weight_decay) == (1e-4, 1e4, 2e5, 0.01)


def test_demo_recipe_fits_the_demo_corpus():
    cfg = load_config(None, [])  # no --recipe: the demo
    assert cfg == load_config(DEMO_RECIPE, [])
    assert cfg.data.train_shards == cfg.data.eval_shards == "data/demo/shards"
    assert cfg.data.max_len == DEMO_MAX_LEN and cfg.data.mask_prob == 0.15
    assert cfg.data.entities == "data/demo/knowledge.json"
    # its teacher is the product's own, trained by recipes/demo_teacher.yaml on the same shards
    assert cfg.teacher.path == "data/demo/teacher"
    built = load_config(ROOT / cfg.teacher.build, [])
    assert built.data.train_shards == cfg.data.train_shards and len(built.students) == 1
    teacher = built.students[0]
    assert teacher.objective.kind == "mlm" and teacher.init.config["vocab_size"] == DEMO_VOCAB
    assert teacher.init.config["max_position_embeddings"] >= cfg.data.max_len
    kinds = [s.objective.kind for s in cfg.students]
    assert kinds == ["distilbiobert", "mlm", "compactbiobert", "mlm", "tinybiobert", "mlm"]
    tiny = cfg.students[4]
    assert (
        tiny.init.config["vocab_size"] == DEMO_VOCAB and tiny.init.config["num_hidden_layers"] == 2
    )
    assert all(s.optimizer.max_steps <= cfg.train.max_steps for s in cfg.students)


def test_mlm_twins_mirror_each_distilled_student(tmp_path):
    raw = yaml.safe_load(DISTILLED.read_text())
    cfg = config_from_dict(apply_overrides(raw, ["train.mlm_twins=true"]))
    names = [s.name for s in cfg.students]
    assert names == [
        "DistilBioBERT", "DistilBioBERT-MLM", "CompactBioBERT", "CompactBioBERT-MLM",
        "TinyBioBERT", "TinyBioBERT-MLM",
    ]  # fmt: skip
    for student, twin in zip(cfg.students[::2], cfg.students[1::2], strict=True):
        assert twin.twin_of == student.name and twin.objective.kind == "mlm"
        assert twin.init == student.init and twin.optimizer == student.optimizer
        assert twin.objective.weights == {"mlm": 1.0} and twin.objective.temperature is None
        assert twin.seed_name == student.seed_name == student.name  # same initial weights
    # the resolved recipe lists the twins and loads back to the same config, not to more twins
    dump_config(cfg, tmp_path / "resolved.yaml")
    assert load_config(tmp_path / "resolved.yaml", []) == cfg
    # --students keeps a student's twin; continual-MLM students get none
    picked = select_students(cfg, ["TinyBioBERT"])
    assert [s.name for s in picked.students] == ["TinyBioBERT", "TinyBioBERT-MLM"]
    continual = load_config(CONTINUAL, ["train.mlm_twins=true"])
    assert all(s.twin_of is None for s in continual.students)


@pytest.mark.parametrize(
    "twin, message",
    [
        ({"twin_of": "Nope"}, r"students.T.twin_of='Nope': expected another student"),
        ({"twin_of": "T"}, r"students.T.twin_of='T': expected another student"),
        (
            {"twin_of": "S", "init": {"config": {"num_hidden_layers": 3}}},
            r"students.T.twin_of='S': expected another student of the recipe with the same init",
        ),
        (
            {"twin_of": "S", "objective": {"kind": "distilbiobert"}},
            r"students.T.objective.kind='distilbiobert': expected mlm",
        ),
    ],
)
def test_twin_of_errors(twin, message):
    raw = minimal()
    entry = {**copy.deepcopy(raw["students"][0]), "name": "T", **twin}
    raw["students"].append(entry)
    with error(message):
        config_from_dict(raw)


def test_teacher_build_needs_a_path():
    raw = minimal()
    raw["teacher"] = {"config": {"num_hidden_layers": 2}, "build": "recipes/demo_teacher.yaml"}
    with error(r"teacher.build='recipes/demo_teacher.yaml': expected teacher.path too"):
        config_from_dict(raw)


# ---------------------------------------------------------------- overrides


def test_overrides_scalar_float_list_bool_by_student_name():
    cfg = load_config(
        DISTILLED,
        [
            "train.max_steps=20",
            "students.DistilBioBERT.optimizer.lr=1e-4",
            "students.CompactBioBERT.objective.weights.kd=2",
            "students.DistilBioBERT.init.from_teacher_layers=[0, 2]",
            "data.whole_word=true",
            "data.train_shards=['a/{000..009}.tar', b.tar]",
        ],
    )
    s = {x.name: x for x in cfg.students}
    assert cfg.train.max_steps == 20
    assert s["DistilBioBERT"].optimizer.lr == 1e-4
    assert isinstance(s["DistilBioBERT"].optimizer.lr, float)
    assert s["CompactBioBERT"].objective.weights == {"mlm": 1.0, "kd": 2.0, "att": 3.0, "cos": 3.0}
    assert s["DistilBioBERT"].init.from_teacher_layers == [0, 2]
    assert cfg.data.whole_word is True
    assert cfg.data.train_shards == ["a/{000..009}.tar", "b.tar"]
    assert s["TinyBioBERT"].optimizer.lr == 5e-4  # others untouched


def test_exponent_floats_without_a_dot_are_numbers(tmp_path):
    raw = minimal()
    text = yaml.safe_dump(raw).replace("lr: 0.001", "lr: 1e-3")
    (tmp_path / "r.yaml").write_text(text)
    assert "1e-3" in text
    cfg = load_config(tmp_path / "r.yaml", ["students.S.optimizer.eps=5E-9", "train.max_steps=1e3"])
    opt = cfg.students[0].optimizer
    assert (opt.lr, opt.eps, cfg.train.max_steps) == (1e-3, 5e-9, 1000)
    assert yaml.safe_load("x: 1e-3")["x"] == "1e-3"  # SafeLoader itself is left as it was


def test_override_replaces_a_section_whole():
    cfg = load_config(DISTILLED, ["students.DistilBioBERT.init={pretrained: some/dir}"])
    assert cfg.students[0].init.pretrained == "some/dir"
    assert cfg.students[0].init.from_teacher_layers is None
    cfg = load_config(CONTINUAL, ["teacher={config: {num_hidden_layers: 2}}"])
    assert cfg.teacher.config == {"num_hidden_layers": 2}


def test_override_errors():
    with error(r"unknown student 'Nope'.*DistilBioBERT"):
        load_config(DISTILLED, ["students.Nope.optimizer.lr=1e-4"])
    with error("expected key.sub=value"):
        load_config(DISTILLED, ["train.max_steps"])
    with error("expected key.sub=value"):
        load_config(DISTILLED, ["train..max_steps=3"])
    with error("train.max_steps is not a mapping"):
        load_config(DISTILLED, ["train.max_steps.x=3"])


def test_apply_overrides_does_not_mutate_its_input():
    raw = minimal()
    before = copy.deepcopy(raw)
    apply_overrides(raw, ["students.S.optimizer.lr=1", "teacher.path=x"])
    assert raw == before


# ---------------------------------------------------------------- validation


@pytest.mark.parametrize(
    "override, key",
    [
        ("trian.max_steps=3", "trian"),
        ("train.max_stepz=3", "train.max_stepz"),
        ("students.DistilBioBERT.optimizer.learning_rate=1", f"{D}.optimizer.learning_rate"),
        ("students.DistilBioBERT.init.layers=[1]", f"{D}.init.layers"),
        ("students.DistilBioBERT.objective.weights.att=1", f"{D}.objective.weights.att"),
        ("teacher.revision=main", "teacher.revision"),
    ],
)
def test_unknown_keys_name_the_dotted_key(override, key):
    with pytest.raises(ValueError) as e:
        load_config(DISTILLED, [override])
    assert f"'{key}'" in str(e.value)


def test_unknown_key_lists_the_allowed_ones():
    with error(r"allowed in 'train': max_steps, seed, log_every.*on_nonfinite"):
        load_config(DISTILLED, ["train.max_stepz=3"])
    with error(r"allowed in the recipe: run, data, teacher, train, students"):
        load_config(DISTILLED, ["trian.max_steps=3"])
    with error(r"kind 'distilbiobert' has the terms mlm, kd, cos"):
        load_config(DISTILLED, ["students.DistilBioBERT.objective.weights.att=1"])


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.max_steps=abc", "train.max_steps='abc': expected an integer"),
        ("train.max_steps=2.5", "train.max_steps=2.5: expected an integer"),
        ("data.whole_word=3", "data.whole_word=3: expected true or false"),
        ("data.mask_prob=true", "data.mask_prob=True: expected a number"),
        (
            "train.on_nonfinite=ignore",
            "train.on_nonfinite='ignore': expected one of 'stop', 'skip'",
        ),
        ("students.DistilBioBERT.optimizer.lr=fast", "students.DistilBioBERT.optimizer.lr='fast'"),
        (
            "students.DistilBioBERT.optimizer.betas=[0.9]",
            "optimizer.betas=\\[0.9\\]: expected a list",
        ),
        (
            "students.DistilBioBERT.init.from_teacher_layers=[0, a]",
            "from_teacher_layers\\[1\\]='a'",
        ),
        ("data.train_shards=3", "data.train_shards=3: expected a string or a list"),
        (
            "students.DistilBioBERT.objective=mlm",
            "students.DistilBioBERT.objective='mlm': expected",
        ),
    ],
)
def test_wrong_types_name_key_value_and_expectation(override, message):
    with error(message):
        load_config(DISTILLED, [override])


@pytest.mark.parametrize(
    "override, message",
    [
        ("students.DistilBioBERT.optimizer.lr=0", "optimizer.lr=0.0: expected a number > 0"),
        ("students.DistilBioBERT.optimizer.lr=.nan", "optimizer.lr=nan"),
        ("students.DistilBioBERT.optimizer.max_steps=0", "optimizer.max_steps=0"),
        ("students.DistilBioBERT.optimizer.warmup_steps=200000", "warmup_steps=200000"),
        ("students.DistilBioBERT.optimizer.warmup_steps=0", "warmup_steps=0"),
        ("students.DistilBioBERT.objective.temperature=-1", "temperature=-1.0"),
        ("students.DistilBioBERT.objective.weights.kd=-1", "weights.kd=-1.0"),
        ("train.max_steps=0", "train.max_steps=0"),
        ("train.log_every=0", "train.log_every=0"),
        ("data.mask_prob=1.5", "data.mask_prob=1.5"),
        ("run.name=a/b", "run.name='a/b'"),
        ("run.license=Apache-2.0", "run.license='Apache-2.0': expected a Hub license id"),
        ("run.license='MIT license'", "run.license='MIT license': expected a Hub license id"),
    ],
)
def test_out_of_range_values(override, message):
    with error(message):
        load_config(DISTILLED, [override])


@pytest.mark.parametrize(
    "override, message",
    [
        (
            "students.TinyBioBERT.init.config.num_hidden_layer=2",
            "unknown key 'students.TinyBioBERT.init.config.num_hidden_layer'.*did you mean "
            "'num_hidden_layers'",
        ),
        (
            "students.TinyBioBERT.init.config.hidden_size=310",
            "students.TinyBioBERT.init.config.hidden_size=310: expected a multiple of "
            "num_attention_heads=12",
        ),
        (
            "students.TinyBioBERT.init.config.hidden_size=big",
            "students.TinyBioBERT.init.config: not a valid BertConfig",
        ),
        (
            "students.TinyBioBERT.init.config.attn_implementation=eager",
            "attn_implementation is set by the trainer",
        ),
    ],
)
def test_bert_configs_in_recipes_are_checked_at_load(override, message):
    """BertConfig itself keeps unknown keys (a typo would silently train 12 layers)."""
    with error(message):
        load_config(DISTILLED, [override])


def test_init_needs_exactly_one_source():
    with error(r"students.DistilBioBERT.init sources=.*exactly one of from_teacher_layers"):
        load_config(DISTILLED, ["students.DistilBioBERT.init.pretrained=some/dir"])
    with error("exactly one of from_teacher_layers, config, pretrained"):
        config_from_dict(minimal(init={}))
    with error("teacher sources"):
        load_config(DISTILLED, ["teacher.config={num_hidden_layers: 2}"])


def test_from_teacher_layers_needs_a_teacher():
    with error("students.S.init.from_teacher_layers=.*teacher"):
        config_from_dict(minimal(init={"from_teacher_layers": [0, 1]}))
    with error("from_teacher_layers=.*distinct"):
        load_config(DISTILLED, ["students.DistilBioBERT.init.from_teacher_layers=[0, 0]"])


def test_distillation_needs_a_teacher():
    with error("students.S.objective.kind='distilbiobert': expected 'mlm'.*has none"):
        config_from_dict(minimal(objective={"kind": "distilbiobert"}))
    with error("objective.temperature=2.0: expected null"):
        config_from_dict(minimal(objective={"kind": "mlm", "temperature": 2.0}))


def test_duplicate_students():
    raw = minimal()
    raw["students"].append(copy.deepcopy(raw["students"][0]))
    with error("students.S.name='S': expected a name no other student has"):
        config_from_dict(raw)
    with error("students=.*at least one student"):
        config_from_dict({**minimal(), "students": []})


def test_missing_required_key():
    raw = minimal()
    del raw["students"][0]["optimizer"]["lr"]
    with error("'students.S.optimizer.lr' is required"):
        config_from_dict(raw)


@pytest.mark.parametrize(
    "override, value",
    [
        ("train.max_steps=1e5", 100_000),  # an integral float is an int where an int is wanted
        ("train.max_steps=7.0", 7),
        ("students.DistilBioBERT.optimizer.lr=1", 1.0),  # an int is a float
        ("data.whole_word=false", False),
    ],
)
def test_numbers_convert_only_where_nothing_is_lost(override, value):
    cfg = load_config(DISTILLED, [override])
    key = override.partition("=")[0].replace("students.DistilBioBERT", "students.0").split(".")
    node = cfg
    for part in key:
        node = node[int(part)] if part.isdigit() else getattr(node, part)
    assert node == value and type(node) is type(value)


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.max_steps=true", "train.max_steps=True: expected an integer >= 1"),
        ("train.seed='3'", "train.seed='3': expected an integer >= 0"),
        ("data.whole_word=1", "data.whole_word=1: expected true or false"),
        ("data.whole_word='true'", "data.whole_word='true': expected true or false"),
        ("students.DistilBioBERT.optimizer.eps=false", "optimizer.eps=False: expected a number"),
        ("students.DistilBioBERT.optimizer.lr=.inf", "optimizer.lr=inf: expected a number > 0"),
        ("run.output_dir=3", "run.output_dir=3: expected a string"),
        ("data.slots=0", "data.slots=0: expected an integer >= 1 or null"),
        ("students.DistilBioBERT.optimizer.betas=[0.9, 1]", "optimizer.betas\\[1\\]=1.0: expected"),
        ("teacher.config=[1]", "teacher.config=\\[1\\]: expected a mapping or null"),
        ("students=[3]", "students\\[0\\]=3: expected a mapping with keys name, init"),
    ],
)
def test_bools_are_no_numbers_and_strings_no_numbers(override, message):
    with error(message):
        load_config(DISTILLED, [override])


@pytest.mark.parametrize(
    "raw, message",
    [
        (  # several problems at once: the first unknown key is the one line
            {**minimal(), "train": {"max_steps": "x", "seed": -1, "log_evry": 2}},
            "^unknown key 'train.log_evry'; allowed in 'train': max_steps, seed,",
        ),
        (
            {**minimal(), "train": {"max_steps": "x", "seed": -1}},
            "^train.max_steps='x': expected an integer >= 1$",
        ),
        ({**minimal(), "train": {}}, "^'train.max_steps' is required$"),
        (
            [],
            "^recipe=\\[\\]: expected a mapping with keys run, data, teacher, train, students, "
            "export$",
        ),
    ],
)
def test_schema_errors_are_one_line(raw, message):
    """pydantic reports every problem over several lines; the user gets the first, on one."""
    with error(message) as e:
        config_from_dict(raw)
    assert "\n" not in str(e.value) and "pydantic" not in str(e.value)


def test_every_key_has_a_description():
    """--print-keys reads each key's description from its Field; none may be left out."""
    rows = recipe_keys()
    assert len(rows) > 40
    assert [key for key, _, _, note in rows if not note.strip()] == []
    text = render_keys()
    assert "data.slots" in text and "train.keep_global_batch" in text
    for key, kind, default, note in rows:
        assert f"{kind}  = {default}  # {note}" in text, key
    row = {key: (kind, default) for key, kind, default, _ in rows}
    assert row["data.mask_prob"] == ("float in (0, 1)", "0.15")
    assert row["train.max_steps"] == ("int >= 1", "required")


def test_objective_defaults_and_layer_maps():
    raw = minimal(
        init={"from_teacher_layers": [1, 3]},
        objective={"kind": "compactbiobert", "weights": {"att": 0}},
    )
    raw["teacher"] = {"config": {"num_hidden_layers": 4}}
    obj = config_from_dict(raw).students[0].objective
    assert obj.temperature == 1.0 and obj.weights == {"mlm": 1.0, "kd": 5.0, "att": 0, "cos": 3.0}
    assert (obj.attention_map, obj.hidden_map) == ([[0, 1], [1, 3]], [[1, 2], [2, 4]])
    assert KINDS["tinybiobert"].layer_maps(4) == (
        [[0, 2], [1, 5], [2, 8], [3, 11]],
        [[0, 0], [1, 3], [2, 6], [3, 9], [4, 12]],
    )
    assert KINDS["distilbiobert"].layer_maps is None


def test_layer_indices_checked_against_known_depths():
    def load(*overrides: str):  # a teacher of 4 layers from its config: its depth is known
        return load_config(DEMO_RECIPE, ["teacher={config: {num_hidden_layers: 4}}", *overrides])

    with error("DistilBioBERT.init.from_teacher_layers=\\[7\\]: expected teacher indices < 4"):
        load("students.DistilBioBERT.init.from_teacher_layers=[0, 7]")
    with error("TinyBioBERT.objective.attention_map=\\[5\\]: expected teacher indices < 4"):
        load("students.TinyBioBERT.objective.attention_map=[[0, 1], [1, 5]]")
    with error("TinyBioBERT.objective.hidden_map=\\[3\\]: expected student indices < 3"):
        load("students.TinyBioBERT.objective.hidden_map=[[0, 0], [3, 4]]")
    with error("hidden_map=.*pairs"):
        load("students.TinyBioBERT.objective.hidden_map=[[0, 0, 1]]")
    with error("DistilBioBERT.objective.hidden_map=.*expected null"):
        load("students.DistilBioBERT.objective.hidden_map=[[1, 2]]")
    deep = [
        "teacher.config.num_hidden_layers=12",
        "students.TinyBioBERT.objective.hidden_map=[[0, 13]]",
    ]
    with error("TinyBioBERT.objective.hidden_map=\\[13\\]: expected teacher indices < 13"):
        load(*deep)


def test_select_students():
    cfg = load_config(DISTILLED, [])
    picked = select_students(cfg, ["TinyBioBERT", "DistilBioBERT"])
    assert [s.name for s in picked.students] == ["DistilBioBERT", "TinyBioBERT"]  # recipe order
    assert len(cfg.students) == 3  # the input is untouched
    with error(r"unknown student\(s\) \['Nope'\]; the recipe has: DistilBioBERT, CompactBioBERT"):
        select_students(cfg, ["Nope"])


def test_to_dict_is_plain_and_leaves_out_unset_fields():
    d = to_dict(load_config(CONTINUAL, []))
    assert "teacher" not in d and d["students"][0]["optimizer"]["betas"] == [0.9, 0.999]
    assert "temperature" not in d["students"][0]["objective"]
    assert config_from_dict(d) == load_config(CONTINUAL, [])


# ---------------------------------------------------------------- DeepSpeed JSON


@pytest.mark.parametrize("path", DS_CONFIGS, ids=lambda p: p.name)
def test_ds_configs(path):
    ds = load_ds_config(path)
    stage = {"zero1": 1, "zero2": 2, "zero3": 3, "zero2_offload": 2}[path.stem]
    assert ds["bf16"] == {"enabled": True}
    assert ds["zero_optimization"]["stage"] == stage
    assert ds["train_micro_batch_size_per_gpu"] == 24 and ds["gradient_accumulation_steps"] == 1
    assert ds["gradient_clipping"] == 1.0
    assert "optimizer" not in ds and "scheduler" not in ds
    offload = ds["zero_optimization"].get("offload_optimizer")
    if path.stem == "zero2_offload":
        assert offload == {"device": "cpu", "pin_memory": True}
    else:
        assert offload is None


def test_all_ds_configs_are_shipped():
    assert {p.stem for p in DS_CONFIGS} == {"zero1", "zero2", "zero3", "zero2_offload"}


def test_ds_config_for_student_fills_optimizer_and_schedule():
    cfg = load_config(DISTILLED, [])
    ds = load_ds_config(ROOT / "ds_configs" / "zero2.json")
    before = copy.deepcopy(ds)
    tiny = cfg.students[2]
    out = ds_config_for_student(ds, tiny)
    assert ds == before  # input untouched
    assert out["optimizer"] == {
        "type": "AdamW",
        "params": {"lr": 5e-4, "betas": [0.9, 0.999], "eps": 1e-8, "weight_decay": 1e-4},
    }
    assert out["scheduler"] == {
        "type": "WarmupDecayLR",
        "params": {
            "warmup_min_lr": 0.0,
            "warmup_max_lr": 5e-4,
            "warmup_num_steps": 10000,
            "total_num_steps": 100000,
            "warmup_type": "linear",
        },
    }
    assert {k: v for k, v in out.items() if k not in ("optimizer", "scheduler")} == ds
    out["bf16"]["enabled"] = False
    assert ds["bf16"]["enabled"] is True  # a deep copy
    torch_adam = ds_config_for_student(ds, tiny, torch_adam=True)
    assert torch_adam["optimizer"]["params"]["torch_adam"] is True
    with ds_error("remove these blocks"):
        ds_config_for_student(out, tiny)


def test_load_ds_config_errors(tmp_path):
    with pytest.raises(UserError, match="no such file.*ds_configs/zero2.json"):
        load_ds_config(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{bf16: on}")
    with ds_error("not valid JSON"):
        load_ds_config(tmp_path / "bad.json")
    (tmp_path / "list.json").write_text("[]")
    with ds_error("expected a JSON object"):
        load_ds_config(tmp_path / "list.json")
    (tmp_path / "owned.json").write_text(json.dumps({"optimizer": {"type": "Adam"}}))
    with ds_error("has optimizer; .*recipe"):
        load_ds_config(tmp_path / "owned.json")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (
            {"gradient_clipingg": 1.0},
            "'gradient_clipingg' is not a DeepSpeed key; did you mean gradient_clipping?",
        ),
        (
            {"zero_optimization": {"stage": 2, "overlap_com": True}},
            "'zero_optimization.overlap_com' is not a DeepSpeed key; did you mean overlap_comm?",
        ),
        ({"fp16": {"enabled": True}}, "fp16 is not supported: the trainer trains in bf16"),
    ],
)
def test_ds_config_typos_and_fp16_are_refused(tmp_path, content, message):
    """DeepSpeed ignores keys it does not know (a misspelt gradient_clipping turns clipping
    off) and fp16 needs loss scaling: both are refused when the JSON is read."""
    path = tmp_path / "ds.json"
    path.write_text(json.dumps({"train_micro_batch_size_per_gpu": 2, **content}))
    with pytest.raises(ValueError) as e:
        load_ds_config(path)
    assert str(e.value).startswith(f"DeepSpeed config {path}: ")
    assert message in str(e.value)


# each bad zero_optimization: (section, the message after "DeepSpeed config PATH: ")
BAD_ZERO = {
    "misspelt_key": (
        {"stage": 2, "overlap_com": True},
        "'zero_optimization.overlap_com' is not a DeepSpeed key; did you mean overlap_comm?",
    ),
    "misspelt_nested_key": (
        {"stage": 2, "offload_optimizer": {"devce": "cpu"}},
        "'zero_optimization.offload_optimizer.devce' is not a DeepSpeed key; did you mean device?",
    ),
    "stage_out_of_range": ({"stage": 7}, "zero_optimization.stage=7: Input should be 0, 1, 2, 3"),
    "stage_as_a_word": ({"stage": "two"}, "zero_optimization.stage='two': Input should be"),
    "bucket_as_a_string": (
        {"stage": 2, "reduce_bucket_size": "5e8"},
        "zero_optimization.reduce_bucket_size='5e8': Input should be a valid integer",
    ),
    "negative_bucket": (
        {"stage": 2, "reduce_bucket_size": -1},
        "zero_optimization.reduce_bucket_size=-1: Input should be greater than 0",
    ),
    "offload_to_gpu": (
        {"stage": 2, "offload_optimizer": {"device": "gpu"}},
        "zero_optimization.offload_optimizer.device='gpu': Input should be 'none', 'cpu' or",
    ),
    "two_errors": ({"stage": 7, "overlap_comm": "maybe"}, "(and 1 more)"),
    "not_an_object": ([2], "zero_optimization is [2], expected a JSON object"),
}


@pytest.mark.parametrize("case", sorted(BAD_ZERO))
def test_ds_config_zero_section_is_read_as_deepspeed_reads_it(tmp_path, case):
    """zero_optimization is validated by DeepSpeed's own model (DeepSpeedZeroConfig): a bad
    key or value, at any depth, is a user error of one line naming the file and the key."""
    section, message = BAD_ZERO[case]
    path = tmp_path / "ds.json"
    path.write_text(json.dumps({"train_micro_batch_size_per_gpu": 2, "zero_optimization": section}))
    with pytest.raises(UserError) as e:
        load_ds_config(path)
    assert str(e.value).startswith(f"DeepSpeed config {path}: ")
    assert message in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ("ds.zero_optimization.stage=9", "zero_optimization.stage=9: Input should be"),
        ("ds.zero_optimization.offload_optimizer.device=gpu", "offload_optimizer.device='gpu'"),
    ],
)
def test_ds_overrides_of_the_zero_section_are_validated_too(item, message):
    ds = load_ds_config(ROOT / "ds_configs" / "zero2.json")
    with pytest.raises(UserError, match=re.escape(message)):
        apply_ds_overrides(ds, [item])


def test_ds_overrides_know_the_nested_zero_keys():
    ds = load_ds_config(ROOT / "ds_configs" / "zero2.json")
    out = apply_ds_overrides(ds, ["ds.zero_optimization.offload_optimizer.device=cpu"])
    assert out["zero_optimization"]["offload_optimizer"] == {"device": "cpu"}
    item = "ds.zero_optimization.offload_optimizer.devce=cpu"
    with pytest.raises(ValueError, match="'devce' is not a DeepSpeed key at .*did you mean device"):
        apply_ds_overrides(ds, [item])


def test_fp16_override_is_refused():
    ds = load_ds_config(ROOT / "ds_configs" / "zero2.json")
    with ds_error("override 'ds.fp16.enabled=true': fp16 is not supported"):
        apply_ds_overrides(ds, ["ds.fp16.enabled=true"])


def test_missing_or_invalid_recipe(tmp_path):
    with pytest.raises(UserError, match="no such file"):
        load_config(tmp_path / "nope.yaml", [])
    (tmp_path / "bad.yaml").write_text("run: [unclosed\n")
    with error("not valid YAML"):
        load_config(tmp_path / "bad.yaml", [])
    (tmp_path / "empty.yaml").write_text("")
    with error("recipe=None: expected a mapping"):
        load_config(tmp_path / "empty.yaml", [])
    assert Path(DEMO_RECIPE).is_file()


def test_bf16_becomes_fp32_on_a_cpu_without_native_bf16(monkeypatch, caplog):
    import torch

    from trainer.config.ds_json import KEEP_CPU_BF16, for_device

    ds = load_ds_config(ROOT / "ds_configs" / "zero2.json")
    cpu, gpu = torch.device("cpu"), torch.device("cuda", 0)
    monkeypatch.delenv(KEEP_CPU_BF16, raising=False)
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)
    out = for_device(ds, cpu)
    assert out["bf16"]["enabled"] is False and ds["bf16"]["enabled"] is True  # a copy
    assert {k: v for k, v in out.items() if k != "bf16"} == {
        k: v for k, v in ds.items() if k != "bf16"
    }
    assert "training in fp32 instead; BIODISTILL_CPU_BF16=1 keeps bf16" in caplog.text
    assert for_device(ds, gpu) is ds  # GPUs train as the JSON says
    monkeypatch.setenv(KEEP_CPU_BF16, "1")
    assert for_device(ds, cpu) is ds
    monkeypatch.delenv(KEEP_CPU_BF16)
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: True)
    assert for_device(ds, cpu) is ds  # a CPU with bf16 kernels keeps bf16
    fp32 = {**ds, "bf16": {"enabled": False}}
    assert for_device(fp32, cpu) is fp32


def test_ds_overrides_set_deepspeed_keys_and_refuse_unknown_ones():
    ds = load_ds_config(ROOT / "ds_configs" / "zero2.json")
    out = apply_ds_overrides(
        ds,
        [
            "ds.train_micro_batch_size_per_gpu=2",  # in the JSON
            "ds.gradient_accumulation_steps=8",  # a DeepSpeed key the JSON does not carry
            "ds.zero_optimization.stage=3",
            "ds.zero_optimization.offload_optimizer={device: cpu}",  # a ZeRO field, YAML value
            "ds.bf16.enabled=false",
        ],
    )
    assert out["train_micro_batch_size_per_gpu"] == 2 and out["gradient_accumulation_steps"] == 8
    assert out["zero_optimization"]["stage"] == 3
    assert out["zero_optimization"]["offload_optimizer"] == {"device": "cpu"}
    assert out["bf16"] == {"enabled": False}
    assert ds["zero_optimization"]["stage"] == 2  # the loaded JSON is left as it was
    for item, fragment in (
        ("ds.train_micro_batch_size=2", "did you mean train_micro_batch_size_per_gpu"),
        ("ds.zero_optimization.stag=3", "'stag' is not a DeepSpeed key at zero_optimization"),
        ("ds.bf16.enable=true", "did you mean enabled"),
        ("ds.optimizer.type=Adam", "the recipe owns"),
        ("ds.gradient_clipping.x=1", "gradient_clipping is 1.0, not a section"),
        ("ds.train_batch_size", "expected ds.key.sub=value"),
    ):
        with pytest.raises(ValueError, match=fragment):
            apply_ds_overrides(ds, [item])


def test_print_keys_needs_no_torch():
    """`python -m trainer --print-keys` on a machine without torch, transformers or DeepSpeed:
    the recipe schema and the objective kinds are plain data (trainer/distill/kinds.py)."""
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('torch', 'transformers', 'deepspeed'):\n"
        "            raise ImportError(f'{name} is not installed here')\n"
        "sys.meta_path.insert(0, Block())\n"
        "from trainer.main import main\n"
        "sys.exit(main(['--print-keys']))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "train.global_batch" in done.stdout and "students.NAME.objective.kind" in done.stdout


def test_a_frozen_config_refuses_every_change():
    """The builder freezes the config once recipe.resolved.yaml is written: a later change of any
    key, in any section, is an error rather than a run that differs from its file."""
    from data_pipeline.schema import freeze

    cfg = freeze(load_config(DEMO_RECIPE))
    student = cfg.students[0]
    for node, key, value in (
        (cfg.train, "max_steps", 3),
        (student.objective, "attention_map", [[0, 1]]),
        (student.optimizer, "lr", 1.0),
        (cfg.data, "max_len", 8),
    ):
        with pytest.raises(AttributeError, match=rf"{key}: the configuration is frozen"):
            setattr(node, key, value)
    assert load_config(DEMO_RECIPE).train.max_steps != 3  # a new load is not frozen
    copied = copy.deepcopy(student.objective)  # nor is a copy (a plan's, a benchmark's)
    copied.attention_map = [[0, 1]]
    assert student.objective.attention_map != [[0, 1]]
    fresh = load_config(DEMO_RECIPE)
    fresh.train.max_steps = 3
