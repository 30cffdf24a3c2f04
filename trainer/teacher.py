"""The frozen teacher: loaded once as a masked LM, asked only for what the cohort needs.

    model = load_teacher_model(cfg.teacher, attention=True, seed=42, vocab_size=28996)
    teacher = Teacher(model.to(device, dtype), need)   # after the students copied their layers
    signals = teacher(batch)                            # dict, see trainer/signals.py

- Loading that leaves any weight newly initialised is an error (a teacher without its MLM head
  gives meaningless soft targets) unless `teacher.allow_new_weights` opts out, for a teacher used
  only for hidden-state terms.
- Frozen: eval() (no dropout; the paper's code left it on, RECIPES.md), requires_grad False,
  bf16 on GPU, never in a checkpoint. Its forward runs under no_grad rather than inference_mode:
  students' losses save teacher tensors for their backward, which inference tensors forbid.
- It computes the union of the students' needs only (`Need`), e.g. no logits at all when no
  student has a KD or soft-CE term, attention probabilities only in the layers some student's
  loss reads (SDPA computes every layer's output, trainer/attention.py).
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from data_pipeline.io_utils import first_line
from trainer.attention import IMPLEMENTATION, return_probabilities
from trainer.batch import DeviceBatch
from trainer.bert_config import bert_config
from trainer.config import TeacherSection
from trainer.rng import seeded
from trainer.signals import Need, check_need, masked_lm_signals, tap_signals

logger = logging.getLogger(__name__)


def attn_implementation(attention_maps: bool) -> str | None:
    """Ours where some layer's attention probabilities are needed (trainer/attention.py: SDPA in
    every other layer), else the model's default (SDPA for BERT)."""
    return IMPLEMENTATION if attention_maps else None


def load_masked_lm(name: str, impl: str | None, where: str) -> tuple[nn.Module, list[str]]:
    """An HF masked LM by hub name or directory, fp32 on the CPU, and the names of the weights
    the checkpoint lacked (initialised at random); a load failure is one ValueError naming it."""
    from transformers import AutoModelForMaskedLM
    from transformers.utils import logging as hf_logging

    # NOTE: transformers' load report is said here instead, in one line, from the loading info:
    # an export's pooler (trainer/pooler.py), which a masked LM does not use, is not news.
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        model, info = AutoModelForMaskedLM.from_pretrained(
            name, output_loading_info=True, attn_implementation=impl, dtype=torch.float32
        )
    except (OSError, ValueError) as e:
        raise ValueError(
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


def load_teacher_model(
    section: TeacherSection, *, attention: bool, seed: int, vocab_size: int
) -> nn.Module:
    """The teacher as an fp32 CPU masked LM (students copy from it before it moves)."""
    from transformers import BertForMaskedLM

    impl = attn_implementation(attention)
    if section.config is not None:
        config = bert_config(section.config, "teacher.config", impl)
        with seeded(seed, torch.device("cpu")):
            model = BertForMaskedLM(config)
        where = "teacher.config"
    else:
        where = f"teacher.path={section.path!r}"
        model, new = load_masked_lm(section.path, impl, where)
        if new and not section.allow_new_weights:
            raise ValueError(
                f"{where}: loading left {len(new)} weights newly "
                f"initialised ({', '.join(new[:6])}{', ...' if len(new) > 6 else ''}); a "
                "teacher without its trained MLM head gives meaningless soft targets. Use a "
                "checkpoint with the head, or set teacher.allow_new_weights=true if no student "
                "uses the teacher's logits"
            )
        if new:
            logger.warning("teacher: %d weights newly initialised (allowed): %s", len(new), new)
    model_vocab = model.get_output_embeddings().weight.shape[0]
    if model_vocab < vocab_size:
        raise ValueError(
            f"{where}: the model's vocabulary has {model_vocab} entries but the shards' tokenizer "
            f"has {vocab_size}; re-shard with the teacher's tokenizer"
        )
    return model


class Teacher:
    def __init__(self, model: nn.Module, need: Need) -> None:
        if need.attentions:
            return_probabilities(model, need.attentions)
        check_need(model, need, "teacher")
        tap_signals(model, need)
        model.eval()
        model.requires_grad_(False)
        self.model, self.need = model, need

    @property
    def num_layers(self) -> int:
        return self.model.config.num_hidden_layers

    @torch.no_grad()
    def __call__(self, batch: DeviceBatch, need: Need | None = None) -> dict[str, torch.Tensor]:
        need = self.need if need is None else need
        if need.empty:
            return {}
        return masked_lm_signals(
            self.model, batch.input_ids, batch.attention_mask, batch.masked_index, need
        )
