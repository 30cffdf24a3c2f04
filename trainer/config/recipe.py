"""Run configuration: a YAML recipe plus dotted overrides -> one typed, validated `RunConfig`.

    cfg = load_config("recipes/paper_distilled.yaml", ["students.TinyBioBERT.optimizer.lr=1e-4"])
    cfg = select_students(cfg, ["DistilBioBERT"])          # --students
    dump_config(cfg, run_dir / "recipe.resolved.yaml")     # loads back to an equal RunConfig

Recipe schema: the dataclasses below, nested as `run`, `data`, `teacher` (absent = no teacher),
`train`, `students` (a list; each entry's `name` is its handle). Unknown keys anywhere, ill-typed
values and out-of-range numbers raise ValueError naming the dotted key (students.NAME.optimizer.lr).
Loading resolves every default into the config, so the resolved recipe shows what is trained:
- `objective`: `kind` alone suffices; `temperature` and `weights` default per kind
  (docs/objectives.md; trainer/distill/objectives.py `KINDS`, where each kind is defined). Given
  weights replace the defaults term by term (0 switches a term off); a weight for a term the kind
  does not have is an error.
  `mlm` has no temperature.
- Layer maps (compactbiobert, tinybiobert only): `attention_map` and `hidden_map` are lists of
  [student, teacher] index pairs. Attention indices are HF `attentions` entries (layers from 0);
  hidden indices are HF `hidden_states` entries (0 = embeddings output, k = output of layer k).
  compactbiobert: ATT_KL pairs attention i -> 2i+1, COS_layers pairs hidden i -> 2i (i >= 1);
  tinybiobert: ATT_MSE pairs attention i -> 3i+2, HID_MSE pairs hidden j -> 3j (j >= 0). Defaults
  are filled in when the student's depth is known at load (from_teacher_layers or init.config);
  otherwise the trainer calls `fill_layer_maps` and `check_layers` (trainer/distill/objectives.py,
  with the kinds' layer-map rules) once the model is built.
- `optimizer.max_steps` (the student's budget and LR-schedule length) defaults to `train.max_steps`.
  The run stops at `train.max_steps` or when every student has spent its budget, if sooner.
- Shards: a directory with manifest.json means "that split of it" (train for train_shards, eval for
  eval_shards); patterns and URL lists are passed to the loader as they are. Paths are relative to
  the working directory. The batch size is not here: it is the DeepSpeed JSON's micro-batch.

Overrides `key.sub=value`: the value is YAML, read with YAML 1.2 numbers (`1e-4` is a float, not
YAML 1.1's string). Students are addressed by name (`students.DistilBioBERT.optimizer.lr=1e-4`); an
unknown student is an error. To switch an alternative, replace its section whole
(`students.X.init={pretrained: DIR}`, `teacher=null`): adding a second source beside the first is
the "exactly one" error.

The DeepSpeed JSON side (what it owns, each student's optimizer and schedule):
trainer/config/ds_json.py.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

import yaml

from trainer.config.typed import build_typed
from trainer.distill.kinds import KIND_OPTIONS, KINDS, check_layers, fill_layer_maps
from trainer.models import families

ROOT = Path(__file__).resolve().parents[2]  # the checkout (trainer/config/recipe.py)
SHIPPED = ("recipes", "ds_configs")  # a checkout's folders; trainer/recipes, ... in an install


def shipped(path: str | Path) -> Path:
    """`path` itself when it exists; else, for `recipes/X` or `ds_configs/X`, the checkout's copy
    or the one an installed package ships (pyproject.toml maps them into trainer/), so that
    `--recipe recipes/paper_distilled.yaml` works from any directory."""
    p = Path(path)
    if p.exists() or p.is_absolute() or not p.parts or p.parts[0] not in SHIPPED:
        return p
    candidate = shipped_dir(p.parts[0]).joinpath(*p.parts[1:])
    return candidate if candidate.exists() else p


def shipped_dir(name: str) -> Path:
    """The checkout's `name` folder (recipes, ds_configs), else the installed package's."""
    checkout, installed = ROOT / name, Path(__file__).resolve().parents[1] / name
    return checkout if checkout.is_dir() or not installed.is_dir() else installed


DEMO_RECIPE = shipped("recipes/demo.yaml")

FAMILY_NAMES = families.FAMILY_NAMES  # teacher.family, init.family: trainer/models/families/
KIND_NAMES = tuple(KINDS)  # objective.kind: trainer/distill/objectives.py defines each
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")


@dataclass
class RunSection:
    name: str
    output_dir: str = "runs"  # run directory = output_dir/name
    license: str | None = None  # exports' card (Hub id); None: the teacher card's, else other


@dataclass
class DataSection:
    train_shards: str | list[str]
    eval_shards: str | list[str] | None = None  # None: no evaluation
    max_len: int = 256
    mask_prob: float = 0.15
    whole_word: bool = False
    num_workers: int = 0
    shuffle_shards: int = 4
    # the data order's streams (data_pipeline/loader.py); null: ranks x workers at the run's
    # start. A multiple of every ranks x workers a resume may get keeps it exact on those.
    slots: int | None = None
    skip_corrupt: bool = False  # skip (warn, count) shards failing their checks (SHA-256, ...)
    tokenizer: str | None = None  # for exports; None: the teacher's, else the shards' tokenizer
    entities: str | None = None  # entity words (JSON, see trainer/train/inputs.py): eval entity_acc


@dataclass
class TeacherSection:
    path: str | None = None  # HF name or directory, loaded as BertForMaskedLM
    config: dict | None = None  # the config of a random teacher (its family's config class)
    family: Literal[FAMILY_NAMES] | None = None  # teacher.config's model family; null: bert
    allow_new_weights: bool = False  # accept weights `path` lacks (e.g. no MLM head) at random
    build: str | None = None  # a recipe whose one student, exported to `path`, is the teacher


@dataclass
class TrainSection:
    max_steps: int
    seed: int = 42
    log_every: int = 50
    eval_every: int = 1000
    save_every: int = 2500
    keep: int = 5  # checkpoints kept
    # None: the DeepSpeed JSON's train_batch_size, else ranks x micro-batch x accumulation,
    # which changes with the rank count (trainer/config/ds_json.py: fit_global_batch)
    global_batch: int | None = None  # sequences per optimizer step on any number of ranks
    eval_batches: int = 50  # held-out batches of train.global_batch sequences per evaluation
    on_nonfinite: Literal["stop", "skip"] = "stop"  # a NaN/inf loss stops the run or skips the step
    compile: bool | None = None  # torch.compile teacher and students; None: on a GPU only
    teacher_ahead: bool = False  # the next batch's teacher forward beside the students' steps
    mlm_twins: bool = False  # beside each distilled student X, "X-MLM": same model, MLM only
    # a resume on another number of ranks keeps the checkpoint's global batch through the
    # accumulation (refused where none fits); false: the new global batch
    # (trainer/checkpoint/elastic.py)
    keep_global_batch: bool = True


@dataclass
class InitSection:  # exactly one source
    from_teacher_layers: list[int] | None = None  # teacher config, these layers + embeddings copied
    config: dict | None = None  # the config of a random student (its family's config class)
    family: Literal[FAMILY_NAMES] | None = None  # init.config's model family; null: bert
    pretrained: str | None = None  # HF name or directory (AutoModelForMaskedLM)


@dataclass
class ObjectiveSection:
    kind: Literal[KIND_NAMES]
    temperature: float | None = None  # None: the kind's default (docs/objectives.md, KINDS)
    weights: dict[str, float] = field(default_factory=dict)
    attention_map: list[list[int]] | None = None  # [[student, teacher], ...], see the docstring
    hidden_map: list[list[int]] | None = None
    teacher_layer: int | None = None  # minilmv2: the teacher layer taught (from 0); None: last
    relation_heads: int | None = None  # minilmv2: relation heads (divide both hidden sizes)


@dataclass
class OptimizerSection:
    lr: float
    weight_decay: float
    warmup_steps: int  # >= 2: DeepSpeed's WarmupDecayLR raises anything lower to 2
    max_steps: int | None = None  # None: train.max_steps
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8


@dataclass
class StudentSection:
    name: str
    init: InitSection
    objective: ObjectiveSection
    optimizer: OptimizerSection
    twin_of: str | None = None  # an MLM-only twin of this student: its initial weights, dropout

    @property
    def seed_name(self) -> str:
        """The name its random draws (initialisation, dropout) are seeded by: a twin's are its
        sibling's, so that the two differ in their objective only."""
        return self.twin_of or self.name


@dataclass(kw_only=True)
class RunConfig:
    run: RunSection
    data: DataSection
    teacher: TeacherSection | None = None
    train: TrainSection
    students: list[StudentSection]

    @property
    def run_dir(self) -> Path:
        return Path(self.run.output_dir) / self.run.name


# ---------------------------------------------------------------- YAML, overrides, loading


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads YAML 1.2 floats such as 1e-4 and 5.0e4 (strings in YAML 1.1)."""


_Loader.yaml_implicit_resolvers = {
    k: list(v) for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()
}  # NOTE: a copy with copied lists, so SafeLoader itself is left unchanged
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+.0123456789"),
)


def load_config(recipe_path: str | Path | None, overrides: Sequence[str] = ()) -> RunConfig:
    """Read a recipe (None: recipes/demo.yaml), apply `key.sub=value` overrides, validate."""
    path = shipped(recipe_path) if recipe_path is not None else DEMO_RECIPE
    if not path.is_file():
        raise FileNotFoundError(f"recipe {path}: no such file")
    try:
        raw = yaml.load(path.read_text(encoding="utf-8"), Loader=_Loader)
    except yaml.YAMLError as e:
        raise ValueError(f"recipe {path}: not valid YAML ({e})") from None
    return config_from_dict(apply_overrides(raw, overrides))


def apply_overrides(raw: Any, overrides: Sequence[str]) -> Any:
    """A copy of the recipe dict with each `key.sub=value` set; students are addressed by name."""
    raw = copy.deepcopy(raw)
    for item in overrides:
        parts, value = parse_override(item)
        node = raw
        for depth, part in enumerate(parts[:-1]):
            node = _child(node, part, ".".join(parts[:depth]), item)
        if not isinstance(node, dict):
            where = ".".join(parts[:-1]) or "the recipe"
            raise ValueError(f"override {item!r}: {where} is not a mapping")
        node[parts[-1]] = value
    return raw


def parse_override(item: str, prefix: str = "") -> tuple[list[str], Any]:
    """`[prefix]key.sub=value` -> (["key", "sub"], value), the value read as YAML with YAML 1.2
    numbers (`1e-4` is a float); the recipe's and the DeepSpeed JSON's overrides alike."""
    key, sep, text = item.partition("=")
    parts = key.strip().removeprefix(prefix).split(".")
    if not sep or not all(parts):
        raise ValueError(f"override {item!r}: expected {prefix}key.sub=value")
    try:
        return parts, yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as e:
        raise ValueError(f"override {item!r}: cannot parse the value as YAML ({e})") from None


def _child(node: Any, part: str, where: str, item: str) -> Any:
    if isinstance(node, list) and where == "students":
        names = [e.get("name") if isinstance(e, dict) else None for e in node]
        if part not in names:
            raise ValueError(
                f"override {item!r}: unknown student {part!r}; the recipe has: {names}"
            )
        return node[names.index(part)]
    if not isinstance(node, dict):
        raise ValueError(f"override {item!r}: {where or 'the recipe'} is not a mapping")
    if node.get(part) is None:
        node[part] = {}
    return node[part]


def config_from_dict(raw: Any) -> RunConfig:
    """Build and validate a RunConfig from a recipe dict (as read from YAML)."""
    cfg = build_typed(RunConfig, raw, "")
    add_twins(cfg)
    _validate(cfg)
    return cfg


TWIN_SUFFIX = "-MLM"


def add_twins(cfg: RunConfig) -> None:
    """train.mlm_twins: after each distilled student X, its MLM-only twin "X-MLM" (same init,
    optimizer and budget; objective mlm; seeded like X). A recipe that already lists the twin
    (a resolved recipe) keeps it as it is."""
    if not cfg.train.mlm_twins:
        return
    have = {s.name for s in cfg.students}
    out = []
    for s in cfg.students:
        out.append(s)
        if s.objective.kind == "mlm" or s.twin_of is not None or s.name + TWIN_SUFFIX in have:
            continue
        twin = StudentSection(
            name=s.name + TWIN_SUFFIX,
            init=copy.deepcopy(s.init),
            objective=ObjectiveSection(kind="mlm"),
            optimizer=copy.deepcopy(s.optimizer),
            twin_of=s.name,
        )
        out.append(twin)
    cfg.students = out


def select_students(config: RunConfig, names: Sequence[str]) -> RunConfig:
    """The config with only the named students and their twins (kept in recipe order)."""
    known = [s.name for s in config.students]
    unknown = [n for n in names if n not in known]
    if unknown or not names:
        raise ValueError(
            f"--students {','.join(names)!r}: unknown student(s) {unknown}; "
            f"the recipe has: {', '.join(known)}"
        )
    kept = [s for s in config.students if s.name in names or s.twin_of in names]
    return dataclasses.replace(config, students=kept)


def to_dict(config: Any) -> dict:
    """Plain dict of the resolved config, unset (None) fields left out; `config_from_dict` reads it
    back to an equal config."""

    def plain(x: Any) -> Any:
        if dataclasses.is_dataclass(x):
            values = {f.name: getattr(x, f.name) for f in fields(x)}
            return {k: plain(v) for k, v in values.items() if v is not None}
        if isinstance(x, list | tuple):
            return [plain(v) for v in x]
        return copy.deepcopy(x)

    return plain(config)


class _Dumper(yaml.SafeDumper):
    """Block mappings; lists of scalars (and of such lists) inline: `betas: [0.9, 0.999]`."""


_Dumper.add_representer(
    list,
    lambda dumper, data: dumper.represent_sequence(
        "tag:yaml.org,2002:seq", data, flow_style=not any(isinstance(v, dict) for v in data)
    ),
)


def to_yaml(config: Any) -> str:
    """YAML of a config or of any of its sections (dataclasses)."""
    return yaml.dump(to_dict(config), Dumper=_Dumper, sort_keys=False, width=100)


def dump_config(config: RunConfig, path: str | Path) -> None:
    """Write the resolved recipe (the run directory's recipe.resolved.yaml)."""
    Path(path).write_text(to_yaml(config), encoding="utf-8")


# ---------------------------------------------------------------- semantic checks


def _validate(cfg: RunConfig) -> None:
    d, t, teacher = cfg.data, cfg.train, cfg.teacher
    _require(bool(_NAME.match(cfg.run.name)), "run.name", cfg.run.name, _NAME_RULE)
    lic = cfg.run.license
    _require(lic is None or bool(_LICENSE.match(lic)), "run.license", lic, _LICENSE_RULE)
    _require(d.max_len >= 2, "data.max_len", d.max_len, "an integer >= 2")
    _require(d.num_workers >= 0, "data.num_workers", d.num_workers, "an integer >= 0")
    _require(d.shuffle_shards >= 1, "data.shuffle_shards", d.shuffle_shards, "an integer >= 1")
    _require(d.slots is None or d.slots >= 1, "data.slots", d.slots, "null or an integer >= 1")
    _require(0.0 < d.mask_prob < 1.0, "data.mask_prob", d.mask_prob, "a number in (0, 1)")
    _require(t.seed >= 0, "train.seed", t.seed, "an integer >= 0")
    for k in ("max_steps", "log_every", "eval_every", "save_every", "keep", "eval_batches"):
        _require(getattr(t, k) >= 1, f"train.{k}", getattr(t, k), "an integer >= 1")
    gb = t.global_batch
    _require(gb is None or gb >= 1, "train.global_batch", gb, "null or an integer >= 1")
    teacher_layers = None
    if teacher is not None and _one_of("teacher", teacher, ("path", "config")) == "config":
        teacher_layers = _depth("teacher.config", teacher.config, teacher.family)
    if teacher is not None and teacher.path is not None:
        expected = "null with teacher.path: a checkpoint's family is its own"
        _require(teacher.family is None, "teacher.family", teacher.family, expected)
    if teacher is not None and teacher.build is not None:
        ok = teacher.path is not None
        _require(ok, "teacher.build", teacher.build, "teacher.path too: where it is exported")
    _require(bool(cfg.students), "students", cfg.students, "at least one student")
    names = [s.name for s in cfg.students]
    for s in cfg.students:
        key = f"students.{s.name}"
        _require(bool(_NAME.match(s.name)), f"{key}.name", s.name, _NAME_RULE)
        _require(names.count(s.name) == 1, f"{key}.name", s.name, "a name no other student has")
        if s.twin_of is not None:
            sibling = next((o for o in cfg.students if o.name == s.twin_of), None)
            ok = sibling is not None and sibling is not s and sibling.init == s.init
            expected = "another student of the recipe with the same init"
            _require(ok, f"{key}.twin_of", s.twin_of, expected)
            _require(s.objective.kind == "mlm", f"{key}.objective.kind", s.objective.kind, "mlm")
        _validate_student(s, key, cfg, teacher_layers)


def _validate_student(s: StudentSection, key: str, cfg: RunConfig, t_layers: int | None) -> None:
    init, obj, opt, no_teacher = s.init, s.objective, s.optimizer, cfg.teacher is None
    source = _one_of(f"{key}.init", init, ("from_teacher_layers", "config", "pretrained"))
    s_layers = None
    if source == "from_teacher_layers":
        layers, k = init.from_teacher_layers, f"{key}.init.from_teacher_layers"
        _require(not no_teacher, k, layers, "a teacher to copy from; the recipe has none")
        ok = bool(layers) and len(set(layers)) == len(layers) and min(layers) >= 0
        _require(ok, k, layers, "distinct layer indices >= 0")
        s_layers = len(layers)
    elif source == "config":
        s_layers = _depth(f"{key}.init.config", init.config, init.family)
    if source != "config":
        expected = "null unless init.config: other students take their source's family"
        _require(init.family is None, f"{key}.init.family", init.family, expected)

    k = f"{key}.objective"
    kind = KINDS[obj.kind]
    default_t, default_w = kind.temperature, kind.weights
    ok = not kind.needs_teacher or not no_teacher
    no_teacher_kinds = " or ".join(repr(n) for n, o in KINDS.items() if not o.needs_teacher)
    _require(
        ok,
        f"{k}.kind",
        obj.kind,
        f"{no_teacher_kinds} (its terms need a teacher; the recipe has none)",
    )
    if obj.temperature is not None:
        ok = default_t is not None
        _require(ok, f"{k}.temperature", obj.temperature, f"null (kind {obj.kind!r} has none)")
        _require(_finite(obj.temperature) > 0, f"{k}.temperature", obj.temperature, "> 0")
    obj.temperature = default_t if obj.temperature is None else obj.temperature
    for term, w in obj.weights.items():
        if term not in default_w:
            raise ValueError(
                f"unknown key '{k}.weights.{term}': kind {obj.kind!r} has the terms "
                f"{', '.join(default_w)}"
            )
        _require(_finite(w) >= 0, f"{k}.weights.{term}", w, "a number >= 0")
    obj.weights = {term: obj.weights.get(term, w) for term, w in default_w.items()}
    _require(any(obj.weights.values()), f"{k}.weights", obj.weights, "a weight > 0")
    for name in ("attention_map", "hidden_map"):
        pairs = getattr(obj, name)
        if pairs is not None:
            ok = kind.layer_maps is not None
            _require(ok, f"{k}.{name}", pairs, f"null (kind {obj.kind!r} uses no layer map)")
            ok = bool(pairs) and all(len(p) == 2 and min(p) >= 0 for p in pairs)
            ok = ok and len({p[0] for p in pairs}) == len(pairs)
            _require(ok, f"{k}.{name}", pairs, "[student, teacher] pairs >= 0, students distinct")
    for name in KIND_OPTIONS:
        value = getattr(obj, name)
        if name not in kind.options:
            _require(value is None, f"{k}.{name}", value, f"null (kind {obj.kind!r} has none)")
            continue
        default, least = kind.options[name]
        value = default if value is None else value
        _require(value is None or value >= least, f"{k}.{name}", value, f"an integer >= {least}")
        setattr(obj, name, value)
    if s_layers is not None:
        fill_layer_maps(obj, s_layers)
    check_layers(s, t_layers, s_layers)

    k = f"{key}.optimizer"
    opt.max_steps = cfg.train.max_steps if opt.max_steps is None else opt.max_steps
    _require(_finite(opt.lr) > 0, f"{k}.lr", opt.lr, "a number > 0")
    _require(opt.max_steps >= 1, f"{k}.max_steps", opt.max_steps, "an integer >= 1")
    ok, expected = 2 <= opt.warmup_steps <= opt.max_steps, f"in [2, max_steps={opt.max_steps}]"
    _require(ok, f"{k}.warmup_steps", opt.warmup_steps, f"an integer {expected}")
    _require(_finite(opt.weight_decay) >= 0, f"{k}.weight_decay", opt.weight_decay, "a number >= 0")
    ok = all(0.0 <= b < 1.0 for b in opt.betas)
    _require(ok, f"{k}.betas", list(opt.betas), "two numbers in [0, 1)")
    _require(_finite(opt.eps) > 0, f"{k}.eps", opt.eps, "a number > 0")


_NAME_RULE = "letters, digits, '-' and '_' (it names directories and overrides)"
_LICENSE = re.compile(r"^[a-z0-9][a-z0-9.+-]*$")
_LICENSE_RULE = "a Hub license id in lower case (apache-2.0, mit, cc-by-4.0, other, ...)"


def _depth(key: str, config: dict, family: str | None) -> int:
    from trainer.models.families import model_config  # checks every value, names the key

    return model_config(config, key, family or "bert").num_hidden_layers


def _one_of(key: str, section: Any, names: tuple[str, ...]) -> str:
    given = [n for n in names if getattr(section, n) is not None]
    _require(len(given) == 1, f"{key} sources", given, f"exactly one of {', '.join(names)}")
    return given[0]


def _finite(x: float) -> float:
    return x if math.isfinite(x) else math.nan  # every comparison with nan is False


def _require(ok: bool, key: str, value: Any, expected: str) -> None:
    if not ok:
        raise ValueError(f"{key}={value!r}: expected {expected}")


# ---------------------------------------------------------------- every key, for --print-keys

_FIELD_LINE = re.compile(r"^\s+(\w+): [^#]+?(?:#\s*(.*))?$")


def _field_notes(cls: type) -> dict[str, str]:
    """The comment after each field in the class's source: the key's one-line description."""
    import inspect

    notes = {}
    for line in inspect.getsource(cls).splitlines():
        m = _FIELD_LINE.match(line)
        if m and m.group(2):
            notes[m.group(1)] = m.group(2).strip()
    return notes


def recipe_keys() -> list[tuple[str, str, str, str]]:
    """Every recipe key as (dotted key, type, default or "required", note), in schema order;
    students are addressed by name (students.NAME.key), as overrides address them."""
    import typing

    out: list[tuple[str, str, str, str]] = []

    def walk(cls: type, prefix: str) -> None:
        hints = typing.get_type_hints(cls)
        notes = _field_notes(cls)
        for f in dataclasses.fields(cls):
            hint = hints[f.name]
            inner = [a for a in typing.get_args(hint) if dataclasses.is_dataclass(a)]
            if dataclasses.is_dataclass(hint) or inner:
                sub = hint if dataclasses.is_dataclass(hint) else inner[0]
                if typing.get_origin(hint) is list:
                    walk(sub, f"{prefix}{f.name}.NAME.")
                else:
                    walk(sub, f"{prefix}{f.name}.")
                continue
            if f.default is not dataclasses.MISSING:
                default = repr(f.default)
            elif f.default_factory is not dataclasses.MISSING:
                default = repr(f.default_factory())
            else:
                default = "required"
            kind = getattr(hint, "__name__", None) if not typing.get_args(hint) else None
            out.append((prefix + f.name, kind or str(hint).replace("typing.", ""), default,
                        notes.get(f.name, "")))  # fmt: skip

    walk(RunConfig, "")
    return out


def render_keys() -> str:
    rows = recipe_keys()
    width = max(len(k) for k, *_ in rows)
    lines = ["# every recipe key (override any with key.sub=value; students by name)"]
    for key, kind, default, note in rows:
        line = f"{key:<{width}}  {kind}  = {default}"
        lines.append(f"{line}  # {note}" if note else line)
    return "\n".join(lines)
