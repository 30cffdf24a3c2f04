"""Whether a model source names the Hub or a local directory (no torch, no network).

is_hub_name("dmis-lab/biobert-base-cased-v1.2")   # True unless such a local path exists
hub_id(spec.init.pretrained)                        # the name, or None for a local path
"""

from __future__ import annotations

import re
from pathlib import Path

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")  # org/name or name


def is_hub_name(source: str) -> bool:
    """A name the hub would be asked for: not a local path, and shaped like `org/name`."""
    return not Path(source).expanduser().exists() and _HUB_ID.match(source) is not None


def hub_id(source: str | None) -> str | None:
    """`source` if it names a model on the Hub (org/name or name), None for a local path."""
    return source if source and is_hub_name(source) else None
