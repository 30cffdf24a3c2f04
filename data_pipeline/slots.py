"""The data order's slots: which rank and worker reads which, their positions, the state format.

    owned_slots(slots=8, world_size=2, rank=1)        # [4, 5, 6, 7]: a contiguous share
    fresh_positions([4, 5, 6, 7], workers=2, consumed=5)  # batches taken from each slot so far
    merge_states([state of rank 0, state of rank 1])  # every slot's position, for M != N ranks

The loader (data_pipeline/loader.py) reads V slots, each an independent stream of batches; a
loader state holds, per slot, the batches taken from it (`slot_batches`). A rank saves its own
slots' positions; a resume on the same layout reads its own state, one on another number of
ranks or workers the merged state of every saved rank.
"""

from __future__ import annotations

from data_pipeline.errors import UserError

STATE_VERSION = 2  # 1: one position for the rank (its slots were its workers)
POSITION_KEYS = ("seed", "batch_size", "shuffle_shards", "shards", "slots")
"""What a state is valid for: a change in one of these cannot be continued exactly."""


def owned_slots(slots: int, world_size: int, rank: int) -> list[int]:
    """Rank `rank` of `world_size` reads slots [rank*V//M, (rank+1)*V//M)."""
    return list(range(rank * slots // world_size, (rank + 1) * slots // world_size))


def fresh_positions(owned: list[int], workers: int, consumed: int) -> dict[int, int]:
    """Batches taken from each of a rank's `owned` slots after it took `consumed` from a start
    where every slot was at 0: DataLoader takes batch t from worker t % W, worker w reads
    owned[w::W], its slots in turn."""
    positions = {}
    for w in range(workers):
        mine = owned[w::workers]
        done = (consumed - w + workers - 1) // workers if consumed > w else 0
        for j, v in enumerate(mine):
            positions[v] = done // len(mine) + (1 if j < done % len(mine) else 0)
    return positions


def merge_states(states: list[dict]) -> dict:
    """One state holding the slot positions of every rank's `states` (each rank's own from the
    same save), for a resume on another number of ranks or workers."""
    states = [upgrade_state(s) for s in states]
    first = states[0]
    for s in states[1:]:
        differ = [k for k in (*POSITION_KEYS, "batches_consumed") if s.get(k) != first.get(k)]
        if differ:
            raise UserError(f"loader states: not from one save (they differ in {differ})")
    merged = dict(first, rank=None, slot_batches={})
    for s in states:
        merged["slot_batches"].update(s["slot_batches"])
    if len(merged["slot_batches"]) != first["slots"]:
        raise UserError(
            f"loader states: {len(states)} states hold {len(merged['slot_batches'])} of the "
            f"{first['slots']} slots' positions; every saved rank's state is needed"
        )
    return merged


def upgrade_state(state: dict) -> dict:
    """A state of this format from any supported version (1: the rank's workers were its
    slots, all at the position its batch count gives)."""
    version = state.get("version")
    if version == STATE_VERSION and "slot_batches" in state:
        return state
    if version != 1 or "batches_consumed" not in state:
        raise UserError(f"loader state: unsupported format (version {version})")
    workers = max(1, int(state["num_workers"]))
    world, rank = int(state["world_size"]), int(state["rank"])
    slots = world * workers
    consumed = int(state["batches_consumed"])
    positions = fresh_positions(owned_slots(slots, world, rank), workers, consumed)
    slot_batches = {str(v): c for v, c in sorted(positions.items())}
    return dict(state, version=STATE_VERSION, slots=slots, slot_batches=slot_batches)
