"""Plain data (as read from YAML) -> typed, nested dataclasses, with errors that name the key.

    cfg = build_typed(RunConfig, yaml.safe_load(text))

Every field is coerced to its type hint: dataclasses recursively, Optional and unions (the first
option that fits), Literal, bool/int/float/str (bools are no numbers and numbers no bools; 1e5
is an int where an int is wanted), dict[str, X], list[X] and fixed tuples. Unknown keys are an
error listing the allowed ones, a missing required field is an error, and a value of the wrong
type raises ValueError "dotted.key=value: expected <type>" (list items of named entries are
addressed by their name: students.TinyBioBERT.optimizer.lr).
"""

from __future__ import annotations

import copy
import dataclasses
import re
import types
from dataclasses import fields
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")


def build_typed(cls: type, data: Any, key: str = "") -> Any:
    """An instance of dataclass `cls` from `data`, every field coerced to its type hint."""
    names = [f.name for f in fields(cls)]
    if not isinstance(data, dict):
        raise ValueError(f"{key or 'recipe'}={data!r}: expected a mapping with keys {names}")
    for k in data:
        if k not in names:
            where = f"'{key}'" if key else "the recipe"
            raise ValueError(
                f"unknown key '{_join(key, k)}'; allowed in {where}: {', '.join(names)}"
            )
    hints = get_type_hints(cls)
    kwargs = {}
    for f in fields(cls):
        if f.name in data:
            kwargs[f.name] = _coerce(data[f.name], hints[f.name], _join(key, f.name))
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ValueError(f"'{_join(key, f.name)}' is required")
    return cls(**kwargs)


def _join(key: str, sub: str) -> str:
    return f"{key}.{sub}" if key else sub


def _coerce(value: Any, tp: Any, key: str) -> Any:
    origin, args = get_origin(tp), get_args(tp)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        if len(options) == 1:  # Optional[X]: let X's own (nested) errors through
            return _coerce(value, options[0], key)
        for option in options:
            try:
                return _coerce(value, option, key)
            except ValueError:
                pass
    elif dataclasses.is_dataclass(tp):
        return build_typed(tp, value, key)
    elif origin is Literal:
        if isinstance(value, str) and value in args:
            return value
    elif tp in (bool, int, float, str):
        if isinstance(value, bool) != (tp is bool):  # bools are no numbers, numbers no bools
            pass
        elif tp is float and isinstance(value, int | float):
            return float(value)
        elif tp is int and isinstance(value, float) and value.is_integer():
            return int(value)  # train.max_steps=1e5
        elif isinstance(value, tp):
            return value
    elif tp is dict or origin is dict:
        if isinstance(value, dict) and all(isinstance(k, str) for k in value):
            if not args:
                return copy.deepcopy(value)
            return {k: _coerce(v, args[1], f"{key}.{k}") for k, v in value.items()}
    elif origin is list:
        if isinstance(value, list):
            return [_coerce(v, args[0], _item_key(key, i, v)) for i, v in enumerate(value)]
    elif origin is tuple:
        if isinstance(value, list | tuple) and len(value) == len(args):
            return tuple(
                _coerce(v, a, f"{key}[{i}]")
                for i, (v, a) in enumerate(zip(value, args, strict=True))
            )
    raise ValueError(f"{key}={value!r}: expected {_describe(tp)}")


def _item_key(key: str, i: int, v: Any) -> str:
    name = v.get("name") if isinstance(v, dict) else None
    return f"{key}.{name}" if isinstance(name, str) and _NAME.match(name) else f"{key}[{i}]"


def _describe(tp: Any) -> str:
    origin, args = get_origin(tp), get_args(tp)
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(a) for a in args)
    if origin is Literal:
        return "one of " + ", ".join(map(repr, args))
    if origin is list:
        return f"a list of ({_describe(args[0])})"
    if origin is tuple:
        return f"a list of {len(args)} ({', '.join(_describe(a) for a in args)})"
    simple = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
    return simple.get(tp) or ("null" if tp is type(None) else "a mapping")
