"""The model card (README.md) written into every export: what the model is and how it was made.

Its YAML front matter is built by huggingface_hub's ModelCardData, so that it is what the Hugging
Face Hub reads (`ModelCard.load`, `metadata_load`): license (`run.license`, else the teacher's
card's where the teacher is a local directory whose README.md says, else `other`: BioBERT, the
paper's teacher, states none on the Hub), language, datasets, pipeline_tag, tags (`biodistill`
among them: trainer/export/hf_export.py recognises an export by it), `base_model` (only a Hub id:
a local path means nothing on the Hub, so it is left out) and a model-index holding the held-out
figures of the card's table, one EvalResult each.

The usage snippet names where the model is: `with_model_id` puts in the export's directory when
it is written, and the Hub id when it is pushed (`python -m trainer.export --push-to-hub`).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml
from huggingface_hub import EvalResult, ModelCardData, RepoCard, metadata_load

from trainer.config.recipe import RunConfig, to_yaml
from trainer.distill.kinds import KINDS
from trainer.models.families import architecture, family_of
from trainer.models.hub_names import hub_id

UNSET_ID = "PATH/TO/THIS/DIRECTORY"  # in a card not yet written into an export
_USE_LINE = re.compile(r'^fill = pipeline\("fill-mask", model=.*\)$', re.MULTILINE)
# metric name (eval/<student>/<name>) -> the Hub's metric type
_METRIC_TYPE = {"mlm_acc": "accuracy", "mlm_loss": "loss", "teacher_agreement": "accuracy"}
# the front matter's keys in the order a reader looks for them (model-index, the longest, last)
_ORDER = ["license", "language", "library_name", "pipeline_tag", "datasets", "tags", "base_model"]


def card_license(cfg: RunConfig) -> str:
    if cfg.run.license:
        return cfg.run.license
    teacher = cfg.teacher.path if cfg.teacher is not None else None
    card = Path(teacher) / "README.md" if teacher and Path(teacher).is_dir() else None
    if card is not None and card.is_file():
        try:
            meta = metadata_load(card) or {}
        except (yaml.YAMLError, ValueError):  # unreadable: the teacher's card says nothing
            meta = {}
        if isinstance(meta.get("license"), str):
            return meta["license"]
    return "other"


def front_matter(card: str) -> dict:
    """The card's YAML metadata as huggingface_hub reads it ({} for none or unreadable YAML)."""
    if not card.startswith("---"):  # RepoCard would warn that the block is missing
        return {}
    try:
        return RepoCard(card, ignore_metadata_errors=True).data.to_dict()
    except (yaml.YAMLError, ValueError):
        return {}


def with_model_id(card: str, model_id: str) -> str:
    """The card with its usage snippet loading `model_id` (a directory or a Hub id)."""
    line = f'fill = pipeline("fill-mask", model={json.dumps(str(model_id))})'
    return _USE_LINE.sub(lambda _: line, card)


def card_data(
    name: str,
    kind: str,
    *,
    family: str,
    license: str,
    distilled: bool,
    base: str | None,
    metrics: dict,
) -> ModelCardData:
    """The card's metadata: what the Hub indexes, and the held-out `metrics` (eval/<name>/<m>)
    as the model-index's evaluation results, rounded as the card's table shows them."""
    results = [
        EvalResult(
            task_type="fill-mask",
            task_name="Masked language modelling",
            dataset_type="pubmed",
            dataset_name="PubMed (held-out shards)",
            metric_type=_METRIC_TYPE.get(metric, metric),
            metric_name=metric,
            metric_value=round(float(value), 4),
        )
        for metric, value in sorted((k.split("/", 2)[-1], v) for k, v in metrics.items())
    ]
    return ModelCardData(
        license=license,
        language=["en"],
        library_name="transformers",
        pipeline_tag="fill-mask",
        datasets=["pubmed"],
        tags=[
            "biomedical",
            family,
            "fill-mask",
            "biodistill",
            "distillation" if distilled else "continual-pretraining",
            kind,
        ],
        base_model=base,
        # NOTE: model_name is written only inside the model-index; alone it would be a stray key
        model_name=name if results else None,
        eval_results=results or None,
    )


def model_card(
    student, cfg: RunConfig, *, steps: int, tokens: int, samples: int, metrics: dict[str, float]
) -> str:
    spec, mlm = student.spec, student.module.mlm
    c = mlm.config
    kind = spec.objective.kind
    teacher = None
    if cfg.teacher is not None and KINDS[kind].needs_teacher:
        teacher = cfg.teacher.path or "a randomly initialised BERT (teacher.config)"
    teacher_path = cfg.teacher.path if cfg.teacher is not None else None
    base = hub_id(spec.init.pretrained or (teacher_path if spec.init.from_teacher_layers else None))
    arch = architecture(mlm)
    data = card_data(
        spec.name,
        kind,
        family=arch,
        license=card_license(cfg),
        distilled=teacher is not None,
        base=base,
        metrics=metrics,
    )
    pooler = student.pooler
    lines = [
        "---",
        data.to_yaml(original_order=_ORDER).strip(),
        "---",
        "",
        f"# {spec.name}",
        "",
        f"A compact biomedical masked language model: {KINDS[spec.objective.kind].card}, "
        "trained with biodistill on PubMed abstracts.",
        "",
        "| architecture | parameters | layers | hidden | heads | vocabulary |",
        "|---|---|---|---|---|---|",
        f"| {arch} | {student.parameters:,} | {family_of(mlm).num_layers(c)} | {c.hidden_size} | "
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
