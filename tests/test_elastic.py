"""Elastic resume: a run saved on N ranks goes on on M != N ranks (trainer/checkpoint/elastic.py)
and ends where the uninterrupted N-rank run ends, to fp32 rounding.

    .venv/bin/python -m pytest tests/test_elastic.py -q

2 ranks -> 1 under ZeRO-2 and ZeRO-1, 1 -> 2 under ZeRO-3 and ZeRO-2, all fp32 with dropout off
(the dropout streams are rank 0's after the change, so with dropout on the runs would differ by
design). The global batch is kept through the accumulation (2 x 8 x 1 <-> 1 x 8 x 2) or, growing
from 1 x 24 x 1, a smaller micro-batch (2 x 12 x 1); the loader's slots are read on from their
positions, so each step trains on the same samples as the uninterrupted run:
weights, Adam moments (through the steps after the resume), the LR schedule and the logged loss
must all agree. In the 2 -> 1 ZeRO-2 case a second resume gives the first one's weights bit for bit.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from multirank import run_distributed
from test_resume import resume_copy, run_in_turn
from trainer_setup import assert_same_weights, ds_config, recipe, weights, write_recipe

from data_pipeline.shards.manifest import Manifest
from trainer.checkpoint.elastic import to_universal
from trainer.runtime.distributed import free_port
from trainer.train.metrics import read_scalars

pytestmark = pytest.mark.slow

STEPS = 4
RESUME_AT = 2  # the warm-up (2 steps) ends here: the LR schedule's corner is crossed after
SWEPT = ("DistilBioBERT", "TinyBioBERT")  # copied layers with logits; random init with maps
NO_DROPOUT = {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}
# (saved on, resumed on, ZeRO stage, micro-batch, accumulation when saved) -> what keeps the
# global batch on the new rank count: the accumulation, or (growing with no accumulation to
# take back) a smaller micro-batch
CASES = {
    (2, 1, 2, 8, 1): "gradient_accumulation_steps 1 -> 2 keeps the global batch",
    (1, 2, 3, 8, 2): "gradient_accumulation_steps 2 -> 1 keeps the global batch",
    (2, 1, 1, 8, 1): "gradient_accumulation_steps 1 -> 2 keeps the global batch",
    (1, 2, 2, 24, 1): "train_micro_batch_size_per_gpu 24 -> 12 keeps the global batch on 2 ranks",
}
TWICE = (2, 1, 2, 8, 1)  # the case that also resumes a second time (a pure function of the ckpt)


def _universal_state(checkpoint: Path, student: str, out: Path) -> dict[str, torch.Tensor]:
    """A student's fp32 weights and Adam moments in a checkpoint, by parameter name, whatever
    the ranks that saved it (through the same universal conversion the resume uses)."""
    tag = (checkpoint / student / "latest").read_text().strip()
    to_universal(checkpoint / student / tag, out)
    state = {}
    for path in sorted((out / "zero").rglob("*.pt")):
        if path.stem in ("fp32", "exp_avg", "exp_avg_sq"):
            value = torch.load(path, weights_only=False)
            state[f"{path.parent.name}/{path.stem}"] = (
                value["param"] if isinstance(value, dict) else value
            )
    return state


@pytest.mark.parametrize(("before", "after", "stage", "micro", "accumulation"), list(CASES))
def test_resume_on_another_rank_count_equals_the_uninterrupted_run(
    tmp_path, tiny_shards, tokenizer_dir, before, after, stage, micro, accumulation
):
    vocab = Manifest.load(tiny_shards).tokenizer.vocab_size
    data = recipe(tiny_shards, tmp_path / "runs", vocab, name="reference", steps=STEPS)
    data["teacher"]["config"].update(NO_DROPOUT)
    data["students"][2]["init"]["config"].update(NO_DROPOUT)
    data["data"]["tokenizer"] = str(tokenizer_dir)
    data["train"].update(save_every=1, keep=100, eval_every=1000, log_every=1)
    for student in data["students"]:  # a weight decay that shows if a param group's is lost
        student["optimizer"]["weight_decay"] = 0.1
    # 2 slots, whatever the ranks at the start (the default is ranks x workers: 1 on 1 rank,
    # which 2 ranks cannot share)
    data["data"]["slots"] = 2
    recipe_path = write_recipe(tmp_path / "recipe.yaml", data)
    # the same global batch on either side: 2 ranks x 8, or 1 rank x 8 x 2 accumulated; or
    # 1 rank x 24, then 2 ranks x 12
    ds = ds_config(
        tmp_path / "ds.json", stage=stage, bf16=False, micro=micro, accumulation=accumulation
    )

    def argv(name: str) -> list[str]:
        return [
            *("--ds_config", str(ds), "--recipe", str(recipe_path)),
            *("--students", ",".join(SWEPT), f"run.name={name}"),
        ]

    (done,) = run_distributed(run_in_turn, before, [(argv("reference"), free_port())])[0]
    assert done["rc"] == 0, done["stderr"][-2000:]
    reference = tmp_path / "runs" / "reference"
    case = (before, after, stage, micro, accumulation)
    names = ("elastic", "again") if case == TWICE else ("elastic",)
    for name in names:
        resume_copy(reference, tmp_path / "runs" / name, RESUME_AT)
        shutil.rmtree(tmp_path / "runs" / name / "tensorboard")  # its own logs only
    results = run_distributed(
        run_in_turn,
        after,
        [(argv(name), free_port()) for name in names],
        timeout=600,
    )[0]
    for result in results:
        assert result["rc"] == 0, result["stderr"][-2000:]
        log = result["stderr"]
        assert f"saved by {before} ranks, resuming on {after}" in log
        assert CASES[case] in log
        assert f"step-{RESUME_AT:08d} at step {RESUME_AT}" in log

    elastic = tmp_path / "runs" / "elastic"
    assert not (elastic / "universal").exists()  # the converted state is removed after the load
    for student in SWEPT:
        # to fp32 rounding (the ranks sum in another order): measured <= 1.2e-7, 1 ulp of a
        # LayerNorm weight near 1; a lost no-decay group would be 2e-4 off
        assert_same_weights(weights(reference, student), weights(elastic, student), atol=1e-6)
        # a pure function of (checkpoint, M)
        if "again" in names:
            again = weights(tmp_path / "runs" / "again", student)
            assert_same_weights(weights(elastic, student), again)
    # the optimizer state carried over: a step after the resume, moments as the uninterrupted
    # run's (by parameter name, through a universal conversion of either side's checkpoint)
    after = f"step-{RESUME_AT + 1:08d}"
    for student in SWEPT:
        want, got = (
            _universal_state(
                run / "checkpoints" / after, student, tmp_path / "u" / run.name / student
            )
            for run in (reference, elastic)
        )
        assert want.keys() == got.keys() and any(k.endswith("/exp_avg_sq") for k in want)
        for key in want:
            # fp32 rounding: measured <= 2.3e-8 on values up to 0.25 (an ulp of 0.25 is 3e-8),
            # and a key bias, whose gradient is rounding noise, a few 1e-9 off
            torch.testing.assert_close(got[key], want[key], rtol=1e-4, atol=5e-8, msg=key)
    logged, resumed = read_scalars(reference / "tensorboard"), read_scalars(elastic / "tensorboard")
    for student in SWEPT:
        for tag in (f"train/{student}/loss", f"train/{student}/lr"):
            want = dict(logged[tag])
            got = dict(resumed[tag])
            assert sorted(got) == list(range(RESUME_AT + 1, STEPS + 1)), tag
            for step, value in got.items():
                assert value == pytest.approx(want[step], rel=1e-4, abs=1e-6), (tag, step)
