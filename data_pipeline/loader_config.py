"""What the training loader and the eval batches share: the loader's settings, the seeded random
streams, the run's tokenizer check and the masking tables (data_pipeline/loader.py,
data_pipeline/eval_batches.py, so that neither imports the other).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from data_pipeline.masking import special_table
from data_pipeline.shards.manifest import TokenizerInfo
from data_pipeline.shards.reader import ShardSet

# Domain tags keep the seed streams of different uses apart even when their other inputs collide.
TAG_SHARDS, TAG_GROUP, TAG_MASK, TAG_EVAL = 0, 1, 2, 3


def seed_of(*parts: int) -> int:
    return int(np.random.SeedSequence(list(parts)).generate_state(1, np.uint64)[0] >> 1)


def generator(*parts: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed_of(*parts))


def sample_seeds(seed: int, tag: int, epoch: int, keys: Sequence[str]) -> np.ndarray:
    """One uint64 masking seed per sample key ("SHARD/KEY"), from (seed, tag, epoch, key): stable
    across runs, processes and Python versions (BLAKE2b, not the per-process salted `hash`)."""
    out = np.empty(len(keys), dtype=np.uint64)
    for i, key in enumerate(keys):
        digest = hashlib.blake2b(f"{seed}/{tag}/{epoch}/{key}".encode(), digest_size=8).digest()
        out[i] = int.from_bytes(digest, "little")
    return out


@dataclass
class LoaderConfig:
    batch_size: int
    seed: int = 42
    num_workers: int = 0
    shuffle_shards: int = 4
    mask_prob: float = 0.15
    whole_word: bool = False
    skip_corrupt: bool = False
    pin_memory: bool = False
    prefetch_factor: int = 2
    debug_keys: bool = False  # add batch["keys"]: "SHARD/KEY" of every row (tests, debugging)
    slots: int | None = None  # the data order's streams (loader.py); None: world x workers

    def __post_init__(self) -> None:
        for key, low in (("batch_size", 1), ("seed", 0), ("num_workers", 0)):
            check_int(key, getattr(self, key), low)
        for key in ("shuffle_shards", "prefetch_factor"):
            check_int(key, getattr(self, key), 1)
        if self.slots is not None:
            check_int("slots", self.slots, 1)
        if not isinstance(self.mask_prob, float | int) or not 0.0 < self.mask_prob < 1.0:
            raise ValueError(f"loader: mask_prob={self.mask_prob!r}, expected a number in (0, 1)")


def check_int(key: str, value: object, low: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise ValueError(f"loader: {key}={value!r}, expected an integer >= {low}")


def run_tokenizer(shards: ShardSet, tokenizer: TokenizerInfo | None) -> TokenizerInfo:
    if tokenizer is None:
        return shards.manifest.tokenizer
    shards.manifest.check_tokenizer(tokenizer, source=shards.source)
    return tokenizer


def masking_tables(
    tok: TokenizerInfo, whole_word: bool, is_continuation: torch.Tensor | None
) -> tuple:
    special = special_table(tok.vocab_size, (*tok.special_ids, tok.pad_id, tok.cls_id, tok.sep_id))
    if whole_word and is_continuation is None:
        raise ValueError(
            "loader: whole_word=True needs is_continuation (masking.continuation_table)"
        )
    if not whole_word:
        return special, None
    table = torch.as_tensor(is_continuation, dtype=torch.bool)
    if table.numel() < tok.vocab_size:
        raise ValueError(f"is_continuation has {table.numel()} entries, vocab is {tok.vocab_size}")
    return special, table
