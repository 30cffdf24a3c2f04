"""What a masked-LM forward hands the losses (trainer/distill/teacher_signals.py), checked against
HF's own outputs.

.venv/bin/pytest tests/test_signals.py -q

The references are the models' full HF forwards (`.logits`, `output_hidden_states=True`,
`output_attentions=True`) on tiny random models (2 layers, hidden 32, vocabulary 100), on a batch
with padding and masked rows in both sequences.
"""

from __future__ import annotations

import pytest
import torch
from transformers import (
    BertConfig,
    BertForMaskedLM,
    DistilBertConfig,
    DistilBertForMaskedLM,
    MobileBertConfig,
    MobileBertForMaskedLM,
)

from trainer.distill.losses import IGNORE_INDEX
from trainer.distill.teacher_signals import (
    LOGITS,
    Need,
    attention_key,
    check_need,
    hidden_key,
    masked_lm_signals,
)
from trainer.train.batch import DeviceBatch

VOCAB, HIDDEN, LAYERS, HEADS, B, L = 100, 32, 2, 2, 2, 9


pytestmark = pytest.mark.usefixtures("one_thread")


def _bert(attn: str = "eager") -> BertForMaskedLM:
    config = BertConfig(
        vocab_size=VOCAB,
        hidden_size=HIDDEN,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        intermediate_size=64,
        max_position_embeddings=16,
        attn_implementation=attn,
    )
    torch.manual_seed(0)
    return BertForMaskedLM(config).eval()


def _distilbert() -> DistilBertForMaskedLM:
    config = DistilBertConfig(
        vocab_size=VOCAB,
        dim=HIDDEN,
        n_layers=LAYERS,
        n_heads=HEADS,
        hidden_dim=64,
        max_position_embeddings=16,
    )
    torch.manual_seed(1)
    return DistilBertForMaskedLM(config).eval()


def _mobilebert() -> MobileBertForMaskedLM:
    config = MobileBertConfig(
        vocab_size=VOCAB,
        hidden_size=HIDDEN,
        embedding_size=16,
        true_hidden_size=16,
        intra_bottleneck_size=16,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        intermediate_size=64,
        num_feedforward_networks=1,
        max_position_embeddings=16,
    )
    torch.manual_seed(2)
    return MobileBertForMaskedLM(config).eval()


MODELS = {"bert": _bert, "distilbert": _distilbert, "mobilebert": _mobilebert}


def _batch() -> DeviceBatch:
    """Sequence 0 is full, sequence 1 has 4 padding positions; 4 masked rows over both."""
    gen = torch.Generator().manual_seed(3)
    input_ids = torch.randint(5, VOCAB, (B, L), generator=gen)
    attention_mask = torch.ones(B, L, dtype=torch.long)
    attention_mask[1, 5:] = 0
    input_ids[1, 5:] = 0
    labels = torch.full((B, L), IGNORE_INDEX)
    labels[0, 1], labels[0, 6], labels[1, 0], labels[1, 3] = 7, 8, 9, 10
    return DeviceBatch.from_host(
        {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels},
        torch.device("cpu"),
    )


def _signals(model, need: Need, batch: DeviceBatch | None = None) -> dict[str, torch.Tensor]:
    batch = batch or _batch()
    with torch.no_grad():
        return masked_lm_signals(
            model, batch.input_ids, batch.attention_mask, batch.masked_index, need
        )


def _reference(model, batch: DeviceBatch, **outputs: bool):
    with torch.no_grad():
        return model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, **outputs)


def _close(got: torch.Tensor, want: torch.Tensor) -> None:
    assert got.dtype == torch.float32 and got.shape == want.shape
    assert torch.allclose(got, want, rtol=1e-5, atol=1e-6), (got - want).abs().max()


# ---------------------------------------------------------------- values vs. HF's forward


def test_masked_index_is_the_flat_position_of_each_labelled_token():
    batch = _batch()
    assert batch.masked_index.tolist() == [1, 6, L + 0, L + 3]
    assert batch.masked_labels.tolist() == [7, 8, 9, 10]


@pytest.mark.parametrize("kind", MODELS)
def test_logits_at_masked_rows_equal_the_full_forward(kind):
    model, batch = MODELS[kind](), _batch()
    out = _signals(model, Need(logits=True), batch)
    full = _reference(model, batch).logits  # [B, L, V]
    rows = torch.stack([full[0, 1], full[0, 6], full[1, 0], full[1, 3]])
    assert set(out) == {LOGITS}
    _close(out[LOGITS], rows)


def test_hidden_states_and_attention_maps_equal_hf_outputs():
    model, batch = _bert(), _batch()
    need = Need(logits=True, hidden=frozenset({0, 1, 2}), attentions=frozenset({0, 1}))
    out = _signals(model, need, batch)
    ref = _reference(model, batch, output_hidden_states=True, output_attentions=True)
    assert len(ref.hidden_states) == LAYERS + 1 and len(ref.attentions) == LAYERS
    for index in range(LAYERS + 1):
        _close(out[hidden_key(index)], ref.hidden_states[index])
    for layer in range(LAYERS):
        _close(out[attention_key(layer)], ref.attentions[layer])
    _close(out[hidden_key(LAYERS)], ref.hidden_states[-1])
    # The padding mask reached the attention: real queries give padded keys (almost) no weight.
    for layer in range(LAYERS):
        assert out[attention_key(layer)][1, :, :5, 5:].abs().max() < 1e-6
        assert out[attention_key(layer)][1, :, :5, :5].sum(-1).sub(1).abs().max() < 1e-5


def test_padding_changes_the_signals():
    # Guards the check above against a model that ignores attention_mask altogether.
    model, batch = _bert(), _batch()
    need = Need(hidden=frozenset({2}), attentions=frozenset({1}))
    masked = _signals(model, need, batch)
    batch.attention_mask = torch.ones_like(batch.attention_mask)
    unmasked = _signals(model, need, batch)
    assert not torch.allclose(masked[hidden_key(2)][1, :5], unmasked[hidden_key(2)][1, :5])
    assert torch.allclose(masked[hidden_key(2)][0], unmasked[hidden_key(2)][0], atol=1e-6)


def test_last_hidden_state_of_a_non_bert_model():
    model, batch = _distilbert(), _batch()
    out = _signals(model, Need(logits=True, hidden=frozenset({LAYERS})), batch)
    ref = _reference(model, batch, output_hidden_states=True)
    assert set(out) == {LOGITS, hidden_key(LAYERS)}
    _close(out[hidden_key(LAYERS)], ref.hidden_states[-1])
    _close(out[LOGITS], ref.logits.reshape(B * L, VOCAB)[batch.masked_index])


def test_student_signals_carry_gradients():
    model, batch = _bert(), _batch()
    need = Need(logits=True, hidden=frozenset({1}), attentions=frozenset({0}))
    out = masked_lm_signals(model, batch.input_ids, batch.attention_mask, batch.masked_index, need)
    sum(v.sum() for v in out.values()).backward()
    grad = model.bert.encoder.layer[0].attention.self.query.weight.grad
    assert grad is not None and grad.abs().sum() > 0


# ---------------------------------------------------------------- only what was asked for


@pytest.mark.parametrize(
    "need, keys",
    [
        (Need(hidden=frozenset({1})), {"hidden.1"}),
        (Need(hidden=frozenset({0, 2})), {"hidden.0", "hidden.2"}),
        (Need(attentions=frozenset({1})), {"attn.1"}),
        (Need(logits=True), {"logits"}),
        (
            Need(logits=True, hidden=frozenset({1}), attentions=frozenset({0})),
            {"logits", "hidden.1", "attn.0"},
        ),
        (Need(), set()),
    ],
    ids=["hidden1", "hidden0-2", "attn1", "logits", "mixed", "nothing"],
)
def test_only_requested_keys_are_returned(need, keys):
    model = _bert()
    assert set(_signals(model, need)) == keys
    # The taps stay installed (torch.compile traces them) but keep nothing between calls, and a
    # later call that asks for less gets only what it asks for.
    assert not model.__dict__["_biodistill_taps"]["store"]
    assert set(_signals(model, Need(logits=True))) == {"logits"}


def test_logits_with_no_masked_row_are_empty():
    batch = _batch()
    batch.masked_index = batch.masked_index[:0]
    out = _signals(_bert(), Need(logits=True), batch)
    assert out[LOGITS].shape == (0, VOCAB)


# ---------------------------------------------------------------- check_need


def test_check_need_refuses_attention_maps_from_sdpa():
    model = _bert("sdpa")
    with pytest.raises(ValueError, match=r"student X: .*'sdpa' attention.*eager"):
        check_need(model, Need(attentions=frozenset({0})), "student X")
    # Hidden states and logits come from SDPA models as well.
    check_need(model, Need(logits=True, hidden=frozenset({0, 1, 2})), "student X")


def test_attention_maps_from_sdpa_are_an_error_at_forward_too():
    # The trap: HF's output_attentions gives an empty tuple under SDPA, a loss over it is 0.
    with pytest.raises(RuntimeError, match=r"layer 0 returned no attention.*'sdpa'"):
        _signals(_bert("sdpa"), Need(attentions=frozenset({0})))


@pytest.mark.parametrize(
    "need",
    [
        Need(hidden=frozenset({LAYERS + 1})),
        Need(hidden=frozenset({-1})),
        Need(attentions=frozenset({LAYERS})),
        Need(attentions=frozenset({-1})),
    ],
    ids=["hidden-past-last", "hidden-negative", "attn-past-last", "attn-negative"],
)
def test_check_need_refuses_out_of_range_layers(need):
    with pytest.raises(ValueError, match=rf"teacher: has {LAYERS} layers"):
        check_need(_bert(), need, "teacher")


def test_check_need_accepts_the_whole_range():
    need = Need(True, frozenset(range(LAYERS + 1)), frozenset(range(LAYERS)))
    check_need(_bert(), need, "teacher")


@pytest.mark.parametrize("kind", ["distilbert", "mobilebert"])
def test_check_need_refuses_layer_signals_from_non_bert(kind):
    model = MODELS[kind]()
    for need in (Need(hidden=frozenset({1})), Need(attentions=frozenset({0}))):
        with pytest.raises(ValueError, match=r"ForMaskedLM;.*families bert, roberta, modernbert"):
            check_need(model, need, "students.S")
    # Logits and the last hidden state (COS_last) are fine.
    check_need(model, Need(logits=True, hidden=frozenset({LAYERS})), "students.S")


# ---------------------------------------------------------------- Need


def test_need_union():
    a = Need(logits=False, hidden=frozenset({0, 2}), attentions=frozenset({1}))
    b = Need(logits=True, hidden=frozenset({2, 4}), attentions=frozenset())
    assert a | b == Need(True, frozenset({0, 2, 4}), frozenset({1}))
    assert b | a == a | b
    assert a | Need() == a and (Need() | Need()).empty
    assert not Need(logits=True).empty and not Need(attentions=frozenset({0})).empty
    assert not (a | a).logits


def test_need_describe():
    need = Need(True, frozenset({4, 0}), frozenset({3, 1}))
    assert need.describe() == (
        "MLM logits at masked rows, hidden_states [0, 4], attention maps of layers [1, 3]"
    )
    assert Need().describe() == "nothing"
