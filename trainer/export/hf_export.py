"""Export students as Hugging Face model directories: weights, config, tokenizer, model card.

Two ways, one format (loads with `AutoModelForMaskedLM.from_pretrained(dir)`, MLM head included;
TinyBioBERT's fit_dense, a training-only projection, is left out; a BERT's pooler, which training
never touches, is put in: trainer/models/pooler.py):

- Live, at the end of a run or when a student leaves the cohort (`export_student`): the optimizer's
  fp32 master weights (not the bf16 training copy), gathered with DeepSpeed's
  `safe_get_full_fp32_param`, which works under ZeRO 1, 2 and 3. NOTE: a collective; every rank
  calls it for the same students in the same order, rank 0 writes.
- On request, from any complete checkpoint, on any machine and without DeepSpeed engines:

      python -m trainer.export runs/demo/checkpoints/step-00000040 [--students A,B] [--output DIR]
          [--onnx [--int8]]               # then model.onnx (trainer/export/onnx.py)
          [--push-to-hub ORG/NAME]        # then push it (trainer/export/hub.py)
      python -m trainer.export runs/demo/export/DistilBioBERT [--onnx [--int8]] [--push-to-hub R]

  Every checkpoint keeps, per student, `hf/` (config, tokenizer, model card, pooler); the weights
  come from DeepSpeed's own zero_to_fp32 reconstruction of the fp32 master weights.

A directory is written under a temporary name and renamed into place: an export that exists is
complete, and its EXPORT.json lists every file with its size and SHA-256. An export replaces only
an export: a directory that is absent, empty, or holds EXPORT.json and nothing besides the files
it lists (or, written before the record existed, a model card of this trainer). Anything else
under that name is the user's, and the export is refused, naming it. `verify_export` checks an
export against its record (--onnx and --push-to-hub of an export refuse one that fails); `seal`
writes the record and renames a finished directory into place (trainer/export/onnx.py adds its
files that way).
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from data_pipeline.io_utils import (
    UserError,
    disk_full_is_an_error,
)
from trainer.export.model_card import model_card, with_model_id
from trainer.export.record import EXPORT_RECORD, not_an_export, not_ours, seal, verify_export
from trainer.models import pooler as poolers
from trainer.models.families import family_of

logger = logging.getLogger(__name__)
MODULE_PREFIX = "mlm."  # the HF model's parameters inside the trained StudentModule
SKELETON = "hf"  # per-student directory in a checkpoint: config, tokenizer, model card, pooler


def gather_fp32_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """Full fp32 copies of `module`'s parameters, on the CPU. NOTE: collective under ZeRO."""
    from deepspeed.utils import safe_get_full_fp32_param

    state = {}
    for name, p in module.named_parameters():
        full = safe_get_full_fp32_param(p)
        state[name] = (full if full is not None else p).detach().float().cpu()
    return state


def load_into(model: nn.Module, state: dict[str, torch.Tensor]) -> nn.Module:
    """Load named parameters into a fresh HF model; tied weights (the decoder) may be absent."""
    missing, unexpected = model.load_state_dict(state, strict=False)
    full = model.state_dict()
    loaded = {full[name].data_ptr() for name in state if name in full}
    untied = [k for k in missing if full[k].data_ptr() not in loaded]
    if unexpected or untied:
        raise ValueError(
            f"export: the weights do not fit {type(model).__name__}: missing {untied}, "
            f"unexpected {unexpected}"
        )
    return model.eval()


def write_export(model: nn.Module, tokenizer, card: str, out_dir: Path, advice: str = "") -> Path:
    """Write model + tokenizer + README.md (`card`, its usage snippet naming `out_dir`) to
    `out_dir`, atomically (temp dir, rename).

    A full disk is a one-line UserError naming `out_dir` and about the bytes needed; nothing
    is left under `out_dir`'s name but a previous export, untouched. `advice` says how to go on.
    """
    out_dir = Path(out_dir)
    problem = not_an_export(out_dir)
    if problem is not None:
        raise UserError(not_ours(out_dir, problem))
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    advice = "nothing was written under that name" + (f"; {advice}" if advice else "")
    with disk_full_is_an_error(out_dir, "exporting", advice, need=lambda: _tensor_bytes(model)):
        tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
        try:
            model.save_pretrained(tmp)
            save_tokenizer(tokenizer, tmp, family_of(model).max_positions(model.config))
            (tmp / "README.md").write_text(with_model_id(card, str(out_dir.resolve())), "utf-8")
            seal(tmp, out_dir)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return out_dir


def _tensor_bytes(model: nn.Module) -> int:
    """What the weights take on disk, about: tied tensors once (asked only when a write failed)."""
    tensors = {t.data_ptr(): t for t in model.state_dict().values()}
    return sum(t.numel() * t.element_size() for t in tensors.values())


def export_student(student, rt, *, out_dir: Path, tokenizer, card: str) -> Path | None:
    """Gather the student's weights (every rank) and write the export (rank 0)."""
    state = gather_fp32_state(student.module.mlm)
    if not rt.is_main:
        return None
    mlm = student.module.mlm
    model = poolers.attach(load_into(type(mlm)(mlm.config), state), student.pooler)
    return write_export(model, tokenizer, card, out_dir, advice=_RESUME_TO_EXPORT)


_RESUME_TO_EXPORT = "free space and start again: the run resumes from its newest checkpoint"


class LiveExports:
    """A run's model cards and live exports (trainer/train/loop.py calls it).

    - `cards(...)`: every student's model card as of now, remade only when the step or the last
      evaluation changed (checkpoints and exports of one step share them).
    - `skeletons(directory, ...)`: what a checkpoint keeps so that `python -m trainer.export`
      can export it alone (the run's record files, each student's `hf/`).
    - `export(student, card)`: once per student per run, at its last step, to
      runs/<name>/export/<student>/; `done` (saved in the checkpoint) says which are. With
      `export.onnx` (fp32 or int8) rank 0 then adds model.onnx (and model.int8.onnx) through
      trainer/export/onnx.py's `add_onnx`, checked as `python -m trainer.export --onnx` checks
      them, with held-out masked accuracy in each ONNX runtime on `heldout` (the run's eval
      shards and as many sequences as its held-out evaluation reads); a failed check stops the
      run with one line (the Hugging Face export stays).
    NOTE: `cards` and `export` are collective; every rank calls them at the same points.
    """

    def __init__(
        self,
        cfg,
        rt,
        run_dir: Path,
        tokenizer_of,
        record: tuple[str, ...],
        heldout: tuple | None = None,
    ) -> None:
        self.cfg, self.rt, self.run_dir = cfg, rt, Path(run_dir)
        self.heldout = heldout  # (eval shards, sequences) for the ONNX files' accuracy, or None
        self.tokenizer_of = tokenizer_of  # student -> its tokenizer (trainer/train/inputs.py)
        self.record = record  # files of the run directory every checkpoint copies
        self.done: set[str] = set()
        self._made: tuple[tuple[int, int], dict[str, str]] = ((-1, -1), {})
        if cfg.export.onnx is not None:  # NOTE: at start-up, not after days of training
            from trainer.export.onnx import require_onnx

            require_onnx(f"export.onnx={cfg.export.onnx}")

    def cards(
        self,
        students: list,
        *,
        step: int,
        eval_step: int,
        tokens: int,
        samples: int,
        metrics: dict[str, float],
    ) -> dict[str, str]:
        """Cards with the tokens and samples this rank saw summed over ranks, the held-out
        `metrics` of the last evaluation (at `eval_step`). NOTE: collective."""
        when = (step, eval_step)
        if self._made[0] == when:
            return self._made[1]
        seen = self.rt.all_reduce_sum(
            torch.tensor([tokens, samples], dtype=torch.float64, device=self.rt.device)
        ).tolist()
        cards = {
            s.name: model_card(
                s,
                self.cfg,
                steps=s.steps,
                tokens=int(seen[0]),
                samples=int(seen[1]),
                metrics={k: v for k, v in metrics.items() if f"/{s.name}/" in k},
            )
            for s in students
        }
        self._made = (when, cards)
        return cards

    def skeletons(self, directory: Path, students: list, cards: dict[str, str]) -> None:
        """Rank 0, into a checkpoint being written: the record files (overrides applied) and
        each student's config, tokenizer, card and pooler."""
        for name in self.record:
            if (self.run_dir / name).is_file():
                shutil.copyfile(self.run_dir / name, directory / name)
        for s in students:
            write_skeleton(
                directory / s.name / SKELETON,
                s.module.mlm,
                self.tokenizer_of(s),
                cards[s.name],
                s.pooler,
            )

    def export(self, student, card: Callable[[], str]) -> Path | None:
        """Export `student` with its `card()` unless it was (NOTE: `done` is the same on every
        rank, so all skip together, the card's collective too). Returns the directory on
        rank 0."""
        if student.name in self.done:
            return None
        out = export_student(
            student,
            self.rt,
            out_dir=self.run_dir / "export" / student.name,
            tokenizer=self.tokenizer_of(student),
            card=card(),
        )
        if out is not None and self.cfg.export.onnx is not None:
            from trainer.export.onnx import add_onnx

            shards, sequences = self.heldout or (None, 0)
            add_onnx(
                out,
                int8=self.cfg.export.onnx == "int8",
                eval_shards=shards,
                eval_sequences=sequences,
                log=logger.info,
            )
        self.done.add(student.name)
        return out


def write_skeleton(
    directory: Path, mlm: nn.Module, tokenizer, card: str, pooler: poolers.Pooler | None
) -> None:
    """What a checkpoint keeps so that it can be exported alone: config, tokenizer, card, pooler."""
    directory.mkdir(parents=True, exist_ok=True)
    mlm.config.save_pretrained(directory)
    poolers.save(pooler, directory)
    save_tokenizer(tokenizer, directory, family_of(mlm).max_positions(mlm.config))
    (directory / "README.md").write_text(card, encoding="utf-8")


def save_tokenizer(tokenizer, directory: Path, positions: int) -> None:
    """Save `tokenizer` with model_max_length = the model's positions, so that `truncation=True`
    cuts long inputs where the model needs it (the shards' tokenizer says 512 whatever the
    model), under a class name that transformers 4.x knows too."""
    before = tokenizer.model_max_length
    tokenizer.model_max_length = positions
    try:
        tokenizer.save_pretrained(directory)
    finally:
        tokenizer.model_max_length = before
    _loadable_by_transformers_4(Path(directory) / "tokenizer_config.json")


# transformers 5's name for a tokenizer that is its tokenizer.json alone; 4.x has no such class
# ("Tokenizer class TokenizersBackend does not exist") but loads the same file as
# PreTrainedTokenizerFast, which 5.x reads as TokenizersBackend again
_V5_ONLY_CLASSES = {"TokenizersBackend": "PreTrainedTokenizerFast"}


def _loadable_by_transformers_4(config_file: Path) -> None:
    if not config_file.is_file():
        return
    config = json.loads(config_file.read_text(encoding="utf-8"))
    name = config.get("tokenizer_class")
    if name in _V5_ONLY_CLASSES:
        config["tokenizer_class"] = _V5_ONLY_CLASSES[name]
        config_file.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")


# ---------------------------------------------------------------- exports from checkpoints


def export_from_checkpoint(student_dir: Path, out_dir: Path) -> Path:
    """Export one student of a checkpoint (its directory step-N/<student>)."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
    from transformers import AutoConfig, AutoModelForMaskedLM, AutoTokenizer

    skeleton = student_dir / SKELETON
    if not (skeleton / "config.json").is_file():
        raise UserError(f"{student_dir}: no {SKELETON}/config.json; not a student checkpoint")
    state = get_fp32_state_dict_from_zero_checkpoint(str(student_dir))
    mlm_state = {
        k.removeprefix(MODULE_PREFIX): v.float()
        for k, v in state.items()
        if k.startswith(MODULE_PREFIX)
    }
    model = AutoModelForMaskedLM.from_config(AutoConfig.from_pretrained(skeleton))
    poolers.attach(load_into(model, mlm_state), poolers.load(skeleton))
    card = (skeleton / "README.md").read_text(encoding="utf-8")
    tokenizer = AutoTokenizer.from_pretrained(skeleton)
    return write_export(model, tokenizer, card, out_dir, advice="free space and export again")


def main(argv: list[str] | None = None) -> int:
    from trainer.checkpoint.store import MARKER, verify

    p = argparse.ArgumentParser(
        prog="python -m trainer.export",
        description="Export the students of a complete checkpoint as Hugging Face models, and "
        "push exports to the Hugging Face Hub.",
    )
    p.add_argument(
        "checkpoint",
        type=Path,
        help="runs/<name>/checkpoints/step-NNNNNNNN; with --push-to-hub also an export "
        "(runs/<name>/export/<student>), pushed as it is",
    )
    p.add_argument("--students", default=None, help="comma-separated (default: all)")
    p.add_argument("--output", type=Path, default=None, help="default: <run>/export-step-N")
    p.add_argument(
        "--push-to-hub",
        metavar="REPO",
        default=None,
        help="push each export to this Hub model repository (ORG/NAME, created if missing; "
        "for several students put {student} in it: ORG/{student})",
    )
    p.add_argument("--private", action="store_true", help="create the Hub repository private")
    p.add_argument(
        "--onnx",
        action="store_true",
        help="also write model.onnx into each export (checked against PyTorch; needs the onnx "
        "extra); CHECKPOINT may then be an export, which gets it in place",
    )
    p.add_argument(
        "--int8", action="store_true", help="with --onnx: also model.int8.onnx (dynamic int8)"
    )
    p.add_argument(
        "--eval-shards",
        default=None,
        help="with --onnx: shards of the model's vocabulary (a directory or manifest.json) whose "
        "eval split measures masked accuracy in each ONNX runtime",
    )
    p.add_argument(
        "--eval-sequences",
        type=int,
        default=None,
        help="with --eval-shards: how many of its sequences (default 800, "
        "trainer/export/onnx.py's HELDOUT_SEQUENCES)",
    )
    args = p.parse_args(argv)
    if args.int8 and not args.onnx:
        p.error("--int8 needs --onnx")
    if args.eval_shards is not None and not args.onnx:
        p.error("--eval-shards needs --onnx")
    if args.eval_sequences is not None and args.eval_shards is None:
        p.error("--eval-sequences needs --eval-shards")
    if args.eval_sequences is not None and args.eval_sequences < 1:
        p.error(f"--eval-sequences {args.eval_sequences}: expected a positive number")
    heldout = None
    if args.eval_shards is not None:
        from trainer.export.onnx import HELDOUT_SEQUENCES

        heldout = (args.eval_shards, args.eval_sequences or HELDOUT_SEQUENCES)
    ckpt, repo = args.checkpoint, args.push_to_hub
    is_export = (ckpt / "config.json").is_file() or (ckpt / EXPORT_RECORD).is_file()
    if (repo is not None or args.onnx) and is_export and not (ckpt / MARKER).is_file():
        # an export: ONNX files added in place, pushed as it is
        if args.onnx and _onnx([ckpt], args.int8, heldout) != 0:
            return 2
        if repo is None:
            return 0
        problem = verify_export(ckpt) if (ckpt / EXPORT_RECORD).is_file() else None
        if problem is not None:
            print(f"error: {ckpt}: fails verification: {problem}", file=sys.stderr)
            return 2
        return _push([(ckpt.name, ckpt)], repo, args.private)
    if not (ckpt / MARKER).is_file():
        plain = repo is None and not args.onnx
        what = "a complete checkpoint" if plain else "an export nor a complete checkpoint"
        print(f"error: {ckpt}: no {MARKER}; not {what}", file=sys.stderr)
        return 2
    problem = verify(ckpt)
    if problem is not None:
        print(f"error: {ckpt}: fails verification: {problem}", file=sys.stderr)
        return 2
    have = sorted(d.name for d in ckpt.iterdir() if (d / SKELETON).is_dir())
    wanted = args.students.split(",") if args.students else have
    unknown = [n for n in wanted if n not in have]
    if unknown:
        print(f"error: {ckpt}: no student(s) {unknown}; it has {have}", file=sys.stderr)
        return 2
    if repo is not None and len(wanted) > 1 and "{student}" not in repo:
        print(
            f"error: --push-to-hub {repo}: {len(wanted)} students ({', '.join(wanted)}) cannot "
            "share one repository; put {student} in it (ORG/{student}) or pick one with "
            "--students",
            file=sys.stderr,
        )
        return 2
    out = args.output or ckpt.parent.parent / f"export-{ckpt.name}"
    for name in wanted:  # NOTE: before any work, so that nothing is half done
        problem = not_an_export(out / name)
        if problem is not None:
            print(f"error: {not_ours(out / name, problem)}", file=sys.stderr)
            return 2
    exported = []
    for name in wanted:
        try:
            exported.append((name, export_from_checkpoint(ckpt / name, out / name)))
        except UserError as e:  # NOTE: any other exception is a bug: it keeps its traceback
            print(f"error: {e}", file=sys.stderr)
            return 2
        print(f"{name}: {exported[-1][1]}", flush=True)
    if args.onnx and _onnx([d for _, d in exported], args.int8, heldout) != 0:
        return 2
    return 0 if repo is None else _push(exported, repo, args.private)


def _onnx(exports: list[Path], int8: bool, heldout: tuple | None) -> int:
    from trainer.export.onnx import add_onnx

    shards, sequences = heldout or (None, 0)
    for directory in exports:
        try:
            add_onnx(directory, int8=int8, eval_shards=shards, eval_sequences=sequences)
        except UserError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        print(f"{directory.name}: ONNX files in {directory}", flush=True)
    return 0


def _push(exports: list[tuple[str, Path]], repo: str, private: bool) -> int:
    from trainer.export.hub import HubError, push_export

    for name, directory in exports:
        repo_id = repo.replace("{student}", name)
        try:
            url = push_export(directory, repo_id, private=private)
        except HubError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        print(f"{name}: pushed to {url}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
