"""The model card (README.md) written into every export: what the model is and how it was made.

Its YAML front matter is what the Hugging Face Hub reads (huggingface_hub's `metadata_load`):
license (`run.license`, else the teacher's card's where the teacher is a local directory whose
README.md says, else `other`: BioBERT, the paper's teacher, states none on the Hub), language,
datasets, pipeline_tag, tags, `base_model` (only a Hub id: a local path means nothing on the Hub,
so it is left out) and a model-index holding the held-out figures of the card's table.

The usage snippet names where the model is: `with_model_id` puts in the export's directory when
it is written, and the Hub id when it is pushed (`python -m trainer.export --push-to-hub`).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

from trainer.config.recipe import RunConfig, to_yaml
from trainer.distill.kinds import KINDS
from trainer.models.hub_names import hub_id

UNSET_ID = "PATH/TO/THIS/DIRECTORY"  # in a card not yet written into an export
_USE_LINE = re.compile(r'^fill = pipeline\("fill-mask", model=.*\)$', re.MULTILINE)
# metric name (eval/<student>/<name>) -> the Hub's metric type
_METRIC_TYPE = {"mlm_acc": "accuracy", "mlm_loss": "loss", "teacher_agreement": "accuracy"}


def card_license(cfg: RunConfig) -> str:
    if cfg.run.license:
        return cfg.run.license
    teacher = cfg.teacher.path if cfg.teacher is not None else None
    card = Path(teacher) / "README.md" if teacher and Path(teacher).is_dir() else None
    if card is not None and card.is_file():
        meta = front_matter(card.read_text(encoding="utf-8"))
        if isinstance(meta.get("license"), str):
            return meta["license"]
    return "other"


def front_matter(card: str) -> dict:
    """The YAML between the card's opening `---` lines ({} for none or unreadable YAML)."""
    if not card.startswith("---\n"):
        return {}
    text, sep, _ = card[4:].partition("\n---\n")
    try:
        meta = yaml.safe_load(text) if sep else None
    except yaml.YAMLError:
        return {}
    return meta if isinstance(meta, dict) else {}


def with_model_id(card: str, model_id: str) -> str:
    """The card with its usage snippet loading `model_id` (a directory or a Hub id)."""
    line = f'fill = pipeline("fill-mask", model={json.dumps(str(model_id))})'
    return _USE_LINE.sub(lambda _: line, card)


def _model_index(name: str, metrics: dict[str, float]) -> list[dict]:
    rows = []
    for key, value in sorted(metrics.items()):
        metric = key.split("/", 2)[-1]
        value = round(float(value), 4)  # as the card's table shows it
        rows.append({"type": _METRIC_TYPE.get(metric, metric), "name": metric, "value": value})
    task = {"type": "fill-mask", "name": "Masked language modelling"}
    dataset = {"type": "pubmed", "name": "PubMed (held-out shards)"}
    return [{"name": name, "results": [{"task": task, "dataset": dataset, "metrics": rows}]}]


def model_card(
    student, cfg: RunConfig, *, steps: int, tokens: int, samples: int, metrics: dict[str, float]
) -> str:
    spec, mlm = student.spec, student.module.mlm
    c = mlm.config
    kind = spec.objective.kind
    teacher = None
    if cfg.teacher is not None and KINDS[kind].needs_teacher:
        teacher = cfg.teacher.path or "a randomly initialised BERT (teacher.config)"
    front = {
        "license": card_license(cfg),
        "language": ["en"],
        "library_name": "transformers",
        "pipeline_tag": "fill-mask",
        "datasets": ["pubmed"],
        "tags": [
            "biomedical",
            "bert",
            "fill-mask",
            "biodistill",
            "distillation" if teacher else "continual-pretraining",
            kind,
        ],
    }
    teacher_path = cfg.teacher.path if cfg.teacher is not None else None
    base = hub_id(spec.init.pretrained or (teacher_path if spec.init.from_teacher_layers else None))
    if base:
        front["base_model"] = base
    if metrics:
        front["model-index"] = _model_index(spec.name, metrics)
    pooler = student.pooler
    lines = [
        "---",
        yaml.safe_dump(front, sort_keys=False).strip(),
        "---",
        "",
        f"# {spec.name}",
        "",
        f"A compact biomedical masked language model: {KINDS[spec.objective.kind].card}, "
        "trained with biodistill on PubMed abstracts.",
        "",
        "| parameters | layers | hidden | heads | vocabulary |",
        "|---|---|---|---|---|",
        f"| {student.parameters:,} | {c.num_hidden_layers} | {c.hidden_size} | "
        f"{c.num_attention_heads} | {c.vocab_size} |",
        "",
        "## Training",
        "",
        f"- Run `{cfg.run.name}`: {steps:,} optimizer steps of a budget of {student.budget:,}, "
        f"{samples:,} sequences, {tokens:,} real tokens.",
        f"- Teacher: {teacher}." if teacher else "- No teacher (masked-LM objective only).",
        f"- Initialisation: {student.base_model or 'random (init.config)'}.",
        f"- Pooler: {pooler.describe()}." if pooler is not None else "- No pooler.",
        f"- Data: `{cfg.data.train_shards}`, max length {cfg.data.max_len}, masking "
        f"{cfg.data.mask_prob}{' (whole words)' if cfg.data.whole_word else ''}.",
        "",
        "Recipe entry:",
        "",
        "```yaml",
        to_yaml(spec).strip(),
        "```",
        "",
    ]
    if metrics:
        lines += ["## Held-out evaluation (last before export)", ""]
        lines += ["| metric | value |", "|---|---|"]
        lines += [f"| {k.split('/', 2)[-1]} | {v:.4f} |" for k, v in sorted(metrics.items())]
        lines.append("")
    lines += [
        "## Use",
        "",
        "```python",
        "from transformers import pipeline",
        "",
        f'fill = pipeline("fill-mask", model="{UNSET_ID}")',
        'fill(f"Aspirin inhibits {fill.tokenizer.mask_token} synthesis.")',
        "```",
        "",
    ]
    return "\n".join(lines)
