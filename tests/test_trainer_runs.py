"""Whole trainer runs on tiny models: 2-rank ZeRO-2 and ZeRO-3 cohorts, a cohort student equal to
the student trained alone, kill -9 and preemption with exact resume, one trainer per run
directory, non-finite losses, continual MLM students with their own vocabulary, exports and
TensorBoard. Resume from every checkpoint: tests/test_resume.py.

    .venv/bin/python -m pytest tests/test_trainer_runs.py -q

Runs go through `trainer.main.main` exactly as `deepspeed trainer/main.py` would call it: on real
gloo ranks in spawned processes (tests/multirank.py), or as a `python trainer/main.py`
subprocess where the test kills or signals it. The first run on a machine JIT-builds DeepSpeed's
CPU Adam (about a minute), later runs reuse the cache.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import queue
import shutil
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
import yaml
from corrupt import flip_byte, flip_token_bit
from multirank import run_distributed
from trainer_setup import STUDENTS, assert_same_weights, ds_config, recipe, weights, write_recipe

from data_pipeline.shards.manifest import Manifest
from trainer.runtime.distributed import free_port

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def train(rank: int, world: int, argv: list[str], nan_at: tuple[str, int] | None = None) -> dict:
    """One rank of a run: `main(argv)`; returns its exit code and what it printed to stderr.

    `nan_at=(student, step)` makes that student's loss NaN at that (1-based) step, on every rank.
    """
    from trainer.distill import objectives
    from trainer.main import main

    if nan_at is not None:
        name_kind = {"DistilBioBERT": "distilbiobert", "TinyBioBERT": "tinybiobert"}
        original, calls = objectives.Objective.__call__, {"n": 0}

        def poisoned(self, student, teacher, batch, *scale):
            loss, terms = original(self, student, teacher, batch, *scale)
            if self.kind == name_kind[nan_at[0]]:
                calls["n"] += 1
                if calls["n"] == nan_at[1]:
                    terms["att" if "att" in terms else "mlm"] = torch.tensor(float("nan"))
                    loss = loss * float("nan")
            return loss, terms

        objectives.Objective.__call__ = poisoned
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        rc = main(argv)
    return {"rc": rc, "stderr": err.getvalue()}


def scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    from trainer.train.metrics import read_scalars

    return read_scalars(run_dir / "tensorboard")


@pytest.fixture(scope="module")
def env(tmp_path_factory, tiny_shards, tokenizer_dir):
    root = tmp_path_factory.mktemp("trainer")
    vocab = Manifest.load(tiny_shards).tokenizer.vocab_size

    def make(name: str, steps: int, **extra) -> Path:
        data = recipe(tiny_shards, root / "runs", vocab, name=name, steps=steps)
        data["data"]["tokenizer"] = str(tokenizer_dir)
        for section, values in extra.items():
            data[section].update(values)
        return write_recipe(root / f"{name}.yaml", data)

    return {
        "root": root,
        "runs": root / "runs",
        "make": make,
        "fp32": ds_config(root / "fp32.json", stage=2, bf16=False),
        "zero2": ds_config(root / "zero2.json", stage=2),
        "tokenizer": tokenizer_dir,
        "shards": tiny_shards,
        "vocab": vocab,
    }


def assert_tensorboard_runs(log_dir: Path, students) -> None:
    """One TensorBoard run per model, the model left out of its tags (so the students overlay on
    one chart), the cohort's figures and the recipe in the root run, HParams per student."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    def run(name: str):
        acc = EventAccumulator(str(log_dir / name))
        acc.Reload()
        return acc

    assert sorted(p.name for p in log_dir.iterdir() if p.is_dir()) == sorted([*students, "teacher"])
    for student in students:
        acc = run(student)
        assert {"train/loss", "train/lr", "eval/mlm_acc", "perf/step_time_s"} <= set(
            acc.Tags()["scalars"]
        )
        assert not any(student in tag for tag in acc.Tags()["scalars"])
        assert set(acc.PluginTagToContent("hparams")) >= {
            "_hparams_/experiment", "_hparams_/session_start_info"
        }  # fmt: skip
    assert {"eval/mlm_loss", "eval/mlm_acc"} <= set(run("teacher").Tags()["scalars"])
    root = run(".")
    assert "perf/tokens_per_s" in root.Tags()["scalars"]
    assert not any(t.startswith(("train/", "eval/")) for t in root.Tags()["scalars"])
    assert {"recipe/text_summary", "summary/text_summary"} <= set(root.Tags()["tensors"])


def argv(ds: Path, recipe_path: Path, *extra: str) -> list[str]:
    return ["--ds_config", str(ds), "--recipe", str(recipe_path), *extra]


# ---------------------------------------------------------------- 2 ranks, ZeRO-2 and ZeRO-3


def test_zero2_cohort_on_two_ranks(env):
    recipe_path = env["make"]("zero2", steps=6)
    shm = set(os.listdir("/dev/shm"))
    results = run_distributed(train, 2, argv(env["zero2"], recipe_path))
    assert [r["rc"] for r in results] == [0, 0], results[0]["stderr"][-2000:]
    # no shared-memory all-reduce buffers (DeepSpeed's, for its inference) left behind
    assert set(os.listdir("/dev/shm")) <= shm
    run_dir = env["runs"] / "zero2"

    # every rank's log file: rank 0's progress, rank 1's records the console left out
    assert "checkpoint: step 6 saved" in (run_dir / "train.log").read_text()
    rank1 = (run_dir / "train.rank-00001.log").read_text()
    assert "Attempting to get learning rate" in rank1  # DeepSpeed noise, kept in the file
    assert "INFO" in rank1 and "INFO" not in results[1]["stderr"]

    # checkpoints: complete (marker + both ranks' files), the newest `keep` = 2 kept
    ckpts = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert ckpts == ["step-00000003", "step-00000006"]
    last = run_dir / "checkpoints" / "step-00000006"
    marker = json.loads((last / "COMPLETE.json").read_text())
    assert marker["world_size"] == 2 and marker["students"] == {s: 6 for s in STUDENTS}
    assert (last / "rank-00000.pt").is_file() and (last / "rank-00001.pt").is_file()

    # DeepSpeed's own tool reads our checkpoints; the export holds the same fp32 master weights
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    for student in STUDENTS:
        state = get_fp32_state_dict_from_zero_checkpoint(str(last / student))
        exported = weights(run_dir, student)
        for key, value in exported.items():
            if key.startswith("bert.pooler."):  # exported, never trained: trainer/models/pooler.py
                continue
            torch.testing.assert_close(state[f"mlm.{key}"].float(), value, rtol=0, atol=0)
        assert "bert.pooler.dense.weight" in exported
        assert ("fit_dense.weight" in state) == (student == "TinyBioBERT")
        assert not any(k.startswith("fit_dense") for k in exported)

    # an export on request from the checkpoint alone is the same model
    from trainer.export.hf_export import main as export_main

    assert export_main([str(last), "--students", "TinyBioBERT,DistilBioBERT"]) == 0
    for student in ("TinyBioBERT", "DistilBioBERT"):
        assert_same_weights(weights(run_dir, student), weights(run_dir, student, last.name))
    assert not (run_dir / f"export-{last.name}" / "CompactBioBERT").exists()
    for name in ("recipe.resolved.yaml", "ds_config.json"):  # what it was trained with
        assert (last / name).read_bytes() == (run_dir / name).read_bytes()

    # every student logs every term; eval covers students and teacher; perf figures are there
    tags = scalars(run_dir)
    for student, terms in (
        ("DistilBioBERT", ("mlm", "kd", "cos")),
        ("CompactBioBERT", ("mlm", "kd", "att", "cos")),
        ("TinyBioBERT", ("att", "hid", "soft_ce")),
    ):
        for term in terms:
            assert f"train/{student}/loss_{term}" in tags
        for key in ("loss", "lr", "grad_norm", "skipped_steps"):
            assert f"train/{student}/{key}" in tags
        for key in ("mlm_loss", "mlm_acc", "teacher_agreement"):
            assert f"eval/{student}/{key}" in tags
        assert f"perf/{student}/step_time_s" in tags
        assert [s for s, _ in tags[f"train/{student}/loss"]] == [2, 4, 6]
        # the layer-map terms are real, not a sum over an empty tuple of attention maps
        assert (
            tags[f"train/{student}/loss_{terms[-1] if student != 'TinyBioBERT' else 'att'}"][0][1]
            > 0
        )
    for key in ("eval/teacher/mlm_loss", "perf/tokens_per_s", "perf/teacher_share"):
        assert key in tags
    # memory named for what it is: on these CPU ranks the process's peak RSS
    assert "perf/cpu_peak_rss_gb" in tags and not any("peak_memory" in t for t in tags)
    assert 0.05 < tags["perf/cpu_peak_rss_gb"][-1][1] < 64
    # each student's own schedule: warm-up over 2 steps, then a linear decay
    lrs = [v for _, v in tags["train/DistilBioBERT/lr"]]
    assert 0 < lrs[2] < lrs[1] <= 1e-3
    assert_tensorboard_runs(run_dir / "tensorboard", STUDENTS)

    from transformers import AutoModelForMaskedLM, pipeline

    model = AutoModelForMaskedLM.from_pretrained(run_dir / "export" / "CompactBioBERT")
    assert model.config.num_hidden_layers == 2
    fill = pipeline("fill-mask", model=str(run_dir / "export" / "TinyBioBERT"))
    assert len(fill(f"The patients received {fill.tokenizer.mask_token} daily.")) == 5
    card = (run_dir / "export" / "DistilBioBERT" / "README.md").read_text()
    assert "pipeline_tag: fill-mask" in card and "6 optimizer steps" in card

    # readable by others as the umask allows (not mkdtemp's 0700 or a writer's 0600), and
    # truncating where the model's positions end
    from transformers import AutoTokenizer

    umask = os.umask(0)
    os.umask(umask)
    export = run_dir / "export" / "TinyBioBERT"
    assert stat.S_IMODE(export.stat().st_mode) == 0o777 & ~umask
    for f in export.iterdir():
        assert stat.S_IMODE(f.stat().st_mode) == 0o666 & ~umask, f
    tok = AutoTokenizer.from_pretrained(export)
    positions = AutoModelForMaskedLM.from_pretrained(export).config.max_position_embeddings
    assert tok.model_max_length == positions
    ids = tok("word " * (2 * positions), truncation=True, return_tensors="pt")
    assert ids["input_ids"].shape[1] == positions
    AutoModelForMaskedLM.from_pretrained(export)(**ids)  # runs; no shape error


def test_zero3_trains_the_same_as_zero2(env):
    """The ZeRO stage changes where state lives, not the math: fp32 runs agree to rounding."""
    runs = {}
    for stage in (2, 3):
        ds = ds_config(env["root"] / f"fp32-zero{stage}.json", stage=stage, bf16=False)
        recipe_path = env["make"](f"fp32-zero{stage}", steps=4, train={"save_every": 2})
        results = run_distributed(train, 2, argv(ds, recipe_path))
        assert [r["rc"] for r in results] == [0, 0], results[0]["stderr"][-2000:]
        runs[stage] = env["runs"] / f"fp32-zero{stage}"
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    for student in STUDENTS:
        assert_same_weights(weights(runs[2], student), weights(runs[3], student), atol=1e-5)
        state = get_fp32_state_dict_from_zero_checkpoint(
            str(runs[3] / "checkpoints" / "step-00000004" / student)
        )
        for key, value in weights(runs[3], student).items():
            # the pooler is exported, never trained: trainer/models/pooler.py
            if not key.startswith("bert.pooler."):
                torch.testing.assert_close(state[f"mlm.{key}"].float(), value, rtol=0, atol=0)


# ---------------------------------------------------------------- equivalence, kill, preemption


@pytest.fixture(scope="module")
def uninterrupted(env):
    """A 12-step fp32 cohort run on one rank: the reference for equivalence and resume."""
    recipe_path = env["make"]("reference", steps=12)
    (result,) = run_distributed(train, 1, argv(env["fp32"], recipe_path))
    assert result["rc"] == 0, result["stderr"][-2000:]
    return recipe_path, env["runs"] / "reference"


def test_cohort_student_equals_student_trained_alone(env, uninterrupted):
    recipe_path, reference = uninterrupted
    for student in STUDENTS:
        extra = ["--students", student, f"run.name=alone-{student}"]
        (result,) = run_distributed(train, 1, argv(env["fp32"], recipe_path, *extra))
        assert result["rc"] == 0, result["stderr"][-2000:]
        alone = weights(env["runs"] / f"alone-{student}", student)
        # bit for bit: same batches, same init, its own dropout stream, and a teacher whose
        # hidden states do not depend on which attention maps the cohort asks of it
        assert_same_weights(weights(reference, student), alone)


def test_teacher_ahead_trains_the_same_cohort(env, uninterrupted):
    """train.teacher_ahead computes each batch's teacher signals one batch early (on a GPU beside
    the students' steps); the signals are a pure function of the batch, so the models are equal."""
    recipe_path, reference = uninterrupted
    extra = ["train.teacher_ahead=true", "run.name=ahead"]
    (result,) = run_distributed(train, 1, argv(env["fp32"], recipe_path, *extra))
    assert result["rc"] == 0, result["stderr"][-2000:]
    assert "11 of 12 batches' teacher signals computed a batch early" in result["stderr"]
    for student in STUDENTS:
        assert_same_weights(weights(reference, student), weights(env["runs"] / "ahead", student))


def test_gradient_accumulation_2_x_12_trains_as_1_x_24(env):
    """gradient_accumulation_steps 2 at micro-batch 12 gives the models of micro-batch 24 on the
    same samples, to fp32 rounding, for every distilled student and its MLM twin: the token-mean
    terms are normalised over the window (not a mean of two micro-batch means) and a sample's
    mask does not depend on the batch it is in. Dropout is off, so the runs differ only in how
    the samples are grouped. Also: the LR schedule and budgets count optimizer steps."""
    data = recipe(env["shards"], env["runs"], env["vocab"], name="batch24", steps=3)
    no_dropout = {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}
    data["teacher"]["config"].update(no_dropout)
    data["students"][2]["init"]["config"].update(no_dropout)
    data["data"]["tokenizer"] = str(env["tokenizer"])
    data["train"].update(mlm_twins=True, log_every=1, eval_every=1000, save_every=1000)
    recipe_path = write_recipe(env["root"] / "accumulate.yaml", data)
    runs = {
        "batch24": ["ds.train_micro_batch_size_per_gpu=24"],
        "micro12x2": [
            "ds.train_micro_batch_size_per_gpu=12",
            "ds.gradient_accumulation_steps=2",
            "run.name=micro12x2",
        ],
    }
    for extra in runs.values():
        (result,) = run_distributed(train, 1, argv(env["fp32"], recipe_path, *extra))
        assert result["rc"] == 0, result["stderr"][-2000:]
    a, b = env["runs"] / "batch24", env["runs"] / "micro12x2"
    students = [*STUDENTS, *(f"{s}-MLM" for s in STUDENTS)]
    for student in students:
        assert_same_weights(weights(a, student), weights(b, student), atol=2e-6)
    logged_a, logged_b = scalars(a), scalars(b)
    for student in students:
        for tag in (f"train/{student}/loss", f"train/{student}/lr"):
            steps_a, values_a = zip(*logged_a[tag], strict=True)
            steps_b, values_b = zip(*logged_b[tag], strict=True)
            assert steps_a == steps_b == (1, 2, 3), tag
            assert values_b == pytest.approx(values_a, rel=1e-5), tag


def test_a_minilmv2_student_of_another_width_learns_the_teachers_relations(env):
    """The seventh kind: a 24-wide, 3-head student taught by the 32-wide, 2-head teacher through
    4 relation heads trains (the relation KL falls) and exports; relation heads that do not
    divide a hidden size are refused at start-up, naming the key and the sizes."""
    data = recipe(env["shards"], env["runs"], env["vocab"], name="minilm", steps=10)
    data["data"]["tokenizer"] = str(env["tokenizer"])
    data["train"].update(log_every=1, eval_every=1000, save_every=1000)
    student = {
        "name": "BioMiniLM",
        "init": {
            "config": {
                "num_hidden_layers": 2,
                "hidden_size": 24,
                "num_attention_heads": 3,
                "intermediate_size": 48,
                "vocab_size": env["vocab"],
                "max_position_embeddings": 64,
            }
        },  # fmt: skip
        "objective": {"kind": "minilmv2", "teacher_layer": 3, "relation_heads": 4},
        "optimizer": {"lr": 3e-3, "weight_decay": 0.0, "warmup_steps": 2},
    }
    data["students"] = [student]
    recipe_path = write_recipe(env["root"] / "minilm.yaml", data)
    (result,) = run_distributed(train, 1, argv(env["fp32"], recipe_path))
    assert result["rc"] == 0, result["stderr"][-2000:]
    run_dir = env["runs"] / "minilm"
    rel = [v for _, v in scalars(run_dir)["train/BioMiniLM/loss_rel"]]
    assert len(rel) == 10 and all(math.isfinite(v) for v in rel)
    assert sum(rel[-3:]) < 0.7 * sum(rel[:3]), rel
    assert (run_dir / "export" / "BioMiniLM" / "model.safetensors").is_file()

    bad = [*argv(env["fp32"], recipe_path), "students.BioMiniLM.objective.relation_heads=5"]
    (result,) = run_distributed(train, 1, [*bad, "run.name=minilm-bad"])
    assert result["rc"] == 2
    assert (
        "students.BioMiniLM.objective.relation_heads=5: must divide the hidden sizes"
        in (result["stderr"])
    )


def start(env, recipe_path: Path, name: str) -> subprocess.Popen:
    log = open(env["root"] / f"{name}.log", "w")  # noqa: SIM115 - closed with the process
    return subprocess.Popen(
        [sys.executable, "trainer/main.py", *argv(env["fp32"], recipe_path, f"run.name={name}")],
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 240.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, f"the run ended (rc {proc.returncode}) before {path}"
        assert time.monotonic() < deadline, f"no {path} after {timeout} s"
        time.sleep(0.02)


def finish(env, recipe_path: Path, name: str) -> str:
    proc = subprocess.run(
        [sys.executable, "trainer/main.py", *argv(env["fp32"], recipe_path, f"run.name={name}")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stderr


def test_kill_9_and_resume_equals_uninterrupted_run(env, uninterrupted):
    recipe_path, reference = uninterrupted
    proc = start(env, recipe_path, "killed")
    first = env["runs"] / "killed" / "checkpoints" / "step-00000003" / "COMPLETE.json"
    wait_for(first, proc)
    # NOTE: frozen meanwhile, so that it cannot finish while the second start imports (on a busy
    # machine that took longer than the rest of the run); a stopped process keeps its lock.
    os.killpg(proc.pid, signal.SIGSTOP)

    # one trainer per run directory: a second start on it is refused at once, naming the first
    second = subprocess.run(
        [sys.executable, "trainer/main.py", *argv(env["fp32"], recipe_path, "run.name=killed")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert second.returncode == 2, second.stderr[-2000:]
    assert f"killed: in use by another trainer (pid {proc.pid} on host {socket.gethostname()}" in (
        second.stderr
    )
    assert proc.poll() is None  # the first is untouched

    os.killpg(proc.pid, signal.SIGKILL)  # NOTE: delivered to a stopped process too
    assert proc.wait() == -signal.SIGKILL
    assert not (env["runs"] / "killed" / "export").exists()  # it died mid-run
    assert (env["runs"] / "killed" / ".lock").is_file()  # left behind, locking nothing

    log = finish(env, recipe_path, "killed")
    assert "resumed from" in log
    for student in STUDENTS:
        assert_same_weights(weights(reference, student), weights(env["runs"] / "killed", student))


def test_corrupt_checkpoint_is_named_and_resume_falls_back_to_the_newest_that_verifies(
    env, uninterrupted
):
    from trainer.checkpoint.store import verify
    from trainer.export.hf_export import main as export_main

    recipe_path, reference = uninterrupted
    run = env["runs"] / "corrupt"
    shutil.copytree(reference, run)
    shutil.rmtree(run / "export")
    newest = run / "checkpoints" / "step-00000012"
    assert sorted(p.name for p in newest.parent.iterdir()) == ["step-00000009", newest.name]

    # every file of the checkpoint (engine states, optimizer partitions, `latest`, the rank's
    # loader and random streams, the export skeleton) is vouched for: one flipped bit is named
    files = sorted(p for p in newest.rglob("*") if p.is_file() and p.name != "COMPLETE.json")
    kinds = {p.name for p in files}
    assert {"rank-00000.pt", "latest", "mp_rank_00_model_states.pt", "config.json"} <= kinds
    assert any("optim_states" in k for k in kinds)
    assert verify(newest) is None
    for path in files:
        original = flip_byte(path)
        rel = path.relative_to(newest).as_posix()
        assert verify(newest) == f"{rel}: its SHA-256 differs from the one in COMPLETE.json " + (
            "(corrupted)"
        )
        path.write_bytes(original[:-1])
        assert f"{rel} has {len(original) - 1:,} bytes where COMPLETE.json says" in verify(newest)
        path.write_bytes(original)
    assert verify(newest) is None

    optimizer = next(p for p in files if "optim_states" in p.name)
    flip_byte(optimizer)
    assert export_main([str(newest)]) == 2  # the export refuses it too

    log = finish(env, recipe_path, "corrupt")
    rel = optimizer.relative_to(newest).as_posix()
    assert f"checkpoint {newest} fails verification: {rel}: its SHA-256 differs" in log
    assert "resuming from the newest that verifies: step-00000009" in log
    assert "resumed from" in log and "step-00000009 at step 9" in log
    for student in STUDENTS:
        assert_same_weights(weights(reference, student), weights(run, student))


def test_preemption_signal_checkpoints_exits_75_and_resumes_exactly(env, uninterrupted):
    recipe_path, reference = uninterrupted
    proc = start(env, recipe_path, "preempted")
    wait_for(env["runs"] / "preempted" / "checkpoints" / "step-00000003" / "COMPLETE.json", proc)
    os.killpg(proc.pid, signal.SIGUSR1)
    assert proc.wait(timeout=240) == 75
    saved = json.loads(
        max((env["runs"] / "preempted" / "checkpoints").glob("*/COMPLETE.json")).read_text()
    )
    assert 3 <= saved["step"] < 12  # a complete checkpoint at the step where it stopped

    finish(env, recipe_path, "preempted")
    for student in STUDENTS:
        a, b = weights(reference, student), weights(env["runs"] / "preempted", student)
        assert_same_weights(a, b)


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGTERM, 75), (signal.SIGINT, 130)])
def test_signal_during_start_up_stops_at_once_naming_the_phase(env, tmp_path, sig, code):
    """Rank 0 of 2 waits in the rendezvous for a rank that never comes (blocked in C++, where no
    Python signal handler runs). A slow phase is said, naming a leftover torch-extensions lock;
    a signal then stops the process within seconds: nothing to save before training starts."""
    lock = tmp_path / "extensions" / "py311_cpu" / "fused_adam" / "lock"
    lock.parent.mkdir(parents=True)
    lock.touch()
    port = free_port()
    rank0 = {
        **os.environ,
        **{"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "1"},
        **{"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)},
        **{"TORCH_EXTENSIONS_DIR": str(lock.parents[2]), "BIODISTILL_STARTUP_WARN_S": "1"},
    }
    recipe_path = env["make"](f"startup-{sig.name}", steps=2)
    proc = subprocess.Popen(
        [sys.executable, "trainer/main.py", *argv(env["fp32"], recipe_path)],
        cwd=ROOT,
        env=rank0,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        lines: queue.Queue = queue.Queue()
        reader = threading.Thread(target=lambda: [lines.put(x) for x in proc.stderr], daemon=True)
        reader.start()
        seen, deadline = [], time.monotonic() + 180
        while not any("has taken 1 s" in line for line in seen):
            assert time.monotonic() < deadline, "".join(seen)[-2000:]
            with contextlib.suppress(queue.Empty):
                seen.append(lines.get(timeout=1))
        phase = f"joining 2 ranks at 127.0.0.1:{port}"
        assert f"start-up: {phase} has taken 1 s; torch extension lock(s) exist: {lock}" in seen[-1]

        proc.send_signal(sig)
        assert proc.wait(timeout=30) == code  # the rendezvous alone would wait 30 minutes
        time.sleep(0.2)  # the reader thread drains the pipe
        while not lines.empty():
            seen.append(lines.get())
        log = "".join(seen)
        said = f"{sig.name} during start-up ({phase}): stopping now; training had not started"
        assert said in log
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


def test_master_port_in_use_is_refused_at_once(env):
    recipe_path = env["make"]("port-in-use", steps=2)
    with socket.socket() as other_job:
        other_job.bind(("127.0.0.1", 0))
        other_job.listen()
        port = other_job.getsockname()[1]
        rank0 = {"WORLD_SIZE": "1", "RANK": "0", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "1"}
        done = subprocess.run(
            [sys.executable, "trainer/main.py", *argv(env["fp32"], recipe_path)],
            cwd=ROOT,
            env={**os.environ, **rank0, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)},
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert done.returncode == 2, done.stderr[-2000:]
    assert f"error: MASTER_PORT {port} is in use (another job on this machine?)" in done.stderr
    assert "deepspeed --master_port" in done.stderr
    assert "Traceback" not in done.stderr  # not the rendezvous's DistNetworkError, 50 s later


def test_sequences_longer_than_the_models_positions_are_refused_at_start_up(env):
    recipe_path = env["make"]("positions", steps=2)
    short = ["teacher.config.max_position_embeddings=32", "run.name=positions"]
    (result,) = run_distributed(train, 1, argv(env["fp32"], recipe_path, *short))
    assert result["rc"] == 2
    assert (
        "error: data.max_len=64: longer than the teacher's 32 positions; re-shard with "
        "`--max-len 32` (or less)"
    ) in result["stderr"]


def test_full_disk_while_saving_or_exporting_says_so_and_keeps_what_is_complete(
    env, small_disk, capsys
):
    """6 MiB: room for the run directory and one tiny checkpoint (3.8 MB), not two."""
    from trainer.checkpoint.store import verify

    disk = small_disk("6m")
    recipe_path = env["make"]("full", steps=6, train={"save_every": 1, "keep": 5})
    extra = [f"run.output_dir={disk}", "run.name=full", "train.eval_every=100"]
    (result,) = run_distributed(train, 1, argv(env["fp32"], recipe_path, *extra))
    assert result["rc"] == 2, result["stderr"][-3000:]
    checkpoints = disk / "full" / "checkpoints"
    line = next(x for x in result["stderr"].splitlines() if x.startswith("error: "))
    assert f"error: {checkpoints}/step-00000002: no space left on device while saving" in line
    assert "step-00000001 is complete and intact: free space and start again" in line
    assert "Traceback" not in result["stderr"]
    assert sorted(p.name for p in checkpoints.iterdir()) == ["step-00000001"]  # no partial one
    assert verify(checkpoints / "step-00000001") is None

    # exporting it onto a disk too small for the weights: one line with about the bytes needed,
    # nothing under the export's name; with room made the same command writes it
    from trainer.export.hf_export import main as export_main

    tiny = small_disk("64k")
    out = tiny / "export"
    export = [
        str(checkpoints / "step-00000001"),
        "--students",
        "DistilBioBERT",
        "--output",
        str(out),
    ]
    assert export_main(export) == 2
    (line,) = [x for x in capsys.readouterr().err.splitlines() if x.startswith("error: ")]
    assert line.startswith(f"error: {out}/DistilBioBERT: no space left on device while exporting (")
    assert line.endswith(
        "needed); nothing was written under that name; free space and export again"
    )
    need = int(line.split("about ")[1].split(" needed")[0].replace(",", ""))
    assert list(tiny.iterdir()) == [out] and not list(out.iterdir())
    small_disk.resize(tiny, "8m")
    assert export_main(export) == 0
    weights_bytes = (out / "DistilBioBERT" / "model.safetensors").stat().st_size
    assert 0.9 < need / weights_bytes < 1.0  # the tensors' bytes; safetensors adds its header


def test_a_flipped_bit_in_the_train_shards_stops_the_run_or_is_skipped_and_counted(env, tmp_path):
    """One bit in a token id of every train shard but the first: whichever group the loader reads
    first holds a damaged shard. By default the run stops naming it; with data.skip_corrupt it
    trains on, warns once per shard and logs the count as data/skipped_shards."""
    shards = tmp_path / "shards"
    shutil.copytree(env["shards"], shards)
    damaged = sorted(shards.glob("train-*.tar"))[1:]
    for shard in damaged:
        flip_token_bit(shard, env["vocab"])
    recipe_path = env["make"]("flipped", steps=4, data={"train_shards": str(shards)})
    (result,) = run_distributed(train, 1, argv(env["fp32"], recipe_path))
    assert result["rc"] == 2, result["stderr"][-2000:]
    (line,) = [x for x in result["stderr"].splitlines() if x.startswith("error: ")]
    assert line.startswith(f"error: shard {shards}/train-0000")
    assert ": corrupt (SHA-256 differs from manifest.json: the file hashes to " in line
    assert "Traceback" not in result["stderr"]

    data = {"train_shards": str(shards), "skip_corrupt": True}
    recipe_path = env["make"]("flipped-skip", steps=4, data=data)
    (result,) = run_distributed(train, 1, argv(env["fp32"], recipe_path))
    assert result["rc"] == 0, result["stderr"][-2000:]
    warned = {
        x.split("skipping shard ")[1].split(" ")[0]
        for x in result["stderr"].splitlines()
        if "skipping shard " in x
    }
    assert warned and warned <= {str(p) for p in damaged}
    logged = scalars(env["runs"] / "flipped-skip")["data/skipped_shards"]
    assert logged[-1] == (4, len(warned))


def test_compiled_cohort_trains_the_same_model(env):
    """train.compile (torch.compile of the teacher, DeepSpeed's engine.compile of the students)
    changes the kernels, not the math: with dropout off (compiled dropout draws from other
    random streams) the exports agree to rounding."""
    no_dropout = {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}
    runs = {}
    for compiled in (False, True):
        name = f"compiled-{compiled}".lower()
        recipe_path = env["make"](name, steps=4, train={"compile": compiled})
        data = yaml.safe_load(recipe_path.read_text())
        data["teacher"]["config"].update(no_dropout)  # the copied students inherit it
        data["students"][2]["init"]["config"].update(no_dropout)
        write_recipe(recipe_path, data)
        (result,) = run_distributed(train, 1, argv(env["fp32"], recipe_path), timeout=600)
        assert result["rc"] == 0, result["stderr"][-2000:]
        runs[compiled] = env["runs"] / name
    for student in STUDENTS:
        assert_same_weights(weights(runs[False], student), weights(runs[True], student), 1e-5)


# ---------------------------------------------------------------- non-finite losses


def test_nonfinite_loss_stops_naming_student_step_and_term(env):
    recipe_path = env["make"]("nan-stop", steps=6)
    (result,) = run_distributed(train, 1, argv(env["zero2"], recipe_path), ("TinyBioBERT", 4))
    assert result["rc"] == 3
    message = result["stderr"]
    assert "student TinyBioBERT" in message and "at step 4" in message and "'att'" in message
    saved = sorted(
        p.parent.name for p in (env["runs"] / "nan-stop").glob("checkpoints/*/COMPLETE.json")
    )
    assert saved == ["step-00000003"]  # the checkpoint before it is kept, nothing after it


def test_nonfinite_loss_skipped_when_the_recipe_says_so(env):
    recipe_path = env["make"]("nan-skip", steps=6, train={"on_nonfinite": "skip"})
    (result,) = run_distributed(train, 1, argv(env["zero2"], recipe_path), ("DistilBioBERT", 3))
    assert result["rc"] == 0, result["stderr"][-2000:]
    assert "student DistilBioBERT" in result["stderr"] and "at step 3" in result["stderr"]
    run_dir = env["runs"] / "nan-skip"
    tags = scalars(run_dir)
    assert tags["train/DistilBioBERT/skipped_steps"][-1][1] == 1
    assert tags["train/CompactBioBERT/skipped_steps"][-1][1] == 0
    for value in weights(run_dir, "DistilBioBERT").values():
        assert torch.isfinite(value).all()


def test_pack_mode_shards_train_end_to_end_without_padding(env):
    """`shard --mode pack` fills every sequence: the cohort trains on it, every sample full."""
    from data_pipeline.shards.writer import run_shard

    pack = env["root"] / "pack-shards"
    records = env["shards"].parent / "records"
    run_shard([str(records)], str(env["tokenizer"]), str(pack), max_len=64, mode="pack",
              eval_fraction=0.1, samples_per_shard=32, progress=False)  # fmt: skip
    recipe_path = env["make"]("pack", steps=4)
    data = yaml.safe_load(recipe_path.read_text())
    data["data"].update(train_shards=str(pack), eval_shards=str(pack))
    write_recipe(recipe_path, data)
    (result,) = run_distributed(train, 1, argv(env["zero2"], recipe_path))
    assert result["rc"] == 0, result["stderr"][-2000:]
    tags = scalars(env["runs"] / "pack")
    tokens = dict(tags["perf/tokens_per_s"])
    samples = dict(tags["perf/samples_per_s"])
    for step, rate in tokens.items():
        assert rate / samples[step] == pytest.approx(64.0)  # real tokens per sequence = max_len
    assert "eval/DistilBioBERT/mlm_acc" in tags


# ---------------------------------------------------------------- continual MLM students


@pytest.fixture(scope="module")
def distilbert_dir(env):
    """A tiny DistilBERT masked LM saved with the shards' tokenizer (a continual student)."""
    from transformers import AutoTokenizer, DistilBertConfig, DistilBertForMaskedLM

    out = env["root"] / "distilbert"
    config = DistilBertConfig(
        vocab_size=env["vocab"],
        dim=32,
        n_layers=2,
        n_heads=2,
        hidden_dim=64,
        max_position_embeddings=64,
    )
    DistilBertForMaskedLM(config).save_pretrained(out)
    AutoTokenizer.from_pretrained(env["tokenizer"]).save_pretrained(out)
    return out


def continual_recipe(env, name: str, pretrained: Path) -> Path:
    data = recipe(env["shards"], env["runs"], env["vocab"], name=name, steps=4)
    data.pop("teacher")
    data["students"] = [
        {
            "name": "BioDistilBERT",
            "init": {"pretrained": str(pretrained)},
            "objective": {"kind": "mlm"},
            "optimizer": {"lr": 1.0e-3, "weight_decay": 0.01, "warmup_steps": 2},
        }
    ]
    return write_recipe(env["root"] / f"{name}.yaml", data)


def test_continual_mlm_student_without_teacher(env, distilbert_dir):
    recipe_path = continual_recipe(env, "continual", distilbert_dir)
    (result,) = run_distributed(train, 1, argv(env["zero2"], recipe_path))
    assert result["rc"] == 0, result["stderr"][-2000:]
    run_dir = env["runs"] / "continual"
    tags = scalars(run_dir)
    assert "train/BioDistilBERT/loss_mlm" in tags and "eval/teacher/mlm_loss" not in tags
    from transformers import AutoModelForMaskedLM

    model = AutoModelForMaskedLM.from_pretrained(run_dir / "export" / "BioDistilBERT")
    assert model.config.model_type == "distilbert"


def test_continual_student_with_another_vocabulary_is_refused(env, distilbert_dir, tmp_path):
    from transformers import AutoTokenizer

    from data_pipeline.demo.synth import train_wordpiece

    other = tmp_path / "other-tokenizer"
    train_wordpiece(["an unrelated corpus of other words"] * 50, other, vocab_size=120)
    student_dir = tmp_path / "student"
    student_dir.mkdir()
    for name in ("config.json", "model.safetensors"):
        (student_dir / name).write_bytes((distilbert_dir / name).read_bytes())
    AutoTokenizer.from_pretrained(other).save_pretrained(student_dir)
    recipe_path = continual_recipe(env, "continual-bad", student_dir)
    (result,) = run_distributed(train, 1, argv(env["zero2"], recipe_path))
    assert result["rc"] == 2
    assert "students.BioDistilBERT" in result["stderr"] and "re-shard" in result["stderr"]


def recipe_text_in_tensorboard(run_dir: Path) -> list[str]:
    """The recipe texts the run logged to TensorBoard's Text tab, one per start."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.util.tensor_util import make_ndarray

    acc = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"tensors": 0})
    acc.Reload()
    texts = [
        make_ndarray(e.tensor_proto).item().decode() for e in acc.Tensors("recipe/text_summary")
    ]
    return [t.removeprefix("```yaml\n").removesuffix("```") for t in texts]


def test_resolved_recipe_is_the_config_the_run_used_layer_maps_filled_by_the_trainer(env):
    """A pretrained student's depth is known only once it is loaded, so the trainer fills its
    layer maps then; recipe.resolved.yaml and the recipe in TensorBoard are written after that,
    hold the maps the run trained with, and a resumed start finds its recipe unchanged."""
    from transformers import AutoTokenizer, BertConfig, BertForMaskedLM

    from trainer.config.recipe import config_from_dict, load_config, to_yaml

    pretrained = env["root"] / "bert-2-layers"
    config = BertConfig(
        vocab_size=env["vocab"], hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=64,
    )  # fmt: skip
    BertForMaskedLM(config).save_pretrained(pretrained)
    AutoTokenizer.from_pretrained(env["tokenizer"]).save_pretrained(pretrained)
    data = recipe(env["shards"], env["runs"], env["vocab"], name="filled-maps", steps=4)
    data["data"]["tokenizer"] = str(env["tokenizer"])
    data["train"].update(save_every=2)
    data["students"] = [
        {
            "name": "Compact",
            "init": {"pretrained": str(pretrained)},
            "objective": {"kind": "compactbiobert"},  # layer maps left to the trainer
            "optimizer": {"lr": 1.0e-3, "weight_decay": 0.0, "warmup_steps": 2},
        }
    ]
    recipe_path = write_recipe(env["root"] / "filled-maps.yaml", data)
    assert load_config(recipe_path).students[0].objective.attention_map is None

    (result,) = run_distributed(train, 1, argv(env["fp32"], recipe_path))
    assert result["rc"] == 0, result["stderr"][-2000:]
    run_dir = env["runs"] / "filled-maps"
    on_disk = (run_dir / "recipe.resolved.yaml").read_text(encoding="utf-8")
    objective = yaml.safe_load(on_disk)["students"][0]["objective"]
    # compactbiobert's rule for 2 student layers: attention i -> 2i+1, hidden i -> 2i
    assert objective["attention_map"] == [[0, 1], [1, 3]]
    assert objective["hidden_map"] == [[1, 2], [2, 4]]
    assert recipe_text_in_tensorboard(run_dir) == [on_disk]
    assert to_yaml(config_from_dict(yaml.safe_load(on_disk))) == on_disk  # loads back the same

    # A second start with a longer budget resumes from step 4: the recipe differs only there
    longer = ["train.max_steps=6", "students.Compact.optimizer.max_steps=6"]
    (result,) = run_distributed(train, 1, argv(env["fp32"], recipe_path, *longer))
    assert result["rc"] == 0, result["stderr"][-2000:]
    assert "at step 4" in result["stderr"]
    again = (run_dir / "recipe.resolved.yaml").read_text(encoding="utf-8")
    previous = (run_dir / "recipe.previous.yaml").read_text(encoding="utf-8")
    assert previous == on_disk
    assert again == on_disk.replace("max_steps: 4", "max_steps: 6")
    assert recipe_text_in_tensorboard(run_dir) == [on_disk, again]


def test_two_runs_in_one_process(env):
    """A process that runs twice (the benchmarks, a notebook) gets a working DeepSpeed the second
    time: destroying the process group also forgets the groups DeepSpeed cached."""
    recipe_path = env["make"]("twice", steps=2)
    script = (
        "import sys; from trainer.main import main; "
        "a = sys.argv[1:]; "
        "sys.exit(10 * main([*a, 'run.name=first']) + main([*a, 'run.name=second']))"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, *argv(env["fp32"], recipe_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    for name in ("first", "second"):
        assert (env["runs"] / name / "export" / "TinyBioBERT" / "model.safetensors").is_file()
