"""The model card (README.md) written into every export: what the model is and how it was made."""

from __future__ import annotations

import yaml

from trainer.config import RunConfig, to_yaml

_KIND = {
    "distilbiobert": "distilled (DistilBioBERT recipe: MLM + KD + last-layer cosine)",
    "compactbiobert": "distilled (CompactBioBERT recipe: MLM + KD + attention KL + layer cosines)",
    "tinybiobert": "distilled (TinyBioBERT recipe: attention MSE + hidden MSE + soft CE)",
    "mlm": "continual masked-language-model pre-training",
}


def model_card(
    student, cfg: RunConfig, *, steps: int, tokens: int, samples: int, metrics: dict[str, float]
) -> str:
    spec, mlm = student.spec, student.module.mlm
    c = mlm.config
    teacher = None
    if cfg.teacher is not None and spec.objective.kind != "mlm":
        teacher = cfg.teacher.path or "a randomly initialised BERT (teacher.config)"
    front = {
        "library_name": "transformers",
        "pipeline_tag": "fill-mask",
        "tags": [
            "biomedical",
            "biodistill",
            "distillation" if teacher else "continual-pretraining",
        ],
    }
    base = spec.init.pretrained or (cfg.teacher.path if spec.init.from_teacher_layers else None)
    if base:
        front["base_model"] = base
    lines = [
        "---",
        yaml.safe_dump(front, sort_keys=False).strip(),
        "---",
        "",
        f"# {spec.name}",
        "",
        f"A compact biomedical masked language model: {_KIND[spec.objective.kind]}, trained with "
        "biodistill on PubMed abstracts.",
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
        'fill = pipeline("fill-mask", model="PATH/TO/THIS/DIRECTORY")',
        'fill(f"Aspirin inhibits {fill.tokenizer.mask_token} synthesis.")',
        "```",
        "",
    ]
    return "\n".join(lines)
