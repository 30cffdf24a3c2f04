"""The models under evaluation: names, loading with a task head, size and inference speed.

    python -m evaluation run --models runs/demo/export/DistilBioBERT \
        BioBERT=dmis-lab/biobert-base-cased-v1.2 ...

A model is a Hugging Face directory (a biodistill export: AutoModelForMaskedLM weights + tokenizer)
or a hub name, optionally labelled `LABEL=DIR_OR_NAME` (the row name in the table; by default the
directory's name or the hub name). Task heads (token classification, sequence classification,
extractive QA) are added by the AutoModelFor... classes on top of the encoder, freshly initialised
from the cell's seed; the MLM head is dropped.

Size: parameters of the bare encoder (AutoModel: embeddings + layers + pooler, no task or MLM head).
Speed: sequences/s of the encoder's forward pass on one fixed batch (speed.batch_size x
speed.seq_len random token ids, attention everywhere), after speed.warmup passes, averaged over
speed.iters, in the precision the fine-tuning uses, on the run's device (named in the report).
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import inspect
import json
import platform
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from data_pipeline.errors import UserError
from data_pipeline.io_utils import first_line
from evaluation.config import SpeedSettings
from trainer.models.parameters import count_parameters

if TYPE_CHECKING:
    from evaluation.finetune import Runtime

# weights, config, tokenizer files (tokenizer.json, vocab.txt, sentencepiece .model)
FINGERPRINTED = (".safetensors", ".bin", ".json", ".txt", ".model")


@dataclass(frozen=True)
class ModelSpec:
    label: str  # the table's row name
    source: str  # directory or hub name
    local: bool

    def __str__(self) -> str:
        return f"model {self.label}" + (f" ({self.source})" if self.source != self.label else "")

    @property
    def slug(self) -> str:
        return re.sub(r"[^A-Za-z0-9._-]+", "_", self.label.replace("/", "__"))


def parse_models(items: list[str]) -> list[ModelSpec]:
    specs = []
    for item in items:
        label, sep, source = item.partition("=")
        if not sep:
            label, source = "", item
        path = Path(source)
        local = path.is_dir()
        if not local and (source.startswith((".", "/", "~")) or source.count("/") > 1):
            raise UserError(f"--models: {source}: no such model directory")
        if not label:
            label = path.resolve().name if local else source
        specs.append(ModelSpec(label=label, source=str(path) if local else source, local=local))
    seen: dict[str, str] = {}
    for s in specs:
        if s.slug in seen:
            raise UserError(
                f"--models: {seen[s.slug]} and {s.source} would share the row {s.label!r}; "
                "name them with LABEL=DIR_OR_NAME"
            )
        seen[s.slug] = s.source
    return specs


@contextlib.contextmanager
def quiet_transformers():
    """New task heads make transformers warn about freshly initialised weights: expected here."""
    from transformers.utils import logging as hf_logging

    level, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()  # "Loading weights" bars, one per cell
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


def load_tokenizer(spec: ModelSpec):
    """The model's fast tokenizer (word ids and character offsets are needed for NER and QA)."""
    from transformers import AutoTokenizer

    try:
        with quiet_transformers():
            tok = AutoTokenizer.from_pretrained(spec.source)
    except (OSError, ValueError) as e:
        raise UserError(f"{spec}: cannot load its tokenizer: {first_line(e)}") from None
    if not tok.is_fast:
        raise UserError(f"{spec}: needs a fast tokenizer (word ids and offsets)")
    return tok


def for_split_words(tokenizer):
    """The tokenizer to call on pre-split words (`is_split_into_words=True`, NER).

        enc = for_split_words(tok)(sentences, is_split_into_words=True)

    A byte-level BPE tokenizer (RoBERTa, ModernBERT) spells a word differently at the start of a
    text ("gene") and after a space ("Ġgene"), and it is given each word as a text of its own: so
    it needs add_prefix_space, which RoBERTa's models were loaded with for token classification.
    Returns a copy with ByteLevel's add_prefix_space set (in the Rust pipeline itself: transformers
    ignores the loading argument for a generic tokenizer), or `tokenizer` itself when it is not
    byte-level or already adds the space. WordPiece tokenizers are returned unchanged.
    """
    from tokenizers import Tokenizer

    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    pre = spec.get("pre_tokenizer") or {}
    parts = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else [pre]
    byte_level = [p for p in parts if p.get("type") == "ByteLevel"]
    if not byte_level or all(p.get("add_prefix_space") for p in byte_level):
        return tokenizer
    for part in byte_level:
        part["add_prefix_space"] = True
    post = spec.get("post_processor") or {}
    for part in post.get("processors", [post]):  # offsets are trimmed by the same rule
        if "add_prefix_space" in part:
            part["add_prefix_space"] = True
    rebuilt = Tokenizer.from_str(json.dumps(spec))
    words = copy.deepcopy(tokenizer)
    words.backend_tokenizer.pre_tokenizer = rebuilt.pre_tokenizer
    if rebuilt.post_processor is not None:
        words.backend_tokenizer.post_processor = rebuilt.post_processor
    if hasattr(words, "add_prefix_space"):
        words.add_prefix_space = True
    return words


def check_model(spec: ModelSpec) -> None:
    """Fail before any training when a model's config cannot be read."""
    from transformers import AutoConfig

    try:
        AutoConfig.from_pretrained(spec.source)
    except (OSError, ValueError) as e:
        raise UserError(f"{spec}: cannot load its config: {first_line(e)}") from None


def fingerprint(spec: ModelSpec) -> str:
    """Identity of the weights a result was computed from: a re-export invalidates old cells."""
    if not spec.local:
        return f"hub:{spec.source}"
    h = hashlib.sha256()
    for f in sorted(Path(spec.source).iterdir()):
        if f.is_file() and f.suffix in FINGERPRINTED and not f.name.startswith("."):
            h.update(f.name.encode())
            with open(f, "rb") as fh:
                while block := fh.read(1 << 22):
                    h.update(block)
    return h.hexdigest()[:16]


def load_for_task(spec: ModelSpec, task: str, labels: list[str] | None, seed: int):
    """The encoder with a fresh head for `task`; the head's initialisation follows `seed`."""
    from transformers import (
        AutoModelForQuestionAnswering,
        AutoModelForSequenceClassification,
        AutoModelForTokenClassification,
    )

    cls = {
        "ner": AutoModelForTokenClassification,
        "re": AutoModelForSequenceClassification,
        "qa": AutoModelForQuestionAnswering,
    }[task]
    kwargs = {}
    if labels is not None:
        kwargs = {
            "num_labels": len(labels),
            "id2label": dict(enumerate(labels)),
            "label2id": {label: i for i, label in enumerate(labels)},
        }
    torch.manual_seed(seed)
    with quiet_transformers():
        return cls.from_pretrained(spec.source, **kwargs)


def takes_token_types(model) -> bool:
    """BERT-style models take segment ids (question 0, context 1); DistilBERT does not."""
    return (
        "token_type_ids" in inspect.signature(model.forward).parameters
        and (getattr(model.config, "type_vocab_size", 0) or 0) >= 2
    )


def max_positions(model_or_config) -> int:
    """The longest input the model takes, as its family counts it (RoBERTa: 514 position
    embeddings take 512 tokens)."""
    from trainer.models.families import family_of

    config = getattr(model_or_config, "config", model_or_config)
    if not getattr(config, "max_position_embeddings", None):
        return 512
    return family_of(config).max_positions(config)


def usable_length(tokenizer) -> int:
    """The tokenizer's limit (RoBERTa-style models have 514 positions but take 512 tokens)."""
    n = tokenizer.model_max_length
    return int(n) if n and n < 100_000 else 1_000_000  # "no limit" is a huge sentinel


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU {platform.machine()}, {torch.get_num_threads()} thread(s)"


def measure(spec: ModelSpec, settings: SpeedSettings, runtime: Runtime) -> dict[str, object]:
    """Parameter count of the encoder and its forward throughput in sequences/s."""
    from transformers import AutoModel

    with quiet_transformers():
        model = AutoModel.from_pretrained(spec.source).to(runtime.device).eval()
    params = count_parameters(model)
    seq = min(settings.seq_len, max_positions(model))
    g = torch.Generator().manual_seed(0)
    low = min(1000, model.config.vocab_size // 2)  # past the special tokens of WordPiece vocabs
    ids = torch.randint(low, model.config.vocab_size, (settings.batch_size, seq), generator=g)
    device = runtime.device
    batch = {"input_ids": ids.to(device), "attention_mask": torch.ones_like(ids).to(device)}
    with torch.inference_mode(), runtime.autocast():
        for _ in range(settings.warmup):
            model(**batch)
        _sync(device)
        start = time.perf_counter()
        for _ in range(settings.iters):
            model(**batch)
        _sync(device)
        elapsed = time.perf_counter() - start
    return {
        "parameters": params,
        "sequences_per_s": settings.batch_size * settings.iters / elapsed,
        "speed_batch": [settings.batch_size, seq],
    }


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
