"""Facts and helpers every stage shares: the ignore index, atomic file writes, JSON files.

Imported by every subpackage; imports nothing of alps_hf, so it can never be part of a cycle.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

#: Label value of "no pseudo-class / ignore": painted where no segment is visible, skipped by the
#: losses (`ignore_index`) and by every metric. Labels are 8-bit PNGs, so K is at most 255.
IGNORE_INDEX = 255


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling of `path` to write to; on success rename it over `path`.

    The temporary name starts with a dot and carries the pid, so several processes never share one
    and a killed run's leftovers are recognisable. On an exception the temporary file is removed and
    `path` is left as it was: no half-written file is ever found under the final name.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` atomically (see `atomic_path`)."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write UTF-8 `text` to `path` atomically (see `atomic_path`)."""
    atomic_write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, data: Any, *, indent: int | None = 2) -> None:
    """Write `data` as sorted, indented JSON plus a newline, atomically."""
    atomic_write_text(path, json.dumps(data, indent=indent, sort_keys=True, default=str) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    """The parsed content of a UTF-8 JSON file."""
    return json.loads(Path(path).read_text(encoding="utf-8"))
