"""trainer/runtime/logs.py: the console without the known third-party noise, the run log with
everything.

    .venv/bin/python -m pytest tests/test_logs.py -q

The noise comes from the real sources (DeepSpeed's accelerator detection and WarmupDecayLR, a
torch FutureWarning, transformers' progress bar), in a fresh process, as in a run.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

from trainer.config.recipe import ROOT

SCRIPT = textwrap.dedent(
    """
    import logging, sys, warnings
    from pathlib import Path
    from trainer.runtime.logs import attach_run_log, quiet_console, setup_logging

    run_dir, rank = Path(sys.argv[1]), int(sys.argv[2])
    setup_logging()
    if rank:
        quiet_console()
    import torch
    from deepspeed.accelerator import get_accelerator
    from deepspeed.runtime.lr_schedules import WarmupDecayLR
    from transformers import BertConfig, BertForMaskedLM

    get_accelerator()  # "Setting accelerator to CPU", before the run directory exists
    logging.getLogger("trainer.x").info("before the run directory")
    attach_run_log(run_dir, rank)
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    WarmupDecayLR(optimizer, total_num_steps=10)  # "Attempting to get learning rate ..."
    warnings.warn(
        "`torch.distributed.all_gather_into_tensor` is deprecated", FutureWarning, stacklevel=1
    )
    model = BertForMaskedLM(BertConfig(num_hidden_layers=1, hidden_size=8,
                                       num_attention_heads=2, intermediate_size=8, vocab_size=32))
    model.save_pretrained(run_dir / "model")  # transformers' "Writing model shards" bar
    logging.getLogger("trainer.x").info("an info line")
    logging.getLogger("trainer.x").warning("a warning line")
    logging.getLogger("DeepSpeed").warning("a DeepSpeed warning that is not noise")
    """
)
NOISE = (
    "Setting accelerator to CPU",
    "Attempting to get learning rate from scheduler before it has started",
    "all_gather_into_tensor` is deprecated",
)


def run(tmp_path, rank: int) -> str:
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path), str(rank)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout + done.stderr


def test_the_console_drops_the_noise_and_the_run_log_keeps_everything(tmp_path):
    console = run(tmp_path, 0)
    for line in NOISE:
        assert line not in console
    assert "Writing model shards" not in console
    for line in ("before the run directory", "an info line", "a warning line", "not noise"):
        assert line in console
    log = (tmp_path / "train.log").read_text()
    for line in (*NOISE, "before the run directory", "an info line", "a warning line"):
        assert line in log, line
    assert "not noise" in log
    assert log.index("Setting accelerator") < log.index("before the run directory")


def test_other_ranks_show_warnings_only_and_keep_their_info_in_their_own_file(tmp_path):
    console = run(tmp_path, 1)
    assert "an info line" not in console and "a warning line" in console
    log = (tmp_path / "train.rank-00001.log").read_text()
    assert "an info line" in log and "a warning line" in log
    assert not (tmp_path / "train.log").exists()
