"""Load an export the way a Hub user does and print what came out, as JSON on the last line.

    python tests/load_export.py EXPORT_DIR "A sentence with [MASK]."

Run by tests/test_export_compat.py with the oldest transformers pyproject.toml allows (in a venv
of its own) and with ours, to compare: imports transformers and torch only.
"""

from __future__ import annotations

import json
import sys

import torch
import transformers
from transformers import AutoModel, AutoModelForMaskedLM, AutoTokenizer


def main(export: str, text: str) -> dict:
    tok = AutoTokenizer.from_pretrained(export)
    ids = tok(text, return_tensors="pt")
    mlm, mlm_info = AutoModelForMaskedLM.from_pretrained(export, output_loading_info=True)
    base, base_info = AutoModel.from_pretrained(export, output_loading_info=True)
    with torch.no_grad():
        logits = mlm.eval()(**ids).logits
        pooled = base.eval()(**ids).pooler_output
    return {
        "transformers": transformers.__version__,
        "tokenizer_class": type(tok).__name__,
        "input_ids": ids["input_ids"][0].tolist(),
        "model_max_length": tok.model_max_length,
        "mlm_missing": sorted(mlm_info["missing_keys"]),
        "base_missing": sorted(base_info["missing_keys"]),
        "logits": logits[0].flatten().tolist(),
        "pooler_output": pooled[0].tolist(),
    }


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], sys.argv[2])))
