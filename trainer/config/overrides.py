"""`key.sub=value` overrides, read as YAML: the recipe's, the DeepSpeed JSON's and the evaluation
settings' alike.

    raw = apply_overrides(raw, ["train.max_steps=1e3", "students.TinyBioBERT.optimizer.lr=1e-4"])
    parts, value = parse_override("ds.zero_optimization.stage=3", prefix="ds.")
    raw = yaml.load(text, Loader=YamlLoader)   # a recipe file, with the same numbers

The value is YAML with YAML 1.2 numbers: `1e-4` and `5.0e4` are floats, not YAML 1.1's strings.
Entries of a list of named mappings (`students`) are addressed by their name; an unknown name is
an error. A section absent (or null) in the input is created by an override below it. Errors are
UserError naming the override.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Sequence
from typing import Any

import yaml

from data_pipeline.errors import UserError


class YamlLoader(yaml.SafeLoader):
    """SafeLoader that also reads YAML 1.2 floats such as 1e-4 and 5.0e4 (strings in YAML 1.1)."""


YamlLoader.yaml_implicit_resolvers = {
    k: list(v) for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()
}  # NOTE: a copy with copied lists, so SafeLoader itself is left unchanged
YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+.0123456789"),
)


NAMED = {"students": "student"}  # lists whose entries are addressed by name: what an entry is


def apply_overrides(raw: Any, overrides: Sequence[str], named: dict[str, str] = NAMED) -> Any:
    """A copy of `raw` with each `key.sub=value` set; entries of the lists at the keys of `named`
    are addressed by their `name`."""
    raw = copy.deepcopy(raw)
    for item in overrides:
        parts, value = parse_override(item)
        node = raw
        for depth, part in enumerate(parts[:-1]):
            node = _child(node, part, ".".join(parts[:depth]), item, named)
        if not isinstance(node, dict):
            where = ".".join(parts[:-1]) or "the top level"
            raise UserError(f"override {item!r}: {where} is not a mapping")
        node[parts[-1]] = value
    return raw


def parse_override(item: str, prefix: str = "") -> tuple[list[str], Any]:
    """`[prefix]key.sub=value` -> (["key", "sub"], value), the value read as YAML with YAML 1.2
    numbers (`1e-4` is a float)."""
    key, sep, text = item.partition("=")
    parts = key.strip().removeprefix(prefix).split(".")
    if not sep or not all(parts):
        raise UserError(f"override {item!r}: expected {prefix}key.sub=value")
    try:
        return parts, yaml.load(text, Loader=YamlLoader)
    except yaml.YAMLError as e:
        raise UserError(f"override {item!r}: cannot parse the value as YAML ({e})") from None


def _child(node: Any, part: str, where: str, item: str, named: dict[str, str]) -> Any:
    if isinstance(node, list) and where in named:
        names = [e.get("name") if isinstance(e, dict) else None for e in node]
        if part not in names:
            raise UserError(
                f"override {item!r}: unknown {named[where]} {part!r}; the recipe has: {names}"
            )
        return node[names.index(part)]
    if not isinstance(node, dict):
        raise UserError(f"override {item!r}: {where or 'the top level'} is not a mapping")
    if node.get(part) is None:
        node[part] = {}
    return node[part]
