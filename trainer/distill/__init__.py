"""Distillation: the objective kinds and their terms (objectives), the loss functions (losses), the
teacher's outputs the losses read (teacher_signals)."""
