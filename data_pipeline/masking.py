"""Dynamic MLM masking and padding collation: pure functions of tensors, no hidden state.

`mask_tokens` follows BERT and HF `DataCollatorForLanguageModeling` exactly: every token that is
neither special nor padding is selected with probability `mask_prob`; of the selected, 80% become
[MASK], 10% a token drawn uniformly from [0, vocab_size) and 10% stay as they are. Labels hold the
original id at selected positions and -100 elsewhere. With `is_continuation` (a bool table over the
vocabulary, `continuation_table`: WordPiece "##" pieces, or byte-level BPE tokens without a leading
"Ġ") it does whole-word masking: a word (a token plus the continuation tokens after it) is
selected with probability `mask_prob` and then all of its tokens are, each getting its own
80/10/10 draw.

Random draws are counter-based (`uniforms`): the draw at position t of a row is a hash of that
row's seed and t alone. The loaders seed each row from its sample's identity (loader_config.
`sample_seeds`), so a sample's mask does not depend on the rank, the batch size, the batch it is
grouped into or how that is padded: resumed runs are bit-identical, and gradient accumulation over
micro-batches of 12 sees the masks of one batch of 24. Vectorised over the batch, it costs about
what one torch.Generator per batch did.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence

import numpy as np
import torch

from data_pipeline.errors import UserError

IGNORE_INDEX = -100  # the label value torch's cross_entropy ignores by default
MASK_FRACTION = 0.8  # of the selected tokens: share replaced by [MASK]
RANDOM_FRACTION = 0.1  # share replaced by a random token; the rest stay unchanged
BYTE_LEVEL_SPACE = "\u0120"  # "Ġ": how byte-level BPE vocabularies spell a space (byte 0x20)


def special_table(vocab_size: int, special_ids: Iterable[int]) -> torch.Tensor:
    """A bool table over the vocabulary, True for ids that may never be masked."""
    table = torch.zeros(vocab_size, dtype=torch.bool)
    ids = [int(i) for i in special_ids]
    if ids:
        if min(ids) < 0 or max(ids) >= vocab_size:
            raise ValueError(f"special_ids {ids} fall outside the vocabulary [0, {vocab_size})")
        table[torch.tensor(ids)] = True
    return table


def continuation_table(tokenizer) -> torch.Tensor:
    """The `is_continuation` table for whole-word masking from an HF fast tokenizer.

        table = continuation_table(AutoTokenizer.from_pretrained(name))

    The family is read from the tokenizer's model, never guessed from token spellings: WordPiece
    marks the tokens with its continuing-subword prefix ("##"); byte-level BPE (RoBERTa,
    ModernBERT) marks every token that does not start with "Ġ" (a space, byte-level), so a word is
    a token with its leading space plus the tokens after it without one (the first word of a
    text has none: a token right after a special token starts a word, see `mask_tokens`). The
    tokenizer's special tokens (its cls/bos, sep/eos, pad, mask, unk attributes) are never
    continuations. Other tokenizers are refused with a UserError; an object with a vocabulary and
    no Rust backend is read as WordPiece.
    """
    vocab = tokenizer.get_vocab()
    table = torch.zeros(max(vocab.values()) + 1, dtype=torch.bool)
    is_continuation = _continuation_rule(tokenizer)
    for token, idx in vocab.items():
        if is_continuation(token):
            table[idx] = True
    specials = getattr(tokenizer, "all_special_ids", ())
    table[[i for i in specials if i is not None and i < len(table)]] = False
    return table


def _continuation_rule(tokenizer) -> Callable[[str], bool]:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:  # a vocabulary alone: WordPiece's convention
        return lambda token: token.startswith("##")
    spec = json.loads(backend.to_str())
    model, pre = spec.get("model") or {}, spec.get("pre_tokenizer") or {}
    pres = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else [pre]
    if model.get("type") == "WordPiece":
        prefix = model.get("continuing_subword_prefix") or "##"
        return lambda token: token.startswith(prefix)
    if model.get("type") == "BPE" and any(p.get("type") == "ByteLevel" for p in pres):
        return lambda token: not token.startswith(BYTE_LEVEL_SPACE)
    raise UserError(
        f"tokenizer '{getattr(tokenizer, 'name_or_path', '?')}': whole-word masking "
        f"(data.whole_word) needs a WordPiece or a byte-level BPE tokenizer, this one has a "
        f"{model.get('type')!r} model behind {[p.get('type') for p in pres]}"
    )


_GOLDEN = np.uint64(0x9E3779B97F4A7C15)  # SplitMix64's increment, 2^64 / golden ratio


def _mix(z: np.ndarray) -> np.ndarray:
    """SplitMix64's output function (Steele et al., 2014): a bijection of uint64 that scrambles
    every input bit into every output bit. uint64 arrays wrap modulo 2^64, as it needs."""
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def uniforms(seeds: np.ndarray, length: int, stream: int) -> torch.Tensor:
    """[rows, length] float64 uniforms in [0, 1): entry (i, t) is SplitMix64 at counter t of the
    sequence keyed by (seeds[i], stream), so it depends on that row's seed, the stream and t
    alone, never on the other rows or on `length`."""
    seeds = np.asarray(seeds, dtype=np.uint64).reshape(-1)
    with np.errstate(over="ignore"):
        key = _mix(seeds ^ _mix(np.uint64(stream + 1) * _GOLDEN))
        counters = np.arange(1, length + 1, dtype=np.uint64) * _GOLDEN
        z = _mix(key[:, None] + counters[None, :])
    return torch.from_numpy((z >> np.uint64(11)).astype(np.float64) * 2.0**-53)


def mask_tokens(
    input_ids: torch.Tensor,
    special_mask: torch.Tensor,
    *,
    vocab_size: int,
    mask_id: int,
    mask_prob: float = 0.15,
    seeds: np.ndarray | Sequence[int] | int,
    is_continuation: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mask a batch for MLM; returns (masked_ids, labels), both int64 and shaped like `input_ids`.

    `special_mask` is True at positions never to select ([CLS], [SEP], padding, ...). `seeds`:
    one uint64 per row (an int for 1-D input); every draw of a row comes from its seed and the
    position (`uniforms`). The input tensor is not modified.
    """
    if not 0.0 < mask_prob < 1.0:
        raise ValueError(f"mask_prob={mask_prob!r}: expected a probability in (0, 1)")
    if input_ids.shape != special_mask.shape:
        raise ValueError(
            f"input_ids {tuple(input_ids.shape)} and special_mask {tuple(special_mask.shape)} "
            "must have the same shape"
        )
    ids = input_ids.to(torch.int64)
    special = special_mask.to(torch.bool)
    squeeze = ids.dim() == 1
    if squeeze:
        ids, special = ids.unsqueeze(0), special.unsqueeze(0)
    seeds = np.asarray(seeds, dtype=np.uint64).reshape(-1)
    if seeds.shape[0] != ids.shape[0]:
        raise ValueError(f"{seeds.shape[0]} seeds for {ids.shape[0]} rows: expected one per row")
    length = ids.shape[1]

    u = uniforms(seeds, length, stream=0)
    if is_continuation is None:
        selected = (u < mask_prob) & ~special
    else:
        selected = _whole_word_selection(ids, special, is_continuation, mask_prob, u)

    labels = torch.where(selected, ids, torch.full_like(ids, IGNORE_INDEX))
    # One uniform per position decides [MASK] / random / keep, as HF's two Bernoulli draws do
    # (0.8, then 0.5 of the rest), with the same resulting 80/10/10 distribution.
    action = uniforms(seeds, length, stream=1)
    random_ids = (uniforms(seeds, length, stream=2) * vocab_size).to(torch.int64)
    to_mask = selected & (action < MASK_FRACTION)
    to_random = selected & (action >= MASK_FRACTION) & (action < MASK_FRACTION + RANDOM_FRACTION)
    masked = torch.where(to_mask, torch.full_like(ids, mask_id), ids)
    masked = torch.where(to_random, random_ids, masked)
    if squeeze:
        masked, labels = masked.squeeze(0), labels.squeeze(0)
    return masked, labels


def _whole_word_selection(
    ids: torch.Tensor,
    special: torch.Tensor,
    is_continuation: torch.Tensor,
    mask_prob: float,
    u: torch.Tensor,
) -> torch.Tensor:
    if int(ids.max()) >= is_continuation.numel():
        raise ValueError(
            f"token id {int(ids.max())} is outside the is_continuation table "
            f"(size {is_continuation.numel()})"
        )
    cont = is_continuation.to(torch.bool)[ids] & ~special
    prev_special = torch.zeros_like(special)
    prev_special[:, 1:] = special[:, :-1]
    # A continuation right after [CLS] or padding has no head word to join: it starts its own word
    # (byte-level BPE: the first word of a text, which has no leading space).
    starts = ~cont | prev_special
    start_selected = starts & ~special & (u < mask_prob)
    positions = torch.arange(ids.shape[1]).expand_as(ids)
    head = torch.where(starts, positions, torch.zeros_like(positions)).cummax(dim=1).values
    return start_selected.gather(1, head) & ~special


def collate(
    samples: Sequence[np.ndarray], pad_id: int, multiple: int = 8
) -> dict[str, torch.Tensor]:
    """Pad 1-D token arrays to the batch maximum rounded up to `multiple`.

    Returns int64 `input_ids` and `attention_mask` of shape [B, L]; rounding to 8 keeps tensor-core
    friendly shapes and bounds the number of distinct shapes torch.compile sees.
    """
    if not samples:
        raise ValueError("collate: empty batch")
    if multiple < 1:
        raise ValueError(f"multiple={multiple!r}: expected a positive integer")
    longest = max(len(s) for s in samples)
    length = -(-longest // multiple) * multiple
    ids = np.full((len(samples), length), pad_id, dtype=np.int64)
    attention = np.zeros((len(samples), length), dtype=np.int64)
    for row, sample in enumerate(samples):
        ids[row, : len(sample)] = sample
        attention[row, : len(sample)] = 1
    return {"input_ids": torch.from_numpy(ids), "attention_mask": torch.from_numpy(attention)}


def mask_batch(
    batch: dict[str, torch.Tensor],
    special: torch.Tensor,
    *,
    mask_id: int,
    mask_prob: float,
    seeds: np.ndarray | Sequence[int],
    is_continuation: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Mask a collated batch in place of its input_ids and add labels (`seeds`: one per row).

    `special` is the table from `special_table`; padding positions are excluded through the
    attention mask as well, so a pad id missing from the special ids cannot be masked either.
    """
    ids = batch["input_ids"]
    special_mask = special[ids] | (batch["attention_mask"] == 0)
    masked, labels = mask_tokens(
        ids,
        special_mask,
        vocab_size=special.numel(),
        mask_id=mask_id,
        mask_prob=mask_prob,
        seeds=seeds,
        is_continuation=is_continuation,
    )
    return {"input_ids": masked, "attention_mask": batch["attention_mask"], "labels": labels}
