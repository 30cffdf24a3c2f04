"""Learning regression: students distilled from a teacher that knows something learn it, more than
MLM-only twins of the same shape, init and batches.

    .venv/bin/python -m pytest tests/test_learning.py -q

A small knowledge corpus (data_pipeline/demo/knowledge.py) and a small teacher pre-trained on it are
made once per session, the teacher through `teacher.build` exactly as the demo makes its own.
Then one short cohort run distils two students beside their twins (train.mlm_twins):
- Tiny: random init, the TinyBioBERT objective (attention MSE, hidden MSE through fit_dense, soft
  cross-entropy against the teacher's logits); its teacher agreement must rise far above its
  starting value and above its twin's.
- Wired: 2 layers copied from teacher layers 0 and 1 (so at first its last hidden state is the
  teacher's second), trained by the CompactBioBERT attention-KL and hidden-cosine terms only,
  whose map pairs its last hidden state with the teacher's last: afterwards its last hidden
  state must be nearer the teacher's last than any other teacher layer's, and its agreement
  through the MLM head it shares with the teacher must have risen.
Caught by these asserts (mutations tried by hand, see docs/learning.md): the soft
cross-entropy / KD weight zeroed, the teacher's logits replaced by the student's, the attention
and hidden terms reading other teacher layers than the maps name.
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
from multirank import run_distributed
from trainer_setup import ds_config, write_recipe

from data_pipeline.demo.build import build_demo
from data_pipeline.eval_batches import EvalBatches
from data_pipeline.shards.manifest import Manifest, load_tokenizer, tokenizer_info
from trainer.config.recipe import load_config
from trainer.models.hf_models import load_masked_lm
from trainer.models.students import build_student
from trainer.runtime.distributed import Runtime
from trainer.train.heldout import heldout_metrics
from trainer.train.inputs import load_entities
from trainer.train.summary import SUMMARY_JSON

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]

MICRO, EVAL_BATCHES, SEED = 16, 12, 5
TEACHER_STEPS, STEPS = 600, 200


def _run(rank: int, world: int, argv: list[str]) -> int:
    from trainer.main import main

    return main(argv)


def _teacher_recipe(root, shards, entities) -> dict:
    return {
        "run": {"name": "teacher", "output_dir": str(root / "runs")},
        "data": {
            "train_shards": str(shards),
            "eval_shards": str(shards),
            "entities": str(entities),
            "max_len": 128,
            "mask_prob": 0.4,
        },
        "train": {"max_steps": TEACHER_STEPS, "seed": 1, "log_every": 100, "eval_every": 1000,
                  "save_every": 1000, "keep": 1, "eval_batches": EVAL_BATCHES},
        "students": [{
            "name": "Teacher",
            "init": {"config": {"num_hidden_layers": 4, "hidden_size": 64,
                                "num_attention_heads": 4, "intermediate_size": 256,
                                "vocab_size": 4096, "max_position_embeddings": 128,
                                "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}},
            "objective": {"kind": "mlm"},
            "optimizer": {"lr": 3e-3, "weight_decay": 0.01, "warmup_steps": 20},
        }],
    }  # fmt: skip


def _cohort_recipe(root, shards, entities, teacher_recipe) -> dict:
    opt = {"lr": 7e-3, "weight_decay": 1e-4, "warmup_steps": 10}
    return {
        "run": {"name": "cohort", "output_dir": str(root / "runs")},
        "data": {
            "train_shards": str(shards),
            "eval_shards": str(shards),
            "entities": str(entities),
            "max_len": 128,
        },
        "teacher": {"path": str(root / "teacher"), "build": str(teacher_recipe)},
        "train": {"max_steps": STEPS, "seed": SEED, "log_every": 50, "eval_every": 1000,
                  "save_every": 1000, "keep": 1, "eval_batches": EVAL_BATCHES,
                  "mlm_twins": True},
        "students": [
            {
                "name": "Tiny",
                "init": {"config": {"num_hidden_layers": 2, "hidden_size": 32,
                                    "num_attention_heads": 4, "intermediate_size": 64,
                                    "vocab_size": 4096, "max_position_embeddings": 128,
                                    "hidden_dropout_prob": 0.0,
                                    "attention_probs_dropout_prob": 0.0}},
                "objective": {"kind": "tinybiobert", "attention_map": [[0, 1], [1, 3]],
                              "hidden_map": [[0, 0], [1, 2], [2, 4]]},
                "optimizer": dict(opt),
            },
            {
                "name": "Wired",
                "init": {"from_teacher_layers": [0, 1]},
                "objective": {"kind": "compactbiobert", "weights": {"mlm": 0, "kd": 0},
                              "attention_map": [[0, 1], [1, 3]],
                              "hidden_map": [[1, 2], [2, 4]]},
                "optimizer": {**opt, "lr": 3e-3},
            },
        ],
    }  # fmt: skip


@pytest.fixture(scope="session")
def knowledge_shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("knowledge")
    shards = build_demo(root / "demo", articles=2000, files=2, workers=1, log=lambda *_: None)
    return root, shards, root / "demo" / "knowledge.json"


def _starting_agreement(cfg, name: str) -> dict[str, float]:
    """A student's held-out figures at initialisation, measured as the trainer measures them."""
    tok = load_tokenizer(cfg.teacher.path)
    teacher_model, _ = load_masked_lm(cfg.teacher.path, None, "teacher")
    spec = next(s for s in cfg.students if s.name == name)
    built = build_student(spec, teacher_model=teacher_model, vocab_size=4096, seed=SEED)
    from trainer.distill.teacher_signals import Need
    from trainer.models.teacher import Teacher

    entities, _ = load_entities(cfg.data.entities, tok, 4096)
    batches = EvalBatches(
        cfg.data.eval_shards, MICRO, tokenizer=tokenizer_info(tok), seed=SEED, mask_prob=0.15
    )
    rows = [b for _, b in zip(range(EVAL_BATCHES), batches, strict=False)]
    student = SimpleNamespace(name=name, engine=built.module)
    out = heldout_metrics(
        [student],
        Teacher(teacher_model, Need(logits=True)),
        rows,
        Runtime(0, 1, 0, torch.device("cpu")),
        entities,
    )
    return {k.split("/")[-1]: v for k, v in out.items() if k.startswith(f"eval/{name}/")}


@torch.no_grad()
def _layer_similarity(export, cfg) -> dict[int, float]:
    """Mean cosine, over the eval split's real tokens, between the student's last hidden state
    and each of the teacher's hidden states (1..4)."""
    from transformers import AutoModelForMaskedLM

    student = AutoModelForMaskedLM.from_pretrained(export).eval()
    teacher = AutoModelForMaskedLM.from_pretrained(cfg.teacher.path).eval()
    info = tokenizer_info(load_tokenizer(cfg.teacher.path))
    batches = EvalBatches(cfg.data.eval_shards, MICRO, tokenizer=info, seed=SEED)
    sums, count = dict.fromkeys(range(1, 5), 0.0), 0
    for _, b in zip(range(EVAL_BATCHES), batches, strict=False):
        inputs = {"input_ids": b["input_ids"], "attention_mask": b["attention_mask"]}
        last = student(**inputs, output_hidden_states=True).hidden_states[-1]
        hidden = teacher(**inputs, output_hidden_states=True).hidden_states
        real = b["attention_mask"].bool()
        for t in sums:
            sums[t] += torch.cosine_similarity(last[real], hidden[t][real], dim=-1).sum().item()
        count += int(real.sum())
    return {t: v / count for t, v in sums.items()}


def test_distilled_students_learn_what_the_teacher_knows(knowledge_shards, tmp_path):
    root, shards, entities = knowledge_shards
    assert Manifest.load(shards).max_len == 128
    teacher_recipe = write_recipe(root / "teacher.yaml", _teacher_recipe(root, shards, entities))
    recipe = write_recipe(
        tmp_path / "cohort.yaml", _cohort_recipe(root, shards, entities, teacher_recipe)
    )
    ds = ds_config(tmp_path / "fp32.json", stage=2, bf16=False, micro=MICRO)
    argv = ["--ds_config", str(ds), "--recipe", str(recipe), f"run.output_dir={tmp_path}"]
    assert run_distributed(_run, 1, argv, timeout=600) == [0]
    assert json.loads((root / "teacher" / "BUILT.json").read_text())["recipe"] == str(
        teacher_recipe
    )

    summary = json.loads((tmp_path / "cohort" / SUMMARY_JSON).read_text())["models"]
    cfg = load_config(recipe, [f"run.output_dir={tmp_path}"])
    agree = {name: row["teacher_agreement"] for name, row in summary.items() if name != "teacher"}
    start = {
        name: _starting_agreement(cfg, name)["teacher_agreement"] for name in ("Tiny", "Wired")
    }
    print(json.dumps({"start": start, "end": agree, "teacher": summary["teacher"]}, indent=1))

    # the teacher knows something: far above the unigram level of a fresh model
    assert summary["teacher"]["mlm_acc"] > 0.45
    # Tiny: from a random init, far above its start and above its MLM-only twin
    assert start["Tiny"] < 0.15
    assert agree["Tiny"] > start["Tiny"] + 0.3
    assert agree["Tiny"] > agree["Tiny-MLM"] + 0.1
    assert summary["Tiny"]["acc_gain_vs_twin"] > 5.0
    # Wired: the hidden and attention terms taught its last layer to imitate the layer the map
    # names, the teacher's last (not the one it was copied from, nor a neighbour)
    near = _layer_similarity(tmp_path / "cohort" / "export" / "Wired", cfg)
    print("Wired's last hidden state vs the teacher's hidden states:", near)
    assert max(near, key=near.get) == 4 and near[4] > near[2] + 0.05
    assert agree["Wired"] > start["Wired"] + 0.1
