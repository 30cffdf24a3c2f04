"""An export loads with the oldest transformers pyproject.toml allows, as it does with ours.

    .venv/bin/pytest tests/test_export_compat.py -q

The old transformers lives in a venv of its own, built on first use under
$BIODISTILL_COMPAT_VENVS (default ~/.cache/biodistill/venvs) with the CPU torch of this venv
(about a minute: 58 s measured for transformers 4.46 + torch 2.13 CPU) and reused after. Where it
is not built yet and pip cannot reach its package index, the test is skipped, saying so. Loading
and comparing takes a few seconds.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from load_export import main as load_here
from transformers import AutoTokenizer, BertConfig, BertForMaskedLM

from data_pipeline.demo.synth import train_wordpiece
from trainer.export.hf_export import write_export
from trainer.models.pooler import attach, identity_pooler

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow
TEXT = "Aspirin inhibits [MASK] synthesis in platelets."
READY = ".biodistill-ready"  # written last: a venv without it is a partial build


def lower_bound(package: str) -> str:
    """`X` of `package>=X` in pyproject.toml's dependencies."""
    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    m = re.search(rf'"{package}>=([0-9][0-9.]*)', text)
    assert m, f"pyproject.toml: no {package}>= lower bound"
    return m.group(1)


def _pip_cannot_install(python: Path, version: str) -> str | None:
    """None when pip's index (or find-links) offers transformers==`version`.*, else why not."""
    r = subprocess.run(
        [str(python), "-m", "pip", "index", "versions", "transformers"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    if r.returncode != 0:
        lines = [x for x in r.stderr.splitlines() if x.strip() and "WARNING" not in x]
        return lines[-1] if lines else f"`pip index versions` exited {r.returncode}"
    m = re.search(r"Available versions: (.*)", r.stdout)
    offered = m.group(1).split(", ") if m else []
    if not any(v.startswith(f"{version}.") for v in offered):
        return f"it offers transformers {', '.join(offered) or 'in no version'}"
    return None


def old_transformers_python(version: str) -> Path:
    """The python of a venv with transformers==`version`.* and this venv's torch (CPU build)."""
    torch_version = torch.__version__.split("+")[0]
    root = Path(
        os.environ.get("BIODISTILL_COMPAT_VENVS", Path.home() / ".cache" / "biodistill" / "venvs")
    )
    venv = root / f"transformers-{version}-torch-{torch_version}"
    python = venv / "bin" / "python"
    if (venv / READY).is_file():
        return python
    shutil.rmtree(venv, ignore_errors=True)
    venv.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    why = _pip_cannot_install(python, version)
    if why is not None:
        shutil.rmtree(venv, ignore_errors=True)
        pytest.skip(
            f"transformers=={version}.* is not installed in {venv} and pip cannot get it "
            f"(offline?): {why}"
        )
    spec = [f"torch=={torch_version}", f"transformers=={version}.*", "safetensors"]
    r = subprocess.run(
        [str(python), "-m", "pip", "install", "-q", *spec],
        capture_output=True,
        text=True,
        timeout=1200,
    )
    if r.returncode != 0:
        shutil.rmtree(venv, ignore_errors=True)
        pytest.fail(f"pip install {' '.join(spec)} failed:\n{r.stderr[-3000:]}")
    (venv / READY).write_text(" ".join(spec) + "\n")
    return python


def _demo_sized_export(tmp_path: Path) -> Path:
    """An export as a run writes it: the demo's kind of tokenizer (transformers 5 loads it as
    TokenizersBackend), a small BERT masked LM with its pooler."""
    tokdir = tmp_path / "tokenizer"
    texts = ["Aspirin inhibits prostaglandin synthesis in platelets of patients."] * 40
    train_wordpiece(texts, tokdir, vocab_size=120)
    config = BertConfig(
        vocab_size=120,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        max_position_embeddings=128,
    )
    torch.manual_seed(0)
    model = attach(BertForMaskedLM(config), identity_pooler(config.hidden_size)).eval()
    card = "---\nlicense: other\n---\n# demo\n"
    return write_export(model, AutoTokenizer.from_pretrained(tokdir), card, tmp_path / "export")


def test_an_export_loads_with_the_oldest_transformers_allowed(tmp_path):
    version = lower_bound("transformers")
    python = old_transformers_python(version)
    export = _demo_sized_export(tmp_path)
    r = subprocess.run(
        [str(python), str(ROOT / "tests" / "load_export.py"), str(export), TEXT],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    old = json.loads(r.stdout.strip().splitlines()[-1])
    new = load_here(str(export), TEXT)
    assert old["transformers"].startswith(f"{version}.")
    assert old["tokenizer_class"] == "PreTrainedTokenizerFast"
    assert old["input_ids"] == new["input_ids"] and old["model_max_length"] == 128
    assert old["mlm_missing"] == old["base_missing"] == new["mlm_missing"] == []
    assert new["base_missing"] == []
    torch.testing.assert_close(torch.tensor(old["logits"]), torch.tensor(new["logits"]))
    torch.testing.assert_close(
        torch.tensor(old["pooler_output"]), torch.tensor(new["pooler_output"])
    )
