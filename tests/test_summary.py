"""trainer/train/summary.py: the figures relative to the teacher, the ceiling and the MLM twins, and
the summary files, with each model's size and CPU latency beside them; trainer/cli/teacher_build.py:
when a built teacher is reused.

    .venv/bin/python -m pytest tests/test_summary.py -q
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from trainer.cli.teacher_build import TEACHER_MARK, claim_run_dir
from trainer.cli.teacher_cache import BUILT, stale_reason
from trainer.config.recipe import load_config
from trainer.runtime.distributed import Runtime
from trainer.train.summary import (
    SUMMARY_JSON,
    SUMMARY_MD,
    add_deployment,
    eval_line,
    relative_figures,
    render_table,
    run_summary,
    twins_of,
    write_summary,
)

METRICS = {
    "eval/teacher/mlm_acc": 0.80,
    "eval/teacher/mlm_loss": 0.5,
    "eval/teacher/entity_acc": 0.72,
    "eval/A/mlm_acc": 0.72,
    "eval/A/mlm_loss": 0.9,
    "eval/A/teacher_agreement": 0.81,
    "eval/A/entity_acc": 0.54,
    "eval/A-MLM/mlm_acc": 0.70,
    "eval/A-MLM/mlm_loss": 1.0,
    "eval/A-MLM/teacher_agreement": 0.78,
    "eval/A-MLM/entity_acc": 0.45,
}


def test_relative_figures_by_hand():
    out = relative_figures(METRICS, {"A": "A-MLM"}, ceiling=0.9)
    expected = {
        "eval/A/acc_to_teacher": 0.72 / 0.80,
        "eval/A/entity_acc_to_teacher": 0.54 / 0.72,
        "eval/A-MLM/acc_to_teacher": 0.70 / 0.80,
        "eval/A-MLM/entity_acc_to_teacher": 0.45 / 0.72,
        "eval/teacher/entity_acc_to_ceiling": 0.72 / 0.9,
        "eval/A/acc_gain_vs_twin": 2.0,  # points
        "eval/A/entity_acc_gain_vs_twin": 9.0,
    }
    assert out.keys() == expected.keys()
    for key, value in expected.items():
        assert out[key] == pytest.approx(value), key
    # without a teacher, entity words or a ceiling, only what can be computed
    bare = {k: v for k, v in METRICS.items() if "teacher" not in k and "entity" not in k}
    assert relative_figures(bare, {"A": "A-MLM"}, None) == {
        "eval/A/acc_gain_vs_twin": pytest.approx(2.0)
    }


def test_summary_files_and_table(tmp_path):
    cfg = load_config(None, [])  # the demo: three students and their twins
    twins = twins_of(cfg)
    assert twins == {
        "DistilBioBERT": "DistilBioBERT-MLM",
        "CompactBioBERT": "CompactBioBERT-MLM",
        "TinyBioBERT": "TinyBioBERT-MLM",
    }
    metrics = {k.replace("/A", "/DistilBioBERT"): v for k, v in METRICS.items()}
    metrics |= relative_figures(metrics, twins, 0.9)
    summary = run_summary(cfg, 180, metrics, twins, 0.9)
    assert list(summary["models"]) == ["teacher", "DistilBioBERT", "DistilBioBERT-MLM"]
    assert summary["models"]["DistilBioBERT"]["twin"] == "DistilBioBERT-MLM"
    assert summary["models"]["DistilBioBERT-MLM"]["twin_of"] == "DistilBioBERT"
    write_summary(tmp_path, summary)
    assert json.loads((tmp_path / SUMMARY_JSON).read_text()) == json.loads(json.dumps(summary))
    md = (tmp_path / SUMMARY_MD).read_text()
    assert render_table(summary) in md and "0.9000" in md  # the ceiling is stated
    rows = {line.split(" | ")[0].strip("| "): line for line in render_table(summary).splitlines()}
    assert "+2.0 / +9.0" in rows["DistilBioBERT"]
    assert "0.800" in rows["teacher"]  # its fraction of the ceiling, 0.72 / 0.9
    line = eval_line(METRICS)
    assert "A loss 0.900 acc 0.720 entity 0.540" in line and "teacher loss 0.500" in line


def test_deployment_figures_beside_the_held_out_ones(tmp_path):
    """add_deployment (the run's end): parameters, fp32 size on disk and PyTorch CPU latency (one
    thread) of the teacher and each export, the speed-up the teacher's median over the student's,
    all in summary.json and summary.md; the teacher's temporary copy is removed."""
    from transformers import BertConfig, BertForMaskedLM

    from data_pipeline.demo.synth import train_wordpiece
    from trainer.export.hf_export import write_export
    from trainer.models.parameters import count_parameters

    texts = ["Aspirin inhibits prostaglandin synthesis in platelets of patients."] * 20
    train_wordpiece(texts, tmp_path / "tok", vocab_size=100)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "tok")

    def bert(layers: int, hidden: int) -> BertForMaskedLM:
        config = BertConfig(vocab_size=100, hidden_size=hidden, num_hidden_layers=layers,
                            num_attention_heads=4, intermediate_size=4 * hidden,
                            max_position_embeddings=130)  # fmt: skip
        return BertForMaskedLM(config).eval()

    torch.manual_seed(0)
    teacher, student = bert(4, 256), bert(1, 32)  # the teacher about 30x the student's FLOPs
    run_dir = tmp_path / "run"
    write_export(student, tokenizer, "# S\n", run_dir / "export" / "S")
    cfg = SimpleNamespace(students=[SimpleNamespace(name="S")])
    models = {"teacher": {"mlm_acc": 0.8}, "S": {"mlm_acc": 0.6}}
    write_summary(run_dir, {"run": "r", "step": 4, "ceiling_entity_acc": None, "models": models})
    assert add_deployment(tmp_path / "none", cfg, None) is None  # no summary: nothing to add to
    add_deployment(run_dir, cfg, SimpleNamespace(model=teacher.to(torch.bfloat16)))

    summary = json.loads((run_dir / SUMMARY_JSON).read_text())
    t, s = summary["models"]["teacher"], summary["models"]["S"]
    assert t["mlm_acc"] == 0.8 and s["mlm_acc"] == 0.6  # the held-out figures stay
    assert t["parameters"] == count_parameters(teacher)
    assert s["parameters"] == count_parameters(student)
    weights = run_dir / "export" / "S" / "model.safetensors"
    assert s["size_fp32_bytes"] == weights.stat().st_size
    assert t["size_fp32_bytes"] > 4 * count_parameters(teacher) * 0.99  # fp32, not the bf16 copy
    assert s["latency_speedup_vs_teacher"] == pytest.approx(
        t["latency_ms_median"] / s["latency_ms_median"], rel=1e-2
    )
    assert s["latency_speedup_vs_teacher"] > 1.5  # the small model is the fast one
    assert "latency_speedup_vs_teacher" not in t and "size_onnx_bytes" not in s
    lat = summary["latency"]
    assert (lat["batch"], lat["seq"], lat["threads"]) == (1, 128, 1)
    assert lat["cpu"] and 5 <= lat["rounds"] <= 50
    md = (run_dir / SUMMARY_MD).read_text()
    names = [line.split(" | ")[0] for line in md.splitlines() if line.startswith("| ")]
    assert names == ["| model", "| teacher", "| S"]  # the run's order, as before
    row = next(line for line in md.splitlines() if line.startswith("| S |"))
    assert f"{s['latency_speedup_vs_teacher']:.2f}x" in row and "speed-up" in md
    assert f"{lat['threads']} thread(s)" in md
    assert sorted(p.name for p in run_dir.iterdir()) == ["export", SUMMARY_JSON, SUMMARY_MD]


def test_a_built_teacher_is_reused_only_for_the_same_recipe_shards_and_global_batch(tmp_path):
    expected = {
        "recipe": "r.yaml", "recipe_sha256": "a", "shards_manifest_sha256": "s", "global_batch": 48
    }  # fmt: skip
    path = tmp_path / "teacher"
    assert stale_reason(path, expected) == "is missing"
    path.mkdir()
    assert stale_reason(path, expected) == f"holds no {BUILT}"
    (path / BUILT).write_text("{not json")
    assert stale_reason(path, expected) == f"is stale: its {BUILT} is unreadable"
    (path / BUILT).write_text(json.dumps({**expected, "global_batch": "48"}))  # not a number
    assert stale_reason(path, expected) == f"is stale: its {BUILT} is unreadable"
    (path / BUILT).write_text(json.dumps(expected))
    assert stale_reason(path, expected) is None
    assert (
        stale_reason(path, {**expected, "recipe_sha256": "b"})
        == "is stale: r.yaml changed since it was built"
    )
    changed = {**expected, "shards_manifest_sha256": "t"}
    assert stale_reason(path, changed) == "is stale: the shards changed since it was built"
    assert stale_reason(path, {**expected, "global_batch": 24}) == (
        "is stale: built at global batch 48, this start trains it at 24"
    )
    earlier = {k: v for k, v in expected.items() if k != "global_batch"}  # an earlier rule's
    (path / BUILT).write_text(json.dumps(earlier))
    assert stale_reason(path, expected) == (
        "is stale: built before the global batch was the recipe's on any number of ranks (this "
        "start trains it at 48)"
    )


def test_a_run_directory_made_with_another_teacher_is_set_aside(tmp_path, caplog):
    rt = Runtime(0, 1, 0, torch.device("cpu"))
    run_dir = tmp_path / "runs" / "demo"
    claim_run_dir(run_dir, {"recipe_sha256": "a"}, rt)  # a new run directory is marked
    assert json.loads((run_dir / TEACHER_MARK).read_text()) == {"recipe_sha256": "a"}
    (run_dir / "checkpoints").mkdir()
    claim_run_dir(run_dir, {"recipe_sha256": "a"}, rt)  # the same teacher: resumed as it is
    assert (run_dir / "checkpoints").is_dir() and not list(tmp_path.glob("runs/demo.stale-*"))
    for n, before in ((1, "a"), (2, "b1")):  # another teacher: set aside, never deleted, said
        claim_run_dir(run_dir, {"recipe_sha256": f"b{n}"}, rt)
        aside = tmp_path / "runs" / f"demo.stale-{n}"
        assert json.loads((aside / TEACHER_MARK).read_text()) == {"recipe_sha256": before}
        assert f"moved to {aside}" in caplog.text
        assert not (run_dir / "checkpoints").exists()
        assert json.loads((run_dir / TEACHER_MARK).read_text()) == {"recipe_sha256": f"b{n}"}
    assert (tmp_path / "runs" / "demo.stale-1" / "checkpoints").is_dir()
