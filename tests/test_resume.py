"""Resume is exact from every checkpoint: a short run saves at every step, and a copy resumed from
each checkpoint in turn ends with the uninterrupted run's weights, bit for bit.

    .venv/bin/python -m pytest tests/test_resume.py -q

The cases cover every pair of (1 or 2 ranks) x (fp32 or bf16) x (ZeRO-2 or ZeRO-3) in four runs
(a pairwise design; the full product would be eight), one of them under gradient accumulation (a
checkpoint falls between windows; the loader's look-ahead of a window is not counted). The
warm-up ends inside the run, so the LR schedule's corner, the optimizer's bias correction and the
loader position are all crossed by some resume.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
from pathlib import Path

import pytest
import torch
from multirank import run_distributed
from trainer_setup import ds_config, recipe, weights, write_recipe

from data_pipeline.shards.manifest import Manifest
from trainer.runtime.distributed import free_port

pytestmark = pytest.mark.slow

STEPS = 4  # checkpoints at steps 1..3 are each resumed: before, at and after the warm-up's end (2)
# A layer-copied student with logits and hidden-state terms, and a random-init one with
# attention maps: every kind of state a checkpoint carries (CompactBioBERT adds none, and time).
SWEPT = ("DistilBioBERT", "TinyBioBERT")
CASES = [  # (ranks, bf16, ZeRO stage, accumulation): each pair of the first three appears once
    (1, False, 2, 1),
    (1, True, 3, 1),
    (2, False, 3, 2),
    (2, True, 2, 1),
]


def run_in_turn(rank: int, world: int, runs: list[tuple[list[str], int]]) -> list[dict]:
    """One rank: `main(argv)` for each (argv, port), one after another in this process. Each run
    has a port of its own: a rendezvous on the previous run's port can read that run's stale
    keys while a slower rank still holds its store."""
    from trainer.main import main

    out = []
    for argv, port in runs:
        os.environ["MASTER_PORT"] = str(port)
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            rc = main(argv)
        out.append({"rc": rc, "stderr": err.getvalue()})
    return out


def resume_copy(reference: Path, target: Path, step: int) -> None:
    """`reference` as it was when its checkpoint at `step` was the newest: later ones removed."""
    shutil.copytree(reference, target)
    shutil.rmtree(target / "export")
    for ckpt in (target / "checkpoints").iterdir():
        if int(ckpt.name.split("-")[1]) > step:
            shutil.rmtree(ckpt)


def max_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a)


@pytest.mark.parametrize(("ranks", "bf16", "stage", "accumulation"), CASES)
def test_resume_from_every_checkpoint_equals_the_uninterrupted_run(
    tmp_path, tiny_shards, tokenizer_dir, ranks, bf16, stage, accumulation
):
    vocab = Manifest.load(tiny_shards).tokenizer.vocab_size
    data = recipe(tiny_shards, tmp_path / "runs", vocab, name="reference", steps=STEPS)
    data["data"]["tokenizer"] = str(tokenizer_dir)
    data["train"].update(save_every=1, keep=100, eval_every=1000, log_every=3)
    recipe_path = write_recipe(tmp_path / "recipe.yaml", data)
    ds = ds_config(tmp_path / "ds.json", stage=stage, bf16=bf16, accumulation=accumulation)

    def argv(name: str) -> list[str]:
        return [
            *("--ds_config", str(ds), "--recipe", str(recipe_path)),
            *("--students", ",".join(SWEPT), f"run.name={name}"),
        ]

    (done,) = run_distributed(run_in_turn, ranks, [(argv("reference"), free_port())])[0]
    assert done["rc"] == 0, done["stderr"][-2000:]
    reference = tmp_path / "runs" / "reference"
    saved = sorted(p.name for p in (reference / "checkpoints").iterdir())
    assert saved == [f"step-{s:08d}" for s in range(1, STEPS + 1)]

    resumed_at = range(1, STEPS)
    for step in resumed_at:
        resume_copy(reference, tmp_path / "runs" / f"from-{step}", step)
    results = run_distributed(
        run_in_turn,
        ranks,
        [(argv(f"from-{step}"), free_port()) for step in resumed_at],
        timeout=600,
    )[0]

    differ = {}
    for step, result in zip(resumed_at, results, strict=True):
        assert result["rc"] == 0, result["stderr"][-2000:]
        assert f"step-{step:08d} at step {step}" in result["stderr"]  # "resumed from ... at step"
        for student in SWEPT:
            a = weights(reference, student)
            b = weights(tmp_path / "runs" / f"from-{step}", student)
            assert a.keys() == b.keys()
            if any(not torch.equal(a[k], b[k]) for k in a):
                differ[(step, student)] = max_difference(a, b)
    assert not differ, f"resumed at (step, student), this far from the uninterrupted run: {differ}"
