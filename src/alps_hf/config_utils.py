"""Helpers shared by every config dataclass: fields with help text, JSON round trip.

(HfArgumentParser itself gives every `foo_bar` field the extra flag `--foo-bar`.)
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

from alps_hf.core import atomic_write_text  # noqa: F401  (re-exported: older imports keep working)

#: Field metadata read by alps_hf itself, never passed on to argparse: the `--help` heading, and whether a
#: labeling setting shapes pass 1 (the resume fingerprint).
CONFIG_ONLY_METADATA = ("group", "pass1")


def arg(default: Any = dataclasses.MISSING, help: str = "", group: str | None = None, **kwargs) -> Any:
    """A dataclass field with help text for HfArgumentParser (`default_factory` for lists).

    Args:
        default: the default value (a list is copied for each instance); none makes the flag required.
        help: the flag's help text.
        group: the heading `--help` lists the flag under (e.g. "SAM"); see `alps_hf.cli`.
        **kwargs: passed to `dataclasses.field` (`metadata` is merged).

    Returns:
        The `dataclasses.Field`.
    """
    metadata = {"help": help, **({"group": group} if group else {}), **kwargs.pop("metadata", {})}
    if isinstance(default, list):
        return dataclasses.field(default_factory=lambda: list(default), metadata=metadata, **kwargs)
    return dataclasses.field(default=default, metadata=metadata, **kwargs)


def config_to_dict(config) -> dict[str, Any]:
    """The fields of a config dataclass as a JSON-ready dict (paths as strings)."""
    out = {}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        out[f.name] = str(value) if isinstance(value, Path) else value
    return out


def save_config(config, path: str | os.PathLike, **extra: Any) -> None:
    """Write the resolved config (plus `extra` keys such as library versions) as JSON."""
    data = {**config_to_dict(config), **extra}
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")
