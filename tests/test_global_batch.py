"""A recipe's global batch is the recipe's: the same samples per optimizer step on 1, 2 or 4 ranks.

    .venv/bin/python -m pytest tests/test_global_batch.py -q

`train.global_batch` (or the DeepSpeed JSON's train_batch_size) fixes the sequences per optimizer
step; the trainer derives the accumulation for the world size, and where no accumulation makes a
rank's share, lowers the micro-batch to the largest divisor of it that the JSON allows
(trainer/config/ds_json.py: fit_global_batch). The table below checks the rule at every corner; the
runs check it end to end by the sample keys each optimizer step trained on.
"""

from __future__ import annotations

import json

import pytest
from multirank import run_distributed
from trainer_setup import ds_config, recipe, write_recipe

from data_pipeline.shards.manifest import Manifest
from trainer.config.ds_json import fit_global_batch

JSON = {"train_micro_batch_size_per_gpu": 24, "gradient_accumulation_steps": 1}

# (global batch, ranks) -> (micro-batch, accumulation), at the JSON's micro-batch of 24
FITS = {
    (192, 8): (24, 1),  # the paper's
    (192, 4): (24, 2),
    (192, 1): (24, 8),
    (192, 16): (12, 1),  # a rank's whole share is below the JSON's micro-batch
    (192, 3): (16, 4),  # 64 a rank: no accumulation of 24 makes it; 16 is the largest divisor
    (48, 1): (24, 2),  # the demo's, on the main command's one CPU rank
    (48, 2): (24, 1),  # ... and on `make demo`'s two
    (48, 4): (12, 1),
    (7, 1): (7, 1),  # a prime below the micro-batch
    (29, 1): (1, 29),  # a prime above it: micro-batch 1 is the only divisor that fits
}


@pytest.mark.parametrize(("global_batch", "ranks"), sorted(FITS))
def test_the_global_batch_is_kept_on_every_rank_count(global_batch, ranks):
    micro, accumulation = FITS[global_batch, ranks]
    out, line = fit_global_batch(JSON, ranks, global_batch)
    assert (out["train_micro_batch_size_per_gpu"], out["gradient_accumulation_steps"]) == (
        micro,
        accumulation,
    )
    assert out["train_batch_size"] == global_batch == ranks * micro * accumulation  # DeepSpeed's
    plural = "s" if ranks > 1 else ""
    assert line.startswith(
        f"global batch {global_batch} = {ranks} rank{plural} x {micro} x accumulation "
        f"{accumulation}"
    )
    assert ("micro-batch 24 -> " in line) == (micro != 24)  # a lowered micro-batch is said
    assert JSON == {"train_micro_batch_size_per_gpu": 24, "gradient_accumulation_steps": 1}


def test_a_global_batch_the_ranks_cannot_share_is_refused_with_the_numbers():
    with pytest.raises(ValueError) as e:
        fit_global_batch(JSON, 5, 192)
    assert str(e.value) == (
        "global batch 192 cannot be shared by 5 ranks: set train.global_batch to a multiple of 5 "
        "(e.g. 190 or 195), or run on a number of ranks that divides 192"
    )


def test_the_json_train_batch_size_is_a_global_batch_too():
    out, _ = fit_global_batch({**JSON, "train_batch_size": 96}, 2, None)
    assert (out["train_micro_batch_size_per_gpu"], out["gradient_accumulation_steps"]) == (24, 2)
    with pytest.raises(ValueError, match="train.global_batch=48 but the DeepSpeed JSON's"):
        fit_global_batch({**JSON, "train_batch_size": 96}, 2, 48)


def test_without_a_global_batch_it_follows_the_ranks_and_says_so():
    out, line = fit_global_batch({**JSON, "gradient_accumulation_steps": 2}, 3, None)
    assert out["train_batch_size"] == 144
    assert line == (
        "global batch 144 = 3 ranks x 24 x accumulation 2 (the recipe sets no train.global_batch, "
        "so it changes with the number of ranks)"
    )


# ---------------------------------------------------------------- runs on 1, 2 and 4 ranks

STEPS = 2
GLOBAL = 16


def train_recording_keys(rank: int, world: int, argv: list[str]) -> dict:
    """One rank of a run, recording the sample keys of every micro-batch it trains on."""
    import dataclasses

    from trainer.main import main
    from trainer.train import batch as batches
    from trainer.train import inputs

    keys: list[list[str]] = []
    original = batches.DeviceBatch.from_host.__func__
    config = inputs.LoaderConfig

    def from_host(cls, host, device):
        if "keys" in host:  # training batches (the held-out ones carry none)
            keys.append(list(host.pop("keys")))
        return original(cls, host, device)

    batches.DeviceBatch.from_host = classmethod(from_host)
    inputs.LoaderConfig = lambda **kw: dataclasses.replace(config(**kw), debug_keys=True)
    rc = main(argv)
    return {"rc": rc, "keys": keys}


@pytest.mark.slow
def test_one_two_and_four_ranks_train_each_step_on_the_same_samples(
    tmp_path, tiny_shards, tokenizer_dir
):
    """Micro-batch 8 in the JSON, global batch 16: 1 rank accumulates 2, 2 ranks take 8 each,
    4 ranks take 4 each (micro-batch lowered). Counted by sample keys, each optimizer step trains
    on 16 samples, none of them twice in the run, on every rank count; the run directory's
    ds_config.json records what was derived. (Which 16 depends on the batching: a micro-batch
    is read from one of the data.slots streams.)"""
    vocab = Manifest.load(tiny_shards).tokenizer.vocab_size
    ds = ds_config(tmp_path / "ds.json", bf16=False, micro=8)
    expected = {1: (8, 2), 2: (8, 1), 4: (4, 1)}
    for ranks, (micro, accumulation) in expected.items():
        data = recipe(tiny_shards, tmp_path / "runs", vocab, name=f"ranks{ranks}", steps=STEPS)
        data["data"].update(tokenizer=str(tokenizer_dir), slots=4)
        data["train"].update(global_batch=GLOBAL, eval_every=1000, save_every=1000)
        path = write_recipe(tmp_path / f"r{ranks}.yaml", data)
        argv = ["--ds_config", str(ds), "--recipe", str(path), "--students", "TinyBioBERT"]
        results = run_distributed(train_recording_keys, ranks, argv, timeout=600)
        assert all(r["rc"] == 0 for r in results)
        run_ds = json.loads((tmp_path / "runs" / f"ranks{ranks}" / "ds_config.json").read_text())
        assert run_ds["train_micro_batch_size_per_gpu"] == micro
        assert run_ds["gradient_accumulation_steps"] == accumulation
        assert run_ds["train_batch_size"] == GLOBAL
        trained = []
        for step in range(STEPS):
            window = slice(step * accumulation, (step + 1) * accumulation)
            taken = [key for r in results for batch in r["keys"][window] for key in batch]
            assert len(taken) == GLOBAL, (ranks, step)
            trained += taken
        assert len(set(trained)) == STEPS * GLOBAL, ranks
