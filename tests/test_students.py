"""Students built from recipes (trainer/models/students.py) and the frozen teacher
(trainer/models/teacher.py).

.venv/bin/pytest tests/test_students.py -q

A random 4-layer teacher (hidden 32, vocabulary 100) stands in for BioBERT; students have 2 layers.
The teacher's weights are re-drawn at random before students copy from it, so that no copied tensor
can match by chance (a fresh BERT has all-ones LayerNorms and a zero MLM bias).
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from transformers import BertConfig, BertForMaskedLM, BertModel

from trainer.config.recipe import TeacherSection, config_from_dict
from trainer.distill.losses import IGNORE_INDEX
from trainer.distill.teacher_signals import LOGITS, Need
from trainer.models.attention import IMPLEMENTATION, returns_probabilities
from trainer.models.parameters import count_parameters
from trainer.models.students import build_student
from trainer.models.teacher import Teacher, load_teacher_model
from trainer.train.batch import DeviceBatch

VOCAB, T_HIDDEN, S_HIDDEN, T_LAYERS, MAX_LEN, SEED = 100, 32, 16, 4, 16, 42
TEACHER = {
    "num_hidden_layers": T_LAYERS,
    "hidden_size": T_HIDDEN,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "vocab_size": VOCAB,
    "max_position_embeddings": MAX_LEN,
}
TINY_INIT = {
    "config": {
        "num_hidden_layers": 2,
        "hidden_size": S_HIDDEN,
        "num_attention_heads": 2,
        "intermediate_size": 32,
        "vocab_size": VOCAB,
        "max_position_embeddings": MAX_LEN,
    }
}
TINY_MAPS = {"attention_map": [[0, 1], [1, 3]], "hidden_map": [[0, 0], [1, 2], [2, 4]]}
STUDENTS = {
    "DistilBioBERT": ({"from_teacher_layers": [0, 2]}, {"kind": "distilbiobert"}),
    "CompactBioBERT": ({"from_teacher_layers": [1, 3]}, {"kind": "compactbiobert"}),
    "TinyBioBERT": (TINY_INIT, {"kind": "tinybiobert", **TINY_MAPS}),
    "Continual": (TINY_INIT, {"kind": "mlm"}),
}


pytestmark = pytest.mark.usefixtures("one_thread")


def _recipe(*entries: tuple[str, dict, dict]) -> dict:
    return {
        "run": {"name": "t"},
        "data": {"train_shards": "shards", "max_len": MAX_LEN},
        "teacher": {"config": copy.deepcopy(TEACHER)},
        "train": {"max_steps": 10, "seed": SEED},
        "students": [
            {
                "name": name,
                "init": copy.deepcopy(init),
                "objective": copy.deepcopy(objective),
                "optimizer": {"lr": 1e-3, "weight_decay": 0.0, "warmup_steps": 2},
            }
            for name, init, objective in entries
        ],
    }


def _spec(name: str, init: dict | None = None, objective: dict | None = None):
    default_init, default_objective = STUDENTS[name]
    entry = (name, init or default_init, objective or default_objective)
    return config_from_dict(_recipe(entry)).students[0]


def _teacher_model() -> BertForMaskedLM:
    model = load_teacher_model(
        TeacherSection(config=copy.deepcopy(TEACHER)),
        seed=7,
        vocab_size=VOCAB,
    )
    return _redraw(model)


def _redraw(model: nn.Module) -> nn.Module:
    """Every weight at random, LayerNorms and biases included, and attention far from uniform."""
    gen = torch.Generator().manual_seed(8)
    with torch.no_grad():
        for name, p in model.named_parameters():  # tied weights are visited once
            noise = torch.randn(p.shape, generator=gen)
            p.copy_(1 + 0.1 * noise if "LayerNorm.weight" in name else 0.3 * noise)
    return model


def _build(name: str, teacher: nn.Module | None, *, seed: int = SEED, **kw):
    return build_student(_spec(name, **kw), teacher_model=teacher, vocab_size=VOCAB, seed=seed)


def _batch() -> DeviceBatch:
    gen = torch.Generator().manual_seed(9)
    input_ids = torch.randint(5, VOCAB, (2, 12), generator=gen)
    attention_mask = torch.ones(2, 12, dtype=torch.long)
    attention_mask[1, 8:] = 0
    labels = torch.full((2, 12), IGNORE_INDEX)
    labels[0, 2], labels[0, 7], labels[1, 1], labels[1, 5] = 11, 12, 13, 14
    host = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
    return DeviceBatch.from_host(host, torch.device("cpu"))


def _equal_state(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


# ---------------------------------------------------------------- from_teacher_layers


@pytest.mark.parametrize("layers", [[1, 3], [3, 0]])
def test_from_teacher_layers_copies_embeddings_layers_in_order_and_head(layers):
    teacher = _teacher_model()
    init = {"from_teacher_layers": layers}
    mlm = _build("CompactBioBERT", teacher, init=init).module.mlm
    assert mlm.config.num_hidden_layers == len(layers)
    assert mlm.config.hidden_size == T_HIDDEN
    assert _equal_state(mlm.bert.embeddings, teacher.bert.embeddings)
    for i, layer in enumerate(layers):
        assert _equal_state(mlm.bert.encoder.layer[i], teacher.bert.encoder.layer[layer]), i
    assert _equal_state(mlm.cls.predictions.transform, teacher.cls.predictions.transform)
    assert torch.equal(mlm.cls.predictions.bias, teacher.cls.predictions.bias)
    # The head as a function: the same logits from the same hidden rows.
    rows = torch.randn(5, T_HIDDEN, generator=torch.Generator().manual_seed(10))
    with torch.no_grad():
        assert torch.allclose(mlm.cls(rows), teacher.cls(rows), atol=1e-6)
    # Copies, not shares: the teacher is later cast and moved on its own.
    assert all(p.data_ptr() != q.data_ptr() for p in mlm.parameters() for q in teacher.parameters())


def test_copied_decoder_stays_tied_to_the_students_embeddings():
    teacher = _teacher_model()
    mlm = _build("DistilBioBERT", teacher).module.mlm
    decoder = mlm.cls.predictions.decoder.weight
    assert decoder is mlm.bert.embeddings.word_embeddings.weight
    assert decoder is not teacher.bert.embeddings.word_embeddings.weight
    with torch.no_grad():
        mlm.bert.embeddings.word_embeddings.weight[3] += 1.0
    assert torch.equal(decoder[3], mlm.bert.embeddings.word_embeddings.weight[3])


@pytest.mark.parametrize(
    "name, weights, probabilities",
    [
        ("DistilBioBERT", None, False),
        ("CompactBioBERT", None, True),
        ("CompactBioBERT", {"att": 0}, False),
        ("TinyBioBERT", None, True),
        ("TinyBioBERT", {"att": 0}, False),
        ("Continual", None, False),
    ],
)
def test_attention_probabilities_only_where_the_objective_reads_them(name, weights, probabilities):
    objective = dict(STUDENTS[name][1])
    if weights:
        objective["weights"] = weights
    built = _build(name, _teacher_model(), objective=objective)
    mlm, need = built.module.mlm, built.objective.student_need()
    assert mlm.config._attn_implementation == IMPLEMENTATION  # every model: the CPU kernel rule
    assert bool(need.attentions) == probabilities
    for layer in range(mlm.config.num_hidden_layers):
        assert returns_probabilities(mlm, layer) == (layer in need.attentions)


# ---------------------------------------------------------------- init.config


def test_config_init_is_seeded_by_seed_and_name():
    teacher = _teacher_model()
    first = _build("TinyBioBERT", teacher).module
    again = _build("TinyBioBERT", teacher).module
    assert _equal_state(first, again)
    other_name = build_student(
        _spec("TinyBioBERT").model_copy(update={"name": "TinyBioBERT2"}),
        teacher_model=teacher,
        vocab_size=VOCAB,
        seed=SEED,
    ).module
    other_seed = _build("TinyBioBERT", teacher, seed=SEED + 1).module
    for other in (other_name, other_seed):
        w, o = first.mlm.bert.encoder.layer[0], other.mlm.bert.encoder.layer[0]
        assert not torch.equal(w.attention.self.query.weight, o.attention.self.query.weight)
        assert not torch.equal(first.fit_dense.weight, other.fit_dense.weight)


def test_building_leaves_the_global_random_stream_alone():
    teacher = _teacher_model()
    torch.manual_seed(0)
    expected = torch.rand(4)
    torch.manual_seed(0)
    _build("TinyBioBERT", teacher)
    assert torch.equal(torch.rand(4), expected)


@pytest.mark.parametrize(
    "name, weights",
    [
        ("TinyBioBERT", {"hid": 0}),
        ("DistilBioBERT", None),
        ("CompactBioBERT", None),
        ("Continual", None),
    ],
)
def test_only_a_student_with_hid_mse_has_fit_dense(name, weights):
    objective = dict(STUDENTS[name][1], **({"weights": weights} if weights else {}))
    assert _build(name, _teacher_model(), objective=objective).module.fit_dense is None


def test_tiny_student_fit_dense_maps_student_to_teacher_width():
    built = _build("TinyBioBERT", _teacher_model())
    fit = built.module.fit_dense
    assert isinstance(fit, nn.Linear)
    assert (fit.in_features, fit.out_features) == (S_HIDDEN, T_HIDDEN)
    # The paper's plain nn.Linear: PyTorch's default, uniform in +-1/sqrt(fan_in), bias too
    # (not BERT's normal(0, initializer_range) with a zero bias).
    bound = 1 / S_HIDDEN**0.5
    for p in (fit.weight, fit.bias):
        assert p.abs().max() <= bound and torch.count_nonzero(p) == p.numel()
    assert fit.weight.std().item() == pytest.approx(bound / 3**0.5, rel=0.1)
    assert fit.bias.abs().max() > bound / 2
    # Trained with the student, never exported with the masked LM.
    assert all(p is not fit.weight for p in built.module.mlm.parameters())
    assert count_parameters(built.module) == count_parameters(built.module.mlm) + sum(
        p.numel() for p in fit.parameters()
    )


# ---------------------------------------------------------------- StudentModule forward


def test_tiny_student_forward_returns_projected_hidden_states():
    built, batch = _build("TinyBioBERT", _teacher_model()), _batch()
    module = built.module.eval()
    out = module(batch.input_ids, batch.attention_mask, batch.masked_index)
    assert set(out) == {"logits", "proj.0", "proj.1", "proj.2", "attn.0", "attn.1"}
    with torch.no_grad():
        ref = module.mlm(
            input_ids=batch.input_ids,
            attention_mask=batch.attention_mask,
            output_hidden_states=True,
        )
        for k in range(3):
            assert out[f"proj.{k}"].shape == (2, 12, T_HIDDEN)
            want = module.fit_dense(ref.hidden_states[k])
            assert torch.allclose(out[f"proj.{k}"], want, atol=1e-6), k
    assert out[LOGITS].shape == (batch.masked, VOCAB)


def test_other_students_return_hidden_states_unprojected():
    built, batch = _build("CompactBioBERT", _teacher_model()), _batch()
    out = built.module.eval()(batch.input_ids, batch.attention_mask, batch.masked_index)
    assert set(out) == {"logits", "hidden.1", "hidden.2", "attn.0", "attn.1"}
    assert out["hidden.2"].shape == (2, 12, T_HIDDEN)


@pytest.mark.parametrize("name", ["TinyBioBERT", "CompactBioBERT"])
def test_logits_only_returns_only_logits(name):
    built, batch = _build(name, _teacher_model()), _batch()
    out = built.module.eval()(
        batch.input_ids, batch.attention_mask, batch.masked_index, logits_only=True
    )
    assert set(out) == {LOGITS}
    assert out[LOGITS].shape == (batch.masked, VOCAB)


# ---------------------------------------------------------------- vocabularies


def test_student_vocabulary_smaller_than_the_shards_is_refused():
    init = copy.deepcopy(TINY_INIT)
    init["config"]["vocab_size"] = VOCAB - 10
    with pytest.raises(
        ValueError, match=rf"students.Continual: its vocabulary has {VOCAB - 10} .* has {VOCAB}"
    ):
        _build("Continual", None, init=init)


def test_kd_with_different_vocabularies_is_refused():
    init = copy.deepcopy(TINY_INIT)
    init["config"]["vocab_size"] = VOCAB + 20
    with pytest.raises(ValueError, match=rf"compares its {VOCAB + 20} logits .* {VOCAB}"):
        _build("TinyBioBERT", _teacher_model(), init=init)
    # Without a logit term the teacher's vocabulary does not matter.
    objective = {"kind": "tinybiobert", "weights": {"soft_ce": 0}, **TINY_MAPS}
    _build("TinyBioBERT", _teacher_model(), init=init, objective=objective)


# ---------------------------------------------------------------- the SDPA trap, end to end


def test_attention_terms_are_nonzero_on_a_real_forward():
    cfg = config_from_dict(
        _recipe(*[(n, *STUDENTS[n]) for n in ("DistilBioBERT", "CompactBioBERT", "TinyBioBERT")])
    )
    teacher_model = load_teacher_model(cfg.teacher, seed=7, vocab_size=VOCAB)
    # A fresh BERT (std 0.02) attends almost uniformly in every layer, so its maps and a copy's
    # differ by ~1e-9: redrawn, they differ as a trained teacher's do.
    _redraw(teacher_model)
    built = [
        build_student(s, teacher_model=teacher_model, vocab_size=VOCAB, seed=SEED)
        for s in cfg.students
    ]
    need = Need()
    for b in built:
        need = need | b.objective.teacher_need()
    teacher, batch = Teacher(teacher_model, need), _batch()
    signals = teacher(batch)
    for b in built:
        out = b.module.eval()(batch.input_ids, batch.attention_mask, batch.masked_index)
        loss, terms = b.objective(out, signals, batch)
        assert set(terms) == set(b.objective.weights), b.name
        assert all(torch.isfinite(v) for v in terms.values()), (b.name, terms)
        if b.name != "DistilBioBERT":
            assert terms["att"].item() > 1e-4, (b.name, terms)  # SDPA would give 0 or no key
        loss.backward()
        query = b.module.mlm.bert.encoder.layer[0].attention.self.query.weight
        assert query.grad is not None and query.grad.abs().sum() > 0, b.name


def test_teacher_with_sdpa_attention_is_refused_when_maps_are_needed():
    model = BertForMaskedLM(BertConfig(**TEACHER, attn_implementation="sdpa"))
    with pytest.raises(ValueError, match=r"teacher: .*'sdpa' attention"):
        Teacher(model, Need(logits=True, attentions=frozenset({1})))


# ---------------------------------------------------------------- load_teacher_model


def test_teacher_without_mlm_head_is_refused_unless_allowed(tmp_path):
    config = BertConfig(**TEACHER)
    torch.manual_seed(11)
    BertModel(config, add_pooling_layer=False).save_pretrained(tmp_path)
    section = TeacherSection(path=str(tmp_path))
    with pytest.raises(ValueError, match=r"newly\s+initialised .*cls\.predictions\.transform"):
        load_teacher_model(section, seed=1, vocab_size=VOCAB)
    section.allow_new_weights = True
    model = load_teacher_model(section, seed=1, vocab_size=VOCAB)
    assert isinstance(model, BertForMaskedLM)
    saved = BertModel.from_pretrained(tmp_path, add_pooling_layer=False)
    assert _equal_state(model.bert.encoder, saved.encoder)


def test_teacher_with_its_head_loads_from_a_directory(tmp_path):
    torch.manual_seed(12)
    original = BertForMaskedLM(BertConfig(**TEACHER))
    original.save_pretrained(tmp_path)
    model = load_teacher_model(TeacherSection(path=str(tmp_path)), seed=1, vocab_size=VOCAB)
    assert model.config._attn_implementation == IMPLEMENTATION
    assert _equal_state(model, original)


def test_teacher_vocabulary_smaller_than_the_shards_is_refused(tmp_path):
    with pytest.raises(ValueError, match=rf"teacher.config: .*has {VOCAB} entries.*{VOCAB + 1}"):
        load_teacher_model(TeacherSection(config=dict(TEACHER)), seed=1, vocab_size=VOCAB + 1)
    BertForMaskedLM(BertConfig(**TEACHER)).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"teacher.path=.*re-shard with the teacher's tokenizer"):
        load_teacher_model(TeacherSection(path=str(tmp_path)), seed=1, vocab_size=VOCAB + 1)


def test_teacher_config_that_bert_config_rejects_names_the_key():
    bad = dict(TEACHER, attn_implementation="sdpa")  # the trainer chooses the implementation
    with pytest.raises(ValueError, match=r"teacher.config: not a valid BertConfig"):
        load_teacher_model(TeacherSection(config=bad), seed=1, vocab_size=VOCAB)


BAD_CONFIGS = [
    pytest.param({"hidden_size": "big"}, id="wrong-type"),
    pytest.param({"hidden_size": 30, "num_attention_heads": 4}, id="heads-do-not-divide-hidden"),
    pytest.param({"num_hidden_layer": 2}, id="unknown-key"),
]


@pytest.mark.parametrize("values", BAD_CONFIGS)
def test_bad_teacher_config_raises_value_error_naming_the_key(values):
    bad = dict(TEACHER, **values)
    with pytest.raises(ValueError, match=r"teacher.config"):
        load_teacher_model(TeacherSection(config=bad), seed=1, vocab_size=VOCAB)


@pytest.mark.parametrize(
    "values",
    [
        pytest.param({"attn_implementation": "sdpa"}, id="trainer-owned-key"),
        pytest.param({"hidden_size": "big"}, id="wrong-type"),
    ],
)
def test_bad_student_init_config_raises_value_error_naming_the_key(values):
    init = copy.deepcopy(TINY_INIT)
    init["config"].update(values)
    with pytest.raises(ValueError, match=r"students.Continual.init.config: not a valid"):
        _build("Continual", None, init=init)


# ---------------------------------------------------------------- Teacher


def test_teacher_is_frozen_and_runs_without_grad():
    model = _teacher_model()
    model.config.hidden_dropout_prob = 0.5
    for m in model.modules():
        if isinstance(m, nn.Dropout):
            m.p = 0.5
    model.train().requires_grad_(True)
    grad_enabled = []
    model.bert.register_forward_hook(lambda *_: grad_enabled.append(torch.is_grad_enabled()))
    need = Need(logits=True, hidden=frozenset({0, 4}), attentions=frozenset({1}))
    teacher, batch = Teacher(model, need), _batch()
    assert not any(m.training for m in model.modules())
    assert not any(p.requires_grad for p in model.parameters())
    first, second = teacher(batch), teacher(batch)
    assert grad_enabled == [False, False]
    assert set(first) == {"logits", "hidden.0", "hidden.4", "attn.1"}
    for key, value in first.items():
        assert not value.requires_grad and value.grad_fn is None, key
        assert not value.is_inference(), key  # students' losses save it for their backward
        assert torch.equal(value, second[key]), key  # no dropout
    assert teacher.num_layers == T_LAYERS


def test_teacher_computes_only_the_need_it_is_given():
    model = _teacher_model()
    calls = []
    model.bert.register_forward_hook(lambda *_: calls.append(1))
    teacher, batch = Teacher(model, Need(logits=True, hidden=frozenset({2}))), _batch()
    assert set(teacher(batch)) == {"logits", "hidden.2"}
    assert set(teacher(batch, Need(hidden=frozenset({4})))) == {"hidden.4"}
    assert len(calls) == 2
    assert teacher(batch, Need()) == {}
    assert len(calls) == 2  # an empty need runs no forward


def test_loading_an_export_as_a_masked_lm_says_only_what_matters(tmp_path, capfd, caplog):
    """An export carries a pooler a masked LM does not use: no transformers load report for it
    (the demo printed one per rank); any other unused weight is named in one warning."""
    import logging

    import torch
    from safetensors.torch import load_file, save_file
    from transformers import BertConfig, BertForMaskedLM

    from trainer.models.hf_models import load_masked_lm

    config = BertConfig(num_hidden_layers=1, hidden_size=8, num_attention_heads=2,
                        intermediate_size=8, vocab_size=32)  # fmt: skip
    BertForMaskedLM(config).save_pretrained(tmp_path / "m")
    weights = load_file(tmp_path / "m" / "model.safetensors")
    weights["bert.pooler.dense.weight"] = torch.eye(8)
    weights["bert.pooler.dense.bias"] = torch.zeros(8)
    save_file(weights, tmp_path / "m" / "model.safetensors", metadata={"format": "pt"})
    with caplog.at_level(logging.WARNING, logger="trainer.models.hf_models"):
        _, new = load_masked_lm(str(tmp_path / "m"), None, "teacher.path")
    assert new == [] and caplog.messages == []
    assert "LOAD REPORT" not in capfd.readouterr().err

    weights["bert.extra.weight"] = torch.zeros(3)
    save_file(weights, tmp_path / "m" / "model.safetensors", metadata={"format": "pt"})
    with caplog.at_level(logging.WARNING, logger="trainer.models.hf_models"):
        load_masked_lm(str(tmp_path / "m"), None, "teacher.path")
    assert caplog.messages == [
        "teacher.path: 1 weights the masked LM does not use (bert.extra.weight)"
    ]
    assert "LOAD REPORT" not in capfd.readouterr().err


# ---------------------------------------------------------------- students of another width


def test_a_narrower_student_reaches_hidden_terms_through_fit_dense():
    """DistilBioBERT's COS_last on a student of width 16 under a teacher of 32: the student's
    last hidden state goes through fit_dense, and the term equals the cosine of the projection
    with the teacher's last hidden state."""
    teacher = _teacher_model()
    built = _build("DistilBioBERT", teacher, init=TINY_INIT)
    assert built.objective.project_hidden
    assert tuple(built.module.fit_dense.weight.shape) == (T_HIDDEN, S_HIDDEN)
    batch = _batch()
    out = built.module(batch.input_ids, batch.attention_mask, batch.masked_index)
    assert set(out) == {"logits", "proj.2"}
    t_out = Teacher(teacher, built.objective.teacher_need())(batch)
    _, terms = built.objective(out, t_out, batch)
    s, t = out["proj.2"].double(), t_out["hidden.4"].double()
    cos = (s * t).sum(-1) / (s.norm(dim=-1) * t.norm(dim=-1))
    want = (1 - cos)[batch.attention_mask.bool()].mean()
    assert terms["cos"].item() == pytest.approx(want.item(), rel=1e-5)
    # the same width needs none
    assert not _build("DistilBioBERT", teacher).objective.project_hidden


def test_attention_terms_across_head_counts_are_refused_naming_both():
    teacher = _teacher_model()
    init = {"config": {**TINY_INIT["config"], "num_attention_heads": 4}}
    with pytest.raises(ValueError, match=r"students\.TinyBioBERT\.objective: .* 4 heads .* 2"):
        _build("TinyBioBERT", teacher, init=init)
    # without the attention term it builds
    objective = {"kind": "tinybiobert", **TINY_MAPS, "weights": {"att": 0.0}}
    _build("TinyBioBERT", teacher, init=init, objective=objective)
