"""One metrics interface: `log(values, step)`, `text(tag, markdown, step)`, `hparams(...)` and
`close()`; TensorBoard on rank 0, no-op elsewhere.

The trainer names every value with one flat tag, `<group>/<model>/<name>` for a model's values
(the model a student or `teacher`) and `<group>/<name>` for the cohort's. TensorBoard gets one run
per model, runs/<name>/tensorboard/<model>/, with the model left out of the tag (`train/loss`), so
that the students overlay on one chart; the cohort's values are in the root run. `read_scalars`
reads them back under the flat tags.

Flat tags (what the trainer logs):
    train/<student>/loss, train/<student>/loss_<term>, train/<student>/lr,
    train/<student>/grad_norm, train/<student>/skipped_steps, perf/<student>/step_time_s
    perf/tokens_per_s, perf/samples_per_s, perf/teacher_share, perf/data_share,
    perf/gpu_peak_allocated_gb (GPU) or perf/cpu_peak_rss_gb (CPU)
    data/skipped_shards (shards skipped as corrupt so far, all ranks; data.skip_corrupt)
    eval/<student>/mlm_loss, eval/<student>/mlm_acc, eval/<student>/teacher_agreement,
    eval/<student>/entity_acc (with data.entities), eval/teacher/mlm_loss, eval/teacher/mlm_acc,
    eval/teacher/entity_acc; relative figures (trainer/train/summary.py):
    eval/<student>/acc_to_teacher, eval/<student>/entity_acc_to_teacher,
    eval/teacher/entity_acc_to_ceiling, eval/<student>/acc_gain_vs_twin,
    eval/<student>/entity_acc_gain_vs_twin text (root run): recipe (the resolved recipe, at the
    start), summary (at the end) HParams: each student's recipe settings and final held-out figures,
in its run Watch a run with `tensorboard --logdir runs/<name>/tensorboard`. The console's progress
line (`progress_line`) is made from the same values.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from data_pipeline.progress import progress_line as meter
from data_pipeline.progress import si

COHORT = "."  # the root run: values of the whole cohort


def split_tag(tag: str, models: set[str]) -> tuple[str, str]:
    """(run, tag in that run) of a flat tag: `train/A/loss` -> ("A", "train/loss")."""
    parts = tag.split("/")
    if len(parts) >= 3 and parts[1] in models:
        return parts[1], "/".join([parts[0], *parts[2:]])
    return COHORT, tag


def join_tag(run: str, tag: str) -> str:
    """The flat tag of `tag` in `run` (split_tag's inverse)."""
    if run == COHORT:
        return tag
    group, _, rest = tag.partition("/")
    return f"{group}/{run}/{rest}"


class MetricsWriter:
    def __init__(self, log_dir: str | Path, *, enabled: bool, models: list[str] = ()) -> None:
        self.log_dir, self.enabled, self.models = Path(log_dir), enabled, set(models)
        self._writers: dict[str, object] = {}

    def _writer(self, run: str):
        if run not in self._writers:
            from torch.utils.tensorboard import SummaryWriter

            self._writers[run] = SummaryWriter(log_dir=str(self.log_dir / run))
        return self._writers[run]

    def log(self, values: dict[str, float], step: int) -> None:
        if not self.enabled:
            return
        for tag, value in values.items():
            if value is not None:  # NaN is logged as NaN: a diverging run should show it
                run, name = split_tag(tag, self.models)
                self._writer(run).add_scalar(name, value, global_step=step)
        self._flush()

    def text(self, tag: str, markdown: str, step: int) -> None:
        """Markdown in TensorBoard's Text tab (the root run)."""
        if self.enabled:
            self._writer(COHORT).add_text(tag, markdown, global_step=step)
            self._flush()

    def hparams(self, model: str, params: dict, metrics: dict[str, float]) -> None:
        """`model`'s settings and final figures in the HParams tab (one row per model)."""
        if not self.enabled:
            return
        from torch.utils.tensorboard.summary import hparams

        # NOTE: the tab shows each metric's last value from the run's scalars of that tag
        values = {split_tag(k, self.models)[1]: v for k, v in metrics.items() if v is not None}
        params = {k: v if isinstance(v, int | float | str | bool) else str(v)
                  for k, v in params.items()}  # fmt: skip
        writer = self._writer(model)
        for event in hparams(params, values):
            writer.file_writer.add_summary(event)
        self._flush()

    def _flush(self) -> None:
        for writer in self._writers.values():
            writer.flush()

    def close(self) -> None:
        for writer in self._writers.values():
            writer.close()
        self._writers.clear()
        self.enabled = False


def hparams_of(student) -> dict:
    """A student's row in the HParams tab: its recipe settings and shape (trainer/models/cohort.py
    Student)."""
    spec, config, objective = student.spec, student.module.mlm.config, student.objective
    init = spec.init
    source = (
        f"teacher layers {init.from_teacher_layers}" if init.from_teacher_layers is not None
        else init.pretrained or "random (init.config)"
    )  # fmt: skip
    row = {
        "kind": spec.objective.kind,
        "init": source,
        "layers": config.num_hidden_layers,
        "hidden": config.hidden_size,
        "parameters": student.parameters,
        "temperature": objective.temperature,
        "lr": spec.optimizer.lr,
        "warmup_steps": spec.optimizer.warmup_steps,
        "max_steps": spec.optimizer.max_steps,
        "weight_decay": spec.optimizer.weight_decay,
    }
    row.update({f"weight_{term}": w for term, w in objective.weights.items()})
    return row


def read_scalars(log_dir: str | Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar of a run's TensorBoard directory under its flat tag: (step, value) lists."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out: dict[str, list[tuple[int, float]]] = {}
    log_dir = Path(log_dir)
    runs = [COHORT] + sorted(p.name for p in log_dir.iterdir() if p.is_dir())
    for run in runs:
        acc = EventAccumulator(str(log_dir / run))
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            out[join_tag(run, tag)] = [(e.step, e.value) for e in acc.Scalars(tag)]
    return out


# ---------------------------------------------------------------- the training log


@dataclass
class _Running:
    """Device-side sums of one student's loss terms since the last log step."""

    sums: dict[str, torch.Tensor] = field(default_factory=dict)
    steps: int = 0  # optimizer steps the sums span (each a window of micro-batches)

    def add(self, loss: torch.Tensor, terms: dict[str, torch.Tensor]) -> None:
        """A micro-batch's window-scaled loss and terms: a window's add up to its means."""
        for name, value in (("loss", loss), *terms.items()):
            value = value.float()
            self.sums[name] = self.sums[name] + value if name in self.sums else value


class TrainLog:
    """The loss side of a log step: each student's terms summed on the device since the last
    log step (no host sync before it), the throughput since then, the rate for the ETA.

        log.add(name, loss, terms)        # each micro-batch (window-scaled terms)
        log.stepped(names)                # each optimizer step, the students that took it
        out, names, steps = log.reduce(rt, step, tokens, samples, skipped_shards)  # collective
    """

    def __init__(self, names: list[str], clock: Callable[[], float] = time.perf_counter) -> None:
        self._names, self._clock = list(names), clock
        self._running = {n: _Running() for n in self._names}
        self.last_terms: dict[str, dict[str, torch.Tensor]] = {}  # each student's last batch
        self.restart(0, 0, 0)

    def restart(self, step: int, tokens: int, samples: int) -> None:
        """A new session (start-up or resume): the window and the ETA's rate begin here."""
        now = self._clock()
        self._window = (now, tokens, samples, step)  # (time, tokens, samples, step) at last log
        self._session = (now, step)

    @property
    def session_start(self) -> int:
        """The step this process started (or resumed) at."""
        return self._session[1]

    def add(self, name: str, loss: torch.Tensor, terms: dict[str, torch.Tensor]) -> None:
        terms = {k: v.detach() for k, v in terms.items()}
        self._running[name].add(loss.detach(), terms)
        self.last_terms[name] = terms

    def stepped(self, names: list[str]) -> None:
        for name in names:
            self._running[name].steps += 1

    def seconds_per_step(self, step: int) -> float:
        started, first = self._session
        return (self._clock() - started) / max(1, step - first)

    def reduce(
        self, rt, step: int, tokens: int, samples: int, skipped_shards: int
    ) -> tuple[dict[str, float], list[str], int]:
        """The window's figures: each student's mean loss terms per optimizer step (a mean over
        ranks), tokens/s and samples/s (summed over ranks), shards skipped so far (all ranks);
        with the students that stepped and the steps the window spans. Starts the next window.
        NOTE: collective; the one host sync of the log step."""
        names = [n for n in self._names if self._running[n].steps]
        layout = [(n, k) for n in names for k in self._running[n].sums]
        values = [self._running[n].sums[k] / self._running[n].steps for n, k in layout]
        since, tokens0, samples0, step0 = self._window
        counts = [float(tokens - tokens0), float(samples - samples0), float(skipped_shards)]
        packed = torch.tensor(counts, dtype=torch.float64, device=rt.device)
        if values:
            packed = torch.cat([torch.stack(values).double(), packed])
        packed = rt.all_reduce_sum(packed).cpu()
        reduced = packed[: len(layout)] / rt.world_size
        window_tokens, window_samples, skipped = packed[-3:].tolist()
        now = self._clock()
        elapsed = max(now - since, 1e-9)
        self._window = (now, tokens, samples, step)
        self._running = {n: _Running() for n in self._names}

        out: dict[str, float] = {}
        for (name, key), value in zip(layout, reduced.tolist(), strict=True):
            out[f"train/{name}/{'loss' if key == 'loss' else 'loss_' + key}"] = value
        out["perf/tokens_per_s"] = window_tokens / elapsed
        out["perf/samples_per_s"] = window_samples / elapsed
        out["data/skipped_shards"] = skipped  # data.skip_corrupt: on all ranks, so far
        return out, names, max(1, step - step0)


def engine_figures(students: list, names: list[str]) -> dict[str, float]:
    """Learning rate, gradient norm and skipped steps of the students in `names`, read from
    their DeepSpeed engines."""
    out: dict[str, float] = {}
    for s in students:
        if s.name in names:
            out[f"train/{s.name}/lr"] = s.engine.get_lr()[0]
            norm = s.engine.get_global_grad_norm()
            out[f"train/{s.name}/grad_norm"] = float(norm) if norm is not None else None
            out[f"train/{s.name}/skipped_steps"] = s.engine.skipped_steps
    return out


def time_figures(times: dict[str, float], names: list[str], steps: int) -> dict[str, float]:
    """The step's anatomy (trainer/train/timing.py names: "data", "teacher", "<student>/..."): the
    teacher's and the data's share of the time, each student's seconds per optimizer step."""
    total = sum(times.values()) or 1e-9
    out = {
        "perf/teacher_share": times.get("teacher", 0.0) / total,
        "perf/data_share": times.get("data", 0.0) / total,
    }
    for name in names:
        parts = [v for k, v in times.items() if k.startswith(f"{name}/")]
        if parts:
            out[f"perf/{name}/step_time_s"] = sum(parts) / steps
    return out


# ---------------------------------------------------------------- the console


def progress_line(
    step: int, end: int, seconds_per_step: float, out: dict[str, float], names: list[str]
) -> str:
    """`step 40/500 | 0.52 steps/s | ETA 14:40 | A 1.234 (mlm 0.5 kd 0.7) | ... | 3.70k tok/s`
    from a log step's values (`out`, flat tags) for the students in `names`; the counts, rate
    and ETA as every progress line has them (data_pipeline/progress.py)."""
    rate = 1.0 / seconds_per_step if seconds_per_step > 0 else None
    parts = [f"step {meter(step, end, 'steps', rate=rate)}"]
    for name in names:
        terms = " ".join(
            f"{k.removeprefix(f'train/{name}/loss_')} {v:.4g}"
            for k, v in out.items()
            if k.startswith(f"train/{name}/loss_")
        )
        parts.append(f"{name} {out[f'train/{name}/loss']:.4g} ({terms})")
    parts.append(f"{si(out['perf/tokens_per_s'])} tok/s")
    return " | ".join(parts)


def peak_memory(device: torch.device) -> tuple[str, float]:
    """The peak memory tag and value, named for what it measures: the GPU's peak allocated
    memory, or on a CPU the process's peak resident set (it includes the Python heap, the
    loader, everything)."""
    if device.type == "cuda":
        return "perf/gpu_peak_allocated_gb", torch.cuda.max_memory_allocated(device) / 1e9
    import resource

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # KiB on Linux
    return "perf/cpu_peak_rss_gb", rss
