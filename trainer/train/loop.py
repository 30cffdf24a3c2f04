"""The cohort loop: one batch, one teacher pass, every active student's step.

    batch = next(loader)                              # the same masked batch for every student
    t = teacher(batch)                                # once, only the signals the cohort needs
    for s in active students:                         # each its own engine, optimizer, budget
        out = s.engine(batch); loss = s.objective(out, t, batch)      # fp32 loss math
        s.engine.backward(loss); s.engine.step()

- Steps are optimizer steps (each `gradient_accumulation_steps` micro-batches from the DeepSpeed
  JSON, a window). A student leaves the cohort at its own budget and is exported then; the run
  ends when all have, or at train.max_steps. Every engine must reach its accumulation boundary at
  the window's last micro-batch, and only there (checked). Saves and preemption happen between
  windows, never inside one.
- Loss normalisation over the window: the prefetcher loads a window at once, its counts (masked
  rows, tokens, ...) are summed over ranks (one small all-reduce per step), and each micro-batch's
  terms are scaled to their share of the window's mean (trainer/distill/objectives.py). With the
  masks a function of the sample (data_pipeline/masking.py), 2 x 12 accumulated equals 1 x 24 (and 2
  ranks x 12), as transformers 4.46 fixed it for its Trainer.
- No host sync in the step: losses stay device tensors, summed; they are reduced over ranks and
  read at log steps only. The masked rows are located on the host, and on a GPU the next batch is
  copied while this step runs (trainer/train/batch.py).
- Non-finite steps: DeepSpeed checks the gradients before every optimizer step (bf16
  `check_grad_overflow`, on by default; fp32 through the clipping norm) and discards a step whose
  gradients are not finite, counting it in `skipped_steps`. The loop reads that host counter: with
  train.on_nonfinite=stop it stops naming the student, step and term (the checkpoints are kept);
  with skip it warns and goes on.
- train.teacher_ahead launches the teacher's forward for the next batch right after this one's,
  on a side CUDA stream, beside the students' steps (trainer/train/teacher_ahead.py); same results.
- Preemption: SIGUSR1/SIGTERM (or a first Ctrl-C) only set a flag (trainer/runtime/preemption.py);
  at the next step boundary the ranks agree on it, save a complete checkpoint and exit with
  EXIT_PREEMPTED.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from trainer.checkpoint.elastic import restore
from trainer.checkpoint.store import Checkpointer, ResumePlan
from trainer.config.recipe import RunConfig, to_yaml
from trainer.distill.objectives import NORMALIZERS
from trainer.export.hf_export import LiveExports
from trainer.models.teacher import Teacher
from trainer.runtime.distributed import Runtime
from trainer.runtime.preemption import EXIT_PREEMPTED, PreemptionFlag
from trainer.train.batch import Counts, DeviceBatch, DevicePrefetcher
from trainer.train.heldout import heldout_metrics
from trainer.train.inputs import Inputs
from trainer.train.metrics import (
    MetricsWriter,
    TrainLog,
    engine_figures,
    hparams_of,
    peak_memory,
    progress_line,
    time_figures,
)
from trainer.train.rng import global_state, set_global_state
from trainer.train.summary import (
    RELATIVE_SUFFIXES,
    add_deployment,
    eval_line,
    relative_figures,
    render_markdown,
    render_table,
    run_summary,
    twins_of,
    write_summary,
)
from trainer.train.teacher_ahead import TeacherAhead
from trainer.train.timing import StepTimer

if TYPE_CHECKING:
    from trainer.models.cohort import Student

logger = logging.getLogger(__name__)
RUN_RECORD = ("recipe.resolved.yaml", "ds_config.json")  # copied into every checkpoint


class NonFiniteLoss(RuntimeError):
    """A student's step had non-finite gradients and train.on_nonfinite is "stop"."""


class Trainer:
    def __init__(
        self,
        cfg: RunConfig,
        rt: Runtime,
        teacher: Teacher | None,
        students: list[Student],
        inputs: Inputs,
        checkpointer: Checkpointer,
        metrics: MetricsWriter,
        run_dir: Path,
        preempt: PreemptionFlag | None = None,
    ) -> None:
        self.cfg, self.rt, self.teacher, self.students = cfg, rt, teacher, students
        self.inputs, self.checkpointer, self.metrics = inputs, checkpointer, metrics
        self.run_dir = Path(run_dir)
        self.step = 0
        self.tokens = 0  # real tokens this rank trained on (all sessions)
        self.samples = 0
        self.last_eval: dict[str, float] = {}
        self._eval_step = -1  # the step of the last evaluation
        self._settled: set[str] = set()  # students evaluated after they left the cohort
        # the teacher's results per eval batch (trainer/train/heldout.py)
        self._teacher_eval: list = []
        # ONNX files' held-out accuracy: on what the held-out evaluation reads (export.onnx)
        heldout = (cfg.data.eval_shards, inputs.eval_sequences) if inputs.eval_sequences else None
        self.exports = LiveExports(
            cfg, rt, self.run_dir, inputs.student_tokenizer, RUN_RECORD, heldout=heldout
        )
        # NOTE: main.py installs the handlers before start-up, so a signal during it still counts
        self.preempt = preempt if preempt is not None else PreemptionFlag()
        self._timer = StepTimer(rt.device)
        self._batches: DevicePrefetcher | None = None
        ahead = teacher is not None and cfg.train.teacher_ahead
        # None unless train.teacher_ahead (benchmarks switch it to compare)
        self.teacher_ahead = TeacherAhead(teacher, rt.device) if ahead else None
        self.log = TrainLog([s.name for s in students])
        self._skipped = {s.name: 0 for s in students}

    # ---------------------------------------------------------------- resume and save

    def resume(self, plan: ResumePlan | None) -> bool:
        """Continue from the checkpoint `plan` names (Checkpointer.plan_resume: the newest that
        verifies), if any. NOTE: collective."""
        if plan is None:
            return False
        state = restore(plan, self.checkpointer, self.students)
        self.step, self.tokens, self.samples = state["step"], state["tokens"], state["samples"]
        self.exports.done = set(state["exported"])
        self.last_eval = state.get("last_eval", {})
        self.inputs.loader.load_state_dict(state["loader"])
        set_global_state(state["rng"], self.rt.device)
        for s in self.students:
            s.rng.load_state_dict(state["students"][s.name]["rng"])
            self._skipped[s.name] = s.engine.skipped_steps
        self.log.restart(self.step, self.tokens, self.samples)
        logger.info("resumed from %s at step %d", plan.directory, self.step)
        return True

    def save(self) -> Path:
        state = {
            "step": self.step,
            "tokens": self.tokens,
            "samples": self.samples,
            "exported": sorted(self.exports.done),
            "last_eval": self.last_eval,
            "loader": (self._batches or self.inputs.loader).state_dict(),
            "rng": global_state(self.rt.device),
            "students": {s.name: {"rng": s.rng.state_dict()} for s in self.students},
        }
        cards = self._cards()

        def skeletons(directory: Path) -> None:  # rank 0: what `python -m trainer.export` needs
            self.exports.skeletons(directory, self.students, cards)

        summary = {"saved_at": time.strftime("%Y-%m-%dT%H:%M:%S")}
        return self.checkpointer.save(self.step, self.students, state, summary, skeletons)

    # ---------------------------------------------------------------- the loop

    @property
    def active(self) -> list[Student]:
        return [s for s in self.students if not s.done]

    def fit(self) -> int:
        """Train to the end (returns 0) or to a preemption (saves, returns EXIT_PREEMPTED)."""
        cfg = self.cfg.train
        gas = self.students[0].engine.gradient_accumulation_steps()
        batches = self._batches = DevicePrefetcher(self.inputs.loader, self.rt.device, gas)
        for s in self.students:
            s.engine.train()
        self.metrics.text("recipe", f"```yaml\n{to_yaml(self.cfg)}```", self.step)
        self.preempt.training = True  # NOTE: from here a signal checkpoints instead of exiting
        try:
            while self.active and self.step < cfg.max_steps:
                if self.rt.any(self.preempt.requested is not None):
                    logger.warning(
                        "preemption (%s): saving at step %d", self.preempt.requested, self.step
                    )
                    self.save()
                    return EXIT_PREEMPTED
                active = self.active
                for micro in range(gas):
                    waited = batches.waited
                    batch = next(batches)
                    self._timer.host("data", batches.waited - waited)
                    if batch.position != micro:
                        raise RuntimeError(f"micro-batch {batch.position} of its window at {micro}")
                    if micro == 0:
                        scales = self.window_scales(batch.window_counts)  # collective
                    self.train_batch(batch, active, batches.peek, scales[micro])
                self.log.stepped([s.name for s in active])
                self.step += 1
                finished = self._after_step(active)
                if self.step % cfg.log_every == 0:
                    self._log()
                if self.step % cfg.eval_every == 0 or finished:
                    self.evaluate()  # a leaving student's model card gets its final metrics
                if self.step % cfg.save_every == 0:
                    self.save()
                for s in finished:
                    self._export(s)
            if self.step % cfg.log_every != 0 and self.step > self.log.session_start:
                self._log()
            if self._eval_step != self.step:
                self.evaluate()
            if self.last_eval:
                self.summarize()
            self.save()
            for s in self.students:
                self._export(s)
            if self.rt.is_main and self.last_eval:  # size and latency beside the figures
                summary = add_deployment(self.run_dir, self.cfg, self.teacher)
                if summary is not None:  # TensorBoard's Text tab shows the latest
                    self.metrics.text("summary", render_markdown(summary), self.step)
            if self.teacher_ahead is not None:
                done = self.teacher_ahead.hits + self.teacher_ahead.misses
                logger.info(
                    "train.teacher_ahead: %d of %d batches' teacher signals computed a batch early",
                    self.teacher_ahead.hits,
                    done,
                )
            return 0
        finally:
            self.preempt.training = False
            self.inputs.loader.close()

    def window_scales(self, window: tuple[Counts, ...]) -> list[dict[str, torch.Tensor]]:
        """Per micro-batch of an accumulation window, each normaliser's factor: its count in the
        micro-batch x ranks / the window's count summed over ranks (trainer/distill/objectives.py).
        NOTE: collective. Device tensors: no host sync. 1.0 exactly on one rank without
        accumulation."""
        names = list(NORMALIZERS)
        counts = [[float(NORMALIZERS[n](c)) for n in names] for c in window]
        local = torch.tensor(counts, dtype=torch.float64, device=self.rt.device)
        totals = self.rt.all_reduce_sum(local.sum(0)).clamp(min=1)
        factors = (local * self.rt.world_size / totals).float()
        return [dict(zip(names, row, strict=True)) for row in factors.unbind(0)]

    def train_batch(
        self,
        batch: DeviceBatch | dict,
        active: list[Student],
        upcoming=None,
        scale: dict[str, torch.Tensor] | None = None,
    ) -> None:
        """One micro-batch (on the device, or a loader's host dict) through the teacher and every
        student in `active` (their step). `upcoming` gives the next batch, for train.teacher_ahead
        (trainer/train/teacher_ahead.py). `scale`: the batch's `window_scales`; without it the terms
        are
        the batch's own means and DeepSpeed divides them by the accumulation steps."""
        self._timer.start()
        if isinstance(batch, dict):
            batch = DeviceBatch.from_host(batch, self.rt.device)
        if self.teacher_ahead is not None:
            signals = self.teacher_ahead(batch, upcoming)
        else:
            signals = self.teacher(batch) if self.teacher is not None else None
        self._timer.mark("teacher")
        for s in active:
            with s.rng.active():
                out = s.engine(batch.input_ids, batch.attention_mask, batch.masked_index)
            loss, terms = s.objective(out, signals, batch, scale)
            self._timer.mark(f"{s.name}/forward")
            s.engine.backward(loss, scale_wrt_gas=scale is None)  # scaled: the window's share
            self._timer.mark(f"{s.name}/backward")
            if s.engine.is_gradient_accumulation_boundary() != batch.last_in_window:
                raise RuntimeError(
                    f"student {s.name}: its engine's accumulation boundary is not at the end of "
                    f"the window (micro-batch {batch.position + 1} of {len(batch.window_counts)}, "
                    f"engine micro-steps {s.engine.micro_steps})"
                )
            s.engine.step()
            self._timer.mark(f"{s.name}/optimizer")
            self.log.add(s.name, loss, terms)
        self.tokens += batch.tokens
        self.samples += batch.samples

    def _after_step(self, stepped: list[Student]) -> list[Student]:
        """Act on skipped (non-finite) steps; return the students that just spent their budget."""
        for s in stepped:
            if s.engine.skipped_steps > self._skipped[s.name]:
                self._skipped[s.name] = s.engine.skipped_steps
                self._nonfinite(s)
        finished = [s for s in stepped if s.done]
        for s in finished:
            logger.info("%s: reached its budget of %d steps; leaving the cohort", s.name, s.budget)
        return finished

    def _nonfinite(self, s: Student) -> None:
        terms = self.log.last_terms.get(s.name, {})
        bad = {k: float(v) for k, v in terms.items() if not torch.isfinite(v).all()}
        what = (
            f"non-finite loss term(s) {bad}"
            if bad
            else f"non-finite gradients (loss terms finite on this rank: {sorted(terms)})"
        )
        message = f"student {s.name}: {what} at step {self.step}; DeepSpeed discarded the update"
        if self.cfg.train.on_nonfinite == "skip":
            logger.warning("%s (train.on_nonfinite=skip: going on)", message)
            return
        raise NonFiniteLoss(
            f"{message}. Stopping (train.on_nonfinite=stop); checkpoints are kept in "
            f"{self.checkpointer.root}. Lower students.{s.name}.optimizer.lr, or set "
            "train.on_nonfinite=skip to skip such steps"
        )

    # ---------------------------------------------------------------- logging

    def step_times(self) -> dict[str, float]:
        """Seconds spent since the last call in "data", "teacher" and each student's
        "<name>/forward" (loss included), "<name>/backward" and "<name>/optimizer"."""
        return self._timer.collect()

    def _log(self) -> None:
        """Reduce the running sums over ranks and write them (trainer/train/metrics.py).
        NOTE: collective."""
        skipped_shards = self.inputs.loader.skipped_corrupt  # a running total per rank
        out, names, steps = self.log.reduce(
            self.rt, self.step, self.tokens, self.samples, skipped_shards
        )
        out |= engine_figures(self.students, names)
        out |= time_figures(self.step_times(), [s.name for s in self.students], steps)
        tag, value = peak_memory(self.rt.device)
        out[tag] = value
        self.metrics.log(out, self.step)
        if self.rt.is_main:
            max_steps = self.cfg.train.max_steps
            end = min(max_steps, max((s.budget for s in self.students), default=max_steps))
            rate = self.log.seconds_per_step(self.step)
            logger.info(progress_line(self.step, end, rate, out, names))

    # ---------------------------------------------------------------- evaluation and export

    def evaluate(self) -> dict[str, float]:
        """Held-out metrics of every student and the teacher (trainer/train/heldout.py), logged.
        NOTE: collective."""
        if self.inputs.eval_batches is None:
            return {}
        # NOTE: a student that left the cohort and was evaluated since keeps its figures, and
        # the teacher's are computed once: the eval batches are the same every time.
        fresh = [s for s in self.students if s.name not in self._settled]
        out = {
            k: v
            for k, v in self.last_eval.items()
            if k.split("/")[1] in self._settled and not k.endswith(RELATIVE_SUFFIXES)
        }
        out |= heldout_metrics(
            fresh,
            self.teacher,
            self.inputs.eval_iter(),
            self.rt,
            self.inputs.entities,
            teacher_cache=self._teacher_eval,
        )
        self._settled |= {s.name for s in fresh if s.done}
        out |= relative_figures(out, twins_of(self.cfg), self.inputs.ceiling)
        self.metrics.log(out, self.step)
        self.last_eval, self._eval_step = out, self.step
        if self.rt.is_main:
            logger.info("eval at step %d: %s", self.step, eval_line(out))
        return out

    def summarize(self) -> dict:
        """The run's summary (trainer/train/summary.py) from the last evaluation: runs/<name>/
        summary.{md,json}, the console and TensorBoard's Text tab (rank 0)."""
        summary = run_summary(
            self.cfg, self.step, self.last_eval, twins_of(self.cfg), self.inputs.ceiling
        )
        if self.rt.is_main:
            write_summary(self.run_dir, summary)
            table = render_table(summary)
            self.metrics.text("summary", render_markdown(summary), self.step)
            for s in self.students:
                figures = {k: v for k, v in self.last_eval.items() if k.split("/")[1] == s.name}
                self.metrics.hparams(s.name, hparams_of(s), figures)
            logger.info("held-out figures at step %d:\n%s", self.step, table)
        return summary

    def _cards(self) -> dict[str, str]:
        """Every student's model card as of now (trainer/export/hf_export.py). NOTE: collective."""
        return self.exports.cards(
            self.students,
            step=self.step,
            eval_step=self._eval_step,
            tokens=self.tokens,
            samples=self.samples,
            metrics=self.last_eval,
        )

    def _export(self, s: Student) -> None:
        """Export a student (collective; once per student per run, at its last step)."""
        out = self.exports.export(s, lambda: self._cards()[s.name])
        if out is not None:
            logger.info("%s: exported to %s", s.name, out)
