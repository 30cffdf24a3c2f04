"""The SLURM side on a real one-node Slurm (tests/slurm_cluster.py): the preprocessing array job
against extract + shard run directly, train.sbatch on 2 CPU tasks, preemption by USR1 with
requeue and exact resume, bad input failing before any rank starts. Without Slurm: the slicing
and token cache the array job relies on, and the trainer reading Slurm's rank variables.

    .venv/bin/python -m pytest tests/test_slurm.py -q

The cluster needs Debian's slurm-wlm and munge and root; without them its tests skip, saying why.
.ci/run installs them and sets BIODISTILL_REQUIRE_SLURM=1, which turns that skip into a failure.
"""

from __future__ import annotations

import datetime
import json
import os
import re
import time
from pathlib import Path

import pytest
from slurm_cluster import SlurmCluster, SlurmUnavailable
from trainer_setup import STUDENTS, assert_same_weights, ds_config, recipe, weights, write_recipe

from data_pipeline.errors import UserError
from data_pipeline.extract import run_extract
from data_pipeline.io_utils import parse_slice
from data_pipeline.shards import writer as shards
from data_pipeline.shards.manifest import Manifest
from data_pipeline.shards.writer import run_shard
from data_pipeline.token_cache import run_tokenize

ROOT = Path(__file__).resolve().parents[1]
PREPROCESS, TRAIN = ROOT / "slurm" / "preprocess.sbatch", ROOT / "slurm" / "train.sbatch"
# 2 ranks on the one 2-CPU node; GPUS_PER_NODE defaults to --ntasks-per-node without GPUs.
CPU_JOB = ("--nodes=1", "--ntasks-per-node=2", "--gpus-per-node=0", "--cpus-per-task=1")
STEPS = 40  # long enough (~6 s) that USR1 lands mid-run after the step-3 checkpoint
SHARD_SETTINGS = {"max_len": 64, "eval_fraction": 0.1, "samples_per_shard": 32}


@pytest.fixture(scope="module")
def cluster():
    try:
        c = SlurmCluster.start()
    except SlurmUnavailable as e:
        if os.environ.get("BIODISTILL_REQUIRE_SLURM") == "1":
            pytest.fail(f"Slurm must run here (BIODISTILL_REQUIRE_SLURM=1): {e}")
        pytest.skip(str(e))
    yield c
    c.stop()


def visible(directory: Path) -> dict[str, Path]:
    return {p.name: p for p in sorted(directory.iterdir()) if not p.name.startswith(".")}


def assert_same_output(a: Path, b: Path) -> None:
    """Same files, byte for byte; manifests equal but for where their inputs were."""
    fa, fb = visible(a), visible(b)
    assert fa.keys() == fb.keys()
    for name in fa:
        if name == "manifest.json":
            ma, mb = (json.loads(fa[name].read_text()), json.loads(fb[name].read_text()))
            for m in (ma, mb):
                for entry in m["inputs"]:
                    entry["path"] = Path(entry["path"]).name
            assert ma == mb
        else:
            assert fa[name].read_bytes() == fb[name].read_bytes(), name


def direct_run(inputs: list[str], tokenizer: Path, out: Path, mode: str = "truncate") -> None:
    run_extract(inputs, str(out / "records"), progress=False)
    shard_dir = str(out / "shards")
    run_shard(
        [str(out / "records")],
        str(tokenizer),
        shard_dir,
        mode=mode,
        progress=False,
        **SHARD_SETTINGS,
    )


# ---------------------------------------------------------------- without Slurm


def test_sliced_parts_and_token_cache_give_the_direct_output(
    small_corpus, tokenizer_dir, tmp_path, monkeypatch, capsys
):
    """What each array task and the merge run, in-process: pack mode, one cache entry missing,
    a merge that crashes and resumes."""
    inputs = [str(f) for f in small_corpus.files]
    direct_run(inputs, tokenizer_dir, tmp_path / "direct", mode="pack")

    records, cache = tmp_path / "sliced" / "records", tmp_path / "sliced" / "cache"
    parts = records / ".parts"
    parts.mkdir(parents=True)
    other = parts / ".pubmed26n0002.part.gz.abc.tmp"  # slice 1 is writing it right now
    other.write_bytes(b"in progress")
    mine = parts / ".pubmed26n0001.index.npz.xyz.tmp"  # slice 0's own crashed attempt
    mine.write_bytes(b"stale")
    for i in (2, 0, 1):  # any order: slices run concurrently
        run_extract(inputs, str(records), parts_only=True, slice_spec=(i, 3), progress=False)
        if i == 0:
            assert other.exists() and not mine.exists()
            assert not (records / "report.json").exists()  # parsing only, nothing resolved
        run_tokenize(
            inputs,
            str(records),
            str(tokenizer_dir),
            str(cache),
            max_len=64,
            mode="pack",
            slice_spec=(i, 3),
            progress=False,
        )
    assert not other.exists()  # slice 1 cleared its own leftovers when it ran
    (cache / "pubmed26n0003.npz").unlink()  # say slice 2's tokenize never ran
    run_extract(inputs, str(records), progress=False)

    def merge(out: Path) -> None:
        run_shard(
            [str(records)],
            str(tokenizer_dir),
            str(out),
            mode="pack",
            token_cache=str(cache),
            **SHARD_SETTINGS,
        )

    capsys.readouterr()
    merge(tmp_path / "sliced" / "shards")
    assert_same_output(tmp_path / "direct" / "records", records)
    assert_same_output(tmp_path / "direct" / "shards", tmp_path / "sliced" / "shards")
    report = json.loads((records / "report.json").read_text())
    total, uncached = report["records_out"], report["files"][2]["records_out"]
    summary = f"{total - uncached:,} of {total:,} records from the cache, {uncached:,} tokenized"
    assert summary in capsys.readouterr().err

    # A merge that crashes after its 5th shard resumes from the journal, ids still from the cache.
    class Crash(Exception):
        pass

    real_write, written = shards.SplitWriter.write_shard, []

    def write_then_crash(self):
        info = real_write(self)
        written.append(info.name)
        if len(written) == 5:
            raise Crash
        return info

    monkeypatch.setattr(shards.SplitWriter, "write_shard", write_then_crash)
    with pytest.raises(Crash):
        merge(tmp_path / "resumed")
    monkeypatch.undo()
    assert (tmp_path / "resumed" / ".shard-state" / "state.json").exists()
    merge(tmp_path / "resumed")
    assert_same_output(tmp_path / "direct" / "shards", tmp_path / "resumed")

    with pytest.raises(UserError, match="--slice needs --parts-only"):
        run_extract(inputs, str(records), slice_spec=(0, 3), progress=False)
    with pytest.raises(UserError, match="no complete part"):
        run_tokenize(
            inputs, str(tmp_path / "nowhere"), str(tokenizer_dir), str(cache), progress=False
        )
    for bad in ("3/3", "1", "a/2", "0/0"):
        with pytest.raises(UserError, match="--slice"):
            parse_slice(bad)


def test_trainer_reads_slurm_rank_variables(monkeypatch):
    from trainer.runtime import distributed as runtime

    step = {
        "SLURM_STEP_ID": "0",
        "SLURM_PROCID": "9",
        "SLURM_NTASKS": "11",
        "SLURM_STEP_NUM_TASKS": "11",
        "SLURM_STEP_NUM_NODES": "3",
        "SLURM_STEP_TASKS_PER_NODE": "4(x2),3",  # srun's compressed form
        "SLURM_NODEID": "2",
        "SLURM_LOCALID": "1",
    }
    monkeypatch.setattr(os, "environ", dict(step))
    runtime._fill_from_slurm()
    assert {k: os.environ[k] for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE")} == {
        "RANK": "9",
        "WORLD_SIZE": "11",
        "LOCAL_RANK": "1",
        "LOCAL_WORLD_SIZE": "3",
    }
    assert (os.environ["CROSS_RANK"], os.environ["CROSS_SIZE"]) == ("2", "3")

    # The batch script itself has SLURM_PROCID and SLURM_NTASKS but is no job step: untouched,
    # so `python trainer/main.py` there stays a world of one.
    batch = {k: v for k, v in step.items() if not k.startswith("SLURM_STEP")}
    monkeypatch.setattr(os, "environ", dict(batch))
    runtime._fill_from_slurm()
    assert "RANK" not in os.environ
    # A launcher's own variables win.
    monkeypatch.setattr(os, "environ", {**step, "RANK": "0", "WORLD_SIZE": "1"})
    runtime._fill_from_slurm()
    assert (os.environ["RANK"], os.environ["WORLD_SIZE"], "LOCAL_RANK" in os.environ) == (
        "0",
        "1",
        False,
    )


# ---------------------------------------------------------------- preprocessing array job


@pytest.mark.slow
def test_preprocess_array_job_equals_extract_and_shard(
    cluster, small_corpus, tokenizer_dir, tiny_shards, tmp_path
):
    inputs = [str(f) for f in small_corpus.files]  # 3 baseline files + 1 update file
    # tiny_shards (conftest.py) is the direct run: extract + shard of these inputs, SHARD_SETTINGS

    out, logs = tmp_path / "slurm", tmp_path / "logs"
    logs.mkdir()
    env = {
        "INPUT": " ".join(inputs),
        "OUT": str(out),
        "TOKENIZER": str(tokenizer_dir),
        "MAX_LEN": "64",
        "EVAL_FRACTION": "0.1",
        "SAMPLES_PER_SHARD": "32",
    }

    def array(name: str) -> int:
        options = ("--array=0-2", "--cpus-per-task=1", f"--output={logs}/{name}-%a.out")
        return cluster.sbatch(PREPROCESS, *options, env=env, cwd=ROOT)

    slices = array("slice")
    merge = cluster.sbatch(
        PREPROCESS,
        f"--dependency=afterok:{slices}",
        "--kill-on-invalid-dep=yes",  # a failed slice cancels the merge instead of leaving it
        "--cpus-per-task=1",
        f"--output={logs}/merge.out",
        args=("merge",),
        env=env,
        cwd=ROOT,
    )
    record = cluster.wait_done(merge, timeout=300)
    log = (logs / "merge.out").read_text()
    assert record["JobState"] == "COMPLETED", log + "".join(
        p.read_text() for p in logs.glob("slice-*")
    )
    assert_same_output(tiny_shards.parent / "records", out / "records")
    assert_same_output(tiny_shards, out / "shards")
    # The slices did the parsing and the tokenizing, each input once; the merge only reused them.
    stems = [Path(f).name.removesuffix(".xml.gz") for f in inputs]
    for i in range(3):
        text = (logs / f"slice-{i}.out").read_text()
        assert re.findall(r"tokenize: (\S+): \d+ records", text) == stems[i::3], text
    n = json.loads((out / "records" / "report.json").read_text())["records_out"]
    assert "reusing 4 of 4 completed parts" in log
    assert f"{n:,} of {n:,} records from the cache, 0 tokenized here" in log, log

    # A rerun of the array redoes only what is unfinished: here slice 1's input lost its part's
    # completion marker and its cache entry.
    work = [*(out / "records" / ".parts").iterdir(), *(out / "token-cache").iterdir()]
    before = {p.name: p.stat().st_mtime_ns for p in work}
    (out / "records" / ".parts" / f"{stems[1]}.index.npz").unlink()
    (out / "token-cache" / f"{stems[1]}.npz").unlink()
    cluster.wait_gone(array("rerun"))
    after = {p.name: p.stat().st_mtime_ns for p in work if p.exists()}
    assert after.keys() == before.keys()
    redone = {name for name in before if after[name] != before[name]}
    assert redone == {f"{stems[1]}.part.gz", f"{stems[1]}.index.npz", f"{stems[1]}.npz"}
    for i in (0, 2):
        text = (logs / f"rerun-{i}.out").read_text()
        k = len(stems[i::3])
        assert f"0 of {k} inputs tokenized" in text and f"({k} reused" in text, text
    text = (logs / "rerun-1.out").read_text()
    assert "file 1/1 | " in text and f"{stems[1]}.xml.gz: " in text, text
    assert "1 of 1 inputs tokenized" in text, text


# ---------------------------------------------------------------- training


@pytest.fixture(scope="module")
def training(tmp_path_factory, tiny_shards, tokenizer_dir):
    """A tiny fp32 cohort recipe (bit-exact resume needs fp32: tests/test_trainer_runs.py)."""
    root = tmp_path_factory.mktemp("slurm-train")
    vocab = Manifest.load(tiny_shards).tokenizer.vocab_size
    data = recipe(tiny_shards, root / "runs", vocab, name="tiny", steps=STEPS)
    data["data"]["tokenizer"] = str(tokenizer_dir)
    return {
        "root": root,
        "recipe": write_recipe(root / "tiny.yaml", data),
        "ds_config": ds_config(root / "fp32.json", stage=2, bf16=False),
    }


def submit_training(
    cluster, training: dict, name: str, tasks: int = 2, log_name: str = "", **knobs: str
) -> tuple[int, Path, Path]:
    """train.sbatch with `tasks` CPU tasks; (job id, its output file, its run directory)."""
    root = training["root"]
    log = root / f"{log_name or name}.out"
    env = {
        "RECIPE": str(training["recipe"]),
        "DS_CONFIG": str(training["ds_config"]),
        "RUN_DIR": str(root / "runs" / name),
        **knobs,
    }
    shape = [a if not a.startswith("--ntasks-per-node=") else f"--ntasks-per-node={tasks}"
             for a in CPU_JOB]  # fmt: skip
    job = cluster.sbatch(TRAIN, *shape, "--time=15", f"--output={log}", env=env, cwd=ROOT)
    return job, log, Path(env["RUN_DIR"])


@pytest.fixture(scope="module")
def uninterrupted(cluster, training):
    job, log, run_dir = submit_training(cluster, training, "uninterrupted")
    return job, cluster.wait_done(job), log, run_dir


@pytest.mark.slow
def test_train_sbatch_runs_two_cpu_tasks_to_completion(cluster, uninterrupted):
    job, record, log, run_dir = uninterrupted
    text = log.read_text()
    assert (record["JobState"], record["ExitCode"]) == ("COMPLETED", "0:0"), text
    assert "2 rank(s) on 1 node(s) x 2" in text and "biodistill: finished" in text
    marker = json.loads(
        (run_dir / "checkpoints" / f"step-{STEPS:08d}" / "COMPLETE.json").read_text()
    )
    assert marker["world_size"] == 2 and marker["students"] == {s: STEPS for s in STUDENTS}
    for student in STUDENTS:
        assert (run_dir / "export" / student / "model.safetensors").is_file()
    assert "DistilBioBERT" in (run_dir / "plan.txt").read_text()  # checked before any rank ran
    assert len(cluster.history(job)) == 1  # never requeued


def wait_for_first_checkpoint(cluster, job: int, log: Path, run_dir: Path) -> None:
    """Until a checkpoint is complete (step 3 first): the ranks are in the loop, their signal
    handlers installed, and most of the run is still ahead."""
    deadline = time.monotonic() + 240
    while not any(run_dir.glob("checkpoints/step-*/COMPLETE.json")):
        assert cluster.queued(job) and time.monotonic() < deadline, log.read_text()
        time.sleep(0.05)


@pytest.mark.slow
def test_usr1_checkpoints_requeues_and_resumes_to_the_same_weights(
    cluster, training, uninterrupted
):
    job, log, run_dir = submit_training(cluster, training, "preempted")
    wait_for_first_checkpoint(cluster, job, log, run_dir)
    # What --signal=B:USR1@180 does before the time limit: USR1 to the batch shell only.
    cluster.run("scancel", "--signal=USR1", "--batch", str(job))
    record = cluster.wait_done(job)
    text = log.read_text()
    assert record["JobState"] == "COMPLETED", text
    # jobcomp: the requeue (the job went back to PENDING), then the end of the resumed run.
    assert [r["JobState"] for r in cluster.history(job)] == ["PENDING", "COMPLETED"]
    assert "requeueing job" in text and "(restart 1)" in text, text
    resumed = re.search(r"resumed from \S+ at step (\d+)", text)
    assert resumed and 3 <= int(resumed.group(1)) < STEPS, text
    _, _, _, reference = uninterrupted
    for student in STUDENTS:
        assert_same_weights(weights(reference, student), weights(run_dir, student))


@pytest.mark.slow
def test_scancel_stops_the_job_without_requeue_and_one_task_resumes_it(cluster, training):
    """scancel sends SIGTERM to every process: the ranks checkpoint and exit 75 as on USR1,
    but the script must not requeue (Slurm would accept it and undo the cancel)."""
    job, log, run_dir = submit_training(cluster, training, "cancelled")
    wait_for_first_checkpoint(cluster, job, log, run_dir)
    cluster.run("scancel", str(job))
    record = cluster.wait_done(job)
    text = log.read_text()
    assert record["JobState"] == "CANCELLED", text
    assert [r["JobState"] for r in cluster.history(job)] == ["CANCELLED"]  # never requeued
    assert "SIGTERM" in text and "requeueing" not in text, text

    # Resubmitted as 1 task: the 2-rank checkpoint goes on on 1 rank (trainer/checkpoint/elastic.py;
    # its exactness is tests/test_elastic.py's), with the global batch kept by accumulation.
    job, log, _ = submit_training(cluster, training, "cancelled", tasks=1, log_name="resubmitted")
    record = cluster.wait_done(job)
    text = log.read_text()
    assert (record["JobState"], record["ExitCode"]) == ("COMPLETED", "0:0"), text
    assert "was saved by 2 ranks; resuming it on 1 (elastic resume)" in text, text
    assert "1 rank(s) on 1 node(s)" in text and "biodistill: finished" in text, text
    assert "gradient_accumulation_steps 1 -> 2 keeps the global batch" in text, text
    resumed = re.search(r"resumed from \S+ at step (\d+)", text)
    assert resumed and 3 <= int(resumed.group(1)) < STEPS, text
    for student in STUDENTS:
        assert (run_dir / "export" / student / "model.safetensors").is_file()


@pytest.mark.slow
@pytest.mark.parametrize(
    "knobs, message",
    [
        ({"RECIPE": "recipes/missing.yaml"}, "error: RECIPE=recipes/missing.yaml: no such file"),
        ({"DS_CONFIG": "ds_configs/missing.json"}, "error: DS_CONFIG=ds_configs/missing.json: no"),
        ({"NODES": "2"}, "error: NODES=2 but the allocation has 1 node(s)"),
        ({"RUN_DIR": "{recipe}/run"}, "/run: cannot create or write the run directory"),
        ({"OVERRIDES": "train.max_stepz=3"}, "error: unknown key 'train.max_stepz'"),
    ],
    ids=["recipe", "ds_config", "nodes", "run_dir", "override"],
)
def test_bad_input_fails_at_once_with_one_line(cluster, training, knobs, message, request):
    runs = training["root"] / "runs"
    knobs = {k: v.format(recipe=training["recipe"], runs=runs) for k, v in knobs.items()}
    name = f"bad-{request.node.callspec.id}"
    job, log, run_dir = submit_training(cluster, training, name, **knobs)
    record = cluster.wait_done(job, timeout=120)
    lines = [line for line in log.read_text().splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0], lines
    assert (record["JobState"], record["ExitCode"]) == ("FAILED", "2:0")
    start, end = (datetime.datetime.fromisoformat(record[k]) for k in ("StartTime", "EndTime"))
    assert (end - start).total_seconds() < 30  # no rank started: only the checks ran
    assert not (run_dir / "recipe.resolved.yaml").exists()  # rank 0 writes it first thing


@pytest.mark.slow
def test_a_run_dir_of_the_users_files_is_refused_untouched(cluster, training):
    """RUN_DIR naming a directory of the user's: the dry-run's check refuses it before any rank
    starts, and nothing is written into it (the plan goes in only once the checks pass)."""
    theirs = training["root"] / "runs" / "theirs"
    theirs.mkdir(parents=True)
    (theirs / "results.csv").write_text("a,b\n1,2\n")
    job, log, run_dir = submit_training(cluster, training, "theirs")
    record = cluster.wait_done(job, timeout=120)
    assert (record["JobState"], record["ExitCode"]) == ("FAILED", "2:0")
    assert f"FAIL  run directory: {theirs}: holds results.csv and no .lock" in log.read_text()
    assert sorted(p.name for p in theirs.iterdir()) == ["results.csv"]
    assert (theirs / "results.csv").read_text() == "a,b\n1,2\n"
