"""Held-out MLM evaluation batches: a finite, re-iterable pass over an eval split.

Unlike the training stream (loader.py) there is no shuffling, no DataLoader workers and no
resume: every rank reads the whole (small) split in manifest order and keeps its share.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from data_pipeline.errors import UserError
from data_pipeline.loader_config import (
    TAG_EVAL,
    LoaderConfig,
    check_int,
    masking_tables,
    run_tokenizer,
    sample_seeds,
)
from data_pipeline.masking import IGNORE_INDEX, collate, mask_tokens
from data_pipeline.shards.manifest import TokenizerInfo
from data_pipeline.shards.reader import ManifestArg, ShardSpec, read_shard, resolve_shards


class EvalBatches:
    """Finite, re-iterable masked batches of an eval split, for held-out MLM evaluation.

    Rank r takes eval samples r, r+W, r+2W, ... of the split in manifest order (every rank reads
    the whole split, which is small). Each sample is masked with draws seeded from
    (seed, its key), so masks do not depend on world size or batch size. Ranks whose
    share is one sample short append one filler row (a copy of sample 0, labels all -100) to
    their last batch, so every rank yields `len(self)` batches of equal sizes and loss sums and
    masked-token counts are unaffected.
    """

    def __init__(
        self,
        shards: ShardSpec,
        batch_size: int,
        *,
        rank: int = 0,
        world_size: int = 1,
        tokenizer: TokenizerInfo | None = None,
        is_continuation: torch.Tensor | None = None,
        manifest: ManifestArg = None,
        split: str = "eval",
        seed: int = 0,
        mask_prob: float = 0.15,
        whole_word: bool = False,
        debug_keys: bool = False,
    ) -> None:
        self.config = LoaderConfig(
            batch_size=batch_size,
            seed=seed,
            mask_prob=mask_prob,
            whole_word=whole_word,
            debug_keys=debug_keys,
        )
        check_int("world_size", world_size, 1)
        if not isinstance(rank, int) or not 0 <= rank < world_size:
            raise ValueError(f"eval loader: rank={rank!r}, expected 0 <= rank < {world_size}")
        self.rank, self.world_size = rank, world_size
        self.shards = resolve_shards(shards, split, manifest)
        self.tokenizer = run_tokenizer(self.shards, tokenizer)
        self._special, self._cont = masking_tables(self.tokenizer, whole_word, is_continuation)
        self.total = sum(self.shards.counts)
        if self.total == 0:
            raise UserError(f"{self.shards.source}: the {split} split holds no samples")
        self.per_rank = -(-self.total // world_size)

    def __len__(self) -> int:
        return -(-self.per_rank // self.config.batch_size)

    def _rows(self) -> Iterator[tuple[str, torch.Tensor, torch.Tensor]]:
        cfg, tok = self.config, self.tokenizer
        index, filler = 0, None
        s = self.shards
        for url, name, count, sha256 in zip(s.urls, s.names, s.counts, s.sha256, strict=True):
            for key, ids in read_shard(url, count, tok.vocab_size, sha256):
                if filler is None:
                    filler = (f"{name}/{key}", torch.from_numpy(ids.astype(np.int64)))
                if index % self.world_size == self.rank:
                    t = torch.from_numpy(ids.astype(np.int64))
                    masked, labels = mask_tokens(
                        t,
                        self._special[t],
                        vocab_size=tok.vocab_size,
                        mask_id=tok.mask_id,
                        mask_prob=cfg.mask_prob,
                        is_continuation=self._cont,
                        seeds=sample_seeds(cfg.seed, TAG_EVAL, 0, [f"{name}/{key}"]),
                    )
                    yield f"{name}/{key}", masked, labels
                index += 1
        if (self.total - self.rank + self.world_size - 1) // self.world_size < self.per_rank:
            key, ids = filler
            yield key, ids, torch.full_like(ids, IGNORE_INDEX)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        rows = list[tuple]()
        for row in self._rows():
            rows.append(row)
            if len(rows) == self.config.batch_size:
                yield self._batch(rows)
                rows = []
        if rows:
            yield self._batch(rows)

    def _batch(self, rows: list[tuple]) -> dict:
        batch = collate([ids.numpy() for _, ids, _ in rows], self.tokenizer.pad_id)
        labels = torch.full_like(batch["input_ids"], IGNORE_INDEX)
        for i, (_, _, lab) in enumerate(rows):
            labels[i, : len(lab)] = lab
        batch["labels"] = labels
        if self.config.debug_keys:
            batch["keys"] = [key for key, _, _ in rows]
        return batch


def iter_eval_batches(shards: ShardSpec, batch_size: int, **kwargs) -> EvalBatches:
    """Eval batches for this rank (EvalBatches' keywords); same count on every rank and pass."""
    return EvalBatches(shards, batch_size, **kwargs)
