"""Token shards -> masked MLM batches: a stateful, resumable, rank- and worker-split loader.

Pipeline (generator stages, run inside each DataLoader worker):
    shard list -> epoch permutation -> slot's shards -> block shuffle -> decode -> batch -> mask

Shard lists and reading one shard live in shard_source.py; held-out eval batches in
eval_batches.py (re-exported here as `iter_eval_batches` / `EvalBatches`).

- Slots: the data order is V independent streams, the slots (`slots`, default world_size x
  workers of the run's first start, num_workers 0 counting as one worker; it then travels in
  the loader state, so a resume keeps it). Each epoch e the shard list is permuted with a
  generator seeded from (seed, e) and slot v takes shards[v::V]. Rank r of M reads the slots
  [r*V//M, (r+1)*V//M), its worker w of W every W-th of those; a worker reading several slots
  takes its next batch from the one with the fewest taken (ties: the lower slot). With V =
  world_size x workers (the default) slot r*W + w is rank r's worker w, one slot each.
- Equal batch counts: from the manifest's sample counts, n = the fewest samples any slot can get
  under any permutation (the sum of the floor(num_shards/V) smallest shards) // batch_size. Every
  slot yields exactly n batches per epoch and drops the rest, so a rank yields n x (its slots)
  batches per epoch (`batches_per_epoch`), the same on every rank when V divides evenly, and the
  stream never ends (a slot goes on into its next epoch), so no rank waits on a collective
  another rank never reaches.
- Block shuffle: a slot reads its shards in groups of `shuffle_shards`, concatenates a group's
  samples and permutes them with a generator seeded from (seed, epoch, slot, group).
- Masks: every sample's draws come from a seed of (seed, epoch, its key "SHARD/KEY") and the
  position (data_pipeline/masking.py): a new mask each epoch, and none that depends on the rank,
  the worker, the batch size, the batch the sample lands in or its padding (so 2 micro-batches
  of 12 under gradient accumulation are masked as 1 batch of 24 of the same samples). The
  DataLoader takes batches from its workers round-robin, and every worker yields the same count,
  so the order does not depend on timing.
- Resume: `state_dict()` holds the batches taken from each of this rank's slots, counted as
  batches leave the loader; `load_state_dict()` puts each slot at its position in closed form
  (epoch, then the group holding its sample offset, read and permuted alone, then a skip), so
  the next batches are bit-identical to an uninterrupted run without replaying the stream.
- Another number of ranks or workers (elastic resume): the slots stay; each is read on from its
  position by whichever rank owns it now. `slots.merge_states` joins every saved rank's state for
  that. So over every slot's epoch each sample is taken exactly once, whatever the old and new
  world sizes, and the order is a pure function of the state and the new layout. More ranks at a
  smaller batch (the micro-batch lowered to keep the global batch) share the saved order's
  batches: a state saved at B rows, loaded at B/c rows on a multiple of c ranks, has each group
  of c consecutive ranks read one saved rank's slots, each rank taking its c-th of the rows
  (`parts`), so every step trains on the samples it would have. A state saved with another
  seed, batch size, shuffle_shards, shard list or slot count cannot be continued exactly: the
  loader warns and starts at the same epoch at the same fraction of it (rounded down).
- Corrupt shards raise UserError naming the shard: a damaged tar, a sample count or token id
  the manifest contradicts, or a local shard whose SHA-256 differs from the manifest's (hashed
  from the buffer read_shard reads anyway; remote and pipe: shards are not hashed). With
  skip_corrupt=True the shard is logged once and skipped, and a slot that runs short wraps to the
  start of its epoch stream, so batch counts stay exact (no rank stops early or waits on a
  collective); a resume is then bit-exact only if no shard was skipped earlier in that epoch.
  `skipped_corrupt` counts the distinct shards this rank skipped (DataLoader workers report
  theirs with the next batch they yield), for the trainer to log.
"""

from __future__ import annotations

import collections
import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from data_pipeline.errors import UserError
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
from data_pipeline.masking import collate, mask_batch
from data_pipeline.shards.manifest import TokenizerInfo
from data_pipeline.shards.reader import ManifestArg, ShardSet, ShardSpec, read_shard, resolve_shards
from data_pipeline.slots import (
    POSITION_KEYS,
    STATE_VERSION,
    fresh_positions,
    owned_slots,
    upgrade_state,
)

logger = logging.getLogger(__name__)

DROP_WARN_FRACTION = 0.05
_SKIPPED_KEY = "_skipped_corrupt"  # worker -> loader: skipped shards; popped, never yielded
_SLOT_KEY = "_slot"  # worker -> loader: the slot a batch came from; popped, never yielded
_RECENT = 1024  # slots of the last batches handed out, for state_dict(unconsumed=...)


# ---------------------------------------------------------------- the per-worker stream


@dataclass(frozen=True)
class _Plan:
    """Everything a worker needs, picklable; one worker's stream is a pure function of it."""

    shards: ShardSet
    rank: int
    world_size: int
    workers: int
    slots: int  # V, the data order's streams
    n: int  # batches per slot per epoch
    config: LoaderConfig
    tokenizer: TokenizerInfo
    special: torch.Tensor
    is_continuation: torch.Tensor | None
    parts: int = 1  # ranks that share each batch of the data order, each taking its rows

    @property
    def read_batch(self) -> int:
        """A batch of the data order: `parts` ranks' batches."""
        return self.config.batch_size * self.parts

    @property
    def part(self) -> int:
        """Which rows of each batch this rank takes: rows part*B .. (part+1)*B - 1."""
        return self.rank % self.parts

    @property
    def owned(self) -> list[int]:
        """The slots this rank reads: its contiguous share (its group's, when parts > 1)."""
        return owned_slots(self.slots, self.world_size // self.parts, self.rank // self.parts)

    def worker_slots(self, worker: int) -> list[int]:
        return self.owned[worker :: self.workers]

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
        except UserError as e:
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
    need = plan.n * plan.read_batch - offset
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
            raise UserError(f"loader slot {slot}: every one of its shards was skipped")
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
    def __init__(self, plan: _Plan, consumed: int, positions: dict[int, int]) -> None:
        self.plan, self.consumed, self.positions = plan, consumed, positions

    def __iter__(self) -> Iterator[dict]:
        plan, cfg = self.plan, self.plan.config
        info = get_worker_info()
        # NOTE: DataLoader polls its workers round-robin starting at worker 0 on every new
        # iterator, and batch j must come from logical worker j % W: so after k batches,
        # DataLoader worker i plays logical worker (i + k) % W.
        worker = ((info.id if info is not None else 0) + self.consumed) % plan.workers
        mine = plan.worker_slots(worker)
        taken = {v: self.positions[v] for v in mine}
        streams: dict[int, tuple[int, Iterator[tuple]]] = {}  # slot -> (epoch, its samples)
        skipped: list[str] = []  # shards skipped since the last batch, reported with the next
        while True:
            slot = min(mine, key=lambda v: (taken[v], v))
            epoch, pos = divmod(taken[slot], plan.n)
            if streams.get(slot, (None,))[0] != epoch:
                samples = _epoch_samples(plan, epoch, slot, pos * plan.read_batch, skipped)
                streams[slot] = (epoch, samples)
            samples = streams[slot][1]
            with one_thread():  # NOTE: not across the yield: the trainer runs meanwhile
                rows = [next(samples) for _ in range(plan.read_batch)]
                rows = rows[plan.part * cfg.batch_size : (plan.part + 1) * cfg.batch_size]
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
                out["keys"] = keys
            if skipped:
                out[_SKIPPED_KEY], skipped[:] = list(skipped), []
            out[_SLOT_KEY] = slot
            yield out
            taken[slot] += 1


# ---------------------------------------------------------------- the public loader


class MaskedBatchLoader:
    """Infinite stream of masked batches for one rank: dicts of int64 tensors [B, L] with
    input_ids, attention_mask and labels (-100 where nothing is predicted).

    `iter(loader)` continues from `state_dict()`; a rank yields `batches_per_epoch` batches per
    epoch of its slots. Call `close()` to stop DataLoader workers.
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
        self._tokenizer = run_tokenizer(self.shards, tokenizer)
        self._tables = masking_tables(self._tokenizer, config.whole_word, is_continuation)
        self._split = split
        workers = max(1, config.num_workers)
        self._plan = self._make_plan(config.slots or world_size * workers)
        self._positions = {v: 0 for v in self._plan.owned}  # batches taken from each slot
        self._recent: collections.deque[int] = collections.deque(maxlen=_RECENT)
        self._consumed = 0
        self._active: Iterator[dict] | None = None
        self._skipped: set[str] = set()

    def _shares(self, slots: int, parts: int = 1) -> set[int]:
        """How many of `slots` the ranks read (one number when they share them evenly)."""
        groups = self.world_size // parts
        return {len(owned_slots(slots, groups, r)) for r in range(groups)}

    def _make_plan(self, slots: int, parts: int = 1) -> _Plan:
        config, workers = self.config, max(1, self.config.num_workers)
        shares = self._shares(slots, parts)
        if min(shares) < workers:
            raise UserError(
                f"loader: {slots} slots (the data order's streams) cannot give each of the "
                f"{self.world_size} ranks x {workers} workers a slot: use data.slots >= "
                f"{self.world_size * workers}, or fewer ranks or DataLoader workers"
            )
        if len(shares) > 1 or any(share % workers for share in shares):
            logger.warning(
                "loader: %d slots are shared unevenly by %d ranks x %d workers (%s slots a "
                "rank): the slots of the ranks and workers with fewer advance faster, so their "
                "samples come round more often; a slot count divisible by ranks x workers keeps "
                "every slot at the same pace",
                slots,
                self.world_size,
                workers,
                "-".join(str(k) for k in sorted(shares)),
            )
        counts = sorted(self.shards.counts)
        smallest_slot = sum(counts[: len(counts) // slots])
        n = smallest_slot // (config.batch_size * parts)
        if n == 0:
            how = (
                f"world_size {self.world_size} x num_workers {workers}"
                if slots == self.world_size * workers
                else "data.slots"
            )
            raise UserError(
                f"{len(counts)} {self._split} shards ({sum(counts)} samples) cannot give each of "
                f"the {slots} loader slots ({how}) one batch of {config.batch_size}: the "
                f"smallest slot may get {smallest_slot} samples. Use fewer slots (fewer "
                "DataLoader workers or ranks, or a smaller data.slots), a smaller batch, or "
                "re-shard into more shards (--samples-per-shard)"
            )
        special, cont = self._tables
        plan = _Plan(
            self.shards, self.rank, self.world_size, workers, slots, n, config,
            self._tokenizer, special, cont, parts,
        )  # fmt: skip
        dropped = 1.0 - n * plan.read_batch * slots / sum(counts)
        if dropped > DROP_WARN_FRACTION:
            logger.warning(
                "loader: %.1f%% of the %d samples per epoch are dropped so that all %d slots "
                "yield %d batches; more or more even shards drop less",
                100 * dropped,
                sum(counts),
                slots,
                n,
            )
        return plan

    @property
    def skipped_corrupt(self) -> int:
        """Distinct shards this rank has skipped as corrupt so far (skip_corrupt=True)."""
        return len(self._skipped)

    @property
    def batches_per_epoch(self) -> int:
        """Batches this rank yields per epoch of its slots."""
        return self._plan.n * len(self._plan.owned)

    @property
    def slots(self) -> int:
        """The data order's slot count (travels in the state)."""
        return self._plan.slots

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        self.close()
        self._active = self._generate()
        return self._active

    def _generate(self) -> Iterator[dict[str, torch.Tensor]]:
        cfg = self.config
        loader = DataLoader(
            _SlotStream(self._plan, self._consumed, dict(self._positions)),
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
                except UserError as e:
                    raise _unwrap_worker_error(e) from None
                # Count on the way out, so prefetched batches are never counted as consumed.
                slot = int(batch.pop(_SLOT_KEY))
                self._consumed += 1
                self._positions[slot] += 1
                self._recent.append(slot)
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

    def state_dict(self, unconsumed: int = 0) -> dict:
        """Position plus the configuration it is valid for; JSON-serialisable. `unconsumed`:
        as if the last that many batches handed out had not been (a prefetcher's look-ahead)."""
        if not 0 <= unconsumed <= len(self._recent):
            raise ValueError(
                f"loader: unconsumed={unconsumed}, expected 0 to {len(self._recent)} (the "
                f"batches handed out since the last start, at most {_RECENT})"
            )
        positions = dict(self._positions)
        for slot in list(self._recent)[len(self._recent) - unconsumed :]:
            positions[slot] -= 1
        return {
            "version": STATE_VERSION,
            "batches_consumed": self._consumed - unconsumed,
            **self._valid_for(),
            "slot_batches": {str(v): n for v, n in sorted(positions.items())},
        }

    def _valid_for(self) -> dict:
        """The layout and configuration a state is saved with (POSITION_KEYS among them)."""
        cfg = self.config
        return {
            "batches_per_epoch": self.batches_per_epoch,
            "seed": cfg.seed,
            "world_size": self.world_size,
            "rank": self.rank,
            "num_workers": cfg.num_workers,
            "batch_size": self._plan.read_batch,  # the data order's, `parts` ranks' rows
            "parts": self._plan.parts,
            "shuffle_shards": cfg.shuffle_shards,
            "mask_prob": cfg.mask_prob,
            "whole_word": cfg.whole_word,
            "shards": list(self.shards.names),
            "slots": self._plan.slots,
        }

    def load_state_dict(self, state: dict) -> None:
        """Continue where `state` left off; call before iterating (an open iterator is closed).

        `state` holds the positions of this rank's slots: its own state_dict on the same layout,
        else `slots.merge_states` of every saved rank's (another world size or worker count).
        """
        state = upgrade_state(state)
        consumed = int(state["batches_consumed"])
        saved_slots, hint = int(state["slots"]), ""
        saved_batch = int(state["batch_size"])
        parts = _shared_batch_parts(saved_batch, self.config.batch_size, self.world_size)
        slots = self._plan.slots
        if self.config.slots is None and saved_slots != self._plan.slots:
            if min(self._shares(saved_slots, parts)) >= self._plan.workers:
                slots = saved_slots  # the run's data order: its slots
            else:
                hint = (
                    f" ({self.world_size} ranks x {self._plan.workers} workers cannot share its "
                    f"{saved_slots} slots: start a run that may change its rank count with "
                    "data.slots a multiple of every rank count x workers it may get)"
                )
        if min(self._shares(slots, parts)) < self._plan.workers:
            parts = 1
        if (slots, parts) != (self._plan.slots, self._plan.parts):
            self._plan = self._make_plan(slots, parts)
            if parts > 1:
                logger.info(
                    "loader: the saved data order's batches of %d rows are shared by %d ranks "
                    "(%d rows each), so it continues exactly",
                    self._plan.read_batch, parts, self.config.batch_size,
                )  # fmt: skip
        mine = self._valid_for()
        changed = [k for k in POSITION_KEYS if state.get(k) != mine[k]]
        if changed:
            epoch, pos = divmod(consumed, int(state["batches_per_epoch"]))
            consumed = epoch * self.batches_per_epoch
            consumed += pos * self.batches_per_epoch // int(state["batches_per_epoch"])
            logger.warning(
                "loader: resuming with a different %s than saved%s; the data order is not a "
                "bit-exact continuation: starting epoch %d at batch %d of %d",
                ", ".join(changed),
                hint,
                epoch,
                consumed - epoch * self.batches_per_epoch,
                self.batches_per_epoch,
            )
            positions = fresh_positions(self._plan.owned, self._plan.workers, consumed)
        else:
            saved = {int(v): int(n) for v, n in state["slot_batches"].items()}
            lacking = [v for v in self._plan.owned if v not in saved]
            if lacking:
                raise UserError(
                    f"loader state: it holds the positions of slots {sorted(saved)}, this rank "
                    f"(rank {self.rank} of {self.world_size}) reads slots {self._plan.owned}: "
                    "resume from every saved rank's state joined (data_pipeline.slots.merge_states)"
                )
            positions = {v: saved[v] for v in self._plan.owned}
            if any(state.get(k) != mine[k] for k in ("mask_prob", "whole_word")):
                logger.warning("loader: masking settings changed since the save; masks will differ")
        self.close()
        self._consumed, self._positions = consumed, positions
        self._recent.clear()


def _shared_batch_parts(saved_batch: int, batch: int, world_size: int) -> int:
    """How many ranks share each batch of a data order saved at `saved_batch` rows, when this
    loader takes `batch` rows on `world_size` ranks: saved_batch / batch where that divides both
    (more ranks at a smaller micro-batch keep the global batch), else 1 (each its own)."""
    if saved_batch <= batch or saved_batch % batch:
        return 1
    parts = saved_batch // batch
    return parts if world_size % parts == 0 else 1


def _unwrap_worker_error(e: UserError) -> UserError:
    # DataLoader re-raises a worker's exception with the worker traceback folded into the
    # message; keep the one line the user needs (it names the shard).
    text = str(e)
    marker = "UserError: "
    if "Original Traceback" in text and marker in text:
        return UserError(text.rsplit(marker, 1)[1].strip() + " (in a DataLoader worker)")
    return e
