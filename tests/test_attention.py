"""trainer/models/attention.py: SDPA everywhere, attention probabilities only where a loss reads
them.

    .venv/bin/python -m pytest tests/test_attention.py -q

References are HF's own implementations of the same weights: "eager" (which computes and returns
probabilities in every layer) and "sdpa" (which returns none).
"""

from __future__ import annotations

import pytest
import torch
from transformers import BertConfig, BertForMaskedLM

from trainer.distill.teacher_signals import Need, attention_key, masked_lm_signals
from trainer.models.attention import IMPLEMENTATION, return_probabilities, returns_probabilities

pytestmark = pytest.mark.usefixtures("one_thread")

LAYERS = 3


def _model(attn: str) -> BertForMaskedLM:
    config = BertConfig(
        vocab_size=50,
        hidden_size=32,
        num_hidden_layers=LAYERS,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=16,
        attn_implementation=attn,
    )
    torch.manual_seed(0)
    return BertForMaskedLM(config)


def _batch():
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(5, 50, (3, 11), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0  # padding, so the mask matters
    mask[2, 4:] = 0
    return ids, mask


def _run(model, probs_layers=(), seed=7):
    """Last hidden state and the attention outputs of every layer, dropout drawn from `seed`."""
    ids, mask = _batch()
    captured = {}
    hooks = [
        layer.attention.self.register_forward_hook(
            lambda m, i, o, k=k: captured.__setitem__(k, o[1])
        )
        for k, layer in enumerate(model.bert.encoder.layer)
    ]
    torch.manual_seed(seed)
    try:
        last = model.bert(ids, attention_mask=mask).last_hidden_state
    finally:
        for h in hooks:
            h.remove()
    return last, captured


@pytest.fixture
def models():
    ours, eager, sdpa = _model(IMPLEMENTATION), _model("eager"), _model("sdpa")
    eager.load_state_dict(ours.state_dict())
    sdpa.load_state_dict(ours.state_dict())
    return ours, eager, sdpa


def test_only_the_marked_layers_return_probabilities(models):
    ours, _, _ = models
    return_probabilities(ours, [1])
    assert [returns_probabilities(ours, i) for i in range(LAYERS)] == [False, True, False]
    _, attn = _run(ours.eval())
    assert attn[0] is None and attn[2] is None and attn[1].shape == (3, 4, 11, 11)
    return_probabilities(ours, [0, 2])  # marks are replaced, not added
    assert [returns_probabilities(ours, i) for i in range(LAYERS)] == [True, False, True]


def test_eval_mode_output_is_sdpas_bit_for_bit_and_probabilities_are_eagers(models):
    """The teacher's case: asking for maps must not change its hidden states at all."""
    ours, eager, sdpa = (m.eval() for m in models)
    return_probabilities(ours, [0, 2])
    last, attn = _run(ours)
    sdpa_last, _ = _run(sdpa)
    _, eager_attn = _run(eager)
    assert torch.equal(last, sdpa_last)
    for layer in (0, 2):
        torch.testing.assert_close(attn[layer], eager_attn[layer], rtol=1e-6, atol=1e-7)
        # padded keys get no attention, and every query row is a distribution
        assert torch.all(attn[layer][1, :, :, 7:] == 0)
        torch.testing.assert_close(attn[layer].sum(-1), torch.ones(3, 4, 11))


def test_training_mode_is_hfs_eager_attention_bit_for_bit(models):
    """A student's case: with attention dropout, the marked layers are HF's eager attention:
    same output, same post-dropout probabilities (what the paper's losses saw), same dropout
    draws; unmarked layers are HF's SDPA."""
    ours, eager, sdpa = (m.train() for m in models)
    return_probabilities(ours, range(LAYERS))
    last, attn = _run(ours)
    eager_last, eager_attn = _run(eager)
    assert torch.equal(last, eager_last)
    for layer in range(LAYERS):
        assert torch.equal(attn[layer], eager_attn[layer])
    assert (attn[0] == 0).any()  # dropout really acted on the probabilities
    return_probabilities(ours, [])
    last, _ = _run(ours)
    sdpa_last, _ = _run(sdpa)
    assert torch.equal(last, sdpa_last)


def test_gradients_through_the_probabilities_match_eager(models):
    ours, eager, _ = (m.eval() for m in models)
    return_probabilities(ours, [1])
    ids, mask = _batch()
    need = Need(attentions=frozenset({1}))
    index = torch.arange(0)
    for model in (ours, eager):
        out = masked_lm_signals(model, ids, mask, index, need)
        (out[attention_key(1)] ** 2).sum().backward()
    for (name, a), b in zip(ours.named_parameters(), eager.parameters(), strict=True):
        if a.grad is None:
            assert b.grad is None or torch.count_nonzero(b.grad) == 0, name
        else:
            torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-7, msg=name)


def _flash_calls(model, length: int, train: bool) -> tuple[int, torch.Tensor]:
    """Calls of torch's CPU flash-attention kernel in one forward (and backward when `train`) at
    `length` tokens, and the last hidden state."""
    from torch.profiler import ProfilerActivity, profile

    g = torch.Generator().manual_seed(2)
    ids = torch.randint(5, 50, (2, length), generator=g)
    mask = torch.ones_like(ids)
    mask[1, length // 2 :] = 0
    model.train(train)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        last = model.bert(ids, attention_mask=mask).last_hidden_state
        if train:
            last.float().sum().backward()
    names = [e.key for e in prof.key_averages()]
    flash = sum(
        e.count
        for e in prof.key_averages()
        if "flash_attention" in e.key and "backward" not in e.key
    )
    assert names, "the profiler recorded nothing"
    return flash, last.detach()


@pytest.mark.parametrize(
    ("dtype", "length", "math"),
    [
        (torch.bfloat16, 16, True),
        (torch.bfloat16, 128, True),  # the longest that takes the math kernel
        (torch.bfloat16, 136, False),
        (torch.float32, 16, False),  # fp32: the flash kernel is the faster one on a CPU
    ],
)
@pytest.mark.parametrize("train", [False, True])
def test_cpu_kernel_choice_by_dtype_and_length(dtype, length, math, train):
    """On a CPU, reduced precision with keys up to CPU_MATH_MAX_KEYS long runs SDPA's math kernel
    (faster there), anything else the flash kernel; in every layer, the marked one included, and
    the output is HF's SDPA output to bf16 rounding."""
    from trainer.models import attention

    def build(attn: str) -> BertForMaskedLM:
        config = BertConfig(
            vocab_size=50, hidden_size=32, num_hidden_layers=LAYERS, num_attention_heads=4,
            intermediate_size=64, max_position_embeddings=160, attn_implementation=attn,
            hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
        )  # fmt: skip
        torch.manual_seed(0)
        return BertForMaskedLM(config).to(dtype)

    assert (
        attention.cpu_math_kernel(
            torch.zeros(1, 1, length, 8, dtype=dtype), torch.zeros(1, 1, length, 8, dtype=dtype)
        )
        is math
    )
    ours, reference = build(IMPLEMENTATION), build("sdpa")
    return_probabilities(ours, [1])
    flash, last = _flash_calls(ours, length, train)
    assert flash == (0 if math else LAYERS)
    _, expected = _flash_calls(reference, length, train)
    tolerance = 0.05 if dtype == torch.bfloat16 else 1e-5
    torch.testing.assert_close(last.float(), expected.float(), atol=tolerance, rtol=tolerance)
