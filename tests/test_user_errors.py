"""One user-error type: bad input is one line `error: ...` and exit 2 at every entry point; any
other exception (a plain ValueError from an internal check included) is a bug and keeps its
traceback.

.venv/bin/python -m pytest tests/test_user_errors.py -q

Each entry point is called in-process with a real bad input, then with an internal ValueError
injected (monkeypatch) on its main path; trainer/main.py, which `deepspeed` runs as a script, is
also run as one.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from data_pipeline.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
ZERO2 = str(ROOT / "ds_configs" / "zero2.json")
BUG = "zip() argument 2 is shorter than argument 1"  # what an internal check says


def internal_bug(*args, **kwargs):
    raise ValueError(BUG)


def one_error_line(err: str, prefix: str = "error: ") -> str:
    """The message of the single `error: ...` line that `err` must be."""
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(prefix), err
    assert "Traceback" not in err
    return lines[0].removeprefix(prefix)


# ---------------------------------------------------------------- which raise is which


def _bert_config(values: dict):
    from trainer.models.families import model_config

    return model_config(values, "students.S.init.config", "bert")


def _entities(tmp_path: Path, text: str | None):
    from trainer.train.inputs import load_entities

    path = tmp_path / "entities.json"
    if text is not None:
        path.write_text(text)
    return load_entities(str(path), None, 10)


def _resolve_runtime(device: str, precision: str):
    from evaluation.finetune import resolve_runtime

    return resolve_runtime(device, precision)


def _select_datasets(tasks: list[str], names: list[str] | None):
    from evaluation.catalog import select_datasets

    return select_datasets(tasks, names)


def _kd(temperature: float, rows: int = 2):
    from trainer.distill.losses import kd_kl

    return kd_kl(torch.zeros(rows, 5), torch.zeros(2, 5), temperature)


def _collate():
    from data_pipeline.masking import collate

    return collate([], pad_id=0)


def _rng_state():
    from trainer.train.rng import RngStream

    RngStream(0, torch.device("cpu")).load_state_dict({})


BAD_INPUT = {  # a user's value reaches the check: UserError, naming it
    "unknown BertConfig key": (
        lambda t: _bert_config({"num_hidden_layer": 2}),
        "unknown key 'students.S.init.config.num_hidden_layer'",
    ),
    "heads do not divide": (
        lambda t: _bert_config({"hidden_size": 30, "num_attention_heads": 4}),
        "students.S.init.config.hidden_size=30",
    ),
    "attn_implementation set": (
        lambda t: _bert_config({"attn_implementation": "eager"}),
        "attn_implementation is set by the trainer",
    ),
    "entities file missing": (lambda t: _entities(t, None), "cannot read it as JSON"),
    "entities not a list": (lambda t: _entities(t, '{"entities": 3}'), "a non-empty list"),
    "--device": (lambda t: _resolve_runtime("gpu0", "auto"), "--device 'gpu0'"),
    "--precision": (lambda t: _resolve_runtime("cpu", "fp16"), "--precision 'fp16'"),
    "--tasks": (lambda t: _select_datasets(["pos"], None), "unknown task 'pos'"),
    "--datasets": (lambda t: _select_datasets(["ner"], ["Nope"]), "unknown dataset 'Nope'"),
}
INTERNAL = {  # only code passes these: a plain ValueError, a bug
    "temperature": lambda: _kd(0.0),
    "shapes": lambda: _kd(1.0, rows=3),
    "empty batch": _collate,
    "random stream state": _rng_state,
}


@pytest.mark.parametrize("case", sorted(BAD_INPUT))
def test_bad_input_raises_a_user_error_naming_it(case, tmp_path):
    call, says = BAD_INPUT[case]
    with pytest.raises(UserError) as caught:
        call(tmp_path)
    assert says in str(caught.value) and "\n" not in str(caught.value)


@pytest.mark.parametrize("case", sorted(INTERNAL))
def test_internal_checks_raise_a_plain_value_error(case):
    with pytest.raises(ValueError) as caught:
        INTERNAL[case]()
    assert not isinstance(caught.value, UserError)


# ---------------------------------------------------------------- trainer/main.py


@pytest.fixture
def trainer_main(monkeypatch):
    """trainer.main.main, offline and without a world size from the environment."""
    from trainer.cli import preflight
    from trainer.main import main

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setattr(preflight, "go_offline_if_unreachable", lambda cfg: None)
    return main


@pytest.mark.parametrize(
    "argv, says",
    [
        (["train.max_steps=many"], "train.max_steps='many': expected"),  # the schema's
        (["--recipe", "recipes/nothing.yaml"], "recipes/nothing.yaml: no such file"),
        (["--students", "Nobody"], "Nobody"),
    ],
)
def test_trainer_recipe_errors_are_one_line_and_exit_2(trainer_main, capsys, argv, says):
    assert trainer_main(["--ds_config", ZERO2, "--dry-run", *argv]) == 2
    assert says in one_error_line(capsys.readouterr().err)


def test_trainer_internal_error_while_reading_the_recipe_keeps_its_traceback(
    trainer_main, monkeypatch
):
    from trainer.cli import preflight

    monkeypatch.setattr(preflight, "go_offline_if_unreachable", internal_bug)
    with pytest.raises(ValueError, match=r"zip\(\) argument 2"):
        trainer_main(["--ds_config", ZERO2, "--dry-run"])


class StubRuntime:
    """Runtime.start's stand-in: no process group, records its clean-up."""

    def __init__(self, rank: int, world_size: int) -> None:
        self.rank, self.world_size, self.closed = rank, world_size, False

    def close(self) -> None:
        self.closed = True


@pytest.fixture
def started(trainer_main, monkeypatch):
    """trainer.main.main up to the training path: the runtime, the teacher stage and the
    builder are stand-ins; `started.build` is what build_trainer does."""
    from trainer.cli import teacher_build
    from trainer.runtime import distributed
    from trainer.train import builder

    state = SimpleNamespace(rt=StubRuntime(1, 2), build=None, main=trainer_main)
    monkeypatch.setattr(distributed.Runtime, "start", classmethod(lambda cls: state.rt))
    monkeypatch.setattr("trainer.main.quiet_other_ranks", lambda rank: None)
    monkeypatch.setattr(teacher_build, "ensure_teacher", lambda *a: 0)
    monkeypatch.setattr(builder, "build_trainer", lambda *a: state.build())
    return state


def test_trainer_bad_input_while_training_is_one_line_with_the_rank_and_exit_2(started, capsys):
    def build():
        raise UserError("data.train_shards=x: no shards match this pattern")

    started.build = build
    assert started.main(["--ds_config", ZERO2]) == 2
    err = capsys.readouterr().err
    assert (
        one_error_line(err, "error (rank 1): ")
        == "data.train_shards=x: no shards match this pattern"
    )
    assert started.rt.closed


def test_trainer_internal_error_while_training_keeps_its_traceback(started):
    started.build = internal_bug
    with pytest.raises(ValueError, match=r"zip\(\) argument 2"):
        started.main(["--ds_config", ZERO2])
    assert started.rt.closed  # clean-up runs all the same


@pytest.mark.parametrize("error", [UserError("MASTER_PORT 1 is in use"), ValueError(BUG)])
def test_trainer_start_up_error_exits_2_only_when_it_is_bad_input(
    trainer_main, monkeypatch, capsys, error
):
    from trainer.runtime import distributed

    def start(cls):
        raise error

    monkeypatch.setattr(distributed.Runtime, "start", classmethod(start))
    if isinstance(error, UserError):
        assert trainer_main(["--ds_config", ZERO2]) == 2
        assert one_error_line(capsys.readouterr().err) == "MASTER_PORT 1 is in use"
    else:
        with pytest.raises(ValueError, match=r"zip\(\) argument 2"):
            trainer_main(["--ds_config", ZERO2])


# What `deepspeed trainer/main.py` runs: the file as a script, here with the pre-flight's network
# probe replaced (by nothing, or by an internal failure).
SCRIPT = """
import runpy, sys
import trainer.cli.preflight as preflight
def probe(cfg):
    if {bug}:
        raise ValueError({message!r})
preflight.go_offline_if_unreachable = probe
sys.argv = ["trainer/main.py", *sys.argv[1:]]
runpy.run_path("trainer/main.py", run_name="__main__")
"""


@pytest.mark.parametrize("bug", [False, True])
def test_trainer_script_exit_status_is_2_for_bad_input_and_1_for_a_bug(bug):
    code = SCRIPT.format(bug=bug, message=BUG)
    argv = ["--ds_config", ZERO2, "--dry-run"] + ([] if bug else ["train.max_steps=many"])
    done = subprocess.run(
        [sys.executable, "-c", code, *argv], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    if bug:
        assert done.returncode == 1, done.stderr
        assert "Traceback" in done.stderr and f"ValueError: {BUG}" in done.stderr
    else:
        assert done.returncode == 2, done.stderr
        assert "train.max_steps='many'" in one_error_line(done.stderr.strip())


# ---------------------------------------------------------------- python -m evaluation


def evaluation_run(tmp_path: Path, *extra: str) -> list[str]:
    return ["run", "--models", "m", "--data", str(tmp_path / "data"), "--output",
            str(tmp_path / "out"), *extra]  # fmt: skip


@pytest.mark.parametrize(
    "argv, says",
    [
        (lambda t: evaluation_run(t, "--seeds", "0"), "--seeds 0: expected >= 1"),
        (lambda t: evaluation_run(t, "ner.lr=fast"), "ner.lr='fast'"),  # the settings' schema
        (lambda t: evaluation_run(t, "--tasks", "pos"), "--tasks: unknown task 'pos'"),
        (lambda t: ["report", "--output", str(t)], "no cells/ folder"),
    ],
)
def test_evaluation_bad_input_is_one_line_and_exit_2(tmp_path, capsys, argv, says):
    from evaluation.__main__ import main

    assert main(argv(tmp_path)) == 2
    assert says in one_error_line(capsys.readouterr().err)


def test_evaluation_internal_error_keeps_its_traceback(tmp_path, monkeypatch):
    from evaluation import runner
    from evaluation.__main__ import main

    monkeypatch.setattr(runner, "run", internal_bug)
    with pytest.raises(ValueError, match=r"zip\(\) argument 2"):
        main(evaluation_run(tmp_path))


# ---------------------------------------------------------------- python -m data_pipeline


def test_data_pipeline_bad_input_is_one_line_and_exit_2(tmp_path, capsys):
    from data_pipeline.__main__ import main

    assert main(["inspect", str(tmp_path / "missing")]) == 2
    assert str(tmp_path / "missing") in one_error_line(capsys.readouterr().err)


def test_data_pipeline_internal_error_keeps_its_traceback(tmp_path, monkeypatch):
    from data_pipeline.__main__ import COMMANDS, main

    module = __import__(COMMANDS["inspect"][0], fromlist=["main"])
    monkeypatch.setattr(module, "main", internal_bug)
    with pytest.raises(ValueError, match=r"zip\(\) argument 2"):
        main(["inspect", str(tmp_path)])


# ---------------------------------------------------------------- python -m trainer.export


@pytest.fixture
def checkpoint(tmp_path) -> Path:
    """A complete checkpoint with one student whose directory lacks its model config."""
    from trainer.checkpoint.store import MARKER
    from trainer.export.hf_export import SKELETON

    directory = tmp_path / "checkpoints" / "step-00000001"
    (directory / "S" / SKELETON).mkdir(parents=True)
    (directory / MARKER).write_text(json.dumps({"files": {}}))
    return directory


def test_export_bad_checkpoint_is_one_line_and_exit_2(checkpoint, capsys):
    from trainer.export.hf_export import main

    assert main([str(checkpoint)]) == 2
    assert one_error_line(capsys.readouterr().err).endswith("not a student checkpoint")


def test_export_internal_error_keeps_its_traceback(checkpoint, monkeypatch):
    from trainer.export import hf_export

    monkeypatch.setattr(hf_export, "export_from_checkpoint", internal_bug)
    with pytest.raises(ValueError, match=r"zip\(\) argument 2"):
        hf_export.main([str(checkpoint)])


# ---------------------------------------------------------------- rank 0's work, said to all


def _on_main_outcomes(rank: int, world: int) -> list[str]:
    import torch.distributed as dist

    from trainer.runtime.distributed import Runtime

    dist.init_process_group("gloo", rank=rank, world_size=world)
    rt = Runtime(rank, world, 0, torch.device("cpu"))
    outcomes = []
    for error in (UserError("runs/x: is a file, not a directory"), ValueError(BUG), None):

        def fn(error=error):
            if error is not None:
                raise error

        try:
            rt.on_main(fn)
            outcomes.append("ok")
        except Exception as e:  # noqa: BLE001 - the outcome is the test's subject
            outcomes.append(f"{type(e).__name__}: {e}")
    dist.destroy_process_group()
    return outcomes


def test_on_main_raises_on_every_rank_as_bad_input_only_when_it_was():
    from multirank import run_distributed

    rank0, rank1 = run_distributed(_on_main_outcomes, 2, timeout=120)
    assert rank0 == [
        "UserError: runs/x: is a file, not a directory",
        f"ValueError: {BUG}",  # the bug itself, with its traceback
        "ok",
    ]
    assert rank1 == [
        "UserError: stopped: rank 0 says why",
        "RuntimeError: stopped: rank 0 failed (its traceback says why)",
        "ok",
    ]
