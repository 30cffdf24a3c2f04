"""Hugging Face masked LMs loaded by hub name or directory: the teacher and pretrained students.

    impl = attn_implementation()                            # ours (trainer/models/attention.py)
    model, new = load_masked_lm("dmis-lab/biobert-base-cased-v1.2", impl, "teacher.path=...")

fp32 on the CPU (students copy exact weights from the teacher before it moves to the device).
transformers' load report is replaced by one line of ours: a failure is one UserError naming
what was loaded and where it was asked for, weights the masked LM does not use are one warning
(an export's pooler, which a masked LM never uses, is left out of it), and the weights the
checkpoint lacked are returned, for the caller to refuse (a teacher) or warn about (a student).
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from data_pipeline.errors import UserError
from data_pipeline.io_utils import first_line
from trainer.models.attention import IMPLEMENTATION

logger = logging.getLogger(__name__)


def attn_implementation() -> str:
    """Ours for every model the trainer builds (trainer/models/attention.py): SDPA, attention
    probabilities in the layers a loss reads, and the faster SDPA kernel on a CPU in bf16."""
    return IMPLEMENTATION


def load_masked_lm(name: str, impl: str | None, where: str) -> tuple[nn.Module, list[str]]:
    """An HF masked LM by hub name or directory, fp32 on the CPU, and the names of the weights
    the checkpoint lacked (initialised at random); a load failure is one UserError naming it."""
    from transformers import AutoModelForMaskedLM
    from transformers.utils import logging as hf_logging

    # NOTE: transformers' load report is said here instead, in one line, from the loading info:
    # an export's pooler (trainer/models/pooler.py), which a masked LM does not use, is not news.
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        model, info = AutoModelForMaskedLM.from_pretrained(
            name, output_loading_info=True, attn_implementation=impl, dtype=torch.float32
        )
    except (OSError, ValueError) as e:
        raise UserError(
            f"{where}: cannot load it as a masked LM (expected a local directory or a Hugging "
            f"Face hub name): {first_line(e)}"
        ) from None
    finally:
        hf_logging.set_verbosity(verbosity)
    unused = sorted(k for k in info.get("unexpected_keys", ()) if not _is_pooler(k))
    if unused:
        logger.warning(
            "%s: %d weights the masked LM does not use (%s%s)",
            where, len(unused), ", ".join(unused[:6]), ", ..." if len(unused) > 6 else "",
        )  # fmt: skip
    mismatched = {k for k, *_ in info.get("mismatched_keys", ())}
    return model, sorted(set(info.get("missing_keys", ())) | mismatched)


def _is_pooler(key: str) -> bool:
    return ".pooler." in f".{key}"
