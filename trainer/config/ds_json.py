"""DeepSpeed JSON configs (ds_configs/*.json) and each student's optimizer and LR schedule.

    ds = ds_config_for_student(load_ds_config("ds_configs/zero2.json"), cfg.students[0])

DeepSpeed JSON (ds_configs/*.json) owns what DeepSpeed owns: micro-batch
(train_micro_batch_size_per_gpu), gradient accumulation, precision (bf16), ZeRO stage and offload,
gradient clipping. The files carry no "optimizer" or "scheduler" block (one that does is rejected):
each student has its own lr, weight decay, warmup and budget, which `ds_config_for_student` adds
from the recipe as AdamW + WarmupDecayLR: linear warmup from 0 to lr over warmup_steps, then linear
decay to 0 at max_steps, counted in optimizer steps. It is HF's linear schedule one step late
(DeepSpeed sets lr(0) = 0 at start and again after step 1, so steps 1 and 2 run at lr 0).
Checked on DeepSpeed 0.19.8: {"type": "AdamW"} builds DeepSpeed's FusedAdam on GPU and
DeepSpeedCPUAdam under ZeRO-Offload; `torch_adam=True` sets DeepSpeed's own "torch_adam" switch for
torch.optim.AdamW, which the trainer uses on a CPU accelerator. There DeepSpeed's FusedAdam is a C++
op JIT-compiled into ~/.cache/torch_extensions (minutes on 2 cores) whose bias correction keeps
beta**t as a float32 running product shared by every instance in the process: a run resumed at
step t starts from pow(beta, t) instead and ends an ulp or so away from the uninterrupted run at
some steps (tests/test_resume.py). torch's AdamW derives beta**t from the step count each time, as
the CUDA FusedAdam does. DeepSpeedCPUAdam (ZeRO-Offload) keeps the running product too.
Either way the trainer passes no optimizer to deepspeed.initialize. Weight decay applies to every
parameter unless the trainer passes parameter groups (e.g. no decay on biases and LayerNorm).
"""

from __future__ import annotations

import copy
import json
import logging
import os
from pathlib import Path

from data_pipeline.errors import UserError
from trainer.config.overrides import parse_override
from trainer.config.recipe import StudentSection, shipped, shipped_dir

DS_CONFIG_DIR = shipped_dir("ds_configs")

RECIPE_OWNED = ("optimizer", "scheduler")
KEEP_CPU_BF16 = "BIODISTILL_CPU_BF16"  # =1: train in bf16 on a CPU without native bf16 too

logger = logging.getLogger(__name__)


def load_ds_config(path: str | Path) -> dict:
    """Read a DeepSpeed JSON config; it must not carry the recipe's optimizer or scheduler."""
    p = shipped(path)
    if not p.is_file():
        names = ", ".join(sorted(f"ds_configs/{f.name}" for f in DS_CONFIG_DIR.glob("*.json")))
        raise UserError(f"DeepSpeed config {p}: no such file (shipped: {names})")
    try:
        ds = json.loads(p.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"DeepSpeed config {p}: not valid JSON ({e})") from None
    if not isinstance(ds, dict):
        raise UserError(f"DeepSpeed config {p}: expected a JSON object")
    _check_not_owned(ds, str(p))
    _check_keys(ds, f"DeepSpeed config {p}")
    _check_zero(ds, f"DeepSpeed config {p}")
    _check_precision(ds, f"DeepSpeed config {p}")
    return ds


DS_OVERRIDE_PREFIX = "ds."
# Sections whose keys DeepSpeed knows beyond the string constants of deepspeed.runtime.constants
_DS_SECTIONS = (
    "zero_optimization", "activation_checkpointing", "tensorboard", "wandb", "csv_monitor",
    "flops_profiler", "comms_logger", "aio", "compile", "data_efficiency", "elasticity", "amp",
    "autotuning", "torch_autocast",
)  # fmt: skip


def _known_keys(path: tuple[str, ...], node: dict) -> set[str]:
    """The keys DeepSpeed accepts under `path`: those of the JSON, the documented top-level
    keys (deepspeed.runtime.constants) and, under zero_optimization, the fields of DeepSpeed's
    ZeRO model at any depth; elsewhere only the JSON's own."""
    known = set(node)
    if not path:
        import deepspeed.runtime.constants as constants

        known |= {v for k, v in vars(constants).items() if k.isupper() and isinstance(v, str)}
        known |= set(_DS_SECTIONS)
    elif path[0] == "zero_optimization":
        from deepspeed.runtime.zero.config import DeepSpeedZeroConfig

        known |= _model_keys(DeepSpeedZeroConfig, path[1:])
    return known


def _did_you_mean(key: str, known: set[str]) -> str:
    import difflib

    close = difflib.get_close_matches(key, sorted(known), n=3)
    return f"; did you mean {', '.join(close)}?" if close else ""


def _check_keys(ds: dict, where: str) -> None:
    """DeepSpeed ignores top-level keys it does not know: a typo (gradient_clipingg) silently
    turns a setting off. Refuse them, naming the closest (zero_optimization: `_check_zero`)."""
    known = _known_keys((), {})
    for key in ds:
        if key not in known:
            raise UserError(f"{where}: {key!r} is not a DeepSpeed key{_did_you_mean(key, known)}")


def _check_zero(ds: dict, where: str) -> None:
    """The `zero_optimization` section as DeepSpeed's own model (DeepSpeedZeroConfig, pydantic,
    extra keys forbidden at every level) reads it: a bad key or value is one line naming the
    dotted key, e.g. "DeepSpeed config ds.json: zero_optimization.stage=7: Input should be 0, 1,
    2, 3 or 3" (DeepSpeed's words)."""
    section = ds.get("zero_optimization")
    if section is None:
        return
    if not isinstance(section, dict):
        raise UserError(f"{where}: zero_optimization is {section!r}, expected a JSON object")
    # NOTE: imported here, not at the top: it imports torch, and `--print-keys` runs without it
    from deepspeed.runtime.zero.config import DeepSpeedZeroConfig
    from pydantic import ValidationError

    try:
        DeepSpeedZeroConfig(**section)
    except ValidationError as e:
        first, *more = e.errors()
        loc = tuple(str(p) for p in first["loc"])
        key = ".".join(("zero_optimization", *loc))
        extra = f" (and {len(more)} more)" if more else ""
        if first["type"] == "extra_forbidden":
            hint = _did_you_mean(loc[-1], _model_keys(DeepSpeedZeroConfig, loc[:-1]))
            raise UserError(f"{where}: {key!r} is not a DeepSpeed key{hint}{extra}") from None
        raise UserError(f"{where}: {key}={first['input']!r}: {first['msg']}{extra}") from None


def _model_keys(model, path: tuple[str, ...]) -> set[str]:
    """The field names and aliases of the pydantic model at `path` under `model` (a nested
    section such as offload_optimizer), for the "did you mean" of a misspelt key."""
    import typing

    from pydantic import BaseModel

    for part in path:
        field = model.model_fields.get(part)
        kinds = (field.annotation, *typing.get_args(field.annotation)) if field else ()
        model = next((k for k in kinds if isinstance(k, type) and issubclass(k, BaseModel)), None)
        if model is None:
            return set()
    return {n for name, f in model.model_fields.items() for n in (name, f.alias) if n}


_NO_FP16 = (
    "fp16 is not supported: the trainer trains in bf16 (the shipped configs) or fp32, and fp16 "
    "would need loss scaling that its non-finite checks do not handle. Use bf16.enabled=true "
    "(or neither, for fp32)"
)


def _check_precision(ds: dict, where: str) -> None:
    if ds.get("fp16", {}).get("enabled"):
        raise UserError(f"{where}: {_NO_FP16}")


def apply_ds_overrides(ds: dict, overrides: list[str]) -> dict:
    """A copy of the DeepSpeed JSON with each `ds.key.sub=value` set (value parsed as YAML, as
    recipe overrides are), e.g. ds.train_micro_batch_size_per_gpu=2,
    ds.zero_optimization.stage=3. An unknown key is refused, naming the closest known ones."""
    out = copy.deepcopy(ds)
    for item in overrides:
        parts, value = parse_override(item, DS_OVERRIDE_PREFIX)
        if parts[0] == "fp16":
            raise UserError(f"override {item!r}: {_NO_FP16}")
        if parts[0] in RECIPE_OWNED:
            raise UserError(
                f"override {item!r}: the recipe owns each student's {parts[0]} "
                f"(students.NAME.optimizer), not the DeepSpeed JSON"
            )
        node: dict = out
        for depth, part in enumerate(parts):
            where = tuple(parts[:depth])
            known = _known_keys(where, node)
            if part not in known:
                hint = _did_you_mean(part, known)
                section = ".".join(where) or "the top level"
                raise UserError(
                    f"override {item!r}: {part!r} is not a DeepSpeed key at {section}{hint}"
                )
            if depth == len(parts) - 1:
                node[part] = value
            else:
                child = node.setdefault(part, {})
                if not isinstance(child, dict):
                    raise UserError(
                        f"override {item!r}: {'.'.join(parts[: depth + 1])} is "
                        f"{child!r}, not a section"
                    )
                node = child
    _check_not_owned(out, "DeepSpeed overrides")
    _check_zero(out, "DeepSpeed overrides")
    return out


def for_device(ds: dict, device) -> dict:
    """The JSON as this device trains it. On a CPU without native bf16 kernels, torch emulates
    bf16 matrix products about 20x slower than fp32 (measured on an AVX2 EPYC), so bf16 becomes
    fp32 there, said once. BIODISTILL_CPU_BF16=1 keeps bf16 (the tests of the bf16 path)."""
    import torch

    if device.type != "cpu" or not ds.get("bf16", {}).get("enabled"):
        return ds
    if os.environ.get(KEEP_CPU_BF16) == "1" or torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return ds
    logger.warning(
        "DeepSpeed JSON: bf16 on a CPU without native bf16 kernels (torch would emulate them, "
        "about 20x slower): training in fp32 instead; %s=1 keeps bf16",
        KEEP_CPU_BF16,
    )
    out = copy.deepcopy(ds)
    out["bf16"] = {**out["bf16"], "enabled": False}
    return out


def ds_config_for_student(ds: dict, student: StudentSection, *, torch_adam: bool = False) -> dict:
    """A copy of `ds` with the student's AdamW and WarmupDecayLR from its recipe section."""
    _check_not_owned(ds, "DeepSpeed config")
    opt = student.optimizer
    params = {"lr": opt.lr, "betas": list(opt.betas), "eps": opt.eps}
    params["weight_decay"] = opt.weight_decay
    if torch_adam:
        params["torch_adam"] = True
    out = copy.deepcopy(ds)
    out["optimizer"] = {"type": "AdamW", "params": params}
    out["scheduler"] = {
        "type": "WarmupDecayLR",
        "params": {
            "warmup_min_lr": 0.0,
            "warmup_max_lr": opt.lr,
            "warmup_num_steps": opt.warmup_steps,
            "total_num_steps": opt.max_steps,
            "warmup_type": "linear",  # DeepSpeed's default is "log"
        },
    }
    return out


def micro_batch_size(ds: dict, world_size: int) -> int:
    """Sequences per rank per micro-step, as DeepSpeed derives it from the JSON."""
    accumulation = int(ds.get("gradient_accumulation_steps", 1))
    if "train_micro_batch_size_per_gpu" in ds:
        return int(ds["train_micro_batch_size_per_gpu"])
    if "train_batch_size" in ds:
        return int(ds["train_batch_size"]) // (accumulation * world_size)
    raise UserError("DeepSpeed config: set train_micro_batch_size_per_gpu (or train_batch_size)")


def fit_global_batch(ds: dict, world_size: int, global_batch: int | None) -> tuple[dict, str]:
    """`ds` set to train `global_batch` sequences per optimizer step on `world_size` ranks
    (train_batch_size, train_micro_batch_size_per_gpu and gradient_accumulation_steps), and
    the line that says how ("global batch 192 = 4 ranks x 24 x accumulation 2").

    The JSON's train_micro_batch_size_per_gpu is the most a rank takes at once: the accumulation
    makes up the rest, and where no accumulation does, the micro-batch is lowered to the largest
    divisor of the rank's share that fits (said). `global_batch` None: the JSON's
    train_batch_size, else ranks x micro-batch x accumulation, which changes with the rank count
    (said too). A global batch the ranks cannot share evenly is refused with the numbers."""
    given = ds.get("train_batch_size")
    if global_batch is not None and given is not None and int(given) != global_batch:
        raise UserError(
            f"train.global_batch={global_batch} but the DeepSpeed JSON's train_batch_size is "
            f"{given}: drop one of them (or make them equal)"
        )
    if global_batch is None and given is None:
        micro = micro_batch_size(ds, world_size)
        accumulation = int(ds.get("gradient_accumulation_steps", 1))
        total = world_size * micro * accumulation
        line = (
            f"global batch {total} = {_product(world_size, micro, accumulation)} (the recipe "
            "sets no train.global_batch, so it changes with the number of ranks)"
        )
        return dict(ds, train_batch_size=total), line
    target = int(global_batch if global_batch is not None else given)
    if target < 1 or target % world_size:
        lower = max(world_size, target // world_size * world_size)
        raise UserError(
            f"global batch {target} cannot be shared by {world_size} ranks: set "
            f"train.global_batch to a multiple of {world_size} (e.g. {lower} or "
            f"{lower + world_size}), or run on a number of ranks that divides {target}"
        )
    share = target // world_size  # a rank's sequences per optimizer step
    ceiling = int(ds.get("train_micro_batch_size_per_gpu", share))
    fitted = max(d for d in range(1, min(ceiling, share) + 1) if share % d == 0)
    steps = share // fitted
    out = dict(ds, train_micro_batch_size_per_gpu=fitted, gradient_accumulation_steps=steps)
    out["train_batch_size"] = target
    line = f"global batch {target} = {_product(world_size, fitted, steps)}"
    if fitted != ceiling:
        line += (
            f" (micro-batch {ceiling} -> {fitted}: "
            + ("a rank's whole share)" if ceiling > share else f"no accumulation of {ceiling} "
               f"makes a rank's share of {share})")
        )  # fmt: skip
    return out, line


def _product(world_size: int, micro: int, accumulation: int) -> str:
    ranks = f"{world_size} rank{'s' * (world_size != 1)}"
    return f"{ranks} x {micro} x accumulation {accumulation}"


def _check_not_owned(ds: dict, where: str) -> None:
    owned = [k for k in RECIPE_OWNED if k in ds]
    if owned:
        raise UserError(
            f"{where}: has {', '.join(owned)}; each student's optimizer and LR schedule come from "
            "the recipe (students.NAME.optimizer), so remove these blocks"
        )
