"""The schema system of every structured input: pydantic v2 models, one-line errors.

    class Section(Schema):
        max_len: Int = Field(256, ge=2, description="tokens per sequence")
    section = validate(Section, {"max_len": 1})   # UserError: max_len=1: expected an integer >= 2

The recipe (trainer/config/recipe.py), the evaluation settings (evaluation/config.py) and the
shard manifest (data_pipeline/shards/manifest.py) are written this way: each key's type, default,
limits and description on one line, so that validation, error messages and the keys reference
(`--print-keys`) read the same definition.

Types: `Int`, `Float`, `Bool` and `Str` are strict where YAML and JSON could mislead: a bool is no
number and a number no bool, a string is not parsed into a number. Two conversions are kept: an
integral float is an int where an int is wanted (`train.max_steps=1e5`) and an int is a float where
a float is wanted. `Float` refuses nan and inf. `Schema` refuses unknown keys.

Errors: `validate` turns pydantic's ValidationError into a UserError of one line, for the first
problem (an unknown key before others), naming the dotted key:
    key.sub=value: expected <type and limits>       'key.sub' is required
    unknown key 'key.sub'; allowed in 'key': a, b, c
List items that are mappings with a `name` are addressed by it (students.TinyBioBERT.optimizer.lr),
other items by their index (init.from_teacher_layers[1]). A check that a type and its limits cannot
say raises `Invalid` in a validator, with what was expected.
"""

from __future__ import annotations

import re
import types
from typing import Annotated, Any, Literal, NamedTuple, Union, get_args, get_origin

import annotated_types as at
from pydantic import (
    AllowInfNan,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    PrivateAttr,
    Strict,
    TypeAdapter,
    ValidationError,
)
from pydantic.fields import FieldInfo

from data_pipeline.errors import UserError


def _integral(value: Any) -> Any:
    return int(value) if isinstance(value, float) and value.is_integer() else value


Int = Annotated[int, BeforeValidator(_integral), Strict()]
Float = Annotated[float, Strict(), AllowInfNan(False)]
Bool = Annotated[bool, Strict()]
Str = Annotated[str, Strict()]


class Schema(BaseModel):
    """A section of a structured input: unknown keys are an error. `freeze` makes its keys (and
    its sections') read-only."""

    model_config = ConfigDict(extra="forbid")
    _frozen: bool = PrivateAttr(default=False)

    def __setattr__(self, name: str, value: Any) -> None:
        if self._frozen and not name.startswith("_"):
            raise AttributeError(
                f"{type(self).__name__}.{name}: the configuration is frozen (it was written to "
                "the run directory as it is); change it before"
            )
        super().__setattr__(name, value)

    def __deepcopy__(self, memo: dict | None = None) -> Schema:
        """A deep copy is a new configuration: not frozen (its sections are copied the same way)."""
        copied = super().__deepcopy__(memo)
        copied._frozen = False
        return copied


def freeze(node: Any) -> Any:
    """Make `node` (a Schema), its sections and the sections in its lists and dicts read-only;
    returns it. NOTE: a key's own list or dict value stays a Python list or dict."""
    if isinstance(node, Schema):
        for name in type(node).model_fields:
            freeze(getattr(node, name))
        node._frozen = True
    elif isinstance(node, list | tuple):
        for item in node:
            freeze(item)
    elif isinstance(node, dict):
        for item in node.values():
            freeze(item)
    return node


class Invalid(ValueError):
    """Raised by a validator: the value is not what `expected` says (a phrase after "expected").
    `key` (dotted, under the validated node) and `value` name a part of the node, when given."""

    def __init__(self, expected: str, key: str = "", value: Any = ...) -> None:
        super().__init__(expected)
        self.expected, self.key, self.value = expected, key, value


def validate(model: type, data: Any, root: str = "input", source: str | None = None) -> Any:
    """`model` (a pydantic model or dataclass) validated from `data` (plain values, as read from
    YAML or JSON), or UserError with one line naming the key: `root` names the whole input in
    messages ("the recipe"), `source` (a file) opens the line when given."""
    try:
        return TypeAdapter(model).validate_python(data)
    except ValidationError as e:
        line = explain(model, data, e, root)
        raise UserError(f"{source}: {line}" if source else line) from None


def explain(model: type, data: Any, error: ValidationError, root: str) -> str:
    """The one line that says what is wrong with `data` (the first error; unknown keys first)."""
    errors = error.errors(include_url=False)
    first = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])
    loc, kind = tuple(first["loc"]), first["type"]
    if "[key]" in loc:  # a mapping's key: loc is (..., the mapping, the bad key, "[key]")
        at_key = loc.index("[key]")
        node = _locate(model, loc[: at_key - 1], data)
        key_type = get_args(_strip(node.tp)[0])[0] if get_args(_strip(node.tp)[0]) else Any
        if get_origin(key_type) is Literal:
            allowed = ", ".join(map(str, get_args(key_type)))
            where = _where(node.key, root)
            return f"unknown key '{_join(node.key, loc[at_key - 1])}'; {where}: {allowed}"
        return _expected(node, root)
    if kind == "extra_forbidden":
        node = _locate(model, loc[:-1], data)
        allowed = ", ".join(_fields(_strip(node.tp)[0]))
        return f"unknown key '{_join(node.key, loc[-1])}'; {_where(node.key, root)}: {allowed}"
    if kind == "missing" and loc and isinstance(loc[-1], str):
        return f"'{_join(_locate(model, loc[:-1], data).key, loc[-1])}' is required"
    if kind == "missing":  # a fixed-length list one item short: the list is wrong
        return _expected(_locate(model, loc[:-1], data), root)
    node = _locate(model, loc, data)
    if node.value is _ABSENT:  # not a plain value there (a model instance): pydantic's input
        node = node._replace(value=first["input"])
    cause = (first.get("ctx") or {}).get("error")
    if isinstance(cause, Invalid):
        key = _join(node.key, cause.key) if cause.key else node.key
        value = node.value if cause.value is ... else cause.value
        return f"{key or root}={value!r}: expected {cause.expected}"
    if isinstance(cause, Exception):  # a validator's own words
        return f"{node.key or root}={node.value!r}: {cause}"
    return _expected(node, root)


# ---------------------------------------------------------------- where an error is


class _Node(NamedTuple):
    key: str  # dotted, "" for the whole input
    tp: Any  # its annotation, limits included
    value: Any  # what the input holds there (_ABSENT: nothing)


_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")
_ABSENT = object()


def _locate(model: type, loc: tuple, data: Any) -> _Node:
    """The deepest node of the schema along `loc` (pydantic's path to an error): its dotted key,
    its annotation and the value given there. A union stops the walk at the union's key."""
    node = _Node("", model, data)
    for part in loc:
        base, _ = _strip(node.tp)
        origin, args = get_origin(base), get_args(base)
        value = node.value
        if _fields(base) is not None:
            field = _fields(base).get(part) if isinstance(part, str) else None
            if field is None:
                break
            item = value.get(part, _ABSENT) if isinstance(value, dict) else _ABSENT
            node = _Node(_join(node.key, part), field.rebuild_annotation(), item)
        elif origin in (list, tuple) and isinstance(part, int):
            ok = isinstance(value, list | tuple) and part < len(value)
            item = value[part] if ok else _ABSENT
            tp = (
                args[0]
                if origin is list or args[-1] is Ellipsis
                else args[min(part, len(args) - 1)]
            )
            node = _Node(_item_key(node.key, part, item), tp, item)
        elif origin is dict and isinstance(part, str) and part != "[key]":
            item = value.get(part, _ABSENT) if isinstance(value, dict) else _ABSENT
            node = _Node(_join(node.key, part), args[1] if args else Any, item)
        else:
            break
    return node


def _fields(tp: Any) -> dict[str, FieldInfo] | None:
    """A pydantic model's or dataclass's fields by name; None for any other type."""
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return tp.model_fields
    return getattr(tp, "__pydantic_fields__", None) if isinstance(tp, type) else None


def _strip(tp: Any) -> tuple[Any, list]:
    """(the type, its limits): Annotated unwrapped and an optional type's None left out."""
    metadata: list = []
    while True:
        if get_origin(tp) is Annotated:
            tp, *more = get_args(tp)
            metadata += _limits(more)
        elif _is_union(tp) and len(_options(tp)) == 1:
            tp = _options(tp)[0]
        else:
            return tp, metadata


def _is_union(tp: Any) -> bool:
    return get_origin(tp) in (Union, types.UnionType)


def _options(tp: Any) -> list:
    return [a for a in get_args(tp) if a is not type(None)]


def _join(key: str, sub: Any) -> str:
    return f"{key}.{sub}" if key else str(sub)


def _item_key(key: str, i: int, item: Any) -> str:
    name = item.get("name") if isinstance(item, dict) else None
    return f"{key}.{name}" if isinstance(name, str) and _NAME.match(name) else f"{key}[{i}]"


def _where(key: str, root: str) -> str:
    return f"allowed in '{key}'" if key else f"allowed in the {root}"


def _expected(node: _Node, root: str) -> str:
    value = node.value
    if _strip(node.tp)[0] is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)  # as the schema reads it: lr=0 is 0.0
    shown = "(missing)" if value is _ABSENT else repr(value)
    return f"{node.key or root}={shown}: expected {describe(node.tp)}"


# ---------------------------------------------------------------- types in words


_WORDS = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
_NAMES = {bool: "bool", int: "int", float: "float", str: "str", type(None): "None"}


def describe(tp: Any) -> str:
    """A type and its limits as the phrase after "expected": `a number in (0, 1)`."""
    base, metadata = _unwrap(tp)
    if _is_union(base):
        words = " or ".join(describe(a) for a in _options(base))
        words = _with_limits(words, metadata) if len(_options(base)) == 1 else words
        return f"{words} or null" if type(None) in get_args(base) else words
    origin, args = get_origin(base), get_args(base)
    if origin is Literal:
        words = "one of " + ", ".join(map(repr, args))
    elif origin is list:
        words = f"a list of ({describe(args[0])})"
    elif origin is tuple and args and args[-1] is not Ellipsis:
        words = f"a list of {len(args)} ({', '.join(describe(a) for a in args)})"
    elif origin is tuple:
        words = f"a list of ({describe(args[0])})"
    elif origin is dict or base is dict:
        words = (
            f"a mapping of ({describe(args[1])})" if args and args[1] is not Any else "a mapping"
        )
    elif _fields(base) is not None:
        words = f"a mapping with keys {', '.join(_fields(base))}"
    elif base is Any:
        words = "any value"
    else:
        words = _WORDS.get(base) or (
            "null" if base is type(None) else getattr(base, "__name__", "?")
        )
    return _with_limits(words, metadata)


def type_name(tp: Any) -> str:
    """A type and its limits, short, for a keys reference: `int >= 1 | None`."""
    base, metadata = _unwrap(tp)
    if _is_union(base):
        names = [type_name(a) for a in _options(base)]
        if len(names) == 1:
            names = [_with_limits(names[0], metadata)]
        return " | ".join(names + (["None"] if type(None) in get_args(base) else []))
    origin, args = get_origin(base), get_args(base)
    if origin is Literal:
        name = " | ".join(map(repr, args))
    elif origin in (list, tuple, dict):
        inner = ", ".join("..." if a is Ellipsis else type_name(a) for a in args)
        name = f"{origin.__name__}[{inner}]"
    elif base is dict:
        name = "dict"
    elif base is Any:
        name = "any"
    else:
        name = _NAMES.get(base) or getattr(base, "__name__", str(base))
    return _with_limits(name, metadata)


def _unwrap(tp: Any) -> tuple[Any, list]:
    metadata: list = []
    while get_origin(tp) is Annotated:
        tp, *more = get_args(tp)
        metadata += _limits(more)
    return tp, metadata


def _limits(metadata: list) -> list:
    """Annotated's metadata with a `Field(ge=0)` in it spelt out as its limits (annotated_types)."""
    out = []
    for m in metadata:
        out += m.metadata if isinstance(m, FieldInfo) else [m]
    return out


def _with_limits(words: str, metadata: list) -> str:
    low = next(((f"{m.ge}", "[", ">=") for m in metadata if isinstance(m, at.Ge)), None)
    low = low or next(((f"{m.gt}", "(", ">") for m in metadata if isinstance(m, at.Gt)), None)
    high = next(((f"{m.le}", "]", "<=") for m in metadata if isinstance(m, at.Le)), None)
    high = high or next(((f"{m.lt}", ")", "<") for m in metadata if isinstance(m, at.Lt)), None)
    if low and high:
        return f"{words} in {low[1]}{low[0]}, {high[0]}{high[1]}"
    if low or high:
        number, _, sign = low or high
        return f"{words} {sign} {number}"
    return words
