"""Learning quality: what the demo's students learn from its teacher, over several seeds.

    python benchmarks/run.py --only quality [--quick] [--family modernbert]

The demo as `make demo` runs it (recipes/demo.yaml: the teacher pre-trained by
recipes/demo_teacher.yaml on the demo corpus and cached in data/demo/teacher, then DistilBioBERT,
CompactBioBERT and TinyBioBERT distilled from it, each beside its MLM-only twin), once per seed:
`deepspeed --num_gpus 2 trainer/main.py --ds_config ds_configs/zero2.json train.seed=S`, each
in its own run directory under a temporary folder. train.seed sets the students' initialisation,
masks, dropout and data order; the teacher is the same for every seed (the first run builds it
when it is missing). Figures, from each run's summary.json (trainer/train/summary.py); value = the
mean over seeds, settings = every seed's value, min, max, spread (max - min) and the sample std:

- teacher_to_ceiling_acc: the teacher's held-out accuracy at entity positions over the ceiling,
  the best accuracy any model can reach there (data/demo/knowledge.json).
- <student>_to_teacher_acc: the student's held-out masked accuracy over the teacher's.
- <student>_gain_vs_mlm_twin: its held-out masked accuracy minus its twin's, in points (also at
  entity positions, in the settings).

What int8 costs on real text, from the first seed's run, which also writes ONNX files
(export.onnx=int8: trainer/export/onnx.py checks each export on the run's held-out split): for
each student and twin, `<model>_int8_acc_change`, its held-out masked accuracy in ONNX Runtime
int8 minus fp32 in points, with the int8 accuracy, its top-1 agreement with fp32 and the masked
positions in the settings. Without the `onnx` extra one line, `int8/skipped`, gives the reason.

--quick: 3 seeds (about 10 minutes on 2 CPU cores with the teacher built, and a minute of ONNX
files); full: 5 seeds.
DEMO_RANKS (default 2) sets the ranks. --family modernbert runs recipes/demo_modernbert.yaml (the
same demo, every model a ModernBERT, on the demo corpus with a byte-level BPE tokenizer trained on
it, data/demo-bpe; its teacher cached in data/demo-bpe/teacher-modernbert, the ceiling in
data/demo-bpe/knowledge.json).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from benchmarks.bench_cohort import ROOT, log
from benchmarks.bench_inference import onnx_missing
from trainer.runtime.distributed import free_port
from trainer.train.summary import SUMMARY_JSON

SEEDS = (42, 7, 2023, 11, 5)
STUDENTS = ("DistilBioBERT", "CompactBioBERT", "TinyBioBERT")


RECIPES = {"bert": "recipes/demo.yaml", "modernbert": "recipes/demo_modernbert.yaml"}


def run_demo(seed: int, root: Path, ranks: int, recipe: str, extra: tuple = ()) -> dict:
    """One demo run with train.seed=seed (and the overrides `extra`); its summary.json."""
    deepspeed = Path(sys.executable).parent / "deepspeed"
    name = f"seed-{seed}"
    cmd = [
        str(deepspeed), "--master_port", str(free_port()), "--num_gpus", str(ranks),
        "trainer/main.py", "--ds_config", "ds_configs/zero2.json", "--recipe", recipe,
        f"train.seed={seed}", f"run.output_dir={root}", f"run.name={name}", *extra,
    ]  # fmt: skip
    out = root / f"{name}.log"
    log(f"quality: seed {seed}: {' '.join(cmd[1:])} (log: {out})")
    with open(out, "w") as f:
        done = subprocess.run(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, check=False)
    if done.returncode != 0:
        tail = out.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"quality: the demo run for seed {seed} failed:\n{tail}")
    return json.loads((root / name / SUMMARY_JSON).read_text())


def spread(values: list[float], seeds: list[int]) -> dict:
    return {
        "per_seed": dict(zip(map(str, seeds), values, strict=True)),
        "min": min(values),
        "max": max(values),
        "spread": max(values) - min(values),
        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
    }


def figures(summaries: list[dict], seeds: list[int], recipe: str) -> Iterator[dict]:
    models = [s["models"] for s in summaries]
    common = {"recipe": recipe, "seeds": seeds}
    values = [m["teacher"]["entity_acc_to_ceiling"] for m in models]
    ceilings = sorted({s["ceiling_entity_acc"] for s in summaries})
    yield {
        "metric": "teacher_to_ceiling_acc",
        "value": statistics.mean(values),
        "unit": "ratio",
        "settings": {**common, **spread(values, seeds), "ceiling": ceilings},
    }
    for name in STUDENTS:
        values = [m[name]["acc_to_teacher"] for m in models]
        yield {
            "metric": f"{name}_to_teacher_acc",
            "value": statistics.mean(values),
            "unit": "ratio",
            "settings": {**common, **spread(values, seeds)},
        }
        gains = [m[name]["acc_gain_vs_twin"] for m in models]
        entity = [m[name].get("entity_acc_gain_vs_twin") for m in models]
        yield {
            "metric": f"{name}_gain_vs_mlm_twin",
            "value": statistics.mean(gains),
            "unit": "accuracy points",
            "settings": {
                **common,
                **spread(gains, seeds),
                "twin": models[0][name]["twin"],
                "entity_gain_per_seed": dict(zip(map(str, seeds), entity, strict=True)),
            },
        }


def int8_figures(summary: dict, seed: int, recipe: str) -> Iterator[dict]:
    """`<model>_int8_acc_change` of every student and twin of one run made with
    export.onnx=int8 (trainer/train/summary.py's int8 figures)."""
    for name, row in summary["models"].items():
        if "int8_acc_change" not in row:
            continue
        yield {
            "metric": f"{name}_int8_acc_change",
            "value": row["int8_acc_change"],
            "unit": "accuracy points",
            "settings": {
                "recipe": recipe,
                "seed": seed,
                "int8_masked_acc": row["int8_masked_acc"],
                "int8_top1_agreement": row["int8_top1_agreement"],
                "runtime": "ONNX Runtime, dynamic int8 against fp32",
            },
        }


def run(quick: bool, family: str = "bert") -> Iterator[dict]:
    if family not in RECIPES:
        raise ValueError(f"quality: no demo of family {family!r}; known: {sorted(RECIPES)}")
    seeds = list(SEEDS[: 3 if quick else 5])
    ranks = int(os.environ.get("DEMO_RANKS", "2"))
    missing = onnx_missing()
    int8 = () if missing else ("export.onnx=int8",)  # the first seed's run only
    with tempfile.TemporaryDirectory(prefix="biodistill-quality-") as tmp:
        summaries = [
            run_demo(seed, Path(tmp), ranks, RECIPES[family], int8 if i == 0 else ())
            for i, seed in enumerate(seeds)
        ]
    yield from figures(summaries, seeds, RECIPES[family])
    if missing:
        yield {"metric": "int8/skipped", "value": missing, "unit": None, "settings": {}}
    else:
        yield from int8_figures(summaries[0], seeds[0], RECIPES[family])
