"""The demo's byte-level BPE tokenizer (RoBERTa / ModernBERT style), trained on the demo corpus.

    tok = train_byte_level_bpe(texts, out_dir, vocab_size=4096, whole=kb.words)
    tok.tokenize("GOD1 binds SED8.")    # ['GOD1', 'Ġbinds', 'ĠSED8', '.']

A Hugging Face tokenizer directory with RoBERTa's special tokens (`<s>` 0, `<pad>` 1, `</s>` 2,
`<unk>` 3, `<mask>` 4, which takes the space before it; `<s> A </s>`, `<s> A </s></s> B </s>`)
on a byte-level BPE vocabulary with GPT-2's byte alphabet and no prefix space. One choice differs
from GPT-2's pipeline: letters and digits stay in one pre-token (`PRE_TOKEN_REGEX`, where GPT-2
splits `GOD1` into `GOD` and `1`), so that the demo's genes, letters and a digit as real gene names
(BRCA1, IL6) are, can be one token. Accuracy at entity positions is defined per token, so every
entity word must be one token both after a space ("Ġword") and at the start of a text ("word", a
title that opens with its topic): the trainer counts each word of `whole` as very frequent in both
forms, so that their merges are learnt whatever the corpus size, and `train_byte_level_bpe` then
checks each and fails otherwise.

The pre-tokenizer is not GPT-2's regex, so `shard` tokenizes this vocabulary by its prefix path,
not the piece cache (data_pipeline/token_ids.py); at the demo's size that costs seconds.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from data_pipeline.demo.knowledge import word_tokens
from data_pipeline.errors import UserError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

SPECIAL_TOKENS = ("<s>", "<pad>", "</s>", "<unk>", "<mask>")  # RoBERTa's ids 0..4
# GPT-2's pre-tokenizer regex with letters and digits in one class (a word such as ZOR4 or HbA1c
# is one pre-token, so BPE can learn it as one token).
PRE_TOKEN_REGEX = r"'s|'t|'re|'ve|'m|'ll|'d| ?[\p{L}\p{N}]+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
# How often each word that must stay whole is counted after a space: above any word of a corpus
# of a few thousand citations, so its merges come first.
WHOLE_WORD_COUNT = 100_000
WHOLE_WORD_TEXTS = 100  # texts of each such word: the count of its form at the start of a text


def train_byte_level_bpe(
    texts: Iterable[str], out_dir: str | Path, vocab_size: int, whole: Sequence[str] = ()
) -> PreTrainedTokenizerFast:
    """Train the tokenizer on `texts`, check that every word of `whole` is one token at the
    start of a text and after a space (`word_tokens`), and save it as a Hugging Face directory
    in `out_dir`; returns the fast tokenizer. A word that is split raises UserError naming it,
    and nothing is saved."""
    from tokenizers import (
        AddedToken,
        Regex,
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        processors,
        trainers,
    )
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRE_TOKEN_REGEX), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # every byte: nothing is unknown
        show_progress=False,
    )
    tok.train_from_iterator(_with_whole_words(texts, whole), trainer=trainer)
    # RoBERTa's: "<mask>" takes the space before it, as the word it stands for would
    tok.add_special_tokens([AddedToken("<mask>", lstrip=True, special=True)])
    ids = {t: tok.token_to_id(t) for t in SPECIAL_TOKENS}
    # trim_offsets: a token's offsets leave out the space it carries, as RoBERTa's do
    tok.post_processor = processors.RobertaProcessing(
        ("</s>", ids["</s>"]), ("<s>", ids["<s>"]), trim_offsets=True, add_prefix_space=False
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        cls_token="<s>",
        sep_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        mask_token="<mask>",
        model_max_length=512,
    )
    split = [w for w in whole if word_tokens(fast, w) is None]
    if split:
        raise UserError(
            f"{out_dir}: {len(split)} entity words are not one token of the trained byte-level "
            f"BPE vocabulary of {vocab_size} (e.g. {split[:3]}); a larger vocab_size keeps them"
        )
    fast.save_pretrained(str(out_dir))
    return fast


def _with_whole_words(texts: Iterable[str], whole: Iterable[str]) -> Iterator[str]:
    yield from texts
    per_text = WHOLE_WORD_COUNT // WHOLE_WORD_TEXTS
    for word in whole:
        # NOTE: the trainer counts pre-tokens: each text counts "word" once and " word" after it
        text = " ".join([word] * per_text)
        yield from [text] * WHOLE_WORD_TEXTS
