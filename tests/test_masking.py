"""Dynamic MLM masking and collation (data_pipeline/masking.py).

Run: .venv/bin/pytest tests/test_masking.py -q
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from data_pipeline.loader_config import sample_seeds
from data_pipeline.masking import (
    IGNORE_INDEX,
    collate,
    continuation_table,
    mask_batch,
    mask_tokens,
    special_table,
    uniforms,
)

VOCAB, PAD, UNK, CLS, SEP, MASK = 1000, 0, 1, 2, 3, 4
SPECIAL = (PAD, UNK, CLS, SEP, MASK)


def _batch(rows: int = 256, seed: int = 0) -> dict[str, torch.Tensor]:
    """Sequences [CLS] tokens [SEP] of varied length, padded; ordinary tokens are >= 5."""
    rng = np.random.default_rng(seed)
    samples = []
    for _ in range(rows):
        n = int(rng.integers(20, 500))
        samples.append(np.concatenate([[CLS], rng.integers(5, VOCAB, n), [SEP]]).astype(np.uint16))
    return collate(samples, PAD)


def _seeds(rows: int, seed: int = 1) -> np.ndarray:
    return sample_seeds(seed, 0, 0, [f"row-{i}" for i in range(rows)])


def _mask(batch, seed=1, prob=0.15, table=None, special=None):
    special = special_table(VOCAB, SPECIAL) if special is None else special
    seeds = _seeds(batch["input_ids"].shape[0], seed)
    return mask_batch(
        batch, special, mask_id=MASK, mask_prob=prob, seeds=seeds, is_continuation=table
    )


def test_selection_rate_and_80_10_10_split():
    batch = _batch()
    out = _mask(batch)
    ids = batch["input_ids"]
    eligible = (batch["attention_mask"] == 1) & (ids > MASK)
    selected = out["labels"] != IGNORE_INDEX
    assert eligible.sum() > 50_000
    rate = selected.sum().item() / eligible.sum().item()
    assert abs(rate - 0.15) < 0.005
    sel_out = out["input_ids"][selected]
    sel_orig = ids[selected]
    n = selected.sum().item()
    as_mask = (sel_out == MASK).sum().item() / n
    unchanged = (sel_out == sel_orig).sum().item() / n
    other = ((sel_out != MASK) & (sel_out != sel_orig)).sum().item() / n
    assert abs(as_mask - 0.8) < 0.015
    assert abs(unchanged - 0.1) < 0.01
    assert abs(other - 0.1) < 0.01
    assert int(out["input_ids"].min()) >= 0 and int(out["input_ids"].max()) < VOCAB


def test_labels_hold_originals_and_unselected_tokens_stay():
    batch = _batch(rows=32)
    out = _mask(batch)
    selected = out["labels"] != IGNORE_INDEX
    assert torch.equal(out["labels"][selected], batch["input_ids"][selected])
    assert torch.equal(out["input_ids"][~selected], batch["input_ids"][~selected])
    assert out["labels"].dtype == torch.int64 and out["input_ids"].dtype == torch.int64
    assert torch.equal(out["attention_mask"], batch["attention_mask"])


def test_special_and_padding_never_selected():
    batch = _batch(rows=64)
    out = _mask(batch, prob=0.9)  # high rate: every eligible token is almost surely hit somewhere
    ids = batch["input_ids"]
    never = (batch["attention_mask"] == 0) | (ids <= MASK)
    assert (out["labels"][never] == IGNORE_INDEX).all()
    assert torch.equal(out["input_ids"][never], ids[never])
    # padding is excluded through the attention mask even when the pad id is not listed special
    out2 = _mask(batch, seed=3, prob=0.9, special=special_table(VOCAB, (CLS, SEP)))
    assert (out2["labels"][batch["attention_mask"] == 0] == IGNORE_INDEX).all()


def test_same_seed_same_masks_other_seed_differs():
    batch = _batch(rows=16)
    a, b, c = _mask(batch, seed=5), _mask(batch, seed=5), _mask(batch, seed=6)
    assert torch.equal(a["input_ids"], b["input_ids"]) and torch.equal(a["labels"], b["labels"])
    assert not torch.equal(a["labels"], c["labels"])


def test_mask_tokens_is_pure_and_accepts_1d():
    ids = torch.tensor([CLS, 10, 11, 12, 13, SEP])
    before = ids.clone()
    masked, labels = mask_tokens(
        ids,
        torch.tensor([True, False, False, False, False, True]),
        vocab_size=VOCAB,
        mask_id=MASK,
        mask_prob=0.5,
        seeds=0,
    )
    assert torch.equal(ids, before)
    assert masked.shape == labels.shape == ids.shape
    with pytest.raises(ValueError, match="mask_prob"):
        mask_tokens(
            ids,
            ids == CLS,
            vocab_size=VOCAB,
            mask_id=MASK,
            mask_prob=1.5,
            seeds=0,
        )


def _words_batch(rows: int = 200, seed: int = 0):
    """Ids 5..499 are word heads, 500..999 are "##" continuations; words of 1-4 pieces."""
    rng = np.random.default_rng(seed)
    table = torch.zeros(VOCAB, dtype=torch.bool)
    table[500:] = True
    samples, words = [], []
    for _ in range(rows):
        ids, spans = [CLS], []
        for _ in range(int(rng.integers(5, 60))):
            k = int(rng.integers(1, 5))
            spans.append((len(ids), len(ids) + k))
            ids += [int(rng.integers(5, 500))] + [int(x) for x in rng.integers(500, VOCAB, k - 1)]
        samples.append(np.array(ids + [SEP], dtype=np.int32))
        words.append(spans)
    return collate(samples, PAD), words, table


def test_whole_word_masks_all_or_none_of_each_word():
    batch, words, table = _words_batch()
    out = _mask(batch, table=table)
    selected = out["labels"] != IGNORE_INDEX
    hit = total = 0
    for row, spans in enumerate(words):
        for a, b in spans:
            s = selected[row, a:b]
            assert bool(s.all()) or not bool(s.any()), (row, a, b)
            hit += int(s[0])
            total += 1
    assert abs(hit / total - 0.15) < 0.02
    assert (out["labels"][:, 0] == IGNORE_INDEX).all()


def test_whole_word_continuation_after_special_starts_a_word():
    table = torch.zeros(VOCAB, dtype=torch.bool)
    table[500:] = True
    ids = torch.tensor([[CLS, 600, 601, 7, 602, SEP]] * 2000)
    masked, labels = mask_tokens(
        ids,
        (ids == CLS) | (ids == SEP),
        vocab_size=VOCAB,
        mask_id=MASK,
        mask_prob=0.3,
        seeds=_seeds(2000),
        is_continuation=table,
    )
    sel = labels != IGNORE_INDEX
    assert torch.equal(sel[:, 1], sel[:, 2]) and torch.equal(sel[:, 3], sel[:, 4])
    assert 0.25 < sel[:, 1].float().mean() < 0.35  # the orphan "##" word is still maskable


def test_collate_pads_to_multiple_of_8():
    samples = [np.array([CLS, 9, SEP], dtype=np.uint16), np.arange(2, 19, dtype=np.int32)]
    out = collate(samples, PAD)
    assert out["input_ids"].shape == (2, 24) and out["input_ids"].dtype == torch.int64
    assert out["attention_mask"].dtype == torch.int64
    assert out["attention_mask"].sum(1).tolist() == [3, 17]
    assert out["input_ids"][0, :3].tolist() == [CLS, 9, SEP]
    assert (out["input_ids"][0, 3:] == PAD).all()
    assert collate([np.arange(16)], PAD)["input_ids"].shape == (1, 16)
    assert collate([np.arange(5)], PAD, multiple=1)["input_ids"].shape == (1, 5)


def test_continuation_table_from_vocab():
    class Tok:
        def get_vocab(self):
            return {"[PAD]": 0, "the": 1, "##ing": 2, "run": 3, "##s": 4}

    assert continuation_table(Tok()).tolist() == [False, False, True, False, True]


def test_random_replacements_are_uniform_over_the_vocabulary_and_independent_of_the_token():
    """The 10% random tokens: uniform over [0, vocab) (a chi-square over 20 bins), whatever the
    original token was. A mistake here (a biased or off-by-one range, a replacement tied to the
    original id) would not show in the 80/10/10 shares alone."""
    rows = 4000
    ids = torch.full((rows, 64), 7, dtype=torch.int64)
    ids[:, 32:] = 900
    masked, labels = mask_tokens(
        ids,
        torch.zeros_like(ids, dtype=torch.bool),
        vocab_size=VOCAB,
        mask_id=MASK,
        mask_prob=0.5,
        seeds=_seeds(rows),
    )
    for half in (slice(0, 32), slice(32, 64)):
        sel, orig = labels[:, half] != IGNORE_INDEX, ids[:, half]
        out = masked[:, half]
        replaced = out[sel & (out != MASK) & (out != orig)]
        assert replaced.numel() > 5000
        counts = torch.bincount(replaced * 20 // VOCAB, minlength=20).double()
        expected = replaced.numel() / 20
        chi2 = float(((counts - expected) ** 2 / expected).sum())
        assert chi2 < 43.8, chi2  # the 0.999 quantile of chi-square with 19 degrees of freedom
        assert int(replaced.min()) >= 0 and int(replaced.max()) < VOCAB


def test_uniforms_of_a_row_depend_on_its_seed_and_position_alone():
    a = uniforms(np.array([5, 6, 7], dtype=np.uint64), 40, stream=0)
    b = uniforms(np.array([7], dtype=np.uint64), 16, stream=0)
    assert torch.equal(a[2, :16], b[0])  # other rows and the length change nothing
    assert not torch.equal(a[0], a[1])
    assert not torch.equal(uniforms(np.array([7], dtype=np.uint64), 16, stream=1), b)
    big = uniforms(np.arange(2000, dtype=np.uint64), 64, stream=0)
    assert 0.0 <= float(big.min()) and float(big.max()) < 1.0
    assert abs(float(big.mean()) - 0.5) < 0.005
    # neighbouring positions and neighbouring seeds are uncorrelated
    assert (
        abs(float(torch.corrcoef(torch.stack([big[:, :-1].flatten(), big[:, 1:].flatten()]))[0, 1]))
        < 0.01
    )
    assert (
        abs(float(torch.corrcoef(torch.stack([big[:-1].flatten(), big[1:].flatten()]))[0, 1]))
        < 0.01
    )
