"""Tiny trainer runs for the tests: recipes and DeepSpeed JSONs written into tmp directories.

Models are tiny (2-4 layers, hidden 16-32) and shards short (max_len 64), so a run of a few
steps takes seconds on 2 CPU cores; every code path of a real run is taken.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import torch
import yaml
from safetensors.torch import load_file

MAX_LEN = 64
STUDENTS = ("DistilBioBERT", "CompactBioBERT", "TinyBioBERT")  # the students of `recipe`


def teacher_config(vocab: int) -> dict:
    return {
        "num_hidden_layers": 4,
        "hidden_size": 32,
        "num_attention_heads": 2,
        "intermediate_size": 64,
        "vocab_size": vocab,
        "max_position_embeddings": MAX_LEN,
    }


def recipe(shards: Path, out: Path, vocab: int, *, name: str = "t", steps: int = 6) -> dict:
    """The paper's three distilled students in miniature on a 4-layer teacher."""
    budget = {"lr": 1.0e-3, "weight_decay": 1.0e-4, "warmup_steps": 2, "max_steps": steps}
    return {
        "run": {"name": name, "output_dir": str(out)},
        "data": {
            "train_shards": str(shards),
            "eval_shards": str(shards),
            "max_len": MAX_LEN,
            "shuffle_shards": 2,
        },
        "teacher": {"config": teacher_config(vocab)},
        "train": {
            "max_steps": steps,
            "seed": 3,
            "log_every": 2,
            "eval_every": 4,
            "save_every": 3,
            "keep": 2,
            "eval_batches": 2,
        },
        "students": [
            {
                "name": "DistilBioBERT",
                "init": {"from_teacher_layers": [0, 2]},
                "objective": {"kind": "distilbiobert"},
                "optimizer": dict(budget),
            },
            {
                "name": "CompactBioBERT",
                "init": {"from_teacher_layers": [1, 3]},
                "objective": {
                    "kind": "compactbiobert",
                    "attention_map": [[0, 1], [1, 3]],
                    "hidden_map": [[1, 2], [2, 4]],
                },
                "optimizer": dict(budget),
            },
            {
                "name": "TinyBioBERT",
                "init": {
                    "config": {
                        "num_hidden_layers": 2,
                        "hidden_size": 16,
                        "num_attention_heads": 2,
                        "intermediate_size": 32,
                        "vocab_size": vocab,
                        "max_position_embeddings": MAX_LEN,
                    }
                },
                "objective": {
                    "kind": "tinybiobert",
                    "attention_map": [[0, 1], [1, 3]],
                    "hidden_map": [[0, 0], [1, 2], [2, 4]],
                },
                "optimizer": dict(budget),
            },
        ],
    }


def one_student_config(
    init: dict, kind: str, *, teacher: dict | None, run: dict, data: dict, student: str,
    max_steps: int,
):  # fmt: skip
    """A resolved RunConfig with one student (for the model card and export tests)."""
    from trainer.config.recipe import config_from_dict

    return config_from_dict(
        {
            "run": run,
            "data": data,
            "teacher": teacher,
            "train": {"max_steps": max_steps},
            "students": [
                {
                    "name": student,
                    "init": init,
                    "objective": {"kind": kind},
                    "optimizer": {"lr": 1e-3, "weight_decay": 0.0, "warmup_steps": 2},
                }
            ],
        }
    )


def write_recipe(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def ds_config(
    path: Path, *, stage: int = 2, bf16: bool = True, micro: int = 8, accumulation: int = 1
) -> Path:
    """A DeepSpeed JSON like ds_configs/zero*.json with a test-sized micro-batch."""
    base = json.loads((Path(__file__).parents[1] / "ds_configs" / "zero2.json").read_text())
    cfg = copy.deepcopy(base)
    cfg["train_micro_batch_size_per_gpu"] = micro
    cfg["gradient_accumulation_steps"] = accumulation
    cfg["bf16"] = {"enabled": bf16}
    cfg["zero_optimization"] = {"stage": stage}
    if stage == 3:
        cfg["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] = True
    path.write_text(json.dumps(cfg), encoding="utf-8")
    return path


def weights(run_dir: Path, student: str, step: str | None = None) -> dict[str, torch.Tensor]:
    """A student's exported weights: the run's export, or `python -m trainer.export`'s of a step."""
    export = run_dir / ("export" if step is None else f"export-{step}")
    return load_file(str(export / student / "model.safetensors"))


def assert_same_weights(a: dict, b: dict, atol: float = 0.0) -> None:
    assert a.keys() == b.keys()
    for key in a:
        if atol == 0.0:
            assert torch.equal(a[key], b[key]), key
        else:
            torch.testing.assert_close(a[key], b[key], rtol=0.0, atol=atol, msg=key)
