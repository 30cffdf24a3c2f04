"""Run configuration: a YAML recipe plus dotted overrides -> one typed, validated `RunConfig`.

    cfg = load_config("recipes/paper_distilled.yaml", ["students.TinyBioBERT.optimizer.lr=1e-4"])
    cfg = select_students(cfg, ["DistilBioBERT"])          # --students
    dump_config(cfg, run_dir / "recipe.resolved.yaml")     # loads back to an equal RunConfig

Recipe schema: the pydantic models below (data_pipeline/schema.py), nested as `run`, `data`,
`teacher` (absent = no teacher), `train`, `students` (a list; each entry's `name` is its handle).
Each key's type, default, limits and description are its one line; `--print-keys` prints them.
Unknown keys anywhere, ill-typed values and out-of-range numbers raise UserError naming the dotted
key (students.NAME.optimizer.lr); the checks across keys follow in `_validate`. Loading resolves
every default into the config, so the resolved recipe shows what is trained:
- `objective`: `kind` alone suffices; `temperature` and `weights` default per kind
  (docs/objectives.md; trainer/distill/kinds.py `KINDS`, where each kind is defined). Given
  weights replace the defaults term by term (0 switches a term off); a weight for a term the kind
  does not have is an error.
  `mlm` has no temperature.
- Layer maps (compactbiobert, tinybiobert only): `attention_map` and `hidden_map` are lists of
  [student, teacher] index pairs. Attention indices are HF `attentions` entries (layers from 0);
  hidden indices are HF `hidden_states` entries (0 = embeddings output, k = output of layer k).
  compactbiobert: ATT_KL pairs attention i -> 2i+1, COS_layers pairs hidden i -> 2i (i >= 1);
  tinybiobert: ATT_MSE pairs attention i -> 3i+2, HID_MSE pairs hidden j -> 3j (j >= 0). Defaults
  are filled in when the student's depth is known at load (from_teacher_layers or init.config);
  otherwise the trainer calls `fill_layer_maps` and `check_layers` (trainer/distill/kinds.py,
  with the kinds' layer-map rules) once the model is built.
- `optimizer.max_steps` (the student's budget and LR-schedule length) defaults to `train.max_steps`.
  The run stops at `train.max_steps` or when every student has spent its budget, if sooner.
- Shards: a directory with manifest.json means "that split of it" (train for train_shards, eval for
  eval_shards); patterns and URL lists are passed to the loader as they are. Paths are relative to
  the working directory. The batch size is not here: it is the DeepSpeed JSON's micro-batch.

Overrides `key.sub=value` (trainer/config/overrides.py): the value is YAML, read with YAML 1.2
numbers (`1e-4` is a float, not YAML 1.1's string). Students are addressed by name
(`students.DistilBioBERT.optimizer.lr=1e-4`); an unknown student is an error. To switch an
alternative, replace its section whole (`students.X.init={pretrained: DIR}`, `teacher=null`):
adding a second source beside the first is the "exactly one" error.

The models are mutable on purpose: loading fills defaults in place, and the trainer fills a
student's layer maps once its model is built. Nothing here imports torch.

The DeepSpeed JSON side (what it owns, each student's optimizer and schedule):
trainer/config/ds_json.py.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, BaseModel, Field, model_validator
from pydantic_core import PydanticUndefined

from data_pipeline.errors import UserError
from data_pipeline.schema import Bool, Float, Int, Invalid, Schema, Str, type_name, validate
from trainer.config.overrides import YamlLoader, apply_overrides
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
KIND_NAMES = tuple(KINDS)  # objective.kind: trainer/distill/kinds.py defines each

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")
_NAME_RULE = "letters, digits, '-' and '_' (it names directories and overrides)"
_LICENSE = re.compile(r"^[a-z0-9][a-z0-9.+-]*$")
_LICENSE_RULE = "a Hub license id in lower case (apache-2.0, mit, cc-by-4.0, other, ...)"


def _matches(pattern: re.Pattern, rule: str):
    def check(value: str | None) -> str | None:
        if value is not None and not pattern.match(value):
            raise Invalid(rule)
        return value

    return AfterValidator(check)


def _distinct_layers(layers: list[int] | None) -> list[int] | None:
    if layers is not None and not (layers and len(set(layers)) == len(layers) and min(layers) >= 0):
        raise Invalid("distinct layer indices >= 0")
    return layers


def _layer_pairs(pairs: list[list[int]] | None) -> list[list[int]] | None:
    if pairs is None:
        return None
    ok = bool(pairs) and all(len(p) == 2 and min(p) >= 0 for p in pairs)
    if not (ok and len({p[0] for p in pairs}) == len(pairs)):
        raise Invalid("[student, teacher] pairs >= 0, students distinct")
    return pairs


Name = Annotated[Str, _matches(_NAME, _NAME_RULE)]
License = Annotated[Str | None, _matches(_LICENSE, _LICENSE_RULE)]
Shards = Str | list[Str]
Layers = Annotated[list[Int] | None, AfterValidator(_distinct_layers)]
LayerPairs = Annotated[list[list[Int]] | None, AfterValidator(_layer_pairs)]
Weight = Annotated[Float, Field(ge=0)]
Beta = Annotated[Float, Field(ge=0, lt=1)]


class RunSection(Schema):
    name: Name = Field(description="the run's name: run directory = output_dir/name")
    output_dir: Str = Field("runs", description="where run directories are made")
    license: License = Field(
        None, description="exports' card (Hub id); None: the teacher card's, else other"
    )


# data.build_demo: false, or the demo's tokenizer kind (data_pipeline/demo/build.py TOKENIZERS);
# true (the key's meaning before the kinds) is wordpiece, and stays true in the resolved recipe so
# that a teacher built from it is not stale
DemoBuild = Bool | Literal["wordpiece", "bpe"]


class DataSection(Schema):
    train_shards: Shards = Field(description="shard directory (its train split), pattern or list")
    eval_shards: Shards | None = Field(
        None, description="held-out shards (a directory: its eval split); None: no eval"
    )
    max_len: Int = Field(256, ge=2, description="tokens per sequence (the shards' max_len)")
    mask_prob: Float = Field(0.15, gt=0, lt=1, description="fraction of tokens masked for MLM")
    whole_word: Bool = Field(False, description="mask whole words (all pieces of a word together)")
    num_workers: Int = Field(0, ge=0, description="DataLoader worker processes per rank")
    shuffle_shards: Int = Field(4, ge=1, description="shards read as one shuffled block")
    slots: Int | None = Field(
        None,
        ge=1,
        description="the data order's streams (data_pipeline/slots.py); None: ranks x workers at "
        "the first start, kept on resume; a multiple of every ranks x workers a resume may get "
        "keeps the order exact on those",
    )
    skip_corrupt: Bool = Field(False, description="skip (warn, count) shards failing their checks")
    tokenizer: Str | None = Field(
        None, description="for exports; None: the teacher's, else the shards' tokenizer"
    )
    entities: Str | None = Field(
        None, description="entity words (JSON, see trainer/train/inputs.py): eval entity_acc"
    )
    build_demo: DemoBuild = Field(
        False,
        description="the shards are the demo's (DIR/shards), built in DIR when missing with this "
        "tokenizer kind (true: wordpiece)",
    )


class TeacherSection(Schema):  # exactly one of path, config
    path: Str | None = Field(
        None, description="HF name or directory of a masked LM (its family is its own)"
    )
    config: dict[Str, Any] | None = Field(
        None, description="a random teacher: its family's config values (BertConfig's for bert)"
    )
    family: Literal[FAMILY_NAMES] | None = Field(
        None, description="teacher.config's model family (docs/families.md); None: bert"
    )
    allow_new_weights: Bool = Field(
        False, description="accept weights `path` lacks (e.g. no MLM head) at random"
    )
    build: Str | None = Field(
        None, description="a recipe whose one student, exported to `path`, is the teacher"
    )

    @model_validator(mode="after")
    def _build_needs_a_path(self) -> TeacherSection:
        if self.build is not None and self.path is None:
            raise Invalid("teacher.path too: where it is exported", "build", self.build)
        return self


class TrainSection(Schema):
    max_steps: Int = Field(ge=1, description="optimizer steps (each student's default budget)")
    seed: Int = Field(42, ge=0, description="seeds data order, masks, initialisation, dropout")
    log_every: Int = Field(50, ge=1, description="steps between logged losses and rates")
    eval_every: Int = Field(1000, ge=1, description="steps between held-out evaluations")
    save_every: Int = Field(2500, ge=1, description="steps between checkpoints")
    keep: Int = Field(5, ge=1, description="checkpoints kept")
    global_batch: Int | None = Field(
        None,
        ge=1,
        description="sequences per optimizer step on any number of ranks; None: the DeepSpeed "
        "JSON's train_batch_size, else ranks x micro-batch x accumulation",
    )
    eval_batches: Int = Field(
        50, ge=1, description="held-out batches of train.global_batch sequences per evaluation"
    )
    on_nonfinite: Literal["stop", "skip"] = Field(
        "stop", description="a NaN/inf loss stops the run or skips the step"
    )
    compile: Bool | None = Field(
        None, description="torch.compile teacher and students; None: on a GPU only"
    )
    teacher_ahead: Bool = Field(
        False, description="the next batch's teacher forward beside the students' steps"
    )
    mlm_twins: Bool = Field(
        False, description='beside each distilled student X, "X-MLM": same model, MLM only'
    )
    keep_global_batch: Bool = Field(
        True,
        description="a resume on another number of ranks keeps the checkpoint's global batch "
        "(through the accumulation, else a smaller micro-batch; refused where none fits); false: "
        "this start's global batch (trainer/checkpoint/elastic.py)",
    )


class InitSection(Schema):  # exactly one source
    from_teacher_layers: Layers = Field(
        None, description="the teacher's config, these layers and the embeddings copied"
    )
    config: dict[Str, Any] | None = Field(
        None, description="random init: its family's config values (BertConfig's for bert)"
    )
    family: Literal[FAMILY_NAMES] | None = Field(
        None, description="init.config's model family (docs/families.md); None: bert"
    )
    pretrained: Str | None = Field(None, description="HF name or directory (AutoModelForMaskedLM)")


class ObjectiveSection(Schema):
    kind: Literal[KIND_NAMES] = Field(description="the objective (docs/objectives.md)")
    temperature: Float | None = Field(
        None, gt=0, description="None: the kind's default (docs/objectives.md)"
    )
    weights: dict[Str, Weight] = Field(
        default_factory=dict, description="term: weight; terms left out keep the kind's default"
    )
    attention_map: LayerPairs = Field(
        None, description="[[student, teacher], ...] attention layers; None: the kind's rule"
    )
    hidden_map: LayerPairs = Field(
        None,
        description="[[student, teacher], ...] hidden states (0: embeddings); None: kind's rule",
    )
    teacher_layer: Int | None = Field(
        None, description="minilmv2: the teacher layer taught (from 0); None: the last"
    )
    relation_heads: Int | None = Field(
        None, description="minilmv2: relation heads (divide both hidden sizes); None: 12"
    )


class OptimizerSection(Schema):
    lr: Float = Field(gt=0, description="AdamW peak learning rate")
    weight_decay: Float = Field(ge=0, description="AdamW weight decay")
    warmup_steps: Int = Field(
        ge=2, description="linear warmup steps (DeepSpeed's WarmupDecayLR raises fewer to 2)"
    )
    max_steps: Int | None = Field(
        None, ge=1, description="the student's budget and LR-schedule length; None: train.max_steps"
    )
    betas: tuple[Beta, Beta] = Field((0.9, 0.999), description="AdamW betas")
    eps: Float = Field(1e-8, gt=0, description="AdamW epsilon")


class StudentSection(Schema):
    name: Name = Field(description="the student's handle (overrides, directories, exports)")
    init: InitSection = Field(description="where its weights come from")
    objective: ObjectiveSection = Field(description="what it learns")
    optimizer: OptimizerSection = Field(description="its own AdamW and schedule")
    twin_of: Str | None = Field(
        None, description="an MLM-only twin of this student: its initial weights, dropout"
    )

    @property
    def seed_name(self) -> str:
        """The name its random draws (initialisation, dropout) are seeded by: a twin's are its
        sibling's, so that the two differ in their objective only."""
        return self.twin_of or self.name


class ExportSection(Schema):
    onnx: Literal["fp32", "int8"] | None = Field(
        None,
        description="each export also gets model.onnx (fp32; int8: and model.int8.onnx), checked "
        "against PyTorch (the onnx extra); None: none",
    )


class RunConfig(Schema):
    run: RunSection
    data: DataSection
    teacher: TeacherSection | None = None
    train: TrainSection
    students: list[StudentSection]
    export: ExportSection = Field(default_factory=ExportSection)

    @property
    def run_dir(self) -> Path:
        return Path(self.run.output_dir) / self.run.name


# ---------------------------------------------------------------- loading


def load_config(recipe_path: str | Path | None, overrides: Sequence[str] = ()) -> RunConfig:
    """Read a recipe (None: recipes/demo.yaml), apply `key.sub=value` overrides, validate."""
    path = shipped(recipe_path) if recipe_path is not None else DEMO_RECIPE
    if not path.is_file():
        raise UserError(f"recipe {path}: no such file")
    try:
        raw = yaml.load(path.read_text(encoding="utf-8"), Loader=YamlLoader)
    except yaml.YAMLError as e:
        raise UserError(f"recipe {path}: not valid YAML ({e})") from None
    return config_from_dict(apply_overrides(raw, overrides))


def config_from_dict(raw: Any) -> RunConfig:
    """Build and validate a RunConfig from a recipe dict (as read from YAML)."""
    cfg = validate(RunConfig, raw, root="recipe")
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
        raise UserError(
            f"--students {','.join(names)!r}: unknown student(s) {unknown}; "
            f"the recipe has: {', '.join(known)}"
        )
    kept = [s for s in config.students if s.name in names or s.twin_of in names]
    return config.model_copy(update={"students": kept})


def to_dict(config: Any) -> dict:
    """Plain dict of the resolved config, unset (None) fields left out; `config_from_dict` reads it
    back to an equal config."""

    def plain(x: Any) -> Any:
        if isinstance(x, BaseModel):
            values = {name: getattr(x, name) for name in type(x).model_fields}
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
    """YAML of a config or of any of its sections."""
    return yaml.dump(to_dict(config), Dumper=_Dumper, sort_keys=False, width=100)


def dump_config(config: RunConfig, path: str | Path) -> None:
    """Write the resolved recipe (the run directory's recipe.resolved.yaml)."""
    Path(path).write_text(to_yaml(config), encoding="utf-8")


# ---------------------------------------------------------------- checks across keys


def _validate(cfg: RunConfig) -> None:
    teacher = cfg.teacher
    teacher_layers = None
    if teacher is not None and _one_of("teacher", teacher, ("path", "config")) == "config":
        teacher_layers = _depth("teacher.config", teacher.config, teacher.family)
    if teacher is not None and teacher.path is not None:
        expected = "null with teacher.path: a checkpoint's family is its own"
        _require(teacher.family is None, "teacher.family", teacher.family, expected)
    _require(bool(cfg.students), "students", cfg.students, "at least one student")
    names = [s.name for s in cfg.students]
    for s in cfg.students:
        key = f"students.{s.name}"
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
        s_layers = len(layers)
    elif source == "config":
        s_layers = _depth(f"{key}.init.config", init.config, init.family)
    if source != "config":
        expected = "null unless init.config: other students take their source's family"
        _require(init.family is None, f"{key}.init.family", init.family, expected)

    k = f"{key}.objective"
    kind = KINDS[obj.kind]
    no_teacher_kinds = " or ".join(repr(n) for n, o in KINDS.items() if not o.needs_teacher)
    expected = f"{no_teacher_kinds} (its terms need a teacher; the recipe has none)"
    _require(not kind.needs_teacher or not no_teacher, f"{k}.kind", obj.kind, expected)
    if obj.temperature is not None:
        ok = kind.temperature is not None
        _require(ok, f"{k}.temperature", obj.temperature, f"null (kind {obj.kind!r} has none)")
    obj.temperature = kind.temperature if obj.temperature is None else obj.temperature
    for term in obj.weights:
        if term not in kind.weights:
            raise UserError(
                f"unknown key '{k}.weights.{term}': kind {obj.kind!r} has the terms "
                f"{', '.join(kind.weights)}"
            )
    obj.weights = {term: obj.weights.get(term, w) for term, w in kind.weights.items()}
    _require(any(obj.weights.values()), f"{k}.weights", obj.weights, "a weight > 0")
    for name in ("attention_map", "hidden_map"):
        pairs = getattr(obj, name)
        if pairs is not None:
            ok = kind.layer_maps is not None
            _require(ok, f"{k}.{name}", pairs, f"null (kind {obj.kind!r} uses no layer map)")
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
    ok, expected = opt.warmup_steps <= opt.max_steps, f"in [2, max_steps={opt.max_steps}]"
    _require(ok, f"{k}.warmup_steps", opt.warmup_steps, f"an integer {expected}")


def _depth(key: str, config: dict, family: str | None) -> int:
    from trainer.models.families import model_config  # checks every value, names the key

    return model_config(config, key, family).num_hidden_layers


def _one_of(key: str, section: Any, names: tuple[str, ...]) -> str:
    given = [n for n in names if getattr(section, n) is not None]
    _require(len(given) == 1, f"{key} sources", given, f"exactly one of {', '.join(names)}")
    return given[0]


def _require(ok: bool, key: str, value: Any, expected: str) -> None:
    if not ok:
        raise UserError(f"{key}={value!r}: expected {expected}")


# ---------------------------------------------------------------- every key, for --print-keys


def recipe_keys() -> list[tuple[str, str, str, str]]:
    """Every recipe key as (dotted key, type and limits, default or "required", description), in
    schema order; students are addressed by name (students.NAME.key), as overrides address them."""
    out: list[tuple[str, str, str, str]] = []

    def walk(model: type[BaseModel], prefix: str) -> None:
        for name, field in model.model_fields.items():
            section = _section(field.annotation)
            if section is not None:
                many = getattr(field.annotation, "__origin__", None) is list
                walk(section, f"{prefix}{name}.NAME." if many else f"{prefix}{name}.")
                continue
            if field.default_factory is not None:
                default = repr(field.default_factory())
            elif field.default is PydanticUndefined:
                default = "required"
            else:
                default = repr(field.default)
            kind = type_name(field.rebuild_annotation())
            out.append((prefix + name, kind, default, field.description or ""))

    walk(RunConfig, "")
    return out


def _section(annotation: Any) -> type[BaseModel] | None:
    """The model a section key holds (`TeacherSection | None`, `list[StudentSection]`)."""
    for tp in (annotation, *getattr(annotation, "__args__", ())):
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            return tp
    return None


def render_keys() -> str:
    rows = recipe_keys()
    width = max(len(k) for k, *_ in rows)
    lines = ["# every recipe key (override any with key.sub=value; students by name)"]
    for key, kind, default, note in rows:
        line = f"{key:<{width}}  {kind}  = {default}"
        lines.append(f"{line}  # {note}" if note else line)
    return "\n".join(lines)
