"""`--dry-run`: the resolved recipe and the plan of the run, without loading weights or data.

Models are instantiated on the meta device from their configs (hub configs are fetched when
reachable, else reported as unknown), so parameter counts are exact and nothing is allocated.

Memory estimate per rank (an estimate, printed as such), for Psi parameters and N data-parallel
ranks, with mixed precision as the DeepSpeed JSON sets it:
- model states (ZeRO paper): bf16 weights 2Psi + bf16 gradients 2Psi + fp32 master, momentum and
  variance 12Psi; ZeRO-1 partitions the 12Psi, ZeRO-2 also the gradients, ZeRO-3 everything;
  offload_optimizer moves the optimizer part to host memory.
- activations of one student's micro-batch (students step one after another, so the largest
  counts): per layer s*b*h*(34 + 5*a*s/h) bytes with eager attention (Korthikanti et al. 2022),
  s*b*h*34 with SDPA, plus the masked-row logits (15% of s*b rows x vocabulary, fp32 loss math).
- the teacher's weights (bf16 on GPU) and the signals it keeps for the losses (two batches' worth
  with train.teacher_ahead).
"""

from __future__ import annotations

import copy
import os
from pathlib import Path

import torch

from data_pipeline.errors import UserError
from data_pipeline.io_utils import first_line
from trainer.config.ds_json import fit_global_batch, micro_batch_size
from trainer.config.recipe import RunConfig, to_yaml
from trainer.distill.kinds import fill_layer_maps, uses_attention_maps
from trainer.distill.objectives import Objective, cohort_teacher_need
from trainer.models.families import architecture, family_of, model_config
from trainer.models.parameters import count_parameters

GIB = 1024**3


def _config(source: str):
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(source), None
    except (OSError, ValueError) as e:
        return None, first_line(e)


def _params(config) -> int:
    from transformers import AutoModelForMaskedLM

    with torch.device("meta"):
        model = AutoModelForMaskedLM.from_config(copy.deepcopy(config))
    return count_parameters(model)


def _layers(config) -> int:
    return getattr(config, "num_hidden_layers", None) or config.n_layers


def _hidden(config) -> int:
    return getattr(config, "hidden_size", None) or config.dim


def _heads(config) -> int:
    return getattr(config, "num_attention_heads", None) or config.n_heads


def _model_state_bytes(params: int, ds: dict, world: int) -> tuple[float, float]:
    """(device bytes, host bytes) of weights, gradients and optimizer state per rank."""
    half = ds.get("bf16", {}).get("enabled") or ds.get("fp16", {}).get("enabled")
    w, g, o = (2, 2, 12) if half else (4, 4, 8)
    zero = ds.get("zero_optimization", {})
    stage = int(zero.get("stage", 0))
    offload = zero.get("offload_optimizer", {}).get("device", "none") in ("cpu", "nvme")
    opt = o * params / (world if stage >= 1 else 1)
    grads = g * params / (world if stage >= 2 else 1)
    weights = w * params / (world if stage >= 3 else 1)
    return (weights + grads + (0 if offload else opt)), (opt if offload else 0.0)


def _activation_bytes(config, batch: int, seq: int, eager: bool, vocab: int) -> float:
    h, a, n = _hidden(config), _heads(config), _layers(config)
    per_layer = seq * batch * h * (34 + (5 * a * seq / h if eager else 0))
    masked_rows = 0.15 * batch * seq
    return n * per_layer + masked_rows * vocab * (2 + 4 + 4)


def _built_config(recipe: str):
    """The config of the teacher `teacher.build` will train (its one student's), if it says."""
    from trainer.config.recipe import load_config

    spec = load_config(recipe).students[0]
    if spec.init.config is not None:
        return model_config(
            spec.init.config,
            f"{recipe}: students.{spec.name}.init.config",
            spec.init.family,
        )
    return _config(spec.init.pretrained)[0] if spec.init.pretrained is not None else None


def _build_line(cfg: RunConfig, ds: dict, world: int) -> str:
    from trainer.cli.teacher_build import build_config, fingerprint, ownership, stale_reason

    foreign = ownership(Path(cfg.teacher.path))
    if foreign is not None:
        return (
            f"teacher stage: none: {cfg.teacher.path} {foreign}, so it is loaded as the teacher "
            f"and teacher.build={cfg.teacher.build} is not used"
        )
    build = build_config(cfg)
    spec = build.students[0]
    shards = build.data.train_shards
    try:
        if isinstance(shards, str) and "://" not in shards and not Path(shards).exists():
            reason = f"cannot be checked before {shards} is built (the run builds the demo's)"
        else:
            reason = stale_reason(Path(cfg.teacher.path), fingerprint(cfg, build, ds, world))
    except (OSError, UserError) as e:
        reason = f"cannot be checked yet ({first_line(e)})"
    if reason is None:
        return f"teacher stage: {cfg.teacher.path} is built and current ({cfg.teacher.build})"
    return (
        f"teacher stage first: {cfg.teacher.path} {reason}; {cfg.teacher.build} trains "
        f"{spec.name} for {spec.optimizer.max_steps:,} steps in {build.run_dir}, then exports it"
    )


def render_plan(cfg: RunConfig, ds: dict) -> str:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    try:
        ds, batch_line = fit_global_batch(ds, world, cfg.train.global_batch)
    except UserError as e:  # the pre-flight's batch check says it again, as a failure
        batch_line = f"global batch: {e}"
    micro = micro_batch_size(ds, world)
    seq = cfg.data.max_len
    on_gpu = torch.cuda.is_available()
    lines = ["# resolved recipe", to_yaml(cfg).rstrip(), "", "# plan"]
    lines.append(
        f"{batch_line}; sequences of up to {seq} tokens; {cfg.train.max_steps:,} steps at most"
    )

    teacher_cfg, teacher_note, t_layers = None, "", None
    if cfg.teacher is not None:
        if cfg.teacher.config is not None:
            teacher_cfg = model_config(cfg.teacher.config, "teacher.config", cfg.teacher.family)
        else:
            teacher_cfg, err = _config(cfg.teacher.path)
            teacher_note = f" (config not reachable: {err})" if teacher_cfg is None else ""
            if cfg.teacher.build is not None:
                lines.append(_build_line(cfg, ds, world))
                if teacher_cfg is None:
                    teacher_cfg, teacher_note = _built_config(cfg.teacher.build), ""
        t_layers = _layers(teacher_cfg) if teacher_cfg is not None else None

    objectives, device_bytes, host_bytes, peak_activations = [], 0.0, 0.0, 0.0
    for s in cfg.students:
        init, note = s.init, ""
        if init.from_teacher_layers is not None and teacher_cfg is not None:
            config = family_of(teacher_cfg).student_config(teacher_cfg, init.from_teacher_layers)
        elif init.config is not None:
            config = model_config(init.config, f"students.{s.name}.init.config", init.family)
        elif init.pretrained is not None:
            config, err = _config(init.pretrained)
            note = f" (config not reachable: {err})" if config is None else ""
        else:
            config, note = None, " (teacher config unknown)"
        section = copy.deepcopy(s.objective)
        if config is None:
            lines.append(f"student {s.name}: {section.kind}; parameters unknown{note}")
            continue
        fill_layer_maps(section, _layers(config))
        wider = teacher_cfg is not None and _hidden(config) != _hidden(teacher_cfg)
        objective = Objective.from_section(section, _layers(config), t_layers, wider)
        objectives.append(objective)
        params = _params(config)
        states, host = _model_state_bytes(params, ds, world)
        device_bytes += states
        host_bytes += host
        vocab = config.vocab_size
        eager = uses_attention_maps(s.objective)
        peak_activations = max(
            peak_activations, _activation_bytes(config, micro, seq, eager, vocab)
        )
        weights = ", ".join(f"{k} {v:g}" for k, v in objective.weights.items())
        lines.append(
            f"student {s.name}: {params:,} parameters ({architecture(config)}, "
            f"{_layers(config)} layers, hidden "
            f"{_hidden(config)}, {'eager' if eager else 'SDPA'} attention); {s.objective.kind} "
            f"[{weights}]; needs {objective.student_need().describe()}; budget "
            f"{s.optimizer.max_steps:,} steps, lr {s.optimizer.lr:g}, warmup "
            f"{s.optimizer.warmup_steps:,}"
        )

    need = cohort_teacher_need(objectives)
    teacher_bytes = 0.0
    if cfg.teacher is not None and teacher_cfg is not None and not need.empty:
        params = _params(teacher_cfg)
        teacher_bytes = params * (2 if on_gpu else 4)
        keep = len(need.attentions) * micro * _heads(teacher_cfg) * seq * seq
        keep += len(need.hidden) * micro * seq * _hidden(teacher_cfg)
        signals = 2 * keep + (0.15 * micro * seq * teacher_cfg.vocab_size * 2 * need.logits)
        # train.teacher_ahead: the next batch's signals are alive beside this batch's
        teacher_bytes += signals * (2 if cfg.train.teacher_ahead else 1)
        ahead = "; signals of two batches alive (train.teacher_ahead)" * cfg.train.teacher_ahead
        lines.append(
            f"teacher {cfg.teacher.path or 'teacher.config'}: {params:,} parameters "
            f"({architecture(teacher_cfg)}), frozen; "
            f"computes {need.describe()}{ahead}"
        )
    elif cfg.teacher is not None:
        lines.append(
            f"teacher: {'not needed by the selected students' if need.empty else 'unknown'}"
            f"{teacher_note}"
        )
    else:
        lines.append("teacher: none")
    total = device_bytes + teacher_bytes + peak_activations
    lines.append(
        f"memory per rank (estimate): {total / GIB:.2f} GiB = model states "
        f"{device_bytes / GIB:.2f} + teacher {teacher_bytes / GIB:.2f} + activations "
        f"{peak_activations / GIB:.2f}"
        + (f"; host {host_bytes / GIB:.2f} GiB" if host_bytes else "")
    )
    return "\n".join(lines)
