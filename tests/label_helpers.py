"""Helpers shared by the `alps-hf label` tests: flags for the tiny / toy SAM, the CLI call, and the
checks every labeled folder must pass."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from PIL import Image

from alps_hf.cli import main
from alps_hf.labeling.clustering import ClusterModel

# Loose thresholds for the random tiny SAM (its masks are noise), NMS off so that there are many masks.
TINY = ["--points-per-side", "4", "--pred-iou-thresh", "0", "--stability-score-thresh", "0",
        "--max-area-fraction", "1.0", "--box-nms-thresh", "1.0", "--num-workers", "0", "--preview-images", "2"]
TOY = ["--points-per-side", "8", "--pred-iou-thresh", "0.5", "--stability-score-thresh", "0.8",
       "--num-workers", "1", "--image-batch-size", "2"]


def label(inputs, output, sam, *extra) -> int:
    inputs = [str(p) for p in (inputs if isinstance(inputs, list) else [inputs])]
    return main(["label", *inputs, "--output", str(output), "--sam", str(sam), *map(str, extra)])


def rows(folder: Path) -> list[dict]:
    """The final dataset rows, raw from the parquet shards (bytes, not decoded)."""
    out = []
    for f in sorted((folder / "data").glob("*.parquet")):
        out += pq.read_table(f).to_pylist()
    return out


def png(cell) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(cell["bytes"])))


def lut_paint(segments: np.ndarray, segment_class: list[int]) -> np.ndarray:
    classes = np.asarray(segment_class, dtype=np.int64)
    return np.where(segments == 0, 255, classes[np.maximum(segments.astype(np.int64), 1) - 1] if len(classes)
                    else 255).astype(np.uint8)


def check_dataset(folder: Path, k: int, expected_sources: list[str]) -> list[dict]:
    """Everything a labeled folder promises, checked through datasets.load_dataset and the raw files."""
    from datasets import load_dataset
    from huggingface_hub import metadata_load

    for name in ("README.md", "id2label.json", "cluster_model.safetensors", "cluster_model.json", "preview.png",
                 "label_config.json", "alps_dataset.json", "failures.jsonl"):
        assert (folder / name).is_file(), name
    assert json.loads((folder / "id2label.json").read_text()) == {str(i): f"cluster_{i:02d}" for i in range(k)}
    meta = metadata_load(folder / "README.md")
    assert meta["configs"][0]["data_files"][0]["split"] == "train"
    assert {f["name"] for f in meta["dataset_info"]["features"]} >= {"image", "label", "segments", "segment_class"}
    assert f"**{k} pseudo-classes**" in (folder / "README.md").read_text()
    assert Image.open(folder / "preview.png").format == "PNG"
    leftovers = [p for p in folder.rglob(".*") if ".tmp" in p.name]
    assert leftovers == [], "atomic writes leave no temporary files behind"
    assert ClusterModel.load(folder).num_clusters == k
    info = json.loads((folder / "alps_dataset.json").read_text())
    assert info["num_clusters"] == k

    ds = load_dataset(str(folder))
    assert list(ds) == ["train"]
    train = ds["train"]
    assert train.num_rows == len(expected_sources)
    assert train["source"] == expected_sources
    raw = rows(folder)
    for row, item in zip(raw, train, strict=True):
        segments, label = png(row["segments"]), png(row["label"])
        assert segments.dtype == np.uint16 and label.dtype == np.uint8
        image = item["image"]
        assert label.shape == segments.shape == (image.height, image.width)
        assert item["label"].mode == "L" and np.array_equal(np.asarray(item["label"]), label)
        sc = row["segment_class"]
        assert all(0 <= c < k for c in sc)
        assert set(np.unique(label).tolist()) <= set(range(k)) | {255}
        assert int(segments.max(initial=0)) == len(sc)  # every segment id is used, 1..n
        assert np.array_equal(label, lut_paint(segments, sc))
        assert row["segment_area"] == np.bincount(segments.ravel(), minlength=len(sc) + 1)[1:].tolist()
        assert len(row["segment_iou"]) == len(row["segment_stability"]) == len(sc)
    stats = info["stats"]
    assert stats["images"] == len(expected_sources)
    assert stats["masks_total"] == sum(len(r["segment_class"]) for r in raw)
    # fill segments are not masks: an image labeled by fill alone counts as without masks
    assert stats["images_without_masks"] == sum(all(k == "fill" for k in r["segment_kind"]) for r in raw)
    return raw


def failures(folder: Path) -> dict[str, str]:
    lines = (folder / "failures.jsonl").read_text().splitlines()
    return {json.loads(line)["source"]: json.loads(line)["reason"] for line in lines}


def label_bytes(folder: Path) -> list[bytes]:
    return [r["label"]["bytes"] for r in rows(folder)]


def assert_same_result(out: Path, ref: Path, sources: list[str], k: int, shard_names: list[str]) -> None:
    """Everything a run gives its users, compared with a reference run of the same command (resumed vs
    uninterrupted, two processes vs one): every column of every row (bytes), the output shard names,
    id2label, failures, the cluster centroids (final and work copies) and the recorded stats / splits."""
    for folder in (out, ref):
        assert sorted(p.name for p in (folder / "data").glob("*.parquet")) == shard_names, folder
    got, want = rows(out), rows(ref)
    assert [r["source"] for r in got] == [r["source"] for r in want] == sources
    for column in want[0]:
        assert [r[column] for r in got] == [r[column] for r in want], f"column {column} differs"
    for name in ("id2label.json", "failures.jsonl"):
        assert (out / name).read_text() == (ref / name).read_text(), name
    for folder in ("", "work"):
        a, b = ClusterModel.load(out / folder), ClusterModel.load(ref / folder)
        assert a.centroids.shape == b.centroids.shape == (k, a.feature_dim)
        assert np.array_equal(a.centroids, b.centroids), f"centroids in {out / folder}"
    info, ref_info = (json.loads((f / "alps_dataset.json").read_text()) for f in (out, ref))
    assert info["stats"] == ref_info["stats"]
    assert info["splits"] == ref_info["splits"]


# ---- the main run --------------------------------------------------------------------------------------


def run_error(capsys, argv) -> str:
    assert main(argv) == 2
    captured = capsys.readouterr()
    # progress bars may precede it on stderr; the error itself is one line
    lines = [line for line in captured.err.splitlines() if line.startswith(f"alps-hf {argv[0]}: error: ")]
    assert len(lines) == 1, captured.err
    assert "Traceback" not in captured.err
    return lines[0]
