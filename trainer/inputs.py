"""The run's inputs: the shards' manifest, the tokenizer, the training loader and the eval batches.

- Shards come from `data.train_shards` / `data.eval_shards` (a directory with manifest.json, or
  patterns; data_pipeline/loader.py). The manifest is the contract: its tokenizer fingerprint,
  `max_len` and vocabulary size are checked against the recipe and the models before anything
  trains.
- The run's tokenizer (written next to every export, and the source of whole-word masking's
  continuation table) is `data.tokenizer` if set, else the teacher's (`teacher.path`), else the
  one the manifest names; it must be the one the shards were made with.
- The embedded demo (recipes/demo.yaml) is built on first use, by rank 0, through the pipeline's
  own extract and shard commands; the other ranks wait for it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

from data_pipeline.eval_batches import EvalBatches
from data_pipeline.io_utils import PipelineError
from data_pipeline.loader import LoaderConfig, MaskedBatchLoader
from data_pipeline.manifest import Manifest, TokenizerInfo, load_tokenizer, tokenizer_info
from data_pipeline.masking import continuation_table
from data_pipeline.shard_source import resolve_shards
from trainer.config import RunConfig
from trainer.runtime import Runtime

logger = logging.getLogger(__name__)

DEMO_DIR = Path("data/demo")


def ensure_demo(cfg: RunConfig, rt: Runtime) -> None:
    """Build the demo corpus when the recipe reads the demo shards and they are missing."""
    shards = Path(str(cfg.data.train_shards))
    if shards.resolve() != (DEMO_DIR / "shards").resolve() or (shards / "manifest.json").exists():
        return
    if rt.is_main:
        from data_pipeline.demo import build_demo

        logger.info("demo corpus missing: building %s (once, about 20 s)", DEMO_DIR)
        build_demo(DEMO_DIR, log=logger.info)
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

    def student_tokenizer(self, student):
        """The tokenizer exported with `student`: its own, else the run's."""
        return self.student_tokenizers.get(student.tokenizer, self.tokenizer)

    def eval_iter(self):
        """This pass's eval batches: the first `train.eval_batches` of the split, on every rank."""
        return islice(iter(self.eval_batches), self.eval_limit) if self.eval_batches else iter(())


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
    except PipelineError as e:
        raise PipelineError(
            f"{e} (the tokenizer named by {key}; set data.tokenizer=DIR to the tokenizer the "
            "shards were made with)"
        ) from None
    info = tokenizer_info(tok, name=source)
    manifest.check_tokenizer(info, source=f"data.train_shards={cfg.data.train_shards}")
    return tok, info


def build_inputs(cfg: RunConfig, rt: Runtime, micro_batch: int) -> Inputs:
    d, t = cfg.data, cfg.train
    manifest = manifest_of(cfg)
    if manifest.max_len != d.max_len:
        raise ValueError(
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
            micro_batch,
            rank=rt.rank,
            world_size=rt.world_size,
            tokenizer=info,
            is_continuation=table,
            seed=t.seed,
            mask_prob=d.mask_prob,
            whole_word=d.whole_word,
        )
    return Inputs(manifest, tok, info, loader, held, t.eval_batches, own)
