"""Byte-level BPE tokenizers (RoBERTa, ModernBERT) wherever data flows: shards, masking, NER.

    .venv/bin/python -m pytest -q tests/test_bpe.py

No hub: the tokenizers are trained here (ByteLevelBPETokenizer on generated sentences), wrapped
the way the hub ships them (RoBERTa: RobertaTokenizerFast with <s> </s> <pad> <mask> <unk>;
ModernBERT: a generic fast tokenizer with [CLS] [SEP] [MASK] [PAD] [UNK] on a BPE vocabulary, NFC,
8192 positions), saved and loaded with AutoTokenizer.from_pretrained(dir) as users' load. Every
expected value is computed another way: shards against the tokenizer's own call, word groups from
character offsets, NER label positions from each word tokenized alone.
"""

from __future__ import annotations

import gzip
import itertools
import json
import random
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds
from tokenizers import (
    AddedToken,
    ByteLevelBPETokenizer,
    Tokenizer,
    models,
    normalizers,
    pre_tokenizers,
    processors,
    trainers,
)

from data_pipeline import token_ids
from data_pipeline.errors import UserError
from data_pipeline.loader_config import masking_tables
from data_pipeline.masking import IGNORE_INDEX, collate, continuation_table, mask_batch
from data_pipeline.shards.manifest import load_tokenizer, tokenizer_info
from data_pipeline.shards.writer import run_shard
from evaluation.models import for_split_words
from evaluation.ner import NerData, Sentences, train_features

WORDS = (
    "Metformin reduced HbA1c in 120 patients with type 2 diabetes (p < 0.05). IL-6, TNF-alpha; "
    "BRCA1/2 mutation carriers [n=31] naïve Zürich café 肿瘤 β-cells ±3.5 °C don't it's "
    "the patient's gene-expression 10,000 mg/kg e.g. 5'-UTR α1 x"
).split(" ")
# Inside a word (never next to a space): the piece cache must give the tokenizer's ids.
INNER = ["\n", "\t", "\xa0", "\u2009", "\u0301", "\u200b", "'s", "...", "<mask>", "[MASK]", "\r\n"]
# Spacing the piece cache leaves to the full call: runs, whitespace next to a space, the ends.
ODD = ["  ", "   ", " \n", "\n ", " \t ", " \xa0", "\u3000 "]


def sentences(n: int, seed: int, odd: bool = True) -> list[str]:
    """Texts of the generated words: plain sentences, odd characters inside words, and (with
    `odd`) a share with double spaces, newlines beside spaces and leading or trailing spaces."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        words = [rng.choice(WORDS) for _ in range(rng.randint(1, 40))]
        if i % 3 == 1:
            k = rng.randrange(len(words))
            words[k] = words[k][:2] + rng.choice(INNER) + words[k][2:]
        text = " ".join(words)
        if odd and i % 5 == 2:
            cut = rng.randrange(len(text) + 1)
            text = text[:cut] + rng.choice(ODD) + text[cut:]
        if odd and i % 7 == 3:
            text = rng.choice([" ", "\n", "  "]) + text + rng.choice(["", " ", "\n"])
        out.append(text)
    return out


def trained_bpe(texts: list[str], normalizer=None) -> Tokenizer:
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(
        texts,
        vocab_size=600,
        special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"],
        show_progress=False,
    )
    tok = bpe._tokenizer
    if normalizer is not None:
        tok.normalizer = normalizer
    return tok


@pytest.fixture(scope="module")
def roberta_dir(tmp_path_factory) -> Path:
    """RoBERTa's kind: <s> A </s></s> B </s>, <mask> eating the space before it (lstrip)."""
    from transformers import RobertaTokenizerFast

    tok = trained_bpe(sentences(400, seed=1, odd=False))
    spec = json.loads(tok.to_str())
    merges = [
        tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in spec["model"]["merges"]
    ]
    hf = RobertaTokenizerFast(
        vocab=spec["model"]["vocab"],
        merges=merges,
        mask_token=AddedToken("<mask>", lstrip=True, rstrip=False),
        model_max_length=512,
    )
    out = tmp_path_factory.mktemp("roberta")
    hf.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def modernbert_dir(tmp_path_factory) -> Path:
    """ModernBERT's kind: BERT's special names on a byte-level BPE vocabulary, NFC, 8192."""
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    specials = ["[UNK]", "[CLS]", "[SEP]", "[PAD]", "[MASK]"]
    trainer = trainers.BpeTrainer(
        vocab_size=600,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(sentences(400, seed=2, odd=False), trainer)
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B [SEP]",
        special_tokens=[("[CLS]", cls), ("[SEP]", sep)],
    )
    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        pad_token="[PAD]",
        mask_token="[MASK]",
        model_max_length=8192,
    )
    out = tmp_path_factory.mktemp("modernbert")
    hf.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def tokenizers_by_family(tokenizer_dir, roberta_dir, modernbert_dir) -> dict[str, Path]:
    return {"wordpiece": tokenizer_dir, "roberta": roberta_dir, "modernbert": modernbert_dir}


def hf(directory: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(directory))


# ---- 1. the piece cache -------------------------------------------------------------------------


def test_piece_rules_are_read_from_the_tokenizer(tokenizers_by_family):
    rules = {
        family: token_ids.piece_rule(token_ids.backend_tokenizer(load_tokenizer(str(d))))
        for family, d in tokenizers_by_family.items()
    }
    assert rules == {"wordpiece": "words", "roberta": "byte-level", "modernbert": "byte-level"}
    base = trained_bpe(sentences(100, seed=4, odd=False))
    assert token_ids.piece_rule(base) == "byte-level"

    def variant(change) -> Tokenizer:
        tok = Tokenizer.from_str(base.to_str())
        change(tok)
        return tok

    def rstrip(tok):
        tok.add_special_tokens([AddedToken("<gene>", rstrip=True)])

    def split_regex(tok):  # a custom split before a regex-free ByteLevel (Llama 3's kind)
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(r"\d", behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )

    def dropout(tok):
        spec = json.loads(tok.to_str())
        spec["model"]["dropout"] = 0.1
        tok.model = Tokenizer.from_str(json.dumps(spec)).model

    refused = [
        variant(rstrip),
        variant(split_regex),
        variant(dropout),
        variant(lambda tok: setattr(tok, "normalizer", normalizers.NFKC())),
        variant(lambda tok: tok.add_tokens(["breast cancer"])),
    ]
    for tok in refused:
        assert token_ids.piece_rule(tok) is None
        assert token_ids.TextIds(tok, 30).pieces is None
    # What the rule rests on, shown failing where it is refused: a token eating the space after
    # it, and a space run (which the cache leaves to the full call).
    text = "the <gene> breast cancer  risk"
    tok = refused[0]
    whole = tok.encode(text, add_special_tokens=False).ids
    first, *rest = text.split(" ")
    pieces = [first] + [" " + p for p in rest]
    laid = [i for p in pieces for i in tok.encode(p, add_special_tokens=False).ids]
    assert whole != laid


@pytest.mark.parametrize("family", ["roberta", "modernbert", "prefix_space"])
def test_byte_level_piece_cache_gives_the_tokenizer_ids(tokenizers_by_family, family):
    if family == "prefix_space":  # the first word carries a space too
        tok = trained_bpe(sentences(300, seed=5, odd=False))
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    else:
        tok = token_ids.backend_tokenizer(load_tokenizer(str(tokenizers_by_family[family])))
    texts = sentences(600, seed=6)
    for keep in (None, 254, 7, 1):
        cache = token_ids.PieceCache(tok, capacity=80, byte_level=True)
        got = []
        for start in range(0, len(texts), 64):
            got += cache(texts[start : start + 64], keep)
        want = [e.ids[:keep] for e in tok.encode_batch(texts, add_special_tokens=False)]
        for text, a, b in zip(texts, got, want, strict=True):
            assert a == b, (keep, text)
        assert cache.misses < cache.lookups
        assert 0 < cache.whole < len(texts) / 3  # both paths taken
    flat, offsets = token_ids.TextIds(tok, 254)(texts)
    assert [flat[a:b].tolist() for a, b in zip(offsets[:-1], offsets[1:], strict=True)] == [
        e.ids[:254] for e in tok.encode_batch(texts, add_special_tokens=False)
    ]


def test_every_unicode_whitespace_beside_a_space_goes_to_the_full_call():
    spaces = [chr(c) for c in range(0x3000 + 1) if chr(c).isspace()]
    # Around a lone space any whitespace is harmless; a run with a space inside is not
    # ("a\xa0 \xa0b": GPT-2's regex makes "\xa0 " one pre-token across the pieces' boundary).
    forms = ("a{} b", "a {}b", "a {} b", "a{} {}b", "a{}  b", "a{} ")
    texts = [f.format(c, c) for f in forms for c in spaces]
    # Trained on these texts, so that the runs are merged into tokens of their own (with a small
    # vocabulary, different pre-tokens could still give the same ids).
    tok = trained_bpe(texts * 20)
    want = [e.ids for e in tok.encode_batch(texts, add_special_tokens=False)]
    assert token_ids.PieceCache(tok, byte_level=True)(texts, None) == want


def test_every_short_text_of_letters_and_whitespace_at_every_cut():
    """All 19,531 texts of up to 6 characters from "a", "b", " ", "\n", "\xa0", at every `keep`:
    spaces at the ends, in runs, beside other whitespace, at and just past the kept pieces."""
    alphabet = ["a", "b", " ", "\n", "\xa0"]
    texts = ["".join(p) for n in range(7) for p in itertools.product(alphabet, repeat=n)]
    tok = trained_bpe(texts * 3)
    full = [e.ids for e in tok.encode_batch(texts, add_special_tokens=False)]
    for keep in (None, 1, 2, 3, 4):
        cache = token_ids.PieceCache(tok, byte_level=True)
        assert cache(texts, keep) == [ids[:keep] for ids in full], keep


# ---- shards -------------------------------------------------------------------------------------


def write_records(path: Path, texts: list[str]) -> Path:
    with gzip.open(path, "wt", encoding="utf-8") as f:
        for i, text in enumerate(texts):
            f.write(json.dumps({"pmid": i + 1, "text": text}) + "\n")
    return path


def read_split(directory: Path, split: str) -> list[tuple[np.ndarray, dict]]:
    urls = [str(p) for p in sorted(directory.glob(f"{split}-*.tar"))]
    return [
        (s["input_ids.npy"], s["json"]) for s in wds.WebDataset(urls, shardshuffle=False).decode()
    ]


def all_bytes(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


@pytest.fixture(scope="module")
def records(tmp_path_factory) -> tuple[Path, list[str]]:
    texts = sentences(500, seed=8)
    texts[:3] = ["", " ", "x" * 3000]  # nothing, only a space, one long word
    return write_records(tmp_path_factory.mktemp("records") / "texts.jsonl.gz", texts), texts


@pytest.mark.parametrize("family", ["wordpiece", "roberta", "modernbert"])
def test_shards_equal_the_tokenizer_call_with_the_cache_or_without(
    tmp_path, monkeypatch, capsys, tokenizers_by_family, records, family
):
    path, texts = records
    tok_dir, max_len = tokenizers_by_family[family], 48
    kw = dict(max_len=max_len, eval_fraction=0.0, samples_per_shard=100, progress=True)
    run_shard([str(path)], str(tok_dir), str(tmp_path / "cache"), **kw)
    cached_line = capsys.readouterr().err.strip().splitlines()[-1]
    monkeypatch.setenv("BIODISTILL_TOKENIZE", "plain")
    run_shard([str(path)], str(tok_dir), str(tmp_path / "plain"), **kw)
    plain_line = capsys.readouterr().err.strip().splitlines()[-1]
    assert all_bytes(tmp_path / "cache") == all_bytes(tmp_path / "plain")

    tok = hf(tok_dir)
    # Records of blank text are skipped when read (data_pipeline/records.py).
    want = [tok(t, truncation=True, max_length=max_len)["input_ids"] for t in texts if t.strip()]
    got = [ids.tolist() for ids, _ in read_split(tmp_path / "cache", "train")]
    assert got == want
    rule = "WordPiece rule" if family == "wordpiece" else "byte-level BPE rule"
    assert f"tokenizer: piece cache, {rule}" in cached_line and "tokens/s a worker" in cached_line
    assert "tokenizer: full tokenizer call (BIODISTILL_TOKENIZE=plain)" in plain_line


def test_workers_report_the_byte_level_path(tmp_path, capsys, roberta_dir, records):
    path, _ = records
    kw = dict(max_len=48, eval_fraction=0.1, samples_per_shard=100, progress=True)
    run_shard([str(path)], str(roberta_dir), str(tmp_path / "one"), **kw)
    capsys.readouterr()
    run_shard([str(path)], str(roberta_dir), str(tmp_path / "two"), workers=2, **kw)
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert all_bytes(tmp_path / "one") == all_bytes(tmp_path / "two")
    assert "piece cache, byte-level BPE rule" in line and "2 worker(s)" in line
    assert "texts with odd spacing tokenized whole" in line


# ---- 3. positions -------------------------------------------------------------------------------


def test_max_len_follows_the_tokenizer_positions(tmp_path, modernbert_dir, roberta_dir, records):
    path, _ = records
    m = run_shard(
        [str(path)], str(modernbert_dir), str(tmp_path / "long"), max_len=1024, progress=False
    )
    assert m.max_len == 1024
    with pytest.raises(UserError, match="--max-len 8193: longer than the 8192 positions"):
        run_shard([str(path)], str(modernbert_dir), str(tmp_path / "x"), max_len=8193)
    with pytest.raises(UserError, match="--max-len 1024: longer than the 512 positions"):
        run_shard([str(path)], str(roberta_dir), str(tmp_path / "y"), max_len=1024)


# ---- 4. pack mode -------------------------------------------------------------------------------


@pytest.mark.parametrize("family", ["roberta", "modernbert"])
def test_pack_mode_joins_documents_with_the_pair_template(
    tmp_path, tokenizers_by_family, records, family
):
    path, texts = records
    max_len = 40
    content_len = max_len - 2
    run_shard(
        [str(path)],
        str(tokenizers_by_family[family]),
        str(tmp_path),
        max_len=max_len,
        mode="pack",
        eval_fraction=0.0,
        progress=False,
    )
    tok = hf(tokenizers_by_family[family])
    a = tok("first", add_special_tokens=False)["input_ids"]
    b = tok("second", add_special_tokens=False)["input_ids"]
    pair = tok("first", "second")["input_ids"]
    head, tail = pair[: len(pair) - len(b) - 1], pair[-1:]
    separator = head[1 + len(a) :]
    assert pair == [tok.cls_token_id, *a, *separator, *b, *tail]
    if family == "roberta":
        assert tok.convert_ids_to_tokens(separator) == ["</s>", "</s>"]
    else:
        assert tok.convert_ids_to_tokens(separator) == ["[SEP]"]
    stream: list[int] = []
    for text in texts:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        if not text.strip():  # skipped when read
            continue
        for s in separator if stream else ():  # none, or the rest of one, opens a sequence
            if len(stream) % content_len == 0:
                break
            stream.append(s)
        stream += ids
    samples = [ids.tolist() for ids, _ in read_split(tmp_path, "train")]
    assert all(s[0] == tok.cls_token_id and s[-1] == tok.sep_token_id for s in samples)
    assert all(len(s) == max_len for s in samples[:-1])
    assert [i for s in samples for i in s[1:-1]] == stream


# ---- 2. masking ---------------------------------------------------------------------------------


def word_groups(tok, text: str, family: str) -> tuple[list[int], list[tuple | None]]:
    """(ids with special tokens, word of each position) computed without token spellings:
    WordPiece's words are its pre-tokenizer's (word_ids); a byte-level BPE word is a
    space-separated word of the text, found from each token's character offsets, cut where a
    special token stands inside it ("pa<mask>tient")."""
    enc = tok(text, return_offsets_mapping=True)
    if family == "wordpiece":
        return enc["input_ids"], enc.word_ids()
    starts = [i for i, c in enumerate(text) if c != " " and (i == 0 or text[i - 1] == " ")]
    special = set(tok.all_special_ids)
    groups: list[tuple | None] = []
    seen = 0
    for tid, (lo, hi) in zip(enc["input_ids"], enc["offset_mapping"], strict=True):
        seen += tid in special
        lo += len(text[lo:hi]) - len(text[lo:hi].lstrip(" "))  # untrimmed offsets hold the space
        groups.append(None if tid in special else (sum(s <= lo for s in starts), seen))
    return enc["input_ids"], groups


@pytest.mark.parametrize("family", ["wordpiece", "roberta", "modernbert"])
def test_whole_word_masking_masks_whole_words(tokenizers_by_family, family):
    tok = hf(tokenizers_by_family[family])
    info = tokenizer_info(tok)
    special, table = masking_tables(info, True, continuation_table(tok))
    unk, mask = tok.unk_token, tok.mask_token
    texts = [t.replace("\n", "").replace("\t", "") for t in sentences(200, seed=9, odd=False)]
    texts = [" ".join(t.split()) for t in texts] + [f"gene {unk} risk {mask} Metformin"] * 8
    rows = [word_groups(tok, t, family) for t in texts]
    batch = collate([np.array(ids) for ids, _ in rows], info.pad_id)
    seeds = np.arange(len(rows), dtype=np.uint64) + 11
    out = mask_batch(batch, special, mask_id=info.mask_id, mask_prob=0.3, seeds=seeds,
                     is_continuation=table)  # fmt: skip
    labels, masked = out["labels"], out["input_ids"]
    never = {
        tok.cls_token_id,
        tok.sep_token_id,
        tok.pad_token_id,
        tok.mask_token_id,
        tok.unk_token_id,
    }
    multi = 0
    for r, (ids, groups) in enumerate(rows):
        chosen = (labels[r, : len(ids)] != IGNORE_INDEX).tolist()
        for i, t in enumerate(ids):
            if t in never:
                assert not chosen[i]
        by_word: dict = {}
        for g, c in zip(groups, chosen, strict=True):
            if g is not None:
                by_word.setdefault(g, set()).add(c)
        assert all(len(v) == 1 for v in by_word.values()), (texts[r], groups, chosen)
        multi += sum(groups.count(g) > 1 and chosen[groups.index(g)] for g in by_word)
        assert not labels[r, len(ids) :].ne(IGNORE_INDEX).any()  # padding
    assert multi > 20  # words of several tokens were masked, all of them
    picked = labels != IGNORE_INDEX
    share = (masked[picked] == info.mask_id).float().mean().item()
    assert 0.7 < share < 0.9 and info.mask_id == tok.mask_token_id
    assert not table[tok.all_special_ids].any()  # a special token never continues a word
    # The table itself: a token starts a word exactly where the independent groups change.
    for ids, groups in rows[:50]:
        for i in range(1, len(ids)):
            if groups[i] is not None and groups[i - 1] is not None:
                assert bool(table[ids[i]]) == (groups[i] == groups[i - 1]), (ids, groups, i)


def test_whole_word_masking_refuses_other_tokenizers(tmp_path):
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.Unigram([("<unk>", 0.0), ("a", -1.0)], 0, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    wrapped = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>")
    with pytest.raises(UserError, match="whole-word masking .* WordPiece or a byte-level BPE"):
        continuation_table(wrapped)


def test_bos_and_eos_stand_in_for_cls_and_sep(tmp_path):
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(
        tokenizer_object=trained_bpe(sentences(50, seed=10, odd=False)),
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        mask_token="<mask>",
        unk_token="<unk>",
    )
    info = tokenizer_info(tok)
    assert (info.cls_id, info.sep_id) == (tok.bos_token_id, tok.eos_token_id)
    special, _ = masking_tables(info, False, None)
    assert special[[tok.bos_token_id, tok.eos_token_id, tok.unk_token_id]].all()
    assert int(special.sum()) == 5


# ---- 5. NER -------------------------------------------------------------------------------------


def ner_data(seed: int) -> NerData:
    rng = random.Random(seed)
    words, labels = [], []
    for _ in range(40):
        ws = [rng.choice(WORDS) for _ in range(rng.randint(1, 25))]
        words.append(ws)
        labels.append([rng.choice(["O", "B", "I"]) for _ in ws])
    split = Sentences(words, labels)
    return NerData(split, split, ["O", "B", "I"])


@pytest.mark.parametrize("family", ["wordpiece", "roberta", "modernbert"])
def test_ner_labels_sit_on_each_word_first_subword(tokenizers_by_family, family):
    tok = hf(tokenizers_by_family[family])
    data = ner_data(seed=12)
    feats = train_features(data, tok, max_length=512, token_types=False)
    # Independently: each word tokenized alone, as inside a sentence (after a space).
    backend = Tokenizer.from_str(tok.backend_tokenizer.to_str())
    lead = "" if family == "wordpiece" else " "
    for f, ws, ls in zip(feats, data.train.words, data.train.labels, strict=True):
        want = [IGNORE_INDEX]  # [CLS] / <s>
        spelt = []
        for w, label in zip(ws, ls, strict=True):
            ids = backend.encode(lead + w, add_special_tokens=False).ids
            want += [data.labels.index(label)] + [IGNORE_INDEX] * (len(ids) - 1)
            spelt += ids
        want.append(IGNORE_INDEX)  # [SEP] / </s>
        assert f["labels"] == want
        assert f["input_ids"][1:-1] == spelt
        if family != "wordpiece":
            firsts = [t for t, y in zip(f["input_ids"], f["labels"], strict=True) if y >= 0]
            assert all(s.startswith("\u0120") for s in tok.convert_ids_to_tokens(firsts))
    if family == "wordpiece":
        assert for_split_words(tok) is tok  # WordPiece is left as it is
        # ... and gives what the tokenizer gave before: the plain call on the words.
        plain = tok(data.train.words, is_split_into_words=True, truncation=True, max_length=512)
        assert [f["input_ids"] for f in feats] == plain["input_ids"]
    else:  # a copy: the tokenizer the other tasks use keeps its settings
        assert for_split_words(tok) is not tok
        assert not json.loads(tok.backend_tokenizer.to_str())["pre_tokenizer"]["add_prefix_space"]
