"""Loss terms of the paper's recipes, as pure functions of tensors.

Every term is defined in docs/objectives.md ("The loss terms") and implemented here to the letter;
the objectives (trainer/distill/objectives.py) weight them and sum them over layer pairs. MiniLMv2's
relation term (RELATIONS there) is also stated in full in `relation_kl`'s docstring. Conventions:

- Math runs in fp32 at least: DeepSpeed's bf16 mode returns bf16 logits and hidden states, and
  softmax/KL/cosine in bf16 loses most of the signal. Half-precision inputs are upcast first;
  float64 inputs stay float64 (handy for gradient checks).
- Temperatures are explicit arguments (a missing temperature is the classic bug in DeepSpeed's
  compression/bert example) and every reduction is written out as "sum / count", the count named.
- No host syncs: counts stay tensors (or come from shapes), empty selections give a zero that still
  carries a graph instead of NaN, and nothing calls `.item()`.
- The teacher side is just a tensor: gradients reach the student wherever it requires grad, and the
  teacher only if the caller (unusually) asked for it.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from data_pipeline.masking import IGNORE_INDEX  # unpredicted positions; every other is a masked row

ATTENTION_EPS = 1e-12
"""Added to both attention maps before the log in ATT_KL, as the paper's code does."""

KD_CHUNK_ROWS = 4096
"""Above this many rows KD / SOFT_CE run chunk by chunk so no full [N, V] softmax is held twice."""


# --------------------------------------------------------------------------------------- helpers


def _upcast(x: torch.Tensor) -> torch.Tensor:
    """fp32 for bf16/fp16 (and integer) inputs; float32/float64 pass through unchanged."""
    if x.is_floating_point() and x.element_size() >= 4:
        return x
    return x.float()


def _check_same_shape(name_a: str, a: torch.Tensor, name_b: str, b: torch.Tensor) -> None:
    # NOTE: mse_loss and friends would broadcast silently (or only warn); a mismatched layer pair is
    # a recipe bug that must fail loudly.
    if a.shape != b.shape:
        raise ValueError(f"{name_a} has shape {tuple(a.shape)} but {name_b} has {tuple(b.shape)}")


def _check_temperature(temperature: float) -> None:
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature!r}")


def _check_token_mask(mask: torch.Tensor, batch_shape: torch.Size, name: str) -> None:
    if mask.shape != batch_shape:
        raise ValueError(
            f"attention_mask has shape {tuple(mask.shape)} but {name} needs {tuple(batch_shape)}"
        )


def masked_rows(labels: torch.Tensor) -> torch.Tensor:
    """Boolean mask of the masked rows (label != -100), same shape as `labels`."""
    return labels != IGNORE_INDEX


def gather_masked_rows(x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """x[labels != -100]: [B, L, ...] -> [N, ...] (boolean indexing; one host sync for N)."""
    if x.shape[: labels.dim()] != labels.shape:
        raise ValueError(
            f"x has shape {tuple(x.shape)}, whose leading dims do not match labels "
            f"{tuple(labels.shape)}"
        )
    return x[masked_rows(labels)]


# ------------------------------------------------------------------------------------------- MLM


def mlm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """MLM: cross-entropy of `logits` against `labels`, mean over masked rows.

    Accepts full logits [B, L, V] with labels [B, L] (positions labelled -100 ignored) or rows
    already gathered at the masked positions, [N, V] with labels [N]. With no masked row the result
    is a zero that still depends on `logits` (backward works, gradients are zero), not 0/0 = NaN.
    """
    total = mlm_loss_sum(logits, labels)
    # The count stays a tensor (no host sync); clamping only matters when it is 0, where total is 0.
    count = masked_rows(labels.reshape(-1)).sum().clamp(min=1)
    return total / count


def mlm_loss_sum(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The sum over masked rows that `mlm_loss` averages (held-out evaluation sums it over a
    whole split before dividing, trainer/train/heldout.py). Shapes as `mlm_loss`."""
    if logits.shape[:-1] != labels.shape:
        raise ValueError(
            f"logits {tuple(logits.shape)} need labels of shape {tuple(logits.shape[:-1])}, "
            f"got {tuple(labels.shape)}"
        )
    flat_logits = _upcast(logits).reshape(-1, logits.shape[-1])
    flat_labels = labels.reshape(-1)
    return F.cross_entropy(flat_logits, flat_labels, ignore_index=IGNORE_INDEX, reduction="sum")


# ----------------------------------------------------------------------- KD and SOFT_CE (logits)


def _distill_pointwise(log_q: torch.Tensor, log_p: torch.Tensor, kind: str) -> torch.Tensor:
    """Per-vocabulary-entry terms whose row sums are KL(p || q) or the cross-entropy H(p, q)."""
    p = log_p.exp()
    if kind == "kl":
        return p * (log_p - log_q)
    return -p * log_q


class _ChunkedDistill(torch.autograd.Function):
    """scale * sum over rows of KL(p || q) or H(p, q), p = softmax(t/T), q = softmax(s/T), chunked.

    Plain autograd would keep every chunk's log-softmax alive for backward: the full [N, V] again.
    Instead forward keeps only the inputs, and backward recomputes each chunk and applies the closed
    forms (row value r = sum_v f_v, f the pointwise terms of `_distill_pointwise`):
        d/ds = scale / T * (q - p)            (both kinds, since sum_v p_v = 1)
        d/dt = scale / T * (f - p * r)
    """

    @staticmethod
    def forward(
        ctx,
        student: torch.Tensor,
        teacher: torch.Tensor,
        temperature: float,
        scale: float,
        kind: str,
        chunk_rows: int,
    ) -> torch.Tensor:
        total = None
        for start in range(0, student.shape[0], chunk_rows):
            rows = slice(start, start + chunk_rows)
            log_q = F.log_softmax(_upcast(student[rows]) / temperature, dim=-1)
            log_p = F.log_softmax(_upcast(teacher[rows]) / temperature, dim=-1)
            part = _distill_pointwise(log_q, log_p, kind).sum()
            total = part if total is None else total + part
        ctx.save_for_backward(student, teacher)
        ctx.temperature, ctx.scale, ctx.kind, ctx.chunk_rows = temperature, scale, kind, chunk_rows
        return total * scale

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: torch.Tensor):
        student, teacher = ctx.saved_tensors
        need_student, need_teacher = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_student = torch.empty_like(student) if need_student else None
        grad_teacher = torch.empty_like(teacher) if need_teacher else None
        factor = grad_out * (ctx.scale / ctx.temperature)  # a tensor: no host sync
        for start in range(0, student.shape[0], ctx.chunk_rows):
            rows = slice(start, start + ctx.chunk_rows)
            log_q = F.log_softmax(_upcast(student[rows]) / ctx.temperature, dim=-1)
            log_p = F.log_softmax(_upcast(teacher[rows]) / ctx.temperature, dim=-1)
            p = log_p.exp()
            if need_student:
                grad_student[rows] = (factor * (log_q.exp() - p)).to(student.dtype)
            if need_teacher:
                f = _distill_pointwise(log_q, log_p, ctx.kind)
                row_value = f.sum(dim=-1, keepdim=True)
                grad_teacher[rows] = (factor * (f - p * row_value)).to(teacher.dtype)
        return grad_student, grad_teacher, None, None, None, None


def _distill(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    temperature: float,
    kind: str,
    chunk_rows: int,
) -> torch.Tensor:
    _check_temperature(temperature)
    _check_same_shape("student_logits", student_logits, "teacher_logits", teacher_logits)
    if student_logits.dim() != 2:
        raise ValueError(
            f"expected masked rows [N, V], got shape {tuple(student_logits.shape)}; "
            "gather them with gather_masked_rows first"
        )
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows!r}")
    n_rows = student_logits.shape[0]
    if n_rows == 0:
        # batchmean over no rows is 0/0; a zero with a graph keeps backward uniform instead.
        return _upcast(student_logits).sum() * 0
    # KD carries T^2 so its gradient keeps the same magnitude across temperatures (Hinton et al.);
    # SOFT_CE (TinyBERT's prediction loss) has none.
    scale = (temperature**2 if kind == "kl" else 1.0) / n_rows
    if n_rows > chunk_rows:
        return _ChunkedDistill.apply(
            student_logits, teacher_logits, temperature, scale, kind, chunk_rows
        )
    log_q = F.log_softmax(_upcast(student_logits) / temperature, dim=-1)
    log_p = F.log_softmax(_upcast(teacher_logits) / temperature, dim=-1)
    return _distill_pointwise(log_q, log_p, kind).sum() * scale


def kd_kl(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    temperature: float,
    *,
    chunk_rows: int = KD_CHUNK_ROWS,
) -> torch.Tensor:
    """KD: KL(softmax(t/T) || softmax(s/T)), summed over the vocabulary, mean over rows, times T^2.

    Inputs are the masked rows only, [N, V] each ("batchmean" on the masked rows). Above
    `chunk_rows` rows the sum runs chunk by chunk (same value and gradients, bounded memory).
    """
    return _distill(student_logits, teacher_logits, temperature, "kl", chunk_rows)


def soft_cross_entropy(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    temperature: float,
    *,
    chunk_rows: int = KD_CHUNK_ROWS,
) -> torch.Tensor:
    """SOFT_CE: mean over rows of -sum_v softmax(t/T)_v * log_softmax(s/T)_v; no T^2.

    Inputs are the masked rows only, [N, V] each; chunked above `chunk_rows` rows like `kd_kl`.
    """
    return _distill(student_logits, teacher_logits, temperature, "ce", chunk_rows)


# ------------------------------------------------------------------------ hidden states and maps


def cosine_loss(
    student_hidden: torch.Tensor,
    teacher_hidden: torch.Tensor,
    attention_mask: torch.Tensor | None,
) -> torch.Tensor:
    """COS: mean over non-padding tokens of 1 - cos(s, t) along the hidden dim.

    `student_hidden`, `teacher_hidden`: [B, L, H]; `attention_mask`: [B, L], nonzero = real token
    (None = every token counts).
    """
    _check_same_shape("student_hidden", student_hidden, "teacher_hidden", teacher_hidden)
    distance = 1 - F.cosine_similarity(_upcast(student_hidden), _upcast(teacher_hidden), dim=-1)
    if attention_mask is None:
        return distance.mean()
    _check_token_mask(attention_mask, distance.shape, "hidden states")
    keep = attention_mask.bool()
    # where, not multiply: whatever sits at padding (even inf/NaN) must not reach the loss.
    total = torch.where(keep, distance, torch.zeros_like(distance)).sum()
    return total / keep.sum().clamp(min=1)


def attention_kl(
    student_attn: torch.Tensor,
    teacher_attn: torch.Tensor,
    attention_mask: torch.Tensor | None,
) -> torch.Tensor:
    """ATT_KL for one layer pair: kl_div(log(s + eps), t + eps), eps = 1e-12, pointwise, i.e.
    (t + eps) * (log(t + eps) - log(s + eps)), averaged over every element of the rows whose query
    token is not padding: sum / (real query rows * heads * L). Every key column is kept, as in the
    paper's code.

    `student_attn`, `teacher_attn`: attention probabilities [B, heads, L, L]; `attention_mask`:
    [B, L], nonzero = real token (None = every row counts).
    """
    _check_same_shape("student_attn", student_attn, "teacher_attn", teacher_attn)
    if student_attn.dim() != 4:
        raise ValueError(f"expected [B, heads, L, L], got shape {tuple(student_attn.shape)}")
    batch, heads, length, _ = student_attn.shape
    pointwise = F.kl_div(
        torch.log(_upcast(student_attn) + ATTENTION_EPS),
        _upcast(teacher_attn) + ATTENTION_EPS,
        reduction="none",
    )
    if attention_mask is None:
        return pointwise.mean()
    _check_token_mask(attention_mask, torch.Size([batch, length]), "attention maps")
    query_rows = attention_mask.bool()  # [B, L]
    keep = query_rows[:, None, :, None]  # -> [B, 1, L(query), 1]: whole rows, every key column
    total = torch.where(keep, pointwise, torch.zeros_like(pointwise)).sum()
    count = query_rows.sum().clamp(min=1) * (heads * length)
    return total / count


def attention_mse(student_attn: torch.Tensor, teacher_attn: torch.Tensor) -> torch.Tensor:
    """ATT_MSE for one layer pair: mean over all elements of (s - t)^2 (padding included, as in
    TinyBERT's code)."""
    _check_same_shape("student_attn", student_attn, "teacher_attn", teacher_attn)
    return F.mse_loss(_upcast(student_attn), _upcast(teacher_attn), reduction="mean")


def hidden_mse(
    student_hidden_projected: torch.Tensor, teacher_hidden: torch.Tensor
) -> torch.Tensor:
    """HID_MSE for one layer pair: mean over all elements of (fit_dense(s) - t)^2.

    The caller applies `fit_dense` (the student's hidden size differs from the teacher's).
    """
    _check_same_shape(
        "student_hidden_projected", student_hidden_projected, "teacher_hidden", teacher_hidden
    )
    return F.mse_loss(_upcast(student_hidden_projected), _upcast(teacher_hidden), reduction="mean")


# --------------------------------------------------------------- MiniLMv2 self-attention relations


def _check_relation_input(name: str, x: torch.Tensor, relation_heads: int) -> None:
    if x.dim() != 3:
        raise ValueError(f"{name} must be [B, L, H] projected vectors, got shape {tuple(x.shape)}")
    if x.shape[-1] % relation_heads:
        raise ValueError(
            f"{name} has hidden size {x.shape[-1]}, "
            f"not divisible by relation_heads={relation_heads}"
        )


def _relation_log_probs(
    x: torch.Tensor, real: torch.Tensor | None, relation_heads: int
) -> torch.Tensor:
    """log softmax(A A^T / sqrt(d_r)) over the real key columns: [B, L, H] -> [B, R, L, L]."""
    batch, length, hidden = x.shape
    head_dim = hidden // relation_heads
    x = _upcast(x)
    if real is not None:
        # where, not multiply: padding may hold anything (even inf/NaN); zeroed here it cannot reach
        # the real rows' scores, nor their gradients through the matmul's backward.
        x = torch.where(real[:, :, None], x, torch.zeros_like(x))
    heads = x.reshape(batch, length, relation_heads, head_dim).transpose(1, 2)  # [B, R, L, d_r]
    scores = heads @ heads.transpose(-1, -2) / math.sqrt(head_dim)
    if real is not None:
        # The dtype's most negative finite value, not -inf: a sequence with no real token then
        # gives a uniform (finite) row instead of NaN, whose gradient would poison the batch.
        padded_keys = ~real[:, None, None, :]
        scores = scores.masked_fill(padded_keys, torch.finfo(scores.dtype).min)
    return F.log_softmax(scores, dim=-1)


def relation_kl(
    student: torch.Tensor,
    teacher: torch.Tensor,
    attention_mask: torch.Tensor | None,
    relation_heads: int,
) -> torch.Tensor:
    """MiniLMv2 self-attention relation KL for one layer pair and one kind (query-query, key-key or
    value-value); Wang et al., "MiniLMv2: Multi-Head Self-Attention Relation Distillation for
    Compressing Pretrained Transformers" (Findings of ACL 2021, arXiv:2012.15828).

    `student`: [B, L, H_s], `teacher`: [B, L, H_t]: one layer's projected queries (or keys, or
    values) over all attention heads, before any head split; H_s and H_t (and the two models' head
    counts) may differ. `attention_mask`: [B, L], nonzero = real token (None = every token real).
    `relation_heads` R must divide both H_s and H_t.

    For each model, with d_r = H / R its own relation head size:
        A   = x split along H into R heads                         [B, R, L, d_r]
        rel = softmax(A A^T / sqrt(d_r)) over the key positions,   [B, R, L, L]
              padded key columns excluded from the softmax (probability exactly 0).
    The term is KL(rel_t || rel_s), summed over the key positions, summed over the relation heads
    and the real query rows, and divided by (real query rows * R). Padded query rows, and whatever
    values sit at padded positions, contribute nothing; with no real token the result is a zero
    that still carries a graph. The KL is computed from log_softmax on both sides.
    """
    if isinstance(relation_heads, bool) or not isinstance(relation_heads, int):
        raise ValueError(f"relation_heads must be an int >= 1, got {relation_heads!r}")
    if relation_heads < 1:
        raise ValueError(f"relation_heads must be >= 1, got {relation_heads!r}")
    _check_relation_input("student", student, relation_heads)
    _check_relation_input("teacher", teacher, relation_heads)
    if student.shape[:2] != teacher.shape[:2]:
        raise ValueError(
            f"student [B, L] = {tuple(student.shape[:2])} but teacher [B, L] = "
            f"{tuple(teacher.shape[:2])}"
        )
    batch, length, _ = student.shape
    real = None
    if attention_mask is not None:
        _check_token_mask(attention_mask, torch.Size([batch, length]), "relations")
        real = attention_mask.bool()
    log_s = _relation_log_probs(student, real, relation_heads)
    log_t = _relation_log_probs(teacher, real, relation_heads)
    pointwise = log_t.exp() * (log_t - log_s)  # [B, R, L(query), L(key)]
    if real is None:
        count = max(batch * length * relation_heads, 1)  # from shapes: no host sync
        return pointwise.sum() / count
    # Real query row and real key column. (With padding zeroed, a padded query row is uniform over
    # the real keys for both models, so its KL is 0 anyway; the where states the definition.)
    keep = real[:, None, :, None] & real[:, None, None, :]
    total = torch.where(keep, pointwise, torch.zeros_like(pointwise)).sum()
    # Clamping only matters with no real token, where total is 0.
    count = real.sum().clamp(min=1) * relation_heads
    return total / count


def minilm_relations(
    student_qkv: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    teacher_qkv: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    attention_mask: torch.Tensor | None,
    relation_heads: int,
) -> torch.Tensor:
    """MiniLMv2 term for one layer pair: relation_kl(q) + relation_kl(k) + relation_kl(v), the
    query-query, key-key and value-value relations summed unweighted as in MiniLMv2.

    `student_qkv`, `teacher_qkv`: (queries, keys, values) of one layer, each [B, L, H] as in
    `relation_kl` (H_s may differ from H_t; R must divide both).
    """
    for name, qkv in (("student_qkv", student_qkv), ("teacher_qkv", teacher_qkv)):
        size = len(qkv) if isinstance(qkv, (tuple, list)) else None
        if size != 3:
            raise ValueError(
                f"{name} must be a tuple (queries, keys, values), got a {type(qkv).__name__}"
                + ("" if size is None else f" of length {size}")
            )
    q, k, v = (
        relation_kl(s, t, attention_mask, relation_heads)
        for s, t in zip(student_qkv, teacher_qkv, strict=True)
    )
    return q + k + v
