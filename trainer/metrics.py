"""One metrics interface: `log(values, step)`, `text(tag, markdown, step)` and `close()`;
TensorBoard on rank 0, no-op elsewhere.

Tags are namespaced (what TensorBoard groups by):
    train/<student>/loss, train/<student>/loss_<term>, train/<student>/lr,
    train/<student>/grad_norm, train/<student>/skipped_steps
    perf/tokens_per_s, perf/samples_per_s, perf/teacher_share, perf/data_share,
    perf/step_time_s/<student>, perf/gpu_peak_allocated_gb (GPU) or perf/cpu_peak_rss_gb (CPU)
    data/skipped_shards (shards skipped as corrupt so far, all ranks; data.skip_corrupt)
    eval/<student>/mlm_loss, eval/<student>/mlm_acc, eval/<student>/teacher_agreement,
    eval/<student>/entity_acc (with data.entities), eval/teacher/mlm_loss, eval/teacher/mlm_acc,
    eval/teacher/entity_acc; relative figures (trainer/summary.py): eval/<student>/acc_to_teacher,
    eval/<student>/entity_acc_to_teacher, eval/teacher/entity_acc_to_ceiling,
    eval/<student>/acc_gain_vs_twin, eval/<student>/entity_acc_gain_vs_twin
    text: summary (the run's summary table, at its end)
Watch a run with `tensorboard --logdir runs/<name>/tensorboard`.
"""

from __future__ import annotations

from pathlib import Path


class MetricsWriter:
    def __init__(self, log_dir: str | Path, *, enabled: bool) -> None:
        self._writer = None
        if enabled:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(log_dir=str(log_dir))

    def log(self, values: dict[str, float], step: int) -> None:
        if self._writer is None:
            return
        for tag, value in values.items():
            if value is not None:  # NaN is logged as NaN: a diverging run should show it
                self._writer.add_scalar(tag, value, global_step=step)
        self._writer.flush()

    def text(self, tag: str, markdown: str, step: int) -> None:
        """Markdown in TensorBoard's Text tab."""
        if self._writer is not None:
            self._writer.add_text(tag, markdown, global_step=step)
            self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
