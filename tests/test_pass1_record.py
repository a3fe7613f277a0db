"""The pass-1 record is declared once: schema and failure rows come from it; a bug in pass 1 stops the run."""

from __future__ import annotations

import dataclasses

import pyarrow as pa
import pytest

from alps_hf.labeling import pass1 as pipeline
from alps_hf.labeling.record import Pass1Record, pass1_schema
from label_helpers import TINY, failures, label
from sam_fixtures import blocks_image, write_png

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_schema_has_one_column_per_field_in_order():
    schema = pass1_schema()
    assert schema.names == [f.name for f in dataclasses.fields(Pass1Record)]
    assert schema.field("segment_area").type == pa.list_(pa.int64())
    assert schema.field("segment_iou").type == pa.list_(pa.float32())
    assert schema.field("feature_dim").type == pa.int32()
    # a failure row and a labeled row both fit the schema
    rows = [Pass1Record.failure(3, "x.png", "not an image").to_row(),
            Pass1Record(index=4, source="y.png", segment_area=[5, 6], segment_iou=[0.5, 0.7],
                        segment_stability=[0.9, 0.95], features=b"\0" * 8, feature_dim=2).to_row()]
    table = pa.Table.from_pylist(rows, schema=schema)
    assert table.column("error").to_pylist() == ["not an image", None]
    assert table.column("segment_area").to_pylist() == [None, [5, 6]]
    assert Pass1Record.failure(3, "x.png", "r").num_segments == 0


def test_a_wrong_size_segment_map_stops_the_run_instead_of_becoming_a_failure(tmp_path, tiny_sam_dir, monkeypatch):
    """The size guard is a bug check: it must propagate, not be caught as one image's failure."""
    inputs = tmp_path / "in"
    inputs.mkdir()
    write_png(inputs / "a.png", blocks_image(0, 40, 48))
    real_paint = pipeline.paint_segments

    def paint_too_small(masks, valid=None):
        seg = real_paint(masks, valid)
        return dataclasses.replace(seg, segments=seg.segments[:-1])

    monkeypatch.setattr(pipeline, "paint_segments", paint_too_small)
    out = tmp_path / "out"
    with pytest.raises(pipeline.SegmentMapSizeError, match=r"segment map is \(39, 48\), expected \(40, 48\)"):
        label(inputs, out, tiny_sam_dir, "--num-clusters", "2", *TINY)
    assert not (out / "failures.jsonl").exists() or failures(out) == {}
