"""Token shards -> masked MLM batches: a stateful, resumable, rank- and worker-split loader.

Pipeline (generator stages, run inside each DataLoader worker):
    shard list -> epoch permutation -> slot's shards -> block shuffle -> decode -> batch -> mask

Shard lists and reading one shard live in shard_source.py; held-out eval batches in
eval_batches.py (re-exported here as `iter_eval_batches` / `EvalBatches`).

- Slots: rank r, worker w of W (num_workers 0 counts as one worker) is slot s = r*W + w of
  S = world_size*W. Each epoch e the shard list is permuted with a generator seeded from (seed, e)
  and slot s takes shards[s::S].
- Equal batch counts: from the manifest's sample counts, n = the fewest samples any slot can get
  under any permutation (the sum of the floor(num_shards/S) smallest shards) // batch_size. Every
  slot yields exactly n batches per epoch and drops the rest, so every rank yields n*W batches per
  epoch (`batches_per_epoch`) and no rank waits on a collective another rank never reaches.
- Block shuffle: a slot reads its shards in groups of `shuffle_shards`, concatenates a group's
  samples and permutes them with a generator seeded from (seed, epoch, slot, group).
- Masks: every sample's draws come from a seed of (seed, epoch, its key "SHARD/KEY") and the
  position (data_pipeline/masking.py): a new mask each epoch, and none that depends on the rank,
  the worker, the batch size, the batch the sample lands in or its padding (so 2 micro-batches
  of 12 under gradient accumulation are masked as 1 batch of 24 of the same samples). The
  DataLoader takes batches from its workers round-robin, and every worker yields the same count,
  so the order does not depend on timing.
- Resume: `state_dict()` counts batches as they leave the loader; `load_state_dict()` puts each
  worker at its own position in closed form (epoch, then the group holding its sample offset, read
  and permuted alone, then a skip), so the next batches are bit-identical to an uninterrupted run
  without replaying the stream. A state saved with another world_size, num_workers, batch size or
  shard list cannot be continued exactly: the loader warns and starts at the same epoch at the same
  fraction of it (rounded down).
- Corrupt shards raise PipelineError naming the shard: a damaged tar, a sample count or token id
  the manifest contradicts, or a local shard whose SHA-256 differs from the manifest's (hashed
  from the buffer read_shard reads anyway; remote and pipe: shards are not hashed). With
  skip_corrupt=True the shard is logged once and skipped, and a slot that runs short wraps to the
  start of its epoch stream, so batch counts stay exact (no rank stops early or waits on a
  collective); a resume is then bit-exact only if no shard was skipped earlier in that epoch.
  `skipped_corrupt` counts the distinct shards this rank skipped (DataLoader workers report
  theirs with the next batch they yield), for the trainer to log.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from data_pipeline.io_utils import PipelineError
from data_pipeline.loader_config import (
    TAG_GROUP,
    TAG_MASK,
    TAG_SHARDS,
    LoaderConfig,
    check_int,
    generator,
    masking_tables,
    run_tokenizer,
    sample_seeds,
)
from data_pipeline.manifest import TokenizerInfo
from data_pipeline.masking import collate, mask_batch
from data_pipeline.shard_source import ManifestArg, ShardSet, ShardSpec, read_shard, resolve_shards

logger = logging.getLogger(__name__)

STATE_VERSION = 1
DROP_WARN_FRACTION = 0.05
_SKIPPED_KEY = "_skipped_corrupt"  # worker -> loader: skipped shards; popped, never yielded
_POSITION_KEYS = ("seed", "world_size", "num_workers", "batch_size", "shuffle_shards", "shards")


# ---------------------------------------------------------------- the per-worker stream


@dataclass(frozen=True)
class _Plan:
    """Everything a worker needs, picklable; one worker's stream is a pure function of it."""

    shards: ShardSet
    rank: int
    workers: int
    slots: int
    n: int  # batches per worker per epoch
    config: LoaderConfig
    tokenizer: TokenizerInfo
    special: torch.Tensor
    is_continuation: torch.Tensor | None

    def groups(self, epoch: int, slot: int) -> list[list[int]]:
        order = torch.randperm(
            len(self.shards.urls), generator=generator(self.config.seed, TAG_SHARDS, epoch)
        ).tolist()
        mine, k = order[slot :: self.slots], self.config.shuffle_shards
        return [mine[i : i + k] for i in range(0, len(mine), k)]


_warned: set[str] = set()


def _read_group(
    plan: _Plan, shards: list[int], epoch: int, slot: int, g: int, skipped: list[str]
) -> list:
    """A group's samples, permuted; the names of shards skipped as corrupt go into `skipped`."""
    items: list[tuple[str, np.ndarray]] = []
    sha256 = plan.shards.sha256 or (None,) * len(plan.shards.urls)
    for i in shards:
        url, name = plan.shards.urls[i], plan.shards.names[i]
        try:
            got = read_shard(url, plan.shards.counts[i], plan.tokenizer.vocab_size, sha256[i])
        except PipelineError as e:
            if not plan.config.skip_corrupt:
                raise
            if url not in _warned:
                _warned.add(url)
                logger.warning("skipping shard %s (skip_corrupt=True): %s", url, e)
            skipped.append(name)
            continue
        items.extend((f"{name}/{key}", ids) for key, ids in got)
    perm = torch.randperm(
        len(items), generator=generator(plan.config.seed, TAG_GROUP, epoch, slot, g)
    )
    return [items[i] for i in perm.tolist()]


def _epoch_samples(
    plan: _Plan, epoch: int, slot: int, offset: int, skipped: list[str]
) -> Iterator[tuple]:
    """Samples offset .. n*B-1 of a slot's epoch stream, reading from the group holding offset."""
    need = plan.n * plan.config.batch_size - offset
    groups = plan.groups(epoch, slot)
    first, skip = 0, offset
    while skip >= (size := sum(plan.shards.counts[i] for i in groups[first])):
        first, skip = first + 1, skip - size
    while True:
        produced = 0
        for g in range(first, len(groups)):
            items = _read_group(plan, groups[g], epoch, slot, g, skipped)
            for item in items[skip:]:
                yield item
                produced, need = produced + 1, need - 1
                if need == 0:
                    return
            skip = 0
        if produced == 0 and first == 0:
            raise PipelineError(f"loader slot {slot}: every one of its shards was skipped")
        first = 0  # ran short because shards were skipped: wrap to the start of the epoch stream


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """torch on one intra-op thread meanwhile. A batch is many small tensor ops, for which more
    threads only add the barriers of parallel regions; on a busy machine a barrier waits for a
    descheduled thread, and the loader ran at 0.6-0.9M tokens/s with 2 threads against 3.2-8.6M
    with 1 (2 cores, another job running; benchmarks/bench_loader.py `threads_ratio`). DataLoader
    workers run on one thread already; the main process's setting is restored after the batch."""
    threads = torch.get_num_threads()
    if threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


class _SlotStream(IterableDataset):
    def __init__(self, plan: _Plan, consumed: int) -> None:
        self.plan, self.consumed = plan, consumed

    def __iter__(self) -> Iterator[dict]:
        plan, cfg = self.plan, self.plan.config
        info = get_worker_info()
        w_count = plan.workers
        # NOTE: DataLoader polls its workers round-robin starting at worker 0 on every new
        # iterator, and batch j must come from logical worker j % W: so after k batches, DataLoader
        # worker i plays logical worker (i + k) % W, which has produced `local` of the first k.
        worker = ((info.id if info is not None else 0) + self.consumed) % w_count
        local = (self.consumed - worker + w_count - 1) // w_count if self.consumed > worker else 0
        slot = plan.rank * w_count + worker
        epoch, pos = divmod(local, plan.n)
        skipped: list[str] = []  # shards skipped since the last batch, reported with the next
        while True:
            samples = _epoch_samples(plan, epoch, slot, pos * cfg.batch_size, skipped)
            for _ in range(plan.n - pos):
                with one_thread():  # NOTE: not across the yield: the trainer runs meanwhile
                    rows = [next(samples) for _ in range(cfg.batch_size)]
                    batch = collate([ids for _, ids in rows], plan.tokenizer.pad_id)
                    keys = [key for key, _ in rows]
                    out = mask_batch(
                        batch,
                        plan.special,
                        mask_id=plan.tokenizer.mask_id,
                        mask_prob=cfg.mask_prob,
                        is_continuation=plan.is_continuation,
                        seeds=sample_seeds(cfg.seed, TAG_MASK, epoch, keys),
                    )
                if cfg.debug_keys:
                    out["keys"] = [key for key, _ in rows]
                if skipped:
                    out[_SKIPPED_KEY], skipped[:] = list(skipped), []
                yield out
                local += 1
            epoch, pos = epoch + 1, 0


# ---------------------------------------------------------------- the public loader


class MaskedBatchLoader:
    """Infinite stream of masked batches for one rank: dicts of int64 tensors [B, L] with
    input_ids, attention_mask and labels (-100 where nothing is predicted).

    `iter(loader)` continues from `state_dict()["batches_consumed"]`; every rank yields
    `batches_per_epoch` batches per epoch. Call `close()` to stop DataLoader workers.
    """

    def __init__(
        self,
        shards: ShardSpec,
        config: LoaderConfig,
        *,
        rank: int = 0,
        world_size: int = 1,
        tokenizer: TokenizerInfo | None = None,
        is_continuation: torch.Tensor | None = None,
        manifest: ManifestArg = None,
        split: str = "train",
    ) -> None:
        check_int("world_size", world_size, 1)
        if not isinstance(rank, int) or not 0 <= rank < world_size:
            raise ValueError(f"loader: rank={rank!r}, expected 0 <= rank < world_size={world_size}")
        self.config, self.rank, self.world_size = config, rank, world_size
        self.shards = resolve_shards(shards, split, manifest)
        tok = run_tokenizer(self.shards, tokenizer)
        special, cont = masking_tables(tok, config.whole_word, is_continuation)
        workers = max(1, config.num_workers)
        slots = world_size * workers
        counts = sorted(self.shards.counts)
        smallest_slot = sum(counts[: len(counts) // slots])
        n = smallest_slot // config.batch_size
        if n == 0:
            raise PipelineError(
                f"{len(counts)} {split} shards ({sum(counts)} samples) cannot give each of the "
                f"{slots} loader slots (world_size {world_size} x num_workers {workers}) one batch "
                f"of {config.batch_size}: the smallest slot may get {smallest_slot} samples. Use "
                "fewer DataLoader workers or ranks, a smaller batch, or re-shard into more shards "
                "(--samples-per-shard)"
            )
        self._plan = _Plan(self.shards, rank, workers, slots, n, config, tok, special, cont)
        dropped = 1.0 - n * config.batch_size * slots / sum(counts)
        if dropped > DROP_WARN_FRACTION:
            logger.warning(
                "loader: %.1f%% of the %d samples per epoch are dropped so that all %d slots "
                "(world_size x workers) yield %d batches; more or more even shards drop less",
                100 * dropped,
                sum(counts),
                slots,
                n,
            )
        self._consumed = 0
        self._active: Iterator[dict] | None = None
        self._skipped: set[str] = set()

    @property
    def skipped_corrupt(self) -> int:
        """Distinct shards this rank has skipped as corrupt so far (skip_corrupt=True)."""
        return len(self._skipped)

    @property
    def batches_per_epoch(self) -> int:
        """Batches this rank (and every other rank) yields per epoch."""
        return self._plan.n * self._plan.workers

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        self.close()
        self._active = self._generate()
        return self._active

    def _generate(self) -> Iterator[dict[str, torch.Tensor]]:
        cfg = self.config
        loader = DataLoader(
            _SlotStream(self._plan, self._consumed),
            batch_size=None,
            num_workers=cfg.num_workers,
            pin_memory=cfg.pin_memory,
            prefetch_factor=cfg.prefetch_factor if cfg.num_workers > 0 else None,
        )
        it = iter(loader)
        try:
            while True:
                try:
                    batch = next(it)
                except PipelineError as e:
                    raise _unwrap_worker_error(e) from None
                # Count on the way out, so prefetched batches are never counted as consumed.
                self._consumed += 1
                self._skipped.update(batch.pop(_SKIPPED_KEY, ()))
                yield batch
        finally:
            shutdown = getattr(it, "_shutdown_workers", None)
            if shutdown is not None:
                shutdown()

    def close(self) -> None:
        if self._active is not None:
            self._active.close()  # runs the generator's finally: workers stop now, not at GC
            self._active = None

    def state_dict(self) -> dict:
        """Position plus the configuration it is valid for; JSON-serialisable."""
        cfg = self.config
        return {
            "version": STATE_VERSION,
            "batches_consumed": self._consumed,
            "batches_per_epoch": self.batches_per_epoch,
            "seed": cfg.seed,
            "world_size": self.world_size,
            "rank": self.rank,
            "num_workers": cfg.num_workers,
            "batch_size": cfg.batch_size,
            "shuffle_shards": cfg.shuffle_shards,
            "mask_prob": cfg.mask_prob,
            "whole_word": cfg.whole_word,
            "shards": list(self.shards.names),
        }

    def load_state_dict(self, state: dict) -> None:
        """Continue where `state` left off; call before iterating (an open iterator is closed).

        The saved rank need not match: every rank consumes the same number of batches.
        """
        if state.get("version") != STATE_VERSION or "batches_consumed" not in state:
            raise PipelineError(
                f"loader state: unsupported format (version {state.get('version')})"
            )
        consumed = int(state["batches_consumed"])
        mine = self.state_dict()
        changed = [k for k in _POSITION_KEYS if state.get(k) != mine[k]]
        if changed:
            epoch, pos = divmod(consumed, int(state["batches_per_epoch"]))
            consumed = epoch * mine["batches_per_epoch"]
            consumed += pos * mine["batches_per_epoch"] // int(state["batches_per_epoch"])
            logger.warning(
                "loader: resuming with a different %s than saved; the data order is not a "
                "bit-exact continuation: starting epoch %d at batch %d of %d",
                ", ".join(changed),
                epoch,
                consumed - epoch * mine["batches_per_epoch"],
                mine["batches_per_epoch"],
            )
        elif any(state.get(k) != mine[k] for k in ("mask_prob", "whole_word")):
            logger.warning("loader: masking settings changed since the save; masks will differ")
        self.close()
        self._consumed = consumed


def _unwrap_worker_error(e: PipelineError) -> PipelineError:
    # DataLoader re-raises a worker's exception with the worker traceback folded into the
    # message; keep the one line the user needs (it names the shard).
    text = str(e)
    marker = "PipelineError: "
    if "Original Traceback" in text and marker in text:
        return PipelineError(text.rsplit(marker, 1)[1].strip() + " (in a DataLoader worker)")
    return e
