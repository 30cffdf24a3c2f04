"""Token ids of texts (data_pipeline/token_ids.py): the piece cache gives the tokenizer's own ids.

    pytest tests/test_token_ids.py

The piece cache tokenizes " "-separated pieces once and lays their ids end to end; these tests hold
it to the Rust tokenizer's ids of whole texts on texts built to break that: every kind of Unicode
space and control character, combining marks at piece starts, compatibility characters that NFKC
turns into a space plus a mark, CJK, literal special tokens, words past WordPiece's 100 characters.
"""

from __future__ import annotations

import random

import pytest
from tokenizers import AddedToken, Tokenizer, models, normalizers, pre_tokenizers, trainers

from data_pipeline import token_ids
from data_pipeline.demo.synth import train_wordpiece
from data_pipeline.errors import UserError
from data_pipeline.shards.manifest import load_tokenizer

WORDS = (
    "Metformin reduced HbA1c in 120 patients with type 2 diabetes (p < 0.05). IL-6, TNF-alpha; "
    "BRCA1/2 mutation carriers [n=31] cafe naive resume Zurich Koln"
).split(" ")
ODD_CHARS = [
    "\xa0", "\u2009", "\u3000", "\u200b", "\u200d", "\xad", "\t", "\n", "\r", "\x00", "\x07",
    "\x1c", "\x85", "\u2028", "\ufffd", "\u0301", "\u0308", "\xb4", "\ufb01", "\uff21", "\u216b",
    "\u03a3", "\u03c2", "\u0130", "\xdf", "\u00e9", "e\u0301", "\u00b5", "\u00b1", "\u2013",
    "\u2265", "\u03b1", "\u00b0C", "\u00d7", "\u80bf\u7624", "\u0645\u0631\u062d\u0628\u0627",
    "\U0001f9ec", "[MASK]", "[CLS]", "x" * 101, "y" * 100, "  ", "",
]  # fmt: skip


def random_texts(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        parts = []
        for _ in range(rng.randint(0, 60)):
            roll = rng.random()
            if roll < 0.6:
                parts.append(rng.choice(WORDS))
            elif roll < 0.9:  # an odd character inside, before or after a word
                w, c = rng.choice(WORDS), rng.choice(ODD_CHARS)
                parts.append(rng.choice([w + c, c + w, w[:2] + c + w[2:], c]))
            else:
                parts.append(rng.choice(WORDS) + rng.choice(WORDS))
        sep = rng.choice([" ", " ", " ", "  "])
        text = sep.join(parts)
        out.append(rng.choice(["", " ", "\t"]) + text + rng.choice(["", " ", "\n"]))
    return out


@pytest.fixture(scope="module")
def corpus() -> list[str]:
    return random_texts(300, seed=3)


@pytest.fixture(scope="module")
def cased(tokenizer_dir):
    return token_ids.backend_tokenizer(load_tokenizer(str(tokenizer_dir)))


@pytest.fixture(scope="module")
def uncased(tmp_path_factory, corpus):
    """BertNormalizer with lowercase and accent stripping (BioTinyBERT's and MobileBERT's kind)."""
    out = tmp_path_factory.mktemp("uncased")
    return token_ids.backend_tokenizer(train_wordpiece(corpus * 3, out, 600, lowercase=True))


@pytest.fixture(scope="module")
def nfkc_whitespace(corpus):
    """A Sequence of NFKC and Lowercase normalizers before the plain Whitespace pre-tokenizer."""
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.WordPieceTrainer(vocab_size=500, special_tokens=["[UNK]", "[MASK]"])
    tok.train_from_iterator(corpus, trainer)
    return tok


def full_ids(tok, texts, keep):
    return [e.ids[:keep] for e in tok.encode_batch(texts, add_special_tokens=False)]


@pytest.mark.parametrize("name", ["cased", "uncased", "nfkc_whitespace"])
def test_piece_cache_gives_the_tokenizer_ids(request, corpus, name):
    tok = request.getfixturevalue(name)
    assert token_ids.splits_on_spaces(tok)
    for keep in (None, 254, 7, 1):
        cache = token_ids.PieceCache(tok, capacity=50)  # small: it starts afresh many times
        got = []
        for start in range(0, len(corpus), 64):
            got += cache(corpus[start : start + 64], keep)
        want = full_ids(tok, corpus, keep)
        for text, a, b in zip(corpus, got, want, strict=True):
            assert a == b, (keep, text)
        assert cache.misses < cache.lookups
    flat, offsets = token_ids.TextIds(tok, 254)(corpus)
    assert [flat[a:b].tolist() for a, b in zip(offsets[:-1], offsets[1:], strict=True)] == [
        ids[:254] for ids in full_ids(tok, corpus, None)
    ]


def test_only_tokenizers_with_the_property_take_the_piece_cache(cased, corpus):
    bpe = Tokenizer(models.BPE())  # byte-level BPE keeps spaces inside its tokens
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=300, show_progress=False))
    metaspace = Tokenizer.from_str(cased.to_str())
    metaspace.pre_tokenizer = pre_tokenizers.Metaspace()
    eats_spaces = Tokenizer.from_str(cased.to_str())
    eats_spaces.add_special_tokens([AddedToken("<gene>", lstrip=True)])
    spaced = Tokenizer.from_str(cased.to_str())
    spaced.add_tokens(["breast cancer"])
    for tok in (bpe, metaspace, eats_spaces, spaced):
        assert not token_ids.splits_on_spaces(tok)
    for tok in (metaspace, eats_spaces, spaced):
        assert token_ids.TextIds(tok, 30).pieces is None  # the prefix path
    # Byte-level BPE has a rule of its own: pieces keep their leading space (tests/test_bpe.py).
    assert token_ids.TextIds(bpe, 30).pieces.byte_level
    # These really break the property (lstrip is refused on principle: with BERT's pre-tokenizer
    # the spaces it eats would have been dropped anyway).
    text = "the <gene> breast cancer  risk"
    for tok in (bpe, metaspace, spaced):
        whole = tok.encode(text, add_special_tokens=False).ids
        pieces = [i for p in text.split(" ") for i in tok.encode(p, add_special_tokens=False).ids]
        assert whole != pieces


def test_a_wrong_piece_cache_is_caught_not_written(monkeypatch, corpus):
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=300, show_progress=False))
    monkeypatch.setattr(token_ids, "splits_on_spaces", lambda tok: True)  # a wrong verdict
    with pytest.raises(RuntimeError, match="piece cache gave different ids.*BIODISTILL_TOKENIZE"):
        token_ids.TextIds(bpe, None)(["two  spaces and more words", "x"])


def test_plain_switch_takes_the_prefix_path(monkeypatch, cased, corpus):
    fast = token_ids.TextIds(cased, 20)
    monkeypatch.setenv("BIODISTILL_TOKENIZE", "plain")
    plain = token_ids.TextIds(cased, 20)
    assert fast.pieces is not None and plain.pieces is None and plain.budget is not None
    a, b = fast(corpus), plain(corpus)
    assert a[0].tolist() == b[0].tolist() and a[1].tolist() == b[1].tolist()
    monkeypatch.setenv("BIODISTILL_TOKENIZE", "fast")
    with pytest.raises(UserError, match="TOKENIZE='fast': expected 'plain' or unset"):
        token_ids.TextIds(cased, 20)
