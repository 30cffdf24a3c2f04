"""Shards -> masked batches (data_pipeline/loader.py, eval_batches.py): order, resume, errors.

Run: .venv/bin/pytest tests/test_loader.py -q
"""

from __future__ import annotations

import dataclasses
import functools
import http.server
import json
import logging
import re
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
import webdataset

from data_pipeline import loader as loader_mod
from data_pipeline.errors import UserError
from data_pipeline.eval_batches import iter_eval_batches
from data_pipeline.loader import LoaderConfig, MaskedBatchLoader
from data_pipeline.masking import IGNORE_INDEX
from data_pipeline.shards.manifest import Manifest, ShardInfo, SplitInfo, TokenizerInfo
from data_pipeline.slots import merge_states

TOK = TokenizerInfo(
    name="test-wordpiece",
    vocab_size=1000,
    vocab_hash="a" * 64,
    cls_id=2,
    sep_id=3,
    pad_id=0,
    mask_id=4,
    special_ids=(0, 1, 2, 3, 4),
)


def make_shards(directory: Path, sizes, eval_sizes=(), seed: int = 0) -> dict[str, np.ndarray]:
    """Write train/eval shards and their manifest; returns {"SHARD/KEY": input_ids}."""
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    samples, splits, index = {}, {}, 0
    for split, split_sizes in (("train", sizes), ("eval", eval_sizes)):
        infos = []
        for i, n in enumerate(split_sizes):
            name, tokens = f"{split}-{i:06d}.tar", 0
            # mtime 0, as data_pipeline/shards/writer.py writes: no pax headers, so the fast path
            # reads it
            with webdataset.TarWriter(str(directory / name), mtime=0) as writer:
                for _ in range(n):
                    body = rng.integers(5, TOK.vocab_size, int(rng.integers(4, 40)))
                    ids = np.concatenate([[TOK.cls_id], body, [TOK.sep_id]]).astype(np.uint16)
                    key = f"{index:012d}"
                    meta = {"pmid": index, "n_tokens": len(ids)}
                    writer.write({"__key__": key, "input_ids.npy": ids, "json": meta})
                    samples[f"{name}/{key}"] = ids
                    tokens, index = tokens + len(ids), index + 1
            infos.append(ShardInfo(name=name, samples=n, tokens=tokens))
        splits[split] = SplitInfo(shards=infos)
    Manifest(TOK, 64, "truncate", 0.1, splits, []).save(directory)
    return samples


def take(loader, count: int, save_at: int | None = None):
    """The next `count` batches; with save_at, also the state_dict after that many batches."""
    batches, state, it = [], None, iter(loader)
    for i in range(count):
        if i == save_at:
            state = json.loads(json.dumps(loader.state_dict()))  # must survive a JSON round trip
        batches.append(next(it))
    loader.close()
    return (batches, state) if save_at is not None else batches


def keys_of(batches) -> list[str]:
    return [k for b in batches for k in b["keys"]]


def assert_same(a, b) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        for name in ("input_ids", "attention_mask", "labels"):
            assert torch.equal(x[name], y[name]), name


def cfg(**kw) -> LoaderConfig:
    base = dict(batch_size=4, seed=7, shuffle_shards=2, debug_keys=True)
    return LoaderConfig(**(base | kw))


def test_world2_workers2_cover_every_sample_once_with_intact_tokens(tmp_path):
    samples = make_shards(tmp_path, [12] * 8)  # 4 slots x 2 shards x 12 = 96, nothing dropped
    config = cfg(num_workers=2)
    per_rank = []
    for rank in (0, 1):
        loader = MaskedBatchLoader(tmp_path, config, rank=rank, world_size=2, tokenizer=TOK)
        assert loader.batches_per_epoch == 12
        per_rank.append(take(loader, 24 if rank == 0 else 12))
    epoch0 = keys_of(per_rank[0][:12]) + keys_of(per_rank[1])
    assert sorted(epoch0) == sorted(samples)
    # next epoch: rank 0 gets other shards, order reshuffled
    assert keys_of(per_rank[0][12:]) != keys_of(per_rank[0][:12])
    for batch in per_rank[0] + per_rank[1]:
        for row, key in enumerate(batch["keys"]):
            orig = torch.from_numpy(samples[key].astype(np.int64))
            n = len(orig)
            assert batch["attention_mask"][row].sum() == n
            labels, ids = batch["labels"][row, :n], batch["input_ids"][row, :n]
            sel = labels != IGNORE_INDEX
            assert torch.equal(labels[sel], orig[sel]) and torch.equal(ids[~sel], orig[~sel])
            assert batch["input_ids"].shape[1] % 8 == 0


def test_unequal_shards_every_rank_same_batch_count(tmp_path, caplog):
    make_shards(tmp_path, [10, 23, 7, 31, 16, 12, 9])
    counts = set()
    with caplog.at_level(logging.WARNING, logger="data_pipeline.loader"):
        for rank in range(3):
            loader = MaskedBatchLoader(tmp_path, cfg(), rank=rank, world_size=3, tokenizer=TOK)
            n = loader.batches_per_epoch
            counts.add(n)
            batches = take(loader, 3 * n)
            assert all(b["input_ids"].shape[0] == 4 for b in batches)
            for e in range(3):  # the quota never forces a wrap: real, distinct samples
                keys = keys_of(batches[e * n : (e + 1) * n])
                assert len(set(keys)) == len(keys)
    assert counts == {4}  # 2 smallest shards (7 + 9) // 4
    assert "dropped" in caplog.text


def test_epochs_reshuffle_and_seed_reproduces(tmp_path):
    make_shards(tmp_path, [10] * 6)
    a = take(MaskedBatchLoader(tmp_path, cfg(seed=1), tokenizer=TOK), 30)
    b = take(MaskedBatchLoader(tmp_path, cfg(seed=1), tokenizer=TOK), 30)
    c = take(MaskedBatchLoader(tmp_path, cfg(seed=2), tokenizer=TOK), 30)
    assert_same(a, b)
    assert keys_of(a[:15]) != keys_of(a[15:])
    assert sorted(keys_of(a[:15])) == sorted(keys_of(a[15:]))  # epochs cover the same data
    assert keys_of(a) != keys_of(c)
    assert not torch.equal(a[0]["labels"], b[1]["labels"])


def _masks_by_key(batches) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """{key: (input_ids, labels)} over a sample's real tokens."""
    out = {}
    for b in batches:
        for row, key in enumerate(b["keys"]):
            n = int(b["attention_mask"][row].sum())
            out.setdefault(key, []).append((b["input_ids"][row, :n], b["labels"][row, :n]))
    return out


@pytest.mark.parametrize("whole_word", [False, True])
def test_a_samples_mask_depends_on_the_sample_not_on_its_batch_rank_or_worker(tmp_path, whole_word):
    """Masks are drawn per sample (seed, epoch, key): the same sample is masked the same under
    batch size 2 or 8, 1 rank or 2, 0 workers or 2 (so gradient accumulation over micro-batches
    equals one large batch), and differently in the next epoch."""
    make_shards(tmp_path, [16] * 8)
    table = torch.zeros(TOK.vocab_size, dtype=torch.bool)
    table[500:] = True  # ids >= 500 continue a word
    extra = {"is_continuation": table} if whole_word else {}

    def epochs(config, rank=0, world=1, count=2):
        config = dataclasses.replace(config, whole_word=whole_word)
        loader = MaskedBatchLoader(
            tmp_path, config, rank=rank, world_size=world, tokenizer=TOK, **extra
        )
        n = loader.batches_per_epoch
        batches = take(loader, count * n)
        return [_masks_by_key(batches[e * n : (e + 1) * n]) for e in range(count)]

    reference = epochs(cfg(batch_size=8))
    assert len(reference[0]) == 128
    variants = {
        "batch 2": epochs(cfg(batch_size=2)),
        "2 workers": epochs(cfg(batch_size=4, num_workers=2)),
        "rank 0 of 2": epochs(cfg(batch_size=8), rank=0, world=2),
        "rank 1 of 2": epochs(cfg(batch_size=8), rank=1, world=2),
    }
    for name, got in variants.items():
        for e in range(2):
            assert got[e], name
            for key, seen in got[e].items():
                # epoch e of the same seed: the same shards may go elsewhere, not the same masks
                want = reference[e][key][0] if key in reference[e] else None
                if want is None:
                    continue
                for ids, labels in seen:
                    assert torch.equal(ids, want[0]) and torch.equal(labels, want[1]), (name, key)
        shared = sum(key in reference[e] for e in range(2) for key in got[e])
        assert shared >= len(got[0]), name  # most keys compared, not vacuously none
    changed = [
        k for k in reference[0] if not torch.equal(reference[0][k][0][1], reference[1][k][0][1])
    ]
    assert len(changed) > 100  # a new mask every epoch (dynamic masking)
    other_seed = epochs(cfg(batch_size=8, seed=8), count=1)[0]
    assert (
        sum(not torch.equal(other_seed[k][0][1], reference[0][k][0][1]) for k in other_seed) > 100
    )


@pytest.mark.parametrize(
    "world,rank,workers,n,k,whole_word",
    [
        (1, 0, 0, 18, 5, False),  # 20 batches per epoch: crosses the boundary
        (2, 1, 0, 8, 5, True),  # rank 1 of 2, whole-word masks; 10 per epoch
        (2, 1, 2, 13, 6, False),  # rank 1 of 2 with 2 workers, odd position; 10 per epoch
    ],
)
def test_resume_is_bit_identical(tmp_path, world, rank, workers, n, k, whole_word):
    make_shards(tmp_path, [10] * 8)
    table = torch.zeros(TOK.vocab_size, dtype=torch.bool)
    table[500:] = True
    config = cfg(num_workers=workers, whole_word=whole_word)

    def build():
        return MaskedBatchLoader(
            tmp_path, config, rank=rank, world_size=world, tokenizer=TOK, is_continuation=table
        )

    reference, state = take(build(), n + k, save_at=n)
    assert state["batches_consumed"] == n
    resumed = build()
    resumed.load_state_dict(state)
    assert_same(take(resumed, k), reference[n:])


def test_resume_far_ahead_reads_one_group_not_the_stream(tmp_path, monkeypatch):
    make_shards(tmp_path, [10] * 6)
    reference, state = take(MaskedBatchLoader(tmp_path, cfg(), tokenizer=TOK), 53, save_at=50)
    reads = []
    real = loader_mod.read_shard
    monkeypatch.setattr(
        loader_mod, "read_shard", lambda url, *a: reads.append(url) or real(url, *a)
    )
    resumed = MaskedBatchLoader(tmp_path, cfg(), tokenizer=TOK)
    resumed.load_state_dict(state)
    got = take(resumed, 1)
    assert len(reads) <= 2  # epoch 3, one group of shuffle_shards=2 shards
    assert_same(got, reference[50:51])
    assert resumed.state_dict()["batches_consumed"] == 51


def test_ranks_that_cannot_share_the_slots_resume_at_the_epoch_fraction(tmp_path, caplog):
    make_shards(tmp_path, [10] * 6)
    one = MaskedBatchLoader(tmp_path, cfg(), tokenizer=TOK)  # 15 batches per epoch
    _, state = take(one, 23, save_at=22)  # epoch 1, batch 7 of 15
    two = MaskedBatchLoader(tmp_path, cfg(), rank=1, world_size=2, tokenizer=TOK)  # 7 per epoch
    with caplog.at_level(logging.WARNING, logger="data_pipeline.loader"):
        two.load_state_dict(state)
    assert "not a bit-exact" in caplog.text
    assert "2 ranks x 1 workers cannot share its 1 slots" in caplog.text  # and says what would
    assert two.state_dict()["batches_consumed"] == 7 + 7 * 7 // 15
    assert len(take(two, 2)) == 2


def test_state_dict_fingerprint(tmp_path):
    make_shards(tmp_path, [10] * 6)
    sd = MaskedBatchLoader(tmp_path, cfg(), tokenizer=TOK).state_dict()
    assert sd["batches_consumed"] == 0 and sd["batches_per_epoch"] == 15
    assert sd["shards"] == [f"train-{i:06d}.tar" for i in range(6)]
    assert {"seed", "world_size", "rank", "num_workers", "batch_size"} <= set(sd)
    with pytest.raises(ValueError, match="batch_size"):
        LoaderConfig(batch_size=0)


def test_tokenizer_mismatch_is_refused(tmp_path):
    make_shards(tmp_path, [10] * 2)
    other = dataclasses.replace(TOK, name="biobert-cased", vocab_hash="b" * 64)
    with pytest.raises(UserError, match="re-shard with the run's tokenizer"):
        MaskedBatchLoader(tmp_path, cfg(), tokenizer=other)


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2 + 100])


def test_corrupt_shard_error_names_it_in_process_and_in_a_worker(tmp_path):
    make_shards(tmp_path, [10] * 4)
    _truncate(tmp_path / "train-000002.tar")
    for workers in (0, 1):
        loader = MaskedBatchLoader(tmp_path, cfg(num_workers=workers), tokenizer=TOK)
        with pytest.raises(UserError, match=r"shard \S*train-000002\.tar: "):
            take(loader, loader.batches_per_epoch)
    (tmp_path / "train-000001.tar").write_bytes(b"not a tar file" * 100)
    with pytest.raises(UserError, match=r"train-000001\.tar: corrupt or truncated"):
        take(MaskedBatchLoader(tmp_path, cfg(), tokenizer=TOK), 10)


def test_skip_corrupt_keeps_exact_batch_count(tmp_path, caplog):
    make_shards(tmp_path, [10] * 4)
    _truncate(tmp_path / "train-000002.tar")
    loader = MaskedBatchLoader(tmp_path, cfg(skip_corrupt=True), tokenizer=TOK)
    n = loader.batches_per_epoch
    with caplog.at_level(logging.WARNING, logger="data_pipeline.loader"):
        batches = take(loader, 3 * n)
    assert len(batches) == 3 * n and all(b["input_ids"].shape[0] == 4 for b in batches)
    assert not any(k.startswith("train-000002") for k in keys_of(batches))
    assert "skipping shard" in caplog.text and "train-000002.tar" in caplog.text


def test_globs_braces_pipes_and_manifest_paths_give_the_same_stream(tmp_path):
    make_shards(tmp_path, [10] * 6)
    reference = take(MaskedBatchLoader(tmp_path, cfg(), tokenizer=TOK), 3)
    manifest = tmp_path / "manifest.json"
    specs = [
        (str(manifest), None),
        (str(tmp_path / "train-*.tar"), None),
        (str(tmp_path / "train-{000000..000005}.tar"), None),
        ([f"pipe:cat {tmp_path}/train-{i:06d}.tar" for i in range(6)], manifest),
    ]
    for spec, m in specs:
        got = take(MaskedBatchLoader(spec, cfg(), tokenizer=TOK, manifest=m), 3)
        assert_same(got, reference)
        assert keys_of(got) == keys_of(reference)
    with pytest.raises(UserError, match="pass manifest="):
        MaskedBatchLoader(specs[3][0], cfg(), tokenizer=TOK)
    missing = MaskedBatchLoader(
        [f"pipe:cat {tmp_path}/gone/train-000000.tar"] * 4, cfg(), tokenizer=TOK, manifest=manifest
    )
    with pytest.raises(UserError, match="gone/train-000000.tar"):
        take(missing, 1)
    shutil.copy(tmp_path / "train-000000.tar", tmp_path / "extra.tar")
    with pytest.raises(UserError, match=r"extra\.tar.*not listed in the manifest"):
        MaskedBatchLoader(str(tmp_path / "*.tar"), cfg(), tokenizer=TOK)
    with pytest.raises(UserError, match="no shards match"):
        MaskedBatchLoader(str(tmp_path / "nothing-*.tar"), cfg(), tokenizer=TOK)
    # A path that does not exist is named as it was given, not as a manifest beside it.
    for gone in (tmp_path / "pubmed" / "shards", tmp_path / "train-000009.tar"):
        with pytest.raises(UserError, match=rf"^{re.escape(str(gone))}: not found; expected"):
            MaskedBatchLoader(str(gone), cfg(), tokenizer=TOK)


@pytest.mark.skipif(shutil.which("curl") is None, reason="webdataset opens http URLs with curl")
def test_http_shards_find_the_manifest_next_to_them(tmp_path):
    make_shards(tmp_path, [10] * 6)

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

    handler = functools.partial(Quiet, directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/train-{{000000..000005}}.tar"
        got = take(MaskedBatchLoader(url, cfg(), tokenizer=TOK), 3)
    finally:
        server.shutdown()
    assert_same(got, take(MaskedBatchLoader(tmp_path, cfg(), tokenizer=TOK), 3))


def test_too_few_shards_for_world_and_workers(tmp_path):
    make_shards(tmp_path, [50] * 3)
    with pytest.raises(UserError, match=r"4 loader slots \(world_size 2 x num_workers 2\)"):
        MaskedBatchLoader(tmp_path, cfg(num_workers=2), rank=0, world_size=2, tokenizer=TOK)


def test_eval_batches_every_sample_once_same_count_on_every_rank(tmp_path):
    samples = make_shards(tmp_path, [10] * 2, eval_sizes=[7, 6])
    eval_keys = sorted(k for k in samples if k.startswith("eval"))
    first = eval_keys[0]
    rows, lengths = {}, set()
    for rank in range(3):
        batches = iter_eval_batches(
            tmp_path,
            2,
            rank=rank,
            world_size=3,
            tokenizer=TOK,
            split="eval",
            seed=3,
            debug_keys=True,
        )
        got = list(batches)
        assert len(got) == len(batches) == 3  # ceil(ceil(13 / 3) / 2)
        lengths.add(tuple(b["input_ids"].shape[0] for b in got))
        assert_same(got, list(batches))  # re-iterable, identical each pass
        for b in got:
            for i, key in enumerate(b["keys"]):
                if key in rows:  # the filler row: a copy of sample 0 that predicts nothing
                    assert key == first and (b["labels"][i] == IGNORE_INDEX).all()
                else:
                    rows[key] = (b["input_ids"][i], b["labels"][i])
    assert lengths == {(2, 2, 1)} and sorted(rows) == eval_keys
    # masks depend on the sample alone, not on the world size
    single = iter_eval_batches(tmp_path, 5, tokenizer=TOK, split="eval", seed=3, debug_keys=True)
    for b in single:
        for i, key in enumerate(b["keys"]):
            n = len(samples[key])
            assert torch.equal(b["input_ids"][i, :n], rows[key][0][:n])
            assert torch.equal(b["labels"][i, :n], rows[key][1][:n])


def test_batches_are_made_on_one_thread_and_the_trainers_threads_are_kept(tmp_path, monkeypatch):
    """In the main process (num_workers=0) a batch's many small ops run on one intra-op thread
    (more only add parallel-region barriers, ruinous on a busy machine); the process's own
    setting, which the training steps use, is back while the batch is consumed."""
    make_shards(tmp_path, [10] * 4)
    seen = []
    real_mask_batch = loader_mod.mask_batch

    def recording(*args, **kwargs):
        seen.append(torch.get_num_threads())
        return real_mask_batch(*args, **kwargs)

    monkeypatch.setattr(loader_mod, "mask_batch", recording)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        it = iter(MaskedBatchLoader(tmp_path, cfg(), tokenizer=TOK))
        for _ in range(3):
            next(it)
            assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads)
    assert seen == [1, 1, 1]


def test_the_loader_and_the_eval_batches_do_not_import_each_other():
    import subprocess
    import sys

    for module, other in (("eval_batches", "loader"), ("loader", "eval_batches")):
        code = f"import sys, data_pipeline.{module}; print('data_pipeline.{other}' in sys.modules)"
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        assert done.stdout.strip() == "False", (module, done.stderr[-500:])


# ---------------------------------------------------------------- another number of ranks


def _layout(tmp_path, slots: int, world: int, workers: int) -> list[MaskedBatchLoader]:
    config = cfg(num_workers=workers, slots=slots)
    return [
        MaskedBatchLoader(tmp_path, config, rank=r, world_size=world, tokenizer=TOK)
        for r in range(world)
    ]


@pytest.mark.parametrize(
    "before, after, taken",
    [
        ((2, 0), (1, 0), 3),  # 2 ranks -> 1, mid-epoch, slots unevenly advanced
        ((1, 0), (2, 0), 5),  # 1 -> 2
        ((2, 2), (1, 0), 2),  # 2 ranks x 2 workers -> 1 rank in process
        ((1, 2), (2, 1), 7),  # 1 rank x 2 workers -> 2 ranks x 1 worker
        ((2, 0), (4, 0), 4),  # 2 -> 4: one slot a rank
    ],
)
def test_another_rank_count_takes_every_sample_of_the_epoch_once(tmp_path, before, after, taken):
    samples = make_shards(tmp_path, [12] * 8)  # 4 slots x 2 shards x 12: 6 batches a slot
    slots, n = 4, 6
    seen, states = [], []
    for loader in _layout(tmp_path, slots, *before):
        batches, state = take(loader, taken + 1, save_at=taken)
        seen += keys_of(batches[:taken])
        states.append(state)
    merged = merge_states(states)
    assert merged["slot_batches"] == {
        str(v): c for s in states for v, c in ((int(k), c) for k, c in s["slot_batches"].items())
    }
    left = slots * n - len(seen) // 4
    resumed = _layout(tmp_path, slots, *after)
    per_rank = [sum(n - merged["slot_batches"][str(v)] for v in r._plan.owned) for r in resumed]
    assert sum(per_rank) == left
    again = []
    for loader, count in zip(resumed, per_rank, strict=True):
        loader.load_state_dict(merged)
        batches = take(loader, count)
        again.append(batches)
        seen += keys_of(batches)
    assert sorted(seen) == sorted(samples)  # the epoch: every sample once, none twice
    # a pure function of (state, layout): the same again, batch for batch
    rebuilt = _layout(tmp_path, slots, *after)
    for loader, count, batches in zip(rebuilt, per_rank, again, strict=True):
        loader.load_state_dict(merged)
        assert_same(take(loader, count), batches)


@pytest.mark.parametrize(
    "before, after",
    [
        ((1, 0), (2, 0)),  # 1 rank at 8 rows -> 2 ranks at 4: each takes half of every batch
        ((2, 0), (4, 1)),  # 2 ranks -> 4 ranks x 1 worker
        ((1, 2), (4, 0)),  # 1 rank x 2 workers at 8 rows -> 4 ranks at 2
    ],
)
def test_more_ranks_at_a_smaller_batch_share_the_saved_batches_exactly(tmp_path, before, after):
    """The global batch kept by a smaller micro-batch: a state saved at 8 rows on N ranks, loaded
    at 8 / c rows on c x N ranks: each group of c ranks yields, row block by row block, the
    batches the N-rank run would have yielded, and saves states that resume so again."""
    make_shards(tmp_path, [12] * 8)
    slots, taken, more = 4, 3, 5
    (world, workers), (new_world, new_workers) = before, after
    c = new_world // world
    old = [
        MaskedBatchLoader(tmp_path, cfg(batch_size=8, num_workers=workers, slots=slots),
                          rank=r, world_size=world, tokenizer=TOK)
        for r in range(world)
    ]  # fmt: skip
    saved, uninterrupted = [], []
    for loader in old:
        batches, state = take(loader, taken + more, save_at=taken)
        saved.append(state)
        uninterrupted.append(batches[taken:])
    merged = merge_states(saved)
    new = [
        MaskedBatchLoader(tmp_path, cfg(batch_size=8 // c, num_workers=new_workers, slots=slots),
                          rank=r, world_size=new_world, tokenizer=TOK)
        for r in range(new_world)
    ]  # fmt: skip
    resumed = []
    for loader in new:
        loader.load_state_dict(merged)
        batches, state = take(loader, more, save_at=2)
        resumed.append((batches, state))
    for r, (batches, _) in enumerate(resumed):
        rows = slice((r % c) * (8 // c), (r % c + 1) * (8 // c))
        for mine, whole in zip(batches, uninterrupted[r // c], strict=True):
            assert mine["keys"] == whole["keys"][rows]
            assert torch.equal(mine["labels"], whole["labels"][rows, : mine["labels"].shape[1]])
    # the states saved meanwhile resume the same way (the same layout again)
    again = merge_states([state for _, state in resumed])
    assert again["batch_size"] == 8 and again["parts"] == c
    for r, (batches, _) in enumerate(resumed):
        loader = MaskedBatchLoader(
            tmp_path, cfg(batch_size=8 // c, num_workers=new_workers, slots=slots),
            rank=r, world_size=new_world, tokenizer=TOK,
        )  # fmt: skip
        loader.load_state_dict(again)
        assert_same(take(loader, more - 2), batches[2:])


def test_a_rank_without_the_merged_state_is_refused_naming_the_slots(tmp_path):
    make_shards(tmp_path, [12] * 8)
    states = [take(r, 2, save_at=1)[1] for r in _layout(tmp_path, 4, 2, 0)]
    one = _layout(tmp_path, 4, 1, 0)[0]
    with pytest.raises(UserError, match=r"holds the positions of slots \[0, 1\].*merge_st"):
        one.load_state_dict(states[0])
    with pytest.raises(UserError, match="1 states hold 2 of the 4 slots' positions"):
        merge_states(states[:1])
    other = dict(states[1], batches_consumed=5)
    with pytest.raises(UserError, match=r"not from one save .*batches_consumed"):
        merge_states([states[0], other])


def test_default_slots_come_from_the_state_so_two_ranks_continue_on_one(tmp_path):
    """slots unset: ranks x workers at the start (2 here); a 1-rank resume keeps those 2."""
    samples = make_shards(tmp_path, [12] * 8)  # 2 slots x 4 shards: 12 batches a slot
    seen, states = [], []
    for rank in (0, 1):
        loader = MaskedBatchLoader(tmp_path, cfg(), rank=rank, world_size=2, tokenizer=TOK)
        batches, state = take(loader, 6, save_at=5)
        seen, states = seen + keys_of(batches[:5]), [*states, state]
    one = MaskedBatchLoader(tmp_path, cfg(), tokenizer=TOK)
    assert one.slots == 1
    one.load_state_dict(merge_states(states))
    assert one.slots == 2 and one.batches_per_epoch == 24
    seen += keys_of(take(one, 24 - 10))
    assert sorted(seen) == sorted(samples)


def test_a_version_1_state_resumes_exactly(tmp_path):
    """Checkpoints from before slots: one position for the rank, its workers its slots."""
    make_shards(tmp_path, [10] * 8)
    config = cfg(num_workers=2)

    def build():
        return MaskedBatchLoader(tmp_path, config, rank=1, world_size=2, tokenizer=TOK)

    reference, state = take(build(), 13 + 4, save_at=13)
    old = {k: v for k, v in state.items() if k not in ("slots", "slot_batches")}
    resumed = build()
    resumed.load_state_dict(dict(old, version=1))
    assert_same(take(resumed, 4), reference[13:])


def test_state_dict_unconsumed_is_the_state_before_the_last_batches(tmp_path):
    make_shards(tmp_path, [12] * 8)
    loader = _layout(tmp_path, 4, 1, 0)[0]
    it = iter(loader)
    states = []
    for _ in range(7):
        states.append(loader.state_dict())
        next(it)
    for k in range(1, 8):  # as if the last k had not been handed out
        assert loader.state_dict(unconsumed=k) == states[7 - k]
    with pytest.raises(ValueError, match="unconsumed=8"):
        loader.state_dict(unconsumed=8)
    loader.close()
