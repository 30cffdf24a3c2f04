"""Export a student as a Hugging Face model directory: weights, config, tokenizer, model card.

    export_student(student, rt, out_dir=run_dir / "export" / name, tokenizer=tok, card=card)

The weights are the optimizer's fp32 master weights (not the bf16 training copy), gathered with
DeepSpeed's `safe_get_full_fp32_param`, which works under ZeRO 1, 2 and 3 alike. NOTE: that is a
collective: every rank calls `export_student` for the same students in the same order; rank 0
writes. The directory is written under a temporary name and renamed into place, so an export that
exists is complete. It loads with `AutoModelForMaskedLM.from_pretrained(dir)`, MLM head included;
TinyBioBERT's fit_dense (a training-only projection) is not part of it.
"""

from __future__ import annotations

import copy
import os
import shutil
import tempfile
from pathlib import Path

import torch
from torch import nn

from trainer.runtime import Runtime


def gather_fp32_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """Full fp32 copies of `module`'s parameters, on the CPU. NOTE: collective under ZeRO."""
    from deepspeed.utils import safe_get_full_fp32_param

    state = {}
    for name, p in module.named_parameters():
        full = safe_get_full_fp32_param(p)
        state[name] = (full if full is not None else p).detach().float().cpu()
    return state


def rebuild(mlm: nn.Module, state: dict[str, torch.Tensor]) -> nn.Module:
    """A fresh fp32 CPU copy of the HF model `mlm` holding `state` (its named parameters)."""
    config = copy.deepcopy(mlm.config)
    model = type(mlm)(config)
    missing, unexpected = model.load_state_dict(state, strict=False)
    loaded = {p.data_ptr() for name, p in model.state_dict().items() if name in state}
    untied = [k for k in missing if model.state_dict()[k].data_ptr() not in loaded]
    if unexpected or untied:
        raise RuntimeError(
            f"export: state does not fit {type(model).__name__}: {untied + unexpected}"
        )
    return model.eval()


def export_student(student, rt: Runtime, *, out_dir: Path, tokenizer, card: str) -> Path | None:
    """Gather the student's weights (all ranks) and write the export (rank 0)."""
    state = gather_fp32_state(student.module.mlm)
    if not rt.is_main:
        return None
    model = rebuild(student.module.mlm, state)
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "README.md").write_text(card, encoding="utf-8")
        for f in tmp.iterdir():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        old = None
        if out_dir.exists():
            old = out_dir.with_name(f".{out_dir.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            out_dir.rename(old)
        tmp.rename(out_dir)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir
