"""The run's inputs: the shards' manifest, the tokenizer, the training loader and the eval batches.

- Shards come from `data.train_shards` / `data.eval_shards` (a directory with manifest.json, or
  patterns; data_pipeline/loader.py). The manifest is the contract: its tokenizer fingerprint,
  `max_len` and vocabulary size are checked against the recipe and the models before anything
  trains.
- The run's tokenizer (written next to every export, and the source of whole-word masking's
  continuation table) is `data.tokenizer` if set, else the teacher's (`teacher.path`), else the
  one the manifest names; it must be the one the shards were made with.
- The embedded demo's shards (`data.build_demo: true`, as in recipes/demo.yaml) are built on first
  use, by rank 0, through the pipeline's own extract and shard commands; the other ranks wait.
- `data.entities` names a JSON file of entity words: {"entities": {"gene": ["ZOR4", ...], ...}}
  (or a plain list), optionally with {"ceiling": {"entity_acc": 0.94}}, the best accuracy any
  model can reach at those positions. Held-out evaluation then also reports the accuracy at the
  masked positions whose label is one of the words (each must be a single token). The demo's
  data/demo/knowledge.json is such a file.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

import torch

from data_pipeline.demo.knowledge import entity_token_ids
from data_pipeline.errors import UserError
from data_pipeline.eval_batches import EvalBatches
from data_pipeline.io_utils import first_line
from data_pipeline.loader import LoaderConfig, MaskedBatchLoader
from data_pipeline.masking import continuation_table
from data_pipeline.shards.manifest import Manifest, TokenizerInfo, load_tokenizer, tokenizer_info
from data_pipeline.shards.reader import resolve_shards
from trainer.config.recipe import RunConfig
from trainer.runtime.distributed import Runtime

logger = logging.getLogger(__name__)


def ensure_demo(cfg: RunConfig, rt: Runtime) -> None:
    """`data.build_demo`: build or complete the demo corpus whose shards `data.train_shards`
    names (DIR/shards: the demo is built in DIR); missing, it is built (about 20 s); built with
    other settings or by another generator, it is rebuilt."""
    if not cfg.data.build_demo:
        return
    from data_pipeline.demo.build import build_demo, demo_root

    root = demo_root(cfg.data.train_shards, "data.train_shards")
    if rt.is_main:
        if not (root / "shards" / "manifest.json").exists():
            logger.info("demo corpus missing: building %s (once, about 20 s)", root)
        build_demo(root, log=logger.info, tokenizer=cfg.data.build_demo)
    rt.barrier()


@dataclass
class Inputs:
    manifest: Manifest
    tokenizer: object  # the HF fast tokenizer
    info: TokenizerInfo
    loader: MaskedBatchLoader
    eval_batches: EvalBatches | None
    eval_limit: int
    student_tokenizers: dict[str, object]  # continual students' own tokenizers, by source
    entities: torch.Tensor | None = None  # bool over the vocabulary: entity tokens
    ceiling: float | None = None  # the best possible accuracy at entity positions, if known

    def student_tokenizer(self, student):
        """The tokenizer exported with `student`: its own, else the run's."""
        return self.student_tokenizers.get(student.tokenizer, self.tokenizer)

    def eval_iter(self):
        """This pass's eval batches: the first `train.eval_batches` of the split, on every rank."""
        return islice(iter(self.eval_batches), self.eval_limit) if self.eval_batches else iter(())

    @property
    def eval_sequences(self) -> int:
        """How many sequences of the eval split one held-out evaluation reads, on all ranks."""
        held = self.eval_batches
        if held is None:
            return 0
        return min(held.total, self.eval_limit * held.config.batch_size * held.world_size)


def load_entities(path: str, tok, vocab_size: int) -> tuple[torch.Tensor, float | None]:
    """`data.entities`: the entity tokens as a bool table over the vocabulary, and the ceiling."""
    where = f"data.entities={path!r}"
    try:
        raw = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise UserError(f"{where}: cannot read it as JSON ({first_line(e)})") from None
    words = raw.get("entities") if isinstance(raw, dict) else None
    if isinstance(words, dict):
        words = [w for group in words.values() for w in group]
    if not isinstance(words, list) or not words or not all(isinstance(w, str) for w in words):
        raise UserError(
            f'{where}: expected an object with "entities": a non-empty list of words, or '
            "lists of words by type"
        )
    table = torch.zeros(vocab_size, dtype=torch.bool)
    table[list(entity_token_ids(tok, words, where))] = True
    ceiling = raw.get("ceiling", {}).get("entity_acc") if isinstance(raw, dict) else None
    return table, ceiling


def manifest_of(cfg: RunConfig) -> Manifest:
    return resolve_shards(cfg.data.train_shards, "train").manifest


def run_tokenizer(cfg: RunConfig, manifest: Manifest):
    """The run's tokenizer and its fingerprint, checked against the shards'."""
    if cfg.data.tokenizer is not None:
        source, key = cfg.data.tokenizer, "data.tokenizer"
    elif cfg.teacher is not None and cfg.teacher.path is not None:
        source, key = cfg.teacher.path, "teacher.path"
    else:
        source, key = manifest.tokenizer.name, "the shards' manifest"
    try:
        tok = load_tokenizer(source)
    except UserError as e:
        raise UserError(
            f"{e} (the tokenizer named by {key}; set data.tokenizer=DIR to the tokenizer the "
            "shards were made with)"
        ) from None
    info = tokenizer_info(tok, name=source)
    manifest.check_tokenizer(info, source=f"data.train_shards={cfg.data.train_shards}")
    if key == "data.tokenizer" and cfg.teacher is not None and cfg.teacher.path is not None:
        check_teacher_tokenizer(cfg.teacher.path, info)
    return tok, info


TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "tokenizer_config.json")


def check_teacher_tokenizer(teacher_path: str, run: TokenizerInfo) -> None:
    """The teacher reads the shards' token ids: where data.tokenizer names the run's tokenizer,
    a teacher that has a tokenizer of its own must have the same vocabulary (fingerprint), or its
    logits are over other tokens and its hidden states of other words. A teacher saved without
    a tokenizer is taken at its word (its vocabulary size is checked when it loads)."""
    local = Path(teacher_path).expanduser()
    if local.is_dir() and not any((local / f).is_file() for f in TOKENIZER_FILES):
        return  # NOTE: transformers would make up a tokenizer of special tokens from config.json
    try:
        own = tokenizer_info(load_tokenizer(teacher_path), name=teacher_path)
    except UserError:
        logger.debug("teacher.path=%s: no tokenizer of its own to compare", teacher_path)
        return
    if (own.vocab_hash, own.vocab_size) != (run.vocab_hash, run.vocab_size):
        raise UserError(
            f"teacher.path={teacher_path}: its tokenizer (vocab {own.vocab_size}, hash "
            f"{own.vocab_hash[:12]}) is not the run's, data.tokenizer={run.name} (vocab "
            f"{run.vocab_size}, hash {run.vocab_hash[:12]}); the teacher would read the shards' "
            "token ids as other tokens and its logits would be over another vocabulary. Teacher "
            "and students must share a tokenizer: shard with the teacher's"
        )


def build_inputs(cfg: RunConfig, rt: Runtime, micro_batch: int, accumulation: int = 1) -> Inputs:
    """The shards' loader at `micro_batch` per rank, and the held-out batches, each a global
    batch (`micro_batch` x `accumulation` per rank): the same samples on any number of ranks."""
    d, t = cfg.data, cfg.train
    manifest = manifest_of(cfg)
    if manifest.max_len != d.max_len:
        raise UserError(
            f"data.max_len={d.max_len}: the shards were made with max_len {manifest.max_len}; "
            f"set data.max_len={manifest.max_len} or re-shard"
        )
    tok, info = run_tokenizer(cfg, manifest)
    own = {}
    for spec in cfg.students:  # continual students bring their own vocabulary: it must match
        source = spec.init.pretrained
        if source is not None and source not in own:
            own[source] = load_tokenizer(source)
            manifest.check_tokenizer(
                tokenizer_info(own[source], name=source),
                source=f"students.{spec.name} (data.train_shards={d.train_shards})",
            )
    table = continuation_table(tok) if d.whole_word else None
    loader = MaskedBatchLoader(
        d.train_shards,
        LoaderConfig(
            batch_size=micro_batch,
            seed=t.seed,
            num_workers=d.num_workers,
            shuffle_shards=d.shuffle_shards,
            slots=d.slots,
            mask_prob=d.mask_prob,
            whole_word=d.whole_word,
            skip_corrupt=d.skip_corrupt,
            pin_memory=rt.on_gpu,
        ),
        rank=rt.rank,
        world_size=rt.world_size,
        tokenizer=info,
        is_continuation=table,
    )
    held = None
    if d.eval_shards is not None:
        held = EvalBatches(
            d.eval_shards,
            micro_batch * accumulation,
            rank=rt.rank,
            world_size=rt.world_size,
            tokenizer=info,
            is_continuation=table,
            seed=t.seed,
            mask_prob=d.mask_prob,
            whole_word=d.whole_word,
        )
    entities, ceiling = None, None
    if d.entities is not None:
        entities, ceiling = load_entities(d.entities, tok, info.vocab_size)
    return Inputs(manifest, tok, info, loader, held, t.eval_batches, own, entities, ceiling)
