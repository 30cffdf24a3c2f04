"""`--dry-run`'s pre-flight: everything a run needs, checked before any weight or shard is read.

One line per check, `ok` or `FAIL` with the problem and the fix; the dry-run exits 2 when one
fails. Checked: the network where a source is a hub name (offline: HF_HUB_OFFLINE=1, or no
connection to the hub within NETWORK_TIMEOUT_S; then hub names resolve from the local cache only,
at once, without retries), the teacher, every student's source, every model's positions against
data.max_len, the run's tokenizer, the train and eval shards (manifest found, made with that
tokenizer and at data.max_len), the entity file, and the batch arithmetic against the world size.

What the run makes itself is not missing: the demo corpus (data/demo, built on first use) and a
teacher that `teacher.build` trains first.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from data_pipeline.errors import UserError
from data_pipeline.io_utils import first_line
from trainer.cli.teacher_cache import ownership
from trainer.config.recipe import RunConfig
from trainer.models.hub_names import is_hub_name
from trainer.runtime import run_lock

NETWORK_TIMEOUT_S = 3.0
_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")


@dataclass
class Check:
    what: str
    problem: str | None  # None: ok
    detail: str = ""

    def line(self) -> str:
        if self.problem is None:
            return f"ok    {self.what}" + (f": {self.detail}" if self.detail else "")
        return f"FAIL  {self.what}: {self.problem}"


def hub_sources(cfg: RunConfig) -> list[str]:
    sources = [cfg.data.tokenizer]
    if cfg.teacher is not None and cfg.teacher.build is None:
        sources.append(cfg.teacher.path)
    sources += [s.init.pretrained for s in cfg.students]
    return [s for s in sources if s is not None and is_hub_name(s)]


def go_offline_if_unreachable(cfg: RunConfig) -> Check | None:
    """Where the recipe names hub models: whether the hub can be reached. If not, the process
    goes offline (HF_HUB_OFFLINE=1), so that every later lookup uses the local cache at once."""
    names = hub_sources(cfg)
    if not names:
        return None
    if _offline_env():
        _set_offline()
        return Check("network", None, "offline (HF_HUB_OFFLINE=1): hub names come from the cache")
    endpoint = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    host = endpoint.hostname or "huggingface.co"
    port = endpoint.port or (80 if endpoint.scheme == "http" else 443)
    try:
        socket.create_connection((host, port), timeout=NETWORK_TIMEOUT_S).close()
    except OSError as e:
        _set_offline()
        return Check(
            "network",
            None,
            f"offline (no connection to {host}:{port}: {e.strerror or e}); hub names come from "
            "the local cache only (HF_HUB_OFFLINE=1)",
        )
    return Check("network", None, f"{host}:{port} reachable")


def _offline_env() -> bool:
    return any(os.environ.get(k, "").lower() in ("1", "true", "yes") for k in
               ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))  # fmt: skip


def _set_offline() -> None:
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:  # NOTE: read at import; an imported huggingface_hub needs telling too
        import huggingface_hub.constants

        huggingface_hub.constants.HF_HUB_OFFLINE = True
    except ImportError:
        pass


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE") == "1"


def _source(source: str, key: str) -> tuple[object | None, str | None]:
    """(config, None) of a model `source` (a directory or hub name), or (None, why not)."""
    from transformers import AutoConfig

    path = Path(source)
    if path.is_dir():
        if not (path / "config.json").is_file():
            return None, f"{path}/config.json not found; {key} must name a saved model's directory"
        if not any((path / w).is_file() for w in _WEIGHTS):
            return None, f"{path}: no weights ({', '.join(_WEIGHTS)}); save the model there in full"
    elif not is_hub_name(source):
        return None, f"{path}: not found (and not a hub name); set {key} to a model directory"
    try:
        return AutoConfig.from_pretrained(source), None
    except (OSError, ValueError) as e:
        if _offline() and not path.is_dir():
            return None, (
                f"{source}: not in the local hub cache and offline; download it where there is "
                f"network (`hf download {source} --local-dir DIR`) and set {key}=DIR"
            )
        return None, f"{source}: {first_line(e)}"


def run_checks(cfg: RunConfig, ds: dict, world: int) -> list[Check]:
    from trainer.models.families import architecture, model_config

    checks: list[Check] = []
    demo_pending = _demo_pending(cfg)
    teacher_config = None
    built_first = False
    if cfg.teacher is None:
        pass
    elif cfg.teacher.config is not None:
        teacher_config = model_config(cfg.teacher.config, "teacher.config", cfg.teacher.family)
        arch = architecture(teacher_config)
        checks.append(Check("teacher", None, f"teacher.config: a random {arch}"))
    else:
        teacher_config, problem = _source(cfg.teacher.path, "teacher.path")
        built = cfg.teacher.build is not None and ownership(Path(cfg.teacher.path)) is None
        if problem is not None and built:
            built_first, problem = True, None
            checks.append(
                Check("teacher", None, f"{cfg.teacher.path}: made first by {cfg.teacher.build}")
            )
        else:
            arch = f" ({architecture(teacher_config)})" if teacher_config is not None else ""
            checks.append(Check("teacher", problem, f"{cfg.teacher.path}{arch}"))

    positions = {}
    if teacher_config is not None:
        positions["the teacher"] = _positions(teacher_config)
    t_layers = getattr(teacher_config, "num_hidden_layers", None)
    for s in cfg.students:
        what, init = f"student {s.name}", s.init
        if init.from_teacher_layers is not None:
            if t_layers is not None and max(init.from_teacher_layers) >= t_layers:
                problem = (
                    f"init.from_teacher_layers {init.from_teacher_layers}: the teacher has "
                    f"{t_layers} layers (0..{t_layers - 1})"
                )
                checks.append(Check(what, problem))
                continue
            arch = f"{architecture(teacher_config)} " if teacher_config is not None else ""
            checks.append(Check(what, None, f"{arch}teacher layers {init.from_teacher_layers}"))
            if teacher_config is not None:
                positions[what] = _positions(teacher_config)
        elif init.config is not None:
            config = model_config(init.config, f"students.{s.name}.init.config", init.family)
            checks.append(Check(what, None, f"init.config: a random {architecture(config)}"))
            positions[what] = _positions(config)
        else:
            config, problem = _source(init.pretrained, f"students.{s.name}.init.pretrained")
            arch = f" ({architecture(config)})" if config is not None else ""
            checks.append(Check(what, problem, f"{init.pretrained}{arch}"))
            if config is not None:
                positions[what] = _positions(config)
    checks.append(_positions_check(cfg.data.max_len, positions))

    if demo_pending:
        from data_pipeline.demo.build import demo_root

        try:
            root, problem = demo_root(cfg.data.train_shards, "data.train_shards"), None
        except UserError as e:
            root, problem = cfg.data.train_shards, str(e)
        checks.append(Check("shards", problem, f"{root}: the demo corpus, built on first use"))
    else:
        checks += _data_checks(cfg, built_first)
    checks.append(_batch_check(ds, world, cfg.train.global_batch))
    problem = run_lock.foreign(cfg.run_dir)
    checks.append(Check("run directory", problem, str(cfg.run_dir)))
    return checks


def _positions(config) -> int:
    from trainer.models.families import family_of

    return family_of(config).max_positions(config)


def _positions_check(max_len: int, positions: dict[str, int]) -> Check:
    short = {who: n for who, n in positions.items() if n < max_len}
    if not short:
        return Check("positions", None, f"data.max_len={max_len} within every known model's")
    where = "; ".join(f"longer than {who}'s {n}" for who, n in short.items())
    return Check(
        "positions",
        f"data.max_len={max_len}: {where}; re-shard with `--max-len {min(short.values())}` (or "
        "less) and set data.max_len to it",
    )


def _demo_pending(cfg: RunConfig) -> bool:
    """Whether the run builds the demo's shards (data.build_demo) and they are not there yet."""
    shards = Path(str(cfg.data.train_shards))
    return cfg.data.build_demo and not (shards / "manifest.json").is_file()


def _data_checks(cfg: RunConfig, teacher_built_first: bool) -> list[Check]:
    from data_pipeline.shards.reader import resolve_shards
    from trainer.train.inputs import run_tokenizer

    checks, manifest = [], None
    for key, spec, split in (
        ("data.train_shards", cfg.data.train_shards, "train"),
        ("data.eval_shards", cfg.data.eval_shards, "eval"),
    ):
        if spec is None:
            continue
        try:
            shards = resolve_shards(spec, split)
        except UserError as e:
            checks.append(Check(key, f"{e}{_SHARD_FIX}"))
            continue
        m = shards.manifest
        manifest = manifest or m
        problem = None
        if m.max_len != cfg.data.max_len:
            problem = (
                f"{shards.source}: made with max_len {m.max_len}; set data.max_len={m.max_len} "
                "or re-shard"
            )
        samples = sum(shards.counts)
        detail = (
            f"{shards.source}: {len(shards.urls)} shards, {samples:,} samples, max_len {m.max_len}"
        )
        checks.append(Check(key, problem, detail))
    if manifest is not None:
        if teacher_built_first and cfg.data.tokenizer is None:
            checks.append(Check("tokenizer", None, "the teacher's, once teacher.build made it"))
        else:
            try:
                _, info = run_tokenizer(cfg, manifest)
                checks.append(Check("tokenizer", None, f"{info.name}: the shards' vocabulary"))
            except UserError as e:
                checks.append(Check("tokenizer", str(e)))
    if cfg.data.entities is not None and not Path(cfg.data.entities).is_file():
        checks.append(Check("data.entities", f"{cfg.data.entities}: not found"))
    return checks


_SHARD_FIX = (
    "; make them with `python -m data_pipeline shard --input RECORDS --tokenizer TOKENIZER "
    "--output DIR --max-len N` and point the key at DIR"
)


def _batch_check(ds: dict, world: int, global_batch: int | None) -> Check:
    from trainer.config.ds_json import fit_global_batch

    try:
        _, line = fit_global_batch(ds, world, global_batch)
    except UserError as e:
        return Check("batch", str(e))
    return Check("batch", None, line)
