"""Objectives (trainer/distill/objectives.py): the signals each recipe asks for, and its weighted
loss.

.venv/bin/pytest tests/test_objectives.py -q

Sections come from `config_from_dict` on small recipes (4-layer teacher, 2-layer students), so the
defaults are the ones a run gets. Losses are compared with float64 references written out below
from docs/objectives.md's definitions, sharing no code with trainer/distill/losses.py, on fake
signals that are distinct for every layer: a wrong layer pairing changes the value.
"""

from __future__ import annotations

import pytest
import torch

from trainer.config.recipe import config_from_dict
from trainer.distill.kinds import uses_attention_maps
from trainer.distill.objectives import Objective, cohort_teacher_need
from trainer.distill.teacher_signals import Need
from trainer.train.batch import DeviceBatch

S_LAYERS, T_LAYERS = 2, 4
B, L, HEADS, H_TEACHER, H_TINY, V = 2, 6, 2, 12, 8, 11
EPS = 1e-12
KINDS = ("distilbiobert", "compactbiobert", "tinybiobert", "mlm")
TEACHER = {
    "num_hidden_layers": T_LAYERS,
    "hidden_size": H_TEACHER,
    "num_attention_heads": HEADS,
    "vocab_size": V,
}
TINY_MAPS = {"attention_map": [[0, 1], [1, 3]], "hidden_map": [[0, 0], [1, 2], [2, 4]]}


def _section(kind: str, **objective):
    """The resolved objective section of a one-student recipe of this kind."""
    if kind == "tinybiobert":
        init = {
            "config": {
                "num_hidden_layers": S_LAYERS,
                "hidden_size": H_TINY,
                "num_attention_heads": HEADS,
            }
        }
        objective = {**TINY_MAPS, **objective}
    else:
        init = {"from_teacher_layers": [1, 3]}
    raw = {
        "run": {"name": "t"},
        "data": {"train_shards": "shards"},
        "teacher": None if kind == "mlm" else {"config": TEACHER},
        "train": {"max_steps": 10},
        "students": [
            {
                "name": "S",
                "init": {"config": {"num_hidden_layers": S_LAYERS}} if kind == "mlm" else init,
                "objective": {"kind": kind, **objective},
                "optimizer": {"lr": 1e-3, "weight_decay": 0.0, "warmup_steps": 2},
            }
        ],
    }
    if raw["teacher"] is None:
        del raw["teacher"]
    return config_from_dict(raw).students[0].objective


def _objective(kind: str, **objective) -> Objective:
    teacher_layers = None if kind == "mlm" else T_LAYERS
    return Objective.from_section(_section(kind, **objective), S_LAYERS, teacher_layers)


def _need(logits=False, hidden=(), attentions=()) -> Need:
    return Need(logits, frozenset(hidden), frozenset(attentions))


# ---------------------------------------------------------------- signals requested


@pytest.mark.parametrize(
    "kind, student, teacher",
    [
        ("distilbiobert", _need(True, {2}), _need(True, {4})),
        ("compactbiobert", _need(True, {1, 2}, {0, 1}), _need(True, {2, 4}, {1, 3})),
        ("tinybiobert", _need(True, {0, 1, 2}, {0, 1}), _need(True, {0, 2, 4}, {1, 3})),
        ("mlm", _need(True), _need()),
    ],
)
def test_needs_of_each_kind_with_default_weights(kind, student, teacher):
    objective = _objective(kind)
    assert objective.student_need() == student
    assert objective.teacher_need() == teacher
    assert uses_attention_maps(_section(kind)) == bool(student.attentions)
    assert objective.project_hidden == (kind == "tinybiobert")


def test_the_teacher_computes_the_union_of_the_cohorts_needs():
    distil, compact, tiny, mlm = (_objective(k) for k in KINDS)
    assert cohort_teacher_need([distil, compact, tiny, mlm]) == _need(True, {0, 2, 4}, {1, 3})
    assert cohort_teacher_need([distil, mlm]) == _need(True, {4})
    # TinyBioBERT without its soft-CE, alone: hidden states and maps, no logits at all
    assert cohort_teacher_need([_objective("tinybiobert", weights={"soft_ce": 0})]) == _need(
        False, {0, 2, 4}, {1, 3}
    )
    assert cohort_teacher_need([mlm]).empty and cohort_teacher_need([]).empty


def test_default_weights_temperatures_and_maps():
    distil = _objective("distilbiobert")
    assert (distil.temperature, distil.weights) == (2.0, {"mlm": 2.0, "kd": 5.0, "cos": 1.0})
    assert (distil.attention_map, distil.hidden_map) == ((), ((S_LAYERS, T_LAYERS),))
    compact = _objective("compactbiobert")
    assert compact.temperature == 1.0
    assert compact.weights == {"mlm": 1.0, "kd": 5.0, "att": 3.0, "cos": 3.0}
    # docs/objectives.md: attention i -> 2i+1, hidden i -> 2i (i >= 1), for a 2-layer student.
    assert compact.attention_map == ((0, 1), (1, 3))
    assert compact.hidden_map == ((1, 2), (2, 4))
    tiny = _objective("tinybiobert")
    assert (tiny.temperature, tiny.weights) == (1.0, {"att": 1.0, "hid": 1.0, "soft_ce": 1.0})
    mlm = _objective("mlm")
    assert (mlm.temperature, mlm.weights, mlm.attention_map, mlm.hidden_map) == (
        None,
        {"mlm": 1.0},
        (),
        (),
    )


@pytest.mark.parametrize(
    "kind, weights, student, teacher",
    [
        ("distilbiobert", {"kd": 0}, _need(True, {2}), _need(False, {4})),
        ("distilbiobert", {"cos": 0}, _need(True), _need(True)),
        ("distilbiobert", {"mlm": 0, "kd": 0}, _need(False, {2}), _need(False, {4})),
        ("compactbiobert", {"att": 0}, _need(True, {1, 2}), _need(True, {2, 4})),
        ("compactbiobert", {"cos": 0}, _need(True, (), {0, 1}), _need(True, (), {1, 3})),
        ("compactbiobert", {"kd": 0}, _need(True, {1, 2}, {0, 1}), _need(False, {2, 4}, {1, 3})),
        (
            "tinybiobert",
            {"soft_ce": 0},
            _need(False, {0, 1, 2}, {0, 1}),
            _need(False, {0, 2, 4}, {1, 3}),
        ),
        ("tinybiobert", {"att": 0}, _need(True, {0, 1, 2}), _need(True, {0, 2, 4})),
        ("tinybiobert", {"hid": 0}, _need(True, (), {0, 1}), _need(True, (), {1, 3})),
    ],
    ids=lambda x: str(x) if isinstance(x, dict) else None,
)
def test_zero_weight_removes_the_term_and_its_signals(kind, weights, student, teacher):
    objective = _objective(kind, weights=weights)
    assert not set(weights) & set(objective.weights)
    assert objective.student_need() == student
    assert objective.teacher_need() == teacher
    if "att" in weights:
        assert not uses_attention_maps(_section(kind, weights=weights))
        assert objective.attention_map == ()
    if "hid" in weights:
        assert not objective.project_hidden


# ---------------------------------------------------------------- fake signals


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _hidden(seed: int, size: int) -> torch.Tensor:
    return torch.randn(B, L, size, generator=_gen(seed))


def _attn(seed: int) -> torch.Tensor:
    return torch.softmax(2 * torch.randn(B, HEADS, L, L, generator=_gen(seed)), dim=-1)


def _batch() -> DeviceBatch:
    mask = torch.ones(B, L, dtype=torch.long)
    mask[1, 4:] = 0
    return DeviceBatch(
        input_ids=torch.zeros(B, L, dtype=torch.long),
        attention_mask=mask,
        masked_index=torch.tensor([1, 3, L + 2]),
        masked_labels=torch.tensor([4, 0, 10]),
        tokens=int(mask.sum()),
        samples=B,
    )


def _teacher() -> dict[str, torch.Tensor]:
    """Every layer of a 4-layer teacher, each its own random tensor."""
    out = {"logits": 3 * torch.randn(3, V, generator=_gen(1))}
    out |= {f"hidden.{k}": _hidden(10 + k, H_TEACHER) for k in range(T_LAYERS + 1)}
    out |= {f"attn.{k}": _attn(20 + k) for k in range(T_LAYERS)}
    return out


def _student(kind: str) -> dict[str, torch.Tensor]:
    """Every signal a 2-layer student could give (more than any one objective reads)."""
    out = {"logits": 3 * torch.randn(3, V, generator=_gen(2))}
    out |= {f"attn.{k}": _attn(30 + k) for k in range(S_LAYERS)}
    if kind == "tinybiobert":  # fit_dense outputs, at the teacher's width
        out |= {f"proj.{k}": _hidden(40 + k, H_TEACHER) for k in range(S_LAYERS + 1)}
    else:
        out |= {f"hidden.{k}": _hidden(50 + k, H_TEACHER) for k in range(S_LAYERS + 1)}
    return out


# ---------------------------------------------------------------- references (float64)


def ref_mlm(s, labels):
    log_q = s - s.logsumexp(-1, keepdim=True)
    return -log_q[torch.arange(len(labels)), labels].mean()


def ref_kd(s, t, temperature):
    log_p = t / temperature - (t / temperature).logsumexp(-1, keepdim=True)
    log_q = s / temperature - (s / temperature).logsumexp(-1, keepdim=True)
    return (log_p.exp() * (log_p - log_q)).sum(-1).mean() * temperature**2


def ref_soft_ce(s, t, temperature):
    p = torch.softmax(t / temperature, dim=-1)
    log_q = s / temperature - (s / temperature).logsumexp(-1, keepdim=True)
    return -(p * log_q).sum(-1).mean()


def ref_cos(s, t, mask):
    cos = (s * t).sum(-1) / (s.norm(dim=-1) * t.norm(dim=-1))
    real = mask.bool()
    return (1 - cos)[real].mean()


def ref_att_kl(s, t, mask):
    pointwise = (t + EPS) * ((t + EPS).log() - (s + EPS).log())  # [B, heads, Lq, Lk]
    rows = pointwise.permute(0, 2, 1, 3)[mask.bool()]  # real query rows: [rows, heads, Lk]
    return rows.mean()


def ref_mse(s, t):
    return ((s - t) ** 2).mean()


def reference(kind, weights, temperature, student, teacher, batch):
    """(weighted loss, terms) from docs/objectives.md, layer maps written out for 2 -> 4 layers."""
    s = {k: v.double() for k, v in student.items()}
    t = {k: v.double() for k, v in teacher.items()}
    mask, terms = batch.attention_mask, {}
    if "mlm" in weights:
        terms["mlm"] = ref_mlm(s["logits"], batch.masked_labels)
    if "kd" in weights:
        terms["kd"] = ref_kd(s["logits"], t["logits"], temperature)
    if "soft_ce" in weights:
        terms["soft_ce"] = ref_soft_ce(s["logits"], t["logits"], temperature)
    if kind == "distilbiobert" and "cos" in weights:  # COS_last: student 2 vs teacher 4
        terms["cos"] = ref_cos(s["hidden.2"], t["hidden.4"], mask)
    if kind == "compactbiobert":
        if "att" in weights:  # i -> 2i+1
            terms["att"] = ref_att_kl(s["attn.0"], t["attn.1"], mask) + ref_att_kl(
                s["attn.1"], t["attn.3"], mask
            )
        if "cos" in weights:  # i -> 2i, i >= 1
            terms["cos"] = ref_cos(s["hidden.1"], t["hidden.2"], mask) + ref_cos(
                s["hidden.2"], t["hidden.4"], mask
            )
    if kind == "tinybiobert":
        if "att" in weights:  # TINY_MAPS
            terms["att"] = ref_mse(s["attn.0"], t["attn.1"]) + ref_mse(s["attn.1"], t["attn.3"])
        if "hid" in weights:
            terms["hid"] = (
                ref_mse(s["proj.0"], t["hidden.0"])
                + ref_mse(s["proj.1"], t["hidden.2"])
                + ref_mse(s["proj.2"], t["hidden.4"])
            )
    loss = sum(weights[name] * value for name, value in terms.items())
    return loss, terms


# ---------------------------------------------------------------- values


CASES = [
    ("distilbiobert", {}),
    ("distilbiobert", {"kd": 0.0, "cos": 2.5}),
    ("compactbiobert", {}),
    ("compactbiobert", {"mlm": 0.5, "att": 0.25, "cos": 4.0, "kd": 0.0}),
    ("tinybiobert", {}),
    ("tinybiobert", {"att": 2.0, "hid": 0.5, "soft_ce": 3.0}),
    ("tinybiobert", {"hid": 0.0}),
]
"""(kind, weights): default weights, and others with some terms off."""
CASES_T = [(*case, None) for case in CASES] + [(*case, 3.0) for case in CASES] + [("mlm", {}, None)]


@pytest.mark.parametrize("kind, weights, temperature", CASES_T, ids=lambda x: str(x))
def test_loss_and_terms_match_reference(kind, weights, temperature):
    overrides = {"weights": weights}
    if temperature is not None:
        overrides["temperature"] = temperature
    objective = _objective(kind, **overrides)
    batch, student, teacher = _batch(), _student(kind), _teacher()
    loss, terms = objective(student, None if kind == "mlm" else teacher, batch)
    want_loss, want_terms = reference(
        kind, objective.weights, objective.temperature, student, teacher, batch
    )
    assert set(terms) == set(want_terms) == set(objective.weights)
    for name, value in terms.items():
        assert value.dtype == torch.float32 and value.dim() == 0, name
        assert value.item() == pytest.approx(want_terms[name].item(), rel=1e-5, abs=1e-6), name
    assert loss.dtype == torch.float32 and loss.dim() == 0
    assert loss.item() == pytest.approx(want_loss.item(), rel=1e-5, abs=1e-6)


def test_swapped_layer_pairs_change_the_loss():
    # The fake layers are distinct enough that the reference can tell a wrong pairing.
    batch, student, teacher = _batch(), _student("compactbiobert"), _teacher()
    swapped = dict(student)
    swapped["attn.0"], swapped["attn.1"] = student["attn.1"], student["attn.0"]
    swapped["hidden.1"], swapped["hidden.2"] = student["hidden.2"], student["hidden.1"]
    objective = _objective("compactbiobert")
    _, terms = objective(student, teacher, batch)
    _, swapped_terms = objective(swapped, teacher, batch)
    assert abs(terms["att"].item() - swapped_terms["att"].item()) > 1e-3
    assert abs(terms["cos"].item() - swapped_terms["cos"].item()) > 1e-3


# ---------------------------------------------------------------- gradients


@pytest.mark.parametrize("kind", ["distilbiobert", "compactbiobert", "tinybiobert", "mlm"])
def test_gradients_reach_the_student_signals_it_reads_and_match_reference(kind):
    objective = _objective(kind)
    batch, teacher = _batch(), _teacher()
    student = {k: v.requires_grad_() for k, v in _student(kind).items()}
    loss, _ = objective(student, teacher, batch)
    loss.backward()
    ref_student = {k: v.detach().double().requires_grad_() for k, v in student.items()}
    ref_loss, _ = reference(
        kind, objective.weights, objective.temperature, ref_student, teacher, batch
    )
    ref_loss.backward()
    for key, x in student.items():
        want = ref_student[key].grad
        if want is None:  # a signal this objective does not read
            assert x.grad is None, key
            continue
        assert x.grad is not None and x.grad.abs().sum() > 0, key
        torch.testing.assert_close(x.grad, want.float(), rtol=1e-4, atol=1e-7)
    assert all(not t.requires_grad and t.grad is None for t in teacher.values())


def test_no_gradient_where_the_student_does_not_require_it():
    objective = _objective("compactbiobert")
    student = _student("compactbiobert")
    student["logits"].requires_grad_()
    loss, terms = objective(student, _teacher(), _batch())
    assert loss.requires_grad
    assert terms["mlm"].requires_grad and terms["kd"].requires_grad
    assert not terms["att"].requires_grad and not terms["cos"].requires_grad
    loss.backward()
    assert student["logits"].grad is not None
    assert all(v.grad is None for k, v in student.items() if k != "logits")


# ---------------------------------------------------------------- minilmv2 (a seventh kind)


def _minilm_section(**objective):
    raw = {
        "run": {"name": "t"},
        "data": {"train_shards": "shards"},
        "teacher": {"config": {**TEACHER, "hidden_size": 32}},
        "train": {"max_steps": 10},
        "students": [
            {
                "name": "M",
                "init": {
                    "config": {
                        "num_hidden_layers": 2,
                        "hidden_size": 24,
                        **objective.pop("init", {}),
                    }
                },
                "objective": {"kind": "minilmv2", **objective},
                "optimizer": {"lr": 1e-3, "weight_decay": 0.0, "warmup_steps": 2},
            }
        ],
    }
    return config_from_dict(raw).students[0].objective


def _relations64(x: torch.Tensor, heads: int, real: torch.Tensor) -> torch.Tensor:
    """log relation probabilities [B, R, L, L] in float64, padded keys excluded (reference)."""
    b, n, h = x.shape
    a = x.double().reshape(b, n, heads, h // heads).transpose(1, 2)
    scores = a @ a.transpose(-1, -2) / (h // heads) ** 0.5
    scores = scores.masked_fill(~real[:, None, None, :], float("-inf"))
    return torch.log_softmax(scores, dim=-1)


def test_minilmv2_relations_of_real_models_match_a_float64_reference():
    """A 2-layer 24-wide student (3 heads) and a 4-layer 32-wide teacher (2 heads): the
    objective's relation term, from the signals the trainer taps (the q/k/v projections),
    equals KL(teacher || student) of the q-q, k-k and v-v relations computed here from HF's
    hidden states (the input of each layer) and the layers' own projections, in float64."""
    from transformers import BertConfig, BertForMaskedLM

    from trainer.distill.teacher_signals import masked_lm_signals

    section = _minilm_section(teacher_layer=2, relation_heads=4, init={"num_attention_heads": 3})
    assert (section.teacher_layer, section.relation_heads, section.weights) == (2, 4, {"rel": 1.0})
    objective = Objective.from_section(section, 2, T_LAYERS)
    assert objective.relation_pair == (1, 2) and not uses_attention_maps(section)
    assert objective.student_need() == Need(qkv=frozenset({1}))
    assert objective.teacher_need() == Need(qkv=frozenset({2}))
    torch.manual_seed(0)
    common = {"vocab_size": V, "max_position_embeddings": 16, "hidden_dropout_prob": 0.0,
              "attention_probs_dropout_prob": 0.0, "intermediate_size": 40}  # fmt: skip
    teacher = BertForMaskedLM(
        BertConfig(num_hidden_layers=4, hidden_size=32, num_attention_heads=2, **common)
    ).eval()
    student = BertForMaskedLM(
        BertConfig(num_hidden_layers=2, hidden_size=24, num_attention_heads=3, **common)
    ).eval()
    ids = torch.randint(5, V, (B, L))
    mask = torch.ones(B, L, dtype=torch.int64)
    mask[1, 4:] = 0
    batch = DeviceBatch(ids, mask, torch.tensor([1, 7]), ids.reshape(-1)[[1, 7]], 10, B)
    s_out = masked_lm_signals(student, ids, mask, batch.masked_index, objective.student_need())
    t_out = masked_lm_signals(teacher, ids, mask, batch.masked_index, objective.teacher_need())
    loss, terms = objective(s_out, t_out, batch)

    real = mask.bool()
    want = torch.zeros((), dtype=torch.float64)
    with torch.no_grad():
        s_in = student(ids, attention_mask=mask, output_hidden_states=True).hidden_states[1]
        t_in = teacher(ids, attention_mask=mask, output_hidden_states=True).hidden_states[2]
        for name in ("query", "key", "value"):
            s_x = getattr(student.bert.encoder.layer[1].attention.self, name)(s_in)
            t_x = getattr(teacher.bert.encoder.layer[2].attention.self, name)(t_in)
            log_s, log_t = _relations64(s_x, 4, real), _relations64(t_x, 4, real)
            kl = (log_t.exp() * (log_t - log_s)).nan_to_num()  # padded keys: 0 * -inf
            kl = kl.sum(-1)  # [B, R, L(query)]
            want += (kl * real[:, None, :]).sum() / (real.sum() * 4)
    torch.testing.assert_close(terms["rel"].double(), want, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(loss.double(), want, rtol=1e-5, atol=1e-7)


def test_minilmv2_keys_are_its_own_and_checked():
    section = _minilm_section()
    assert (section.teacher_layer, section.relation_heads) == (None, 12)
    assert Objective.from_section(section, 2, T_LAYERS).relation_pair == (1, T_LAYERS - 1)
    with pytest.raises(
        ValueError, match=r"objective.teacher_layer=\[4\]: expected teacher indices < 4"
    ):
        _minilm_section(teacher_layer=4)
    with pytest.raises(ValueError, match="relation_heads=0: expected an integer >= 1"):
        _minilm_section(relation_heads=0)
    with pytest.raises(
        ValueError, match="teacher_layer=1: expected null .kind 'distilbiobert' has none"
    ):
        _section("distilbiobert", teacher_layer=1)
