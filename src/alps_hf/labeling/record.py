"""The pass-1 record: what pass 1 keeps of one input, declared once.

One `Pass1Record` per input image (or tile): either its segment map, per-segment statistics and
float16 mask features, or the reason it failed. The parquet schema of the work shards
(`pass1_schema`), the failure row (`Pass1Record.failure`) and the row written for a labeled image
are all derived from this one declaration, so they cannot drift apart.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa


def _column(arrow_type: pa.DataType, doc: str, default: Any = None) -> Any:
    return field(default=default, metadata={"arrow": arrow_type, "doc": doc})


@dataclass
class Pass1Record:
    """Pass 1's result for one input; every field but `index` and `source` is None for a failure."""

    index: int = _column(pa.int64(), "position of the input in the sorted input list")
    source: str = _column(pa.string(), "where the input came from (path, dataset id and index, window)")
    error: str | None = _column(pa.string(), "why the input could not be labeled; null when it was")
    image_bytes: bytes | None = _column(pa.binary(), "the input's original bytes (or a PNG of its pixels)")
    meta: str | None = _column(pa.string(), "JSON object: window, scene, CRS, transform of a tile")
    segments_png: bytes | None = _column(pa.binary(), "16-bit PNG segment map at the original size")
    segment_area: list[int] | None = _column(pa.list_(pa.int64()), "visible pixels of each segment")
    segment_iou: list[float] | None = _column(pa.list_(pa.float32()), "SAM's predicted IoU of each segment")
    segment_stability: list[float] | None = _column(pa.list_(pa.float32()), "stability score of each segment")
    segment_kind: list[str] | None = _column(pa.list_(pa.string()), "object, stuff or fill: what each segment is")
    features: bytes | None = _column(pa.binary(), "float16 (n_segments, feature_dim) mask features, C order")
    feature_dim: int | None = _column(pa.int32(), "length of one mask feature")

    @classmethod
    def failure(cls, index: int, source: str, reason: str) -> Pass1Record:
        """The record of an input that could not be labeled, with the reason shown in failures.jsonl."""
        return cls(index=index, source=source, error=reason)

    @property
    def num_segments(self) -> int:
        """Number of segments (0 for a failure)."""
        return len(self.segment_area or [])

    def to_row(self) -> dict[str, Any]:
        """The record as a parquet row of `pass1_schema()` (a shallow dict, no copies of the bytes)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


def pass1_schema() -> pa.Schema:
    """The arrow schema of the work shards, one column per `Pass1Record` field, in declaration order."""
    return pa.schema([(f.name, f.metadata["arrow"]) for f in dataclasses.fields(Pass1Record)])
