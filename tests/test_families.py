"""Model families (trainer/models/families/): every promise a family makes, checked per family.

.venv/bin/pytest tests/test_families.py -q

Tiny random models of each family (4 layers, hidden 32; ModernBERT with a local window shorter
than the sequence, so that local and global layers differ), float64, padded batches. Each check
compares with a computation that does not go through the family definition: HF's own eager
forward (`output_hidden_states`, `output_attentions`, the full MLM head), the projections called
directly, state dicts compared by name. The model types that share a family's definition
(VARIANTS: XLM-R and CamemBERT, read as RoBERTa) go through the same checks, built from their own
transformers classes.
"""

from __future__ import annotations

import pytest
import torch
import transformers
from test_objectives import CASES, reference

from data_pipeline.errors import UserError
from trainer.config.recipe import config_from_dict
from trainer.distill.objectives import Objective
from trainer.distill.teacher_signals import Need, masked_lm_signals, qkv_keys
from trainer.models.attention import IMPLEMENTATION, return_probabilities
from trainer.models.families import FAMILIES, FAMILY_NAMES, family_of, model_config
from trainer.train.batch import DeviceBatch

V, H, LAYERS, HEADS, L = 64, 32, 4, 2, 20
# model types read by another family's definition: (family, config class, masked-LM class)
VARIANTS = {
    "xlm-roberta": ("roberta", "XLMRobertaConfig", "XLMRobertaForMaskedLM"),
    "camembert": ("roberta", "CamembertConfig", "CamembertForMaskedLM"),
}
MODELS = (*FAMILY_NAMES, *VARIANTS)  # every family, and every variant of one


def _family(name: str):
    """The family definition that reads model `name` (a family's name or a VARIANTS key)."""
    return FAMILIES[VARIANTS[name][0] if name in VARIANTS else name]


def _values(name: str, layers: int = LAYERS, hidden: int = H) -> dict:
    common = {
        "vocab_size": V,
        "hidden_size": hidden,
        "num_hidden_layers": layers,
        "num_attention_heads": HEADS,
        "intermediate_size": 2 * hidden,
        # sharp attention maps, far from uniform, so that the attention terms are not near zero
        # (HF's eager ModernBERT takes its softmax in float32: its maps carry 1e-8 of noise)
        "initializer_range": 0.5,
    }
    if name == "bert":
        return common | {"max_position_embeddings": 64}
    if name == "roberta":
        return common | {"max_position_embeddings": 66, "pad_token_id": 1}
    # every 2nd layer global, a window of 8 (4 each side) on a sequence of 20
    ids = {"pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2, "cls_token_id": 1}
    return common | ids | {"sep_token_id": 2, "global_attn_every_n_layers": 2, "local_attention": 8}


def _model(name: str, impl: str | None = IMPLEMENTATION, seed: int = 0, **values):
    torch.manual_seed(seed)
    if name in VARIANTS:  # its own transformers classes, not the family's
        family, config_class, masked_lm_class = VARIANTS[name]
        extra = {} if impl is None else {"attn_implementation": impl}
        config = getattr(transformers, config_class)(**(_values(family) | values), **extra)
        return getattr(transformers, masked_lm_class)(config).double().eval()
    fam = FAMILIES[name]
    config = fam.config(_values(name) | values, f"{name}.config", impl)
    return fam.masked_lm(config).double().eval()


def _eager_twin(model, impl: str = "eager"):
    """The same weights under HF's eager attention (or `impl`): the reference forward."""
    config = model.config.__class__.from_dict(model.config.to_dict())
    config._attn_implementation = impl
    twin = type(model)(config).double().eval()
    twin.load_state_dict(model.state_dict())
    return twin


def _batch(seed: int = 1) -> DeviceBatch:
    g = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(3, V, (2, L), generator=g)
    mask = torch.ones(2, L, dtype=torch.long)
    # NOTE: padding short enough that every padded position has a real token within ModernBERT's
    # local window: HF's eager reference gives NaN for a query row with no key at all (ours and
    # SDPA's masks un-mask such rows), and the NaN then reaches every position through V.
    mask[1, 17:] = 0
    input_ids[1, 17:] = 0
    masked_index = torch.tensor([1, 7, 15, L + 2, L + 9])
    labels = torch.randint(3, V, (5,), generator=g)
    return DeviceBatch(input_ids, mask, masked_index, labels, int(mask.sum()), 2)


def _signals(model, need: Need, batch: DeviceBatch) -> dict[str, torch.Tensor]:
    return masked_lm_signals(model, batch.input_ids, batch.attention_mask, batch.masked_index, need)


# ---------------------------------------------------------------- the registry


def test_every_recipe_family_is_registered_and_found_by_model_type():
    for name in FAMILY_NAMES:
        model = _model(name)
        assert family_of(model) is FAMILIES[name]
        assert family_of(model.config) is FAMILIES[name]
    assert family_of(object()).name == "generic"


@pytest.mark.parametrize("name", VARIANTS)
def test_xlm_r_and_camembert_are_read_by_the_roberta_family(name):
    family, _, masked_lm_class = VARIANTS[name]
    model = _model(name)
    assert type(model).__name__ == masked_lm_class and model.config.model_type == name
    fam = family_of(model)
    assert fam is FAMILIES[family] and family_of(model.config) is fam
    assert fam.embeddings(model) is model.roberta.embeddings
    assert list(fam.layers(model)) == list(model.roberta.encoder.layer)
    assert fam.head(model) is model.lm_head
    # a released checkpoint's 514 position embeddings after padding id 1: 512 tokens
    config = model.config.__class__(max_position_embeddings=514, pad_token_id=1)
    assert fam.max_positions(config) == 512


# ---------------------------------------------------------------- signals


@pytest.mark.parametrize("name", MODELS)
def test_signals_equal_a_full_eager_forward(name):
    """Hidden states, the attention maps of chosen layers (ours: SDPA elsewhere), q/k/v and the
    masked-row head against HF's eager forward with every output and the full head."""
    model, batch = _model(name), _batch()
    maps = [1, 2]  # a local and a global layer in ModernBERT
    return_probabilities(model, maps)
    need = Need(True, frozenset(range(LAYERS + 1)), frozenset(maps), frozenset({0, 3}))
    got = _signals(model, need, batch)

    ref = _eager_twin(model)
    out = ref(
        input_ids=batch.input_ids,
        attention_mask=batch.attention_mask,
        output_hidden_states=True,
        output_attentions=True,
    )
    # HF's SDPA twin for the hidden states and logits, exactly; the eager twin for the maps, to
    # its precision: ModernBERT's eager attention takes its softmax in float32 (BERT's in fp64).
    exact = _eager_twin(model, "sdpa")(
        input_ids=batch.input_ids, attention_mask=batch.attention_mask, output_hidden_states=True
    )
    rows = exact.logits.reshape(-1, V).index_select(0, batch.masked_index)
    torch.testing.assert_close(got["logits"], rows)
    assert len(exact.hidden_states) == LAYERS + 1
    for k, want in enumerate(exact.hidden_states):
        torch.testing.assert_close(got[f"hidden.{k}"], want, msg=f"hidden.{k}")
    tolerance = {"rtol": 1e-5, "atol": 1e-6} if name == "modernbert" else {}
    for k in maps:
        torch.testing.assert_close(got[f"attn.{k}"], out.attentions[k], **tolerance)
    for k in (0, 3):
        want = _qkv_directly(ref, k, exact.hidden_states[k])
        for key, w in zip(qkv_keys(k), want, strict=True):
            torch.testing.assert_close(got[key], w, msg=key)
    if name == "modernbert":  # the window matters: a local map differs from a global one
        assert (out.attentions[1][0, :, 0, 10:] == 0).all()
        assert (out.attentions[2][0, :, 0, 10:] > 0).all()


def _qkv_directly(model, layer: int, hidden_in: torch.Tensor):
    """q, k, v [B, L, H] from the layer's input, calling the projections by hand."""
    name = family_of(model).name
    if name == "modernbert":
        block = model.model.layers[layer]
        return block.attn.Wqkv(block.attn_norm(hidden_in)).split(H, dim=-1)
    attention = model.base_model.encoder.layer[layer].attention.self
    return attention.query(hidden_in), attention.key(hidden_in), attention.value(hidden_in)


@pytest.mark.parametrize("name", MODELS)
def test_asking_for_maps_leaves_the_output_unchanged(name):
    """The teacher's outputs do not depend on which maps the cohort reads (cohort == alone)."""
    model, batch = _model(name), _batch()
    plain = _signals(model, Need(True, frozenset({LAYERS})), batch)
    return_probabilities(model, [0, 1, 2, 3])
    mapped = _signals(model, Need(True, frozenset({LAYERS}), frozenset({0, 1, 2, 3})), batch)
    assert torch.equal(plain["logits"], mapped["logits"])
    assert torch.equal(plain[f"hidden.{LAYERS}"], mapped[f"hidden.{LAYERS}"])


# ---------------------------------------------------------------- students made of teacher layers


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("layers", [[1, 3], [3, 0]], ids=["odd", "reversed"])
def test_copied_layers_hold_the_teachers_exact_weights(name, layers):
    fam = _family(name)
    teacher = _model(name)
    student = fam.student_from_layers(teacher, layers, None).double()
    # of the teacher's class and model type (an XLM-R teacher's student is an XLM-R)
    assert type(student) is type(teacher)
    assert student.config.model_type == teacher.config.model_type
    assert student.config.num_hidden_layers == len(layers)
    t_state = fam.embeddings(teacher).state_dict()
    for key, value in fam.embeddings(student).state_dict().items():
        assert torch.equal(value, t_state[key]), key
    for i, t in enumerate(layers):
        t_state = fam.layers(teacher)[t].state_dict()
        s_state = fam.layers(student)[i].state_dict()
        for key, value in s_state.items():
            if key.startswith("attn_norm.") and key not in t_state:  # teacher layer 0: no norm
                want = torch.ones_like(value) if key.endswith("weight") else torch.zeros_like(value)
                assert torch.equal(value, want), (i, key)
            else:
                assert torch.equal(value, t_state[key]), (i, t, key)
        if name == "modernbert":  # only the norm layer 0 has no place for is left behind
            dropped = {k for k in t_state if k not in s_state}
            assert dropped == ({"attn_norm.weight"} if i == 0 and t != 0 else set()), (i, t)
    head = {k: v for k, v in teacher.state_dict().items() if not _in_layers(k)}
    for key, value in student.state_dict().items():
        if not _in_layers(key):
            assert torch.equal(value, head[key]), key
    out = student.get_output_embeddings().weight
    assert out.data_ptr() == student.get_input_embeddings().weight.data_ptr()  # still tied


def _in_layers(key: str) -> bool:
    return ".layer." in key or ".layers." in key


@pytest.mark.parametrize("layers", [[1, 3], [0, 1, 3], [3, 0]])
def test_a_modernbert_student_keeps_each_copied_layers_attention_type(layers):
    fam = FAMILIES["modernbert"]
    teacher = _model("modernbert")
    assert teacher.config.layer_types == [
        "full_attention",
        "sliding_attention",
        "full_attention",
        "sliding_attention",
    ]
    student = fam.student_from_layers(teacher, layers, IMPLEMENTATION).double().eval()
    want = [teacher.config.layer_types[t] for t in layers]
    assert student.config.layer_types == want
    assert [layer.attention_type for layer in fam.layers(student)] == want
    windows = [layer.attn.sliding_window for layer in fam.layers(student)]
    assert windows == [fam.layers(teacher)[t].attn.sliding_window for t in layers]
    # and in behaviour: a copied local layer's map is windowed
    return_probabilities(student, range(len(layers)))
    need = Need(attentions=frozenset(range(len(layers))))
    got = _signals(student, need, _batch())
    for i, kind in enumerate(want):
        far = got[f"attn.{i}"][0, :, 0, 10:]
        assert (far == 0).all() if kind == "sliding_attention" else (far > 0).all(), (i, kind)


# ---------------------------------------------------------------- losses on real signals


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("kind, weights", CASES[::2] + [("mlm", {})], ids=str)
def test_each_kind_on_real_models_matches_a_float64_reference(name, kind, weights):
    """Every term of every kind, on a student and teacher of this family, against
    test_objectives' float64 reference fed with HF's eager outputs."""
    teacher, batch = _model(name), _batch()
    objective_section, init = _section(name, kind, weights)
    fam = _family(name)
    if "from_teacher_layers" in init:
        student = fam.student_from_layers(teacher, init["from_teacher_layers"], IMPLEMENTATION)
    else:
        student = _model(name, seed=5, hidden_size=16, num_hidden_layers=2, intermediate_size=32)
    student = student.double().eval()
    objective = Objective.from_section(objective_section, 2, None if kind == "mlm" else LAYERS)
    s_need, t_need = objective.student_need(), objective.teacher_need()
    return_probabilities(student, s_need.attentions)
    return_probabilities(teacher, t_need.attentions)
    s, t = _signals(student, s_need, batch), _signals(teacher, t_need, batch)
    proj = None
    if kind == "tinybiobert":
        proj = torch.nn.Linear(16, H).double()
        for k in list(s):
            if k.startswith("hidden."):
                s["proj." + k.split(".")[1]] = proj(s.pop(k))
    loss, terms = objective(s, None if kind == "mlm" else t, batch)

    s_ref, t_ref = _reference_signals(student, batch, proj), _reference_signals(teacher, batch)
    want_loss, want_terms = reference(
        kind, objective.weights, objective.temperature, s_ref, t_ref, batch
    )
    assert set(terms) == set(want_terms)
    for term, value in terms.items():
        assert value.item() == pytest.approx(want_terms[term].item(), rel=1e-6, abs=1e-9), term
    assert loss.item() == pytest.approx(want_loss.item(), rel=1e-6, abs=1e-9)


def _section(name: str, kind: str, weights: dict):
    teacher = _values(_family(name).name)
    if kind == "tinybiobert":
        init = {"config": {"num_hidden_layers": 2}}
        extra = {"attention_map": [[0, 1], [1, 3]], "hidden_map": [[0, 0], [1, 2], [2, 4]]}
    else:
        init, extra = {"from_teacher_layers": [1, 3]}, {}
    raw = {
        "run": {"name": "t"},
        "data": {"train_shards": "shards"},
        "teacher": {"config": {k: teacher[k] for k in ("num_hidden_layers", "vocab_size")}},
        "train": {"max_steps": 10},
        "students": [
            {
                "name": "S",
                "init": init,
                "objective": {"kind": kind, "weights": weights, **extra},
                "optimizer": {"lr": 1e-3, "weight_decay": 0.0, "warmup_steps": 2},
            }
        ],
    }
    return config_from_dict(raw).students[0].objective, init


def _reference_signals(model, batch: DeviceBatch, proj=None) -> dict[str, torch.Tensor]:
    """Logits and hidden states from HF's SDPA forward, maps from its eager one."""
    inputs = {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask}
    out = _eager_twin(model, "sdpa")(**inputs, output_hidden_states=True)
    signals = {"logits": out.logits.reshape(-1, out.logits.shape[-1])[batch.masked_index]}
    for k, h in enumerate(out.hidden_states):
        signals[f"hidden.{k}"] = h
        if proj is not None:
            signals[f"proj.{k}"] = proj(h)
    maps = _eager_twin(model)(**inputs, output_attentions=True).attentions
    return signals | {f"attn.{k}": a for k, a in enumerate(maps)}


# ---------------------------------------------------------------- configs from recipe values


def test_a_modernbert_config_with_ids_outside_its_vocabulary_names_the_key():
    values = _values("modernbert") | {"pad_token_id": 50283}
    with pytest.raises(UserError, match=r"^students\.S\.init\.config\.pad_token_id=50283: .*"):
        model_config(values, "students.S.init.config", "modernbert")


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_an_unknown_config_key_is_named_with_the_closest_one(name):
    values = _values(name) | {"num_hidden_layer": 2}
    with pytest.raises(UserError, match=r"unknown key 'k\.num_hidden_layer'.*'num_hidden_layers'"):
        model_config(values, "k", name)


@pytest.mark.parametrize("name, positions", [("bert", 64), ("roberta", 64), ("modernbert", 8192)])
def test_max_positions_of_each_family(name, positions):
    config = model_config({k: v for k, v in _values(name).items()}, "k", name)
    if name == "modernbert":
        assert config.max_position_embeddings == 8192  # its default
    assert FAMILIES[name].max_positions(config) == positions


# ---------------------------------------------------------------- one tokenizer for all


def test_a_teacher_with_another_tokenizer_is_refused_naming_both(tokenizer_dir, tmp_path):
    from data_pipeline.demo.synth import train_wordpiece
    from data_pipeline.shards.manifest import load_tokenizer, tokenizer_info
    from trainer.train.inputs import check_teacher_tokenizer

    run = tokenizer_info(load_tokenizer(str(tokenizer_dir)), name=str(tokenizer_dir))
    check_teacher_tokenizer(str(tokenizer_dir), run)  # the same: fine
    (tmp_path / "bare").mkdir()  # a teacher saved without a tokenizer: nothing to compare
    check_teacher_tokenizer(str(tmp_path / "bare"), run)
    other = tmp_path / "other"
    train_wordpiece(["a few words of another corpus", "other words again"], other, 120)
    with pytest.raises(
        UserError, match=rf"teacher\.path={other}: its tokenizer .* data\.tokenizer="
    ):
        check_teacher_tokenizer(str(other), run)


# ---------------------------------------------------------------- the recipe keys


def _recipe(teacher: dict, init: dict) -> dict:
    return {
        "run": {"name": "t"},
        "data": {"train_shards": "shards"},
        "teacher": teacher,
        "train": {"max_steps": 10},
        "students": [
            {
                "name": "S",
                "init": init,
                "objective": {"kind": "distilbiobert"},
                "optimizer": {"lr": 1e-3, "weight_decay": 0.0, "warmup_steps": 2},
            }
        ],
    }


MB = {"config": _values("modernbert"), "family": "modernbert"}


@pytest.mark.parametrize(
    "teacher, init, message",
    [
        ({"path": "x", "family": "modernbert"}, {"from_teacher_layers": [0]}, r"teacher\.family"),
        (MB, {"from_teacher_layers": [0], "family": "bert"}, r"students\.S\.init\.family"),
        ({"config": _values("bert"), "family": "gpt2"}, {"from_teacher_layers": [0]}, "family"),
        # a ModernBERT config read as a BERT one: its keys are unknown there
        ({"config": _values("modernbert")}, {"from_teacher_layers": [0]}, r"teacher\.config\."),
        (MB, {"config": _values("bert") | {"pad_token_id": 99}, "family": "modernbert"}, "99"),
    ],
    ids=["family-with-path", "family-with-layers", "unknown", "default-bert", "ids-outside"],
)
def test_family_keys_are_checked_at_load(teacher, init, message):
    with pytest.raises(ValueError, match=message):
        config_from_dict(_recipe(teacher, init))


def test_a_modernbert_student_of_a_bert_teacher_loads():
    """The mixed recipe: a BERT teacher, a ModernBERT-architecture student on its vocabulary."""
    init = {"config": _values("modernbert", layers=2), "family": "modernbert"}
    cfg = config_from_dict(_recipe({"config": _values("bert")}, init))
    assert cfg.students[0].init.family == "modernbert" and cfg.teacher.family is None


# ---------------------------------------------------------------- the family recipes


@pytest.mark.parametrize(
    "name, family",
    [
        ("modernbert_distilled", "modernbert"),
        ("roberta_distilled", "roberta"),
        ("biobert_to_modernbert", "bert"),
    ],
)
def test_each_family_recipe_passes_the_dry_runs_pre_flight(
    name, family, tmp_path, tiny_shards, tokenizer_dir, capsys, monkeypatch
):
    """Its hub teacher and PubMed shards stood in for by a saved teacher of the family (22
    layers, tiny) and the tests' shards; every check passes and each model's family is named."""
    from trainer.config.recipe import ROOT
    from trainer.main import main

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    teacher = tmp_path / "teacher"
    values = _values(family, layers=22, hidden=16)
    values |= {"vocab_size": 2000} if family == "bert" else {"vocab_size": 50368}
    if family == "roberta":
        values |= {"max_position_embeddings": 514}
    FAMILIES[family].masked_lm(model_config(values, "teacher", family)).save_pretrained(teacher)
    capsys.readouterr()  # save_pretrained's progress bar
    argv = [
        *("--ds_config", str(ROOT / "ds_configs" / "zero2.json")),
        *("--recipe", str(ROOT / "recipes" / f"{name}.yaml"), "--dry-run"),
        f"teacher.path={teacher}",
        f"data.train_shards={tiny_shards}",
        f"data.eval_shards={tiny_shards}",
        f"data.tokenizer={tokenizer_dir}",
        "data.max_len=64",
        f"run.output_dir={tmp_path / 'runs'}",
    ]
    rc = main(argv)
    out = capsys.readouterr().out
    plan, checks = out.split("# plan\n", 1)[1].split("# pre-flight\n")
    assert rc == 0, checks
    assert all(line.startswith("ok    ") for line in checks.splitlines()), checks
    assert f"ok    teacher: {teacher} ({family})" in checks
    students = [line for line in plan.splitlines() if line.startswith("student ")]
    assert students and all("parameters (" in line for line in students), students
    built = "modernbert" if name == "biobert_to_modernbert" else family
    assert all(f"({built}, " in line for line in students), students
