"""Loss terms (trainer/distill/losses.py) against independent float64 computations of the
definitions in docs/objectives.md.

Run: .venv/bin/pytest tests/test_losses.py -q

The references below are written with plain loops over rows/elements in numpy float64, straight from
the definitions, sharing no code with the implementation.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from trainer.distill.losses import (
    IGNORE_INDEX,
    attention_kl,
    attention_mse,
    cosine_loss,
    gather_masked_rows,
    hidden_mse,
    kd_kl,
    masked_rows,
    minilm_relations,
    mlm_loss,
    relation_kl,
    soft_cross_entropy,
)

B, L, H, HEADS, V = 2, 7, 5, 3, 11
EPS = 1e-12


pytestmark = pytest.mark.usefixtures("one_thread")


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _randn(*shape: int, seed: int, scale: float = 1.0) -> torch.Tensor:
    return torch.randn(*shape, generator=_gen(seed)) * scale


def _attn(seed: int) -> torch.Tensor:
    """Random attention probabilities [B, heads, L, L] (rows sum to 1)."""
    return torch.softmax(_randn(B, HEADS, L, L, seed=seed, scale=2.0), dim=-1)


def _mask() -> torch.Tensor:
    """[B, L] with right padding: 5 real tokens in sequence 0, 3 in sequence 1."""
    mask = torch.zeros(B, L, dtype=torch.long)
    mask[0, :5] = 1
    mask[1, :3] = 1
    return mask


def _labels() -> torch.Tensor:
    labels = torch.full((B, L), IGNORE_INDEX, dtype=torch.long)
    labels[0, 1], labels[0, 3], labels[1, 2] = 4, 0, 10
    return labels


def _np(x: torch.Tensor) -> np.ndarray:
    return x.detach().double().numpy()


# ---------------------------------------------------------------- references (numpy, float64)


def _softmax_row(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max())
    return e / e.sum()


def ref_mlm(logits: np.ndarray, labels: np.ndarray) -> float:
    logits, labels = logits.reshape(-1, logits.shape[-1]), labels.reshape(-1)
    losses = []
    for row, label in zip(logits, labels, strict=True):
        if label == IGNORE_INDEX:
            continue
        log_norm = math.log(sum(math.exp(v) for v in row))
        losses.append(log_norm - row[label])
    return sum(losses) / len(losses)


def ref_kd(s: np.ndarray, t: np.ndarray, temperature: float) -> float:
    total = 0.0
    for s_row, t_row in zip(s, t, strict=True):
        p, q = _softmax_row(t_row / temperature), _softmax_row(s_row / temperature)
        total += sum(p[v] * (math.log(p[v]) - math.log(q[v])) for v in range(len(p)))
    return total / len(s) * temperature**2


def ref_soft_ce(s: np.ndarray, t: np.ndarray, temperature: float) -> float:
    total = 0.0
    for s_row, t_row in zip(s, t, strict=True):
        p, q = _softmax_row(t_row / temperature), _softmax_row(s_row / temperature)
        total += -sum(p[v] * math.log(q[v]) for v in range(len(p)))
    return total / len(s)


def ref_cos(s: np.ndarray, t: np.ndarray, mask: np.ndarray) -> float:
    total, count = 0.0, 0
    for b in range(s.shape[0]):
        for i in range(s.shape[1]):
            if mask[b, i]:
                cos = s[b, i] @ t[b, i] / (np.linalg.norm(s[b, i]) * np.linalg.norm(t[b, i]))
                total += 1 - cos
                count += 1
    return total / count


def ref_attention_kl(s: np.ndarray, t: np.ndarray, mask: np.ndarray) -> float:
    batch, heads, length, _ = s.shape
    total, rows = 0.0, 0
    for b in range(batch):
        for q in range(length):
            if not mask[b, q]:
                continue
            rows += 1
            for h in range(heads):
                for k in range(length):  # every key column, padded ones included
                    tt, ss = t[b, h, q, k] + EPS, s[b, h, q, k] + EPS
                    total += tt * (math.log(tt) - math.log(ss))
    return total / (rows * heads * length)


def ref_mse(s: np.ndarray, t: np.ndarray) -> float:
    flat_s, flat_t = s.reshape(-1), t.reshape(-1)
    return sum((a - b) ** 2 for a, b in zip(flat_s, flat_t, strict=True)) / flat_s.size


def _close(got: torch.Tensor, want: float, tol: float = 1e-5) -> None:
    assert got.dtype == torch.float32
    assert got.dim() == 0
    assert got.item() == pytest.approx(want, rel=tol, abs=tol)


# -------------------------------------------------------------------- values vs. references


def test_mlm_full_and_gathered_match_reference():
    logits, labels = _randn(B, L, V, seed=1, scale=3.0), _labels()
    want = ref_mlm(_np(logits), labels.numpy())
    _close(mlm_loss(logits, labels), want)
    rows = gather_masked_rows(logits, labels)
    assert rows.shape == (3, V)
    assert torch.equal(masked_rows(labels).sum(), torch.tensor(3))
    _close(mlm_loss(rows, labels[labels != IGNORE_INDEX]), want)


@pytest.mark.parametrize("temperature", [1.0, 2.0, 0.5])
def test_kd_and_soft_ce_match_reference(temperature):
    s, t = _randn(6, V, seed=2, scale=3.0), _randn(6, V, seed=3, scale=3.0)
    _close(kd_kl(s, t, temperature), ref_kd(_np(s), _np(t), temperature))
    _close(soft_cross_entropy(s, t, temperature), ref_soft_ce(_np(s), _np(t), temperature))


def test_cosine_matches_reference_over_real_tokens_only():
    s, t, mask = _randn(B, L, H, seed=4), _randn(B, L, H, seed=5), _mask()
    _close(cosine_loss(s, t, mask), ref_cos(_np(s), _np(t), mask.numpy()))
    _close(cosine_loss(s, t, None), ref_cos(_np(s), _np(t), np.ones((B, L))))


def test_attention_kl_matches_reference():
    s, t, mask = _attn(6), _attn(7), _mask()
    _close(attention_kl(s, t, mask), ref_attention_kl(_np(s), _np(t), mask.numpy()))
    _close(attention_kl(s, t, None), ref_attention_kl(_np(s), _np(t), np.ones((B, L))))


def test_mse_terms_match_reference():
    s, t = _attn(8), _attn(9)
    _close(attention_mse(s, t), ref_mse(_np(s), _np(t)))
    hs, ht = _randn(B, L, 4 * H, seed=10), _randn(B, L, 4 * H, seed=11)
    _close(hidden_mse(hs, ht), ref_mse(_np(hs), _np(ht)))


# ---------------------------------------------------------------------- defining properties


def test_kd_hand_computed_at_temperature_two():
    # t/T = [0, ln 3] -> p = [1/4, 3/4]; s = [0, 0] -> q = [1/2, 1/2].
    # KL = 1/4 ln(1/2) + 3/4 ln(3/2); times T^2 = 4: ln(1/2) + 3 ln(3/2) = ln(27/16).
    t = torch.tensor([[0.0, 2 * math.log(3)]])
    s = torch.zeros(1, 2)
    _close(kd_kl(s, t, 2.0), math.log(27 / 16), tol=1e-6)
    # SOFT_CE has no T^2: -(1/4 + 3/4) ln(1/2) = ln 2.
    _close(soft_cross_entropy(s, t, 2.0), math.log(2), tol=1e-6)


def test_kd_zero_iff_student_equals_teacher():
    t = _randn(5, V, seed=12, scale=3.0)
    assert kd_kl(t.clone(), t, 2.0).abs().item() < 1e-6
    assert kd_kl(_randn(5, V, seed=13), t, 2.0).item() > 0
    # SOFT_CE at s == t is the teacher's entropy, not 0: mean over rows of H(p).
    p = torch.softmax(t.double() / 2.0, dim=-1)
    _close(soft_cross_entropy(t.clone(), t, 2.0), -(p * p.log()).sum(-1).mean().item())


def test_bf16_inputs_give_fp32_result_of_upcast_values():
    s16, t16 = _randn(4, V, seed=14, scale=3.0).bfloat16(), _randn(4, V, seed=15).bfloat16()
    h16, g16 = _randn(B, L, H, seed=16).bfloat16(), _randn(B, L, H, seed=17).bfloat16()
    a16, b16 = _attn(18).bfloat16(), _attn(19).bfloat16()
    labels = torch.tensor([1, IGNORE_INDEX, 3, 0])
    cases = {
        "kd": lambda f: kd_kl(f(s16), f(t16), 2.0),
        "soft_ce": lambda f: soft_cross_entropy(f(s16), f(t16), 2.0),
        "kd_chunked": lambda f: kd_kl(f(s16), f(t16), 2.0, chunk_rows=3),
        "mlm": lambda f: mlm_loss(f(s16), labels),
        "cos": lambda f: cosine_loss(f(h16), f(g16), _mask()),
        "att_kl": lambda f: attention_kl(f(a16), f(b16), _mask()),
        "att_mse": lambda f: attention_mse(f(a16), f(b16)),
        "hid_mse": lambda f: hidden_mse(f(h16), f(g16)),
    }
    for name, term in cases.items():
        got, want = term(lambda x: x), term(lambda x: x.float())
        assert got.dtype == torch.float32, name
        # The same fp32 ops on the same values: bitwise equal, not merely close.
        assert torch.equal(got, want), (name, got, want)


def test_attention_kl_ignores_padded_query_rows_but_not_padded_keys():
    s, t, mask = _attn(20), _attn(21), _mask()
    base = attention_kl(s, t, mask)
    # Padded query rows (sequence 1, queries 3..6) may hold anything, even NaN.
    s_pad, t_pad = s.clone(), t.clone()
    s_pad[1, :, 3:, :] = torch.softmax(_randn(HEADS, 4, L, seed=22), dim=-1)
    t_pad[1, :, 4:, :] = float("nan")
    assert torch.equal(attention_kl(s_pad, t_pad, mask), base)
    # A padded key column of a real query row counts.
    s_key = s.clone()
    s_key[1, :, 0, 5] = s_key[1, :, 0, 5] * 0.1
    assert not torch.allclose(attention_kl(s_key, t, mask), base)


def test_cosine_ignores_padding_tokens():
    s, t, mask = _randn(B, L, H, seed=23), _randn(B, L, H, seed=24), _mask()
    base = cosine_loss(s, t, mask)
    s2 = s.clone()
    s2[0, 5:] = _randn(2, H, seed=25)
    s2[1, 3:] = float("nan")
    assert torch.equal(cosine_loss(s2, t, mask), base)
    s3 = s.clone()
    s3[1, 2] = -s3[1, 2]  # a real token
    assert not torch.allclose(cosine_loss(s3, t, mask), base)


def test_mlm_with_no_masked_row_is_zero_and_backward_works():
    logits = _randn(B, L, V, seed=26).requires_grad_()
    loss = mlm_loss(logits, torch.full((B, L), IGNORE_INDEX))
    assert loss.item() == 0.0 and not torch.isnan(loss)
    loss.backward()
    assert torch.equal(logits.grad, torch.zeros_like(logits))
    empty = torch.zeros(0, V, requires_grad=True)
    assert kd_kl(empty, torch.zeros(0, V), 2.0).item() == 0.0


# ---------------------------------------------------------------------------- gradients


def _all_terms(student: dict[str, torch.Tensor], teacher: dict[str, torch.Tensor]):
    mask = _mask()
    return {
        "mlm": mlm_loss(student["logits"], torch.tensor([3, 0, 7, 1, 2, 5])),
        "kd": kd_kl(student["logits"], teacher["logits"], 2.0),
        "kd_chunked": kd_kl(student["logits"], teacher["logits"], 2.0, chunk_rows=4),
        "soft_ce": soft_cross_entropy(student["logits"], teacher["logits"], 2.0),
        "cos": cosine_loss(student["hidden"], teacher["hidden"], mask),
        "att_kl": attention_kl(student["attn"], teacher["attn"], mask),
        "att_mse": attention_mse(student["attn"], teacher["attn"]),
        "hid_mse": hidden_mse(student["hidden"], teacher["hidden"]),
    }


def test_gradients_reach_student_not_teacher():
    teacher = {
        "logits": _randn(6, V, seed=27),
        "hidden": _randn(B, L, H, seed=28),
        "attn": _attn(29),
    }
    for name in ["mlm", "kd", "kd_chunked", "soft_ce", "cos", "att_kl", "att_mse", "hid_mse"]:
        student = {
            "logits": _randn(6, V, seed=30).requires_grad_(),
            "hidden": _randn(B, L, H, seed=31).requires_grad_(),
            "attn": _attn(32).requires_grad_(),
        }
        _all_terms(student, teacher)[name].backward()
        grads = [x.grad for x in student.values() if x.grad is not None]
        assert grads and any(g.abs().sum() > 0 for g in grads), name
        assert all(torch.isfinite(g).all() for g in grads), name
        assert all(x.grad is None and not x.requires_grad for x in teacher.values()), name


# ------------------------------------------------------------------------------- chunking


@pytest.mark.parametrize("fn", [kd_kl, soft_cross_entropy])
@pytest.mark.parametrize("chunk_rows", [1, 4, 9])
def test_chunked_equals_unchunked_values_and_gradients(fn, chunk_rows):
    n = 10  # chunk_rows 4 and 9 leave a ragged last chunk
    s0, t0 = _randn(n, V, seed=33, scale=3.0), _randn(n, V, seed=34, scale=3.0)
    upstream = torch.tensor(0.7)  # a non-unit incoming gradient, as a weighted objective gives
    results = []
    for rows in (n, chunk_rows):  # chunk_rows >= n takes the plain path
        s, t = s0.clone().requires_grad_(), t0.clone().requires_grad_()
        loss = fn(s, t, 2.0, chunk_rows=rows)
        (loss * upstream).backward()
        results.append((loss, s.grad, t.grad))
    (plain, s_plain, t_plain), (chunked, s_chunked, t_chunked) = results
    torch.testing.assert_close(chunked, plain, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(s_chunked, s_plain, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(t_chunked, t_plain, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("fn", [kd_kl, soft_cross_entropy])
def test_chunked_gradients_match_finite_differences(fn):
    # The chunked path's backward is hand-derived, so check it against central differences in
    # float64 for both inputs (torch's gradcheck does the same but imports sympy: seconds here).
    s = _randn(5, 4, seed=35).double().requires_grad_()
    t = _randn(5, 4, seed=36).double().requires_grad_()
    assert_gradients_match_central_differences(lambda: fn(s, t, 1.5, chunk_rows=2), (s, t))


def assert_gradients_match_central_differences(loss, inputs, step: float = 1e-6) -> None:
    """`loss()`'s autograd gradients with respect to each float64 tensor of `inputs` equal
    central differences, element by element."""
    loss().backward()
    for x in inputs:
        numeric = torch.zeros_like(x)
        with torch.no_grad():
            for idx in np.ndindex(*x.shape):
                original = x[idx].item()
                x[idx] = original + step
                up = loss().item()
                x[idx] = original - step
                down = loss().item()
                x[idx] = original
                numeric[idx] = (up - down) / (2 * step)
        torch.testing.assert_close(x.grad, numeric, rtol=1e-6, atol=1e-8)


def test_chunked_is_used_by_default_above_threshold():
    from trainer.distill.losses import KD_CHUNK_ROWS

    s = torch.zeros(KD_CHUNK_ROWS + 1, 3, requires_grad=True)
    loss = kd_kl(s, torch.zeros(KD_CHUNK_ROWS + 1, 3), 2.0)
    assert type(loss.grad_fn).__name__.startswith("_ChunkedDistill")
    small = kd_kl(s[:KD_CHUNK_ROWS], torch.zeros(KD_CHUNK_ROWS, 3), 2.0)
    assert not type(small.grad_fn).__name__.startswith("_ChunkedDistill")


# ----------------------------------------------------------------------------- validation


def test_bad_inputs_raise_value_error():
    s, t = torch.zeros(3, V), torch.zeros(3, V)
    with pytest.raises(ValueError, match="temperature"):
        kd_kl(s, t, 0.0)
    with pytest.raises(ValueError, match="shape"):
        kd_kl(s, torch.zeros(3, V + 1), 1.0)
    with pytest.raises(ValueError, match="gather"):
        soft_cross_entropy(torch.zeros(B, L, V), torch.zeros(B, L, V), 1.0)
    with pytest.raises(ValueError, match="chunk_rows"):
        kd_kl(s, t, 1.0, chunk_rows=0)
    with pytest.raises(ValueError, match="labels"):
        mlm_loss(torch.zeros(B, L, V), torch.zeros(B, L + 1, dtype=torch.long))
    with pytest.raises(ValueError, match="attention_mask"):
        attention_kl(_attn(0), _attn(1), torch.ones(B, L + 1))
    with pytest.raises(ValueError, match="shape"):
        hidden_mse(torch.zeros(B, L, H), torch.zeros(B, L, 2 * H))


# -------------------------------------------------------------- MiniLMv2 relations (relation_kl)

H_S, H_T = 24, 48  # student and teacher hidden sizes differ, as in MiniLMv2


def ref_relation_kl(s: np.ndarray, t: np.ndarray, mask: np.ndarray, heads: int) -> float:
    """KL(rel_t || rel_s) summed over real keys, mean over real query rows and relation heads;
    rel = softmax over the real keys of (a_q . a_k) / sqrt(d_r), d_r = H / R for each model."""
    batch, length, _ = s.shape

    def rel(x: np.ndarray, b: int, r: int, q: int, keys: list[int]) -> list[float]:
        d = x.shape[-1] // heads
        cols = range(r * d, (r + 1) * d)
        scores = [sum(x[b, q, c] * x[b, k, c] for c in cols) / math.sqrt(d) for k in keys]
        top = max(scores)
        exps = [math.exp(z - top) for z in scores]
        return [e / sum(exps) for e in exps]

    total, rows = 0.0, 0
    for b in range(batch):
        keys = [k for k in range(length) if mask[b, k]]
        for q in keys:  # the real query rows are the real tokens
            rows += 1
            for r in range(heads):
                p, p_s = rel(t, b, r, q, keys), rel(s, b, r, q, keys)
                total += sum(a * (math.log(a) - math.log(c)) for a, c in zip(p, p_s, strict=True))
    return total / (rows * heads)


def _qkv(hidden: int, seed: int, scale: float = 1.0) -> tuple[torch.Tensor, ...]:
    return tuple(_randn(B, L, hidden, seed=seed + i, scale=scale) for i in range(3))


@pytest.mark.parametrize("heads", [1, 4, 6])
def test_relation_kl_matches_reference_with_different_hidden_sizes(heads):
    assert H_S % heads == 0 and H_T % heads == 0  # R must divide both models' hidden sizes
    s, t, mask = _randn(B, L, H_S, seed=40), _randn(B, L, H_T, seed=41, scale=0.5), _mask()
    _close(relation_kl(s, t, mask, heads), ref_relation_kl(_np(s), _np(t), mask.numpy(), heads))
    everything = np.ones((B, L))
    _close(relation_kl(s, t, None, heads), ref_relation_kl(_np(s), _np(t), everything, heads))


def test_minilm_relations_is_qq_plus_kk_plus_vv():
    sq, tq, mask = _qkv(H_S, seed=42), _qkv(H_T, seed=45, scale=0.5), _mask()
    want = sum(
        ref_relation_kl(_np(a), _np(b), mask.numpy(), 4) for a, b in zip(sq, tq, strict=True)
    )
    _close(minilm_relations(sq, tq, mask, 4), want)


def test_relation_kl_ignores_whatever_sits_at_padding():
    s, t, mask = _randn(B, L, H_S, seed=48), _randn(B, L, H_T, seed=49), _mask()
    s0 = s.clone().requires_grad_()
    base = relation_kl(s0, t, mask, 4)
    base.backward()
    for fill in (1e4, float("inf"), float("nan")):
        s_pad, t_pad = s.clone(), t.clone()
        s_pad[0, 5:], s_pad[1, 3:] = fill, -fill
        t_pad[1, 3:] = fill
        s_pad.requires_grad_()
        loss = relation_kl(s_pad, t_pad, mask, 4)
        assert torch.equal(loss, base), fill
        loss.backward()
        assert torch.equal(s_pad.grad, s0.grad), fill  # finite, and zero at padding
    assert torch.equal(s0.grad[1, 3:], torch.zeros_like(s0.grad[1, 3:]))
    # A real token counts.
    s_real = s.clone()
    s_real[1, 1] = -3 * s_real[1, 1]
    assert not torch.allclose(relation_kl(s_real, t, mask, 4), base)


def test_relation_kl_zero_iff_relations_equal():
    t, mask = _randn(B, L, H_T, seed=50), _mask()
    assert relation_kl(t.clone(), t, mask, 4).item() == 0.0
    assert relation_kl(2 * t, t, mask, 4).item() > 1e-3  # a scaled copy sharpens every relation
    # Equal relations with different vectors: an orthogonal map within each relation head ...
    d = H_T // 4
    rotation = torch.linalg.qr(_randn(4, d, d, seed=51))[0]
    rotated = torch.einsum("blrd,red->blre", t.view(B, L, 4, d), rotation).reshape(B, L, H_T)
    assert relation_kl(rotated, t, mask, 4).item() < 1e-6
    # ... and a student of half the hidden size: teacher head = [2^(1/4) * student head, zeros],
    # so its dot products / sqrt(2 d) equal the student's / sqrt(d). Each model uses its own d_r.
    s = _randn(B, L, H_S, seed=52)
    heads = s.view(B, L, 4, H_S // 4)
    padded = torch.cat([2**0.25 * heads, torch.zeros_like(heads)], dim=-1).reshape(B, L, H_T)
    assert relation_kl(s, padded, mask, 4).item() < 1e-6
    # Split into 8 heads instead, a teacher head no longer lines up with a student head.
    assert relation_kl(s, padded, mask, 8).item() > 1e-3


def test_relation_kl_with_no_real_token_is_zero_and_backward_works():
    s = _randn(B, L, H_S, seed=53).requires_grad_()
    loss = minilm_relations((s, s, s), _qkv(H_T, seed=54), torch.zeros(B, L), 4)
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(s.grad, torch.zeros_like(s))


def test_relation_kl_bf16_inputs_give_fp32_result_of_upcast_values():
    s16, t16 = _randn(B, L, H_S, seed=55).bfloat16(), _randn(B, L, H_T, seed=56).bfloat16()
    got = relation_kl(s16, t16, _mask(), 4)
    assert got.dtype == torch.float32
    assert torch.equal(got, relation_kl(s16.float(), t16.float(), _mask(), 4))
    assert relation_kl(s16.double(), t16.double(), _mask(), 4).dtype == torch.float64


def test_relation_gradients_reach_student_not_teacher():
    student = tuple(x.requires_grad_() for x in _qkv(H_S, seed=57))
    teacher = _qkv(H_T, seed=60)
    minilm_relations(student, teacher, _mask(), 4).backward()
    for x in student:
        assert x.grad is not None and x.grad.abs().sum() > 0 and torch.isfinite(x.grad).all()
    assert all(x.grad is None and not x.requires_grad for x in teacher)


def test_relation_gradients_match_finite_differences():
    # float64 central differences for both sides (the teacher only when it asks for gradients),
    # with padding and different hidden sizes.
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    s = _randn(2, 4, 4, seed=63).double().requires_grad_()
    t = _randn(2, 4, 6, seed=64).double().requires_grad_()
    assert_gradients_match_central_differences(lambda: relation_kl(s, t, mask, 2), (s, t))


_S, _T, _M = torch.zeros(B, L, H_S), torch.zeros(B, L, H_T), torch.ones(B, L)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: relation_kl(_S, _T, _M, 5), "student has hidden size 24"),
        (lambda: relation_kl(torch.zeros(B, L, 20), _T, _M, 16), "student has hidden size 20"),
        (lambda: relation_kl(_S, torch.zeros(B, L, 20), _M, 8), "teacher has hidden size 20"),
        (lambda: relation_kl(_S, _T, _M, 0), "relation_heads"),
        (lambda: relation_kl(_S, _T, _M, 4.0), "relation_heads"),
        (lambda: relation_kl(_S[:1], _T, _M, 4), r"student \[B, L\]"),
        (lambda: relation_kl(_S, _T[:, :-1], _M, 4), r"student \[B, L\]"),
        (lambda: relation_kl(_S, _T, torch.ones(B, L + 1), 4), "attention_mask"),
        (lambda: relation_kl(_S, _T, torch.ones(B * L), 4), "attention_mask"),
        (lambda: relation_kl(_S[0], _T[0], None, 4), r"student must be \[B, L, H\]"),
        (lambda: minilm_relations((_S, _S), (_T, _T, _T), _M, 4), "student_qkv"),
        (lambda: minilm_relations((_S, _S, _S), _T, _M, 4), "teacher_qkv"),
    ],
    ids=[
        "student_H_not_divisible",
        "student_H_not_divisible_teacher_is",
        "teacher_H_not_divisible_student_is",
        "zero_heads",
        "float_heads",
        "batch_mismatch",
        "length_mismatch",
        "mask_too_long",
        "mask_flat",
        "not_3d",
        "two_student_kinds",
        "teacher_not_a_tuple",
    ],
)
def test_relation_bad_inputs_raise_value_error(call, match):
    with pytest.raises(ValueError, match=match):
        call()
