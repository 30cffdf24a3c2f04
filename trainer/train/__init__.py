"""The training loop (loop), what builds a run (builder), its inputs, batches and random streams,
held-out evaluation, metrics, the summary, timing, the teacher's look-ahead."""
