"""Every family through the whole trainer: a 2-rank cohort, cohort == alone, elastic resume,
zero_to_fp32 and exports (tests/test_trainer_runs.py runs BERT through all of it and more).

    .venv/bin/python -m pytest tests/test_family_runs.py -q

Per family (RoBERTa, ModernBERT), on the tests' WordPiece shards (the mixed case: these
architectures on a BERT vocabulary): a teacher built from a config of the family and four
students of it, two of copied layers (DistilBioBERT's and CompactBioBERT's objectives: logits,
last-layer and layer-map cosines, attention KL), a narrower random one (TinyBioBERT's: maps,
projected hidden states, soft CE) and a MiniLMv2 one (q/k/v relations); fp32, no dropout.
The model types another family's definition reads (XLM-R and CamemBERT, RoBERTa's) distil from
a saved teacher of their own classes in a shorter 1-rank run, and export as those classes.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from multirank import run_distributed
from test_families import VARIANTS
from test_resume import resume_copy, run_in_turn
from trainer_setup import assert_same_weights, ds_config, recipe, weights, write_recipe

from data_pipeline.shards.manifest import Manifest
from trainer.runtime.distributed import free_port

pytestmark = pytest.mark.slow

STEPS = 4
STUDENTS = ("DistilBioBERT", "CompactBioBERT", "TinyBioBERT", "MiniLM")
# the terms each student's objective must report live
TERMS = {
    "DistilBioBERT": ("mlm", "kd", "cos"),
    "CompactBioBERT": ("mlm", "kd", "att", "cos"),
    "TinyBioBERT": ("att", "hid", "soft_ce"),
    "MiniLM": ("rel",),
}


def _family_config(family: str, vocab: int, ids: dict, **shape) -> dict:
    config = {
        "vocab_size": vocab,
        "hidden_size": 32,
        "num_hidden_layers": 4,
        "num_attention_heads": 2,
        "intermediate_size": 64,
        **shape,
    }
    if family == "roberta":  # positions after the padding id (2 + 64)
        return config | {
            "max_position_embeddings": 66,
            "pad_token_id": ids["pad"],
            "hidden_dropout_prob": 0.0,
            "attention_probs_dropout_prob": 0.0,
        }
    # every 2nd layer global, a local window of 16 on sequences of up to 64
    return config | {
        "max_position_embeddings": 64,
        "pad_token_id": ids["pad"],
        "cls_token_id": ids["cls"],
        "sep_token_id": ids["sep"],
        "bos_token_id": ids["cls"],
        "eos_token_id": ids["sep"],
        "global_attn_every_n_layers": 2,
        "local_attention": 16,
    }


def _recipe(family: str, shards, out, tokenizer_dir) -> dict:
    manifest = Manifest.load(shards)
    t = manifest.tokenizer
    vocab, ids = t.vocab_size, {"pad": t.pad_id, "cls": t.cls_id, "sep": t.sep_id}
    data = recipe(shards, out, vocab, name="reference", steps=STEPS)
    data["data"]["tokenizer"] = str(tokenizer_dir)
    data["train"].update(save_every=2, keep=10, eval_every=1000, log_every=1)
    data["data"]["slots"] = 2  # shared by 2 ranks or 1
    data["teacher"] = {"config": _family_config(family, vocab, ids), "family": family}
    narrow = _family_config(family, vocab, ids, hidden_size=16, intermediate_size=32)
    narrow["num_hidden_layers"] = 2
    tiny, budget = data["students"][2], data["students"][0]["optimizer"]
    tiny["init"] = {"config": narrow, "family": family}
    data["students"].append(
        {
            "name": "MiniLM",
            "init": {"config": dict(narrow), "family": family},
            "objective": {"kind": "minilmv2", "relation_heads": 2},
            "optimizer": dict(budget),
        }
    )
    return data


@pytest.mark.parametrize("family", ["roberta", "modernbert"])
def test_a_family_trains_resumes_elastically_and_exports(
    family, tmp_path, tiny_shards, tokenizer_dir
):
    data = _recipe(family, tiny_shards, tmp_path / "runs", tokenizer_dir)
    recipe_path = write_recipe(tmp_path / "recipe.yaml", data)
    ds = ds_config(tmp_path / "ds.json", stage=2, bf16=False, micro=8)

    def argv(name: str, *extra: str) -> list[str]:
        return ["--ds_config", str(ds), "--recipe", str(recipe_path), f"run.name={name}", *extra]

    # the cohort on 2 ranks, and one student alone
    jobs = [(argv("reference"), free_port()), (argv("alone", "--students", "TinyBioBERT"), 0)]
    jobs[1] = (jobs[1][0], free_port())  # NOTE: after the first: two free ports, not one twice
    done = run_distributed(run_in_turn, 2, jobs, timeout=600)[0]
    for result in done:
        assert result["rc"] == 0, result["stderr"][-3000:]
    runs = tmp_path / "runs"
    reference = runs / "reference"
    assert_same_weights(weights(reference, "TinyBioBERT"), weights(runs / "alone", "TinyBioBERT"))

    _assert_every_term_live(reference)

    # elastic: the step-2 checkpoint of 2 ranks goes on on 1 and ends where the 2-rank run did
    resume_copy(reference, runs / "elastic", 2)
    shutil.rmtree(runs / "elastic" / "tensorboard")
    (result,) = run_distributed(run_in_turn, 1, [(argv("elastic"), free_port())], timeout=600)[0]
    assert result["rc"] == 0, result["stderr"][-3000:]
    assert "saved by 2 ranks, resuming on 1" in result["stderr"]
    for student in STUDENTS:
        assert_same_weights(weights(reference, student), weights(runs / "elastic", student), 1e-6)

    # DeepSpeed's own tool reads the checkpoints; the export holds those weights
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    last = reference / "checkpoints" / f"step-{STEPS:08d}"
    for student in STUDENTS:
        state = get_fp32_state_dict_from_zero_checkpoint(str(last / student))
        for key, value in weights(reference, student).items():
            if ".pooler." not in key:  # exported, never trained
                torch.testing.assert_close(state[f"mlm.{key}"].float(), value, rtol=0, atol=0)

    # exports load as a masked LM and as a base model with every weight, and fill masks
    from transformers import AutoModelForMaskedLM, pipeline

    _assert_exports_load(reference, family, dict.fromkeys(STUDENTS, family))
    compact = AutoModelForMaskedLM.from_pretrained(reference / "export" / "CompactBioBERT")
    if family == "modernbert":  # teacher layers 1, 3 of global, local, global, local: local both
        assert compact.config.layer_types == ["sliding_attention", "sliding_attention"]
    fill = pipeline("fill-mask", model=str(reference / "export" / "DistilBioBERT"))
    assert len(fill(f"The patients received {fill.tokenizer.mask_token} daily.")) == 5
    marker = json.loads((last / "COMPLETE.json").read_text())
    assert marker["students"] == {s: STEPS for s in STUDENTS}


@pytest.mark.parametrize("model_type", VARIANTS)
def test_a_teacher_of_a_family_variant_distils_and_exports(
    model_type, tmp_path, tiny_shards, tokenizer_dir
):
    """An XLM-R or CamemBERT teacher (`teacher.path`: a saved model of its own classes) on one
    rank: every student trains, those made of its layers are of its model type, and every
    export loads as a masked LM and as a base model without missing weights."""
    import transformers

    family, config_class, masked_lm_class = VARIANTS[model_type]
    data = _recipe(family, tiny_shards, tmp_path / "runs", tokenizer_dir)
    teacher = tmp_path / "teacher"
    config = getattr(transformers, config_class)(**data["teacher"]["config"])
    torch.manual_seed(0)
    getattr(transformers, masked_lm_class)(config).save_pretrained(teacher)
    data["teacher"] = {"path": str(teacher)}
    data["train"].update(save_every=STEPS, keep=1)
    recipe_path = write_recipe(tmp_path / "recipe.yaml", data)
    ds = ds_config(tmp_path / "ds.json", stage=2, bf16=False, micro=8)
    argv = ["--ds_config", str(ds), "--recipe", str(recipe_path), "run.name=variant"]

    (result,) = run_distributed(run_in_turn, 1, [(argv, free_port())], timeout=600)[0]
    assert result["rc"] == 0, result["stderr"][-3000:]
    run = tmp_path / "runs" / "variant"
    _assert_every_term_live(run)
    marker = json.loads((run / "checkpoints" / f"step-{STEPS:08d}" / "COMPLETE.json").read_text())
    assert marker["students"] == {s: STEPS for s in STUDENTS}
    # trained: DistilBioBERT's layer 1 started as the teacher's layer 2 and has moved
    key = "roberta.encoder.layer.{}.attention.self.query.weight"
    taught = weights(run, "DistilBioBERT")[key.format(1)]
    start = getattr(transformers, masked_lm_class).from_pretrained(teacher).state_dict()
    assert not torch.equal(taught, start[key.format(2)])

    copied = {"DistilBioBERT": model_type, "CompactBioBERT": model_type}
    _assert_exports_load(run, family, {s: copied.get(s, family) for s in STUDENTS})
    for student in copied:  # saved as the teacher's class, which the Hub and pipelines read
        saved = json.loads((run / "export" / student / "config.json").read_text())
        assert saved["architectures"] == [masked_lm_class], student


def _assert_every_term_live(run) -> None:
    """Every term of every student is finite and live (not a sum over no maps); a KL of near-
    uniform distributions (tiny random models) can round to a few -1e-7."""
    from trainer.train.metrics import read_scalars

    tags = read_scalars(run / "tensorboard")
    for student, terms in TERMS.items():
        for term in terms:
            values = [v for _, v in tags[f"train/{student}/loss_{term}"]]
            assert all(abs(v) < 1e3 for v in values) and max(values) > 0, (student, term, values)


def _assert_exports_load(run, family: str, model_types: dict[str, str]) -> None:
    """Each student's export loads with AutoModelForMaskedLM as `model_types[student]` and with
    AutoModel without missing weights; its card names the family."""
    from transformers import AutoModel, AutoModelForMaskedLM

    for student, model_type in model_types.items():
        export = run / "export" / student
        model = AutoModelForMaskedLM.from_pretrained(export)
        assert model.config.model_type == model_type, student
        _, info = AutoModel.from_pretrained(export, output_loading_info=True)
        assert not info["missing_keys"], (student, info["missing_keys"])
        card = (export / "README.md").read_text()
        assert f"- {family}\n" in card and f"| {family} |" in card, student
