"""Pass 2 and the output folder: pseudo-labeled parquet shards in Hub dataset layout.

Reads the pass-1 shards of the work folder, gives every segment the cluster of its feature,
paints `label = lut[segments]`, and writes `data/<split>-NNNNN-of-NNNNN.parquet` with the columns
of DESIGN.md, plus id2label.json and failures.jsonl (the figures are `figures.py`'s). Pass-1 shards are grouped into
output shards of about `max_shard_bytes` (Hub-friendly), so the shard count is known before any
output shard is written and every process can write its share independently.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from PIL import Image

from alps_hf.config_utils import atomic_write_text
from alps_hf.labeling.clustering import ClusterModel
from alps_hf.labeling.workdir import WorkDir
from alps_hf.sam.segment_map import FILL, paint_labels


def dataset_features():
    """The `datasets.Features` of a pseudo-labeled dataset (DESIGN.md, "Pseudo-labeled dataset")."""
    from datasets import Features, List, Value
    from datasets import Image as ImageFeature

    return Features({
        "image": ImageFeature(),
        "label": ImageFeature(),
        "segments": ImageFeature(),
        "segment_class": List(Value("int32")),
        "segment_area": List(Value("int64")),
        "segment_iou": List(Value("float32")),
        "segment_stability": List(Value("float32")),
        "segment_kind": List(Value("string")),
        "source": Value("string"),
        "meta": Value("string"),
    })


def encode_png(array: np.ndarray) -> bytes:
    """PNG bytes of a uint8 (8-bit) or uint16 (16-bit) single-channel, or uint8 RGB, array."""
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def decode_png(data: bytes) -> np.ndarray:
    """The array stored in PNG bytes (uint8 or uint16, as written by `encode_png`).

    Args:
        data: the PNG file's bytes.

    Returns:
        The decoded array, its dtype and shape as stored.
    """
    return np.asarray(Image.open(io.BytesIO(data)))


def group_shards(sizes: list[int], max_bytes: int) -> list[list[int]]:
    """Consecutive pass-1 shards grouped so each group's size stays under max_bytes (at least one each).

    Args:
        sizes: byte size of each pass-1 shard, in shard order.
        max_bytes: the largest total a group may reach (`--max-shard-bytes`); a single larger shard is
            a group of its own.

    Returns:
        One list of shard indices per output shard, consecutive and covering every shard once.
    """
    groups: list[list[int]] = []
    total = 0
    for i, size in enumerate(sizes):
        if groups and total + size <= max_bytes:
            groups[-1].append(i)
            total += size
        else:
            groups.append([i])
            total = size
    return groups


def shard_file_name(split: str, index: int, count: int) -> str:
    """The Hub-layout name of output shard `index` of `count`: `<split>-NNNNN-of-NNNNN.parquet`."""
    return f"{split}-{index:05d}-of-{count:05d}.parquet"


def label_rows(table, clusters: ClusterModel, stats: dict, fill: bool = True) -> dict[str, list]:
    """Final dataset columns for the labeled rows of one pass-1 table; updates `stats` in place.

    Args:
        table: one pass-1 shard (the work shard schema); failed rows are skipped.
        clusters: the fitted cluster model that gives each segment its class.
        stats: running totals from `new_stats`, increased by this table's pixels and masks.
        fill: paint fill segments with their class; False paints them 255 (label maps without fill; the
            segments, their classes and kinds stay in the row).

    Returns:
        Column name -> values, in `dataset_features()` order, one value per labeled row.
    """
    k = clusters.num_clusters
    cols = {name: [] for name in dataset_features()}
    data = {c: table.column(c).to_pylist() for c in table.column_names}
    for i in range(table.num_rows):
        if data["error"][i] is not None:
            continue
        dim = data["feature_dim"][i]
        feats = np.frombuffer(data["features"][i] or b"", dtype=np.float16).reshape(-1, dim)
        segment_class = clusters.predict(feats.astype(np.float32)) if len(feats) else np.zeros(0, np.int64)
        segments = decode_png(data["segments_png"][i])
        # Work folders written before segment kinds existed hold SAM masks only.
        kinds = (data["segment_kind"][i] if "segment_kind" in data else None) or ["object"] * len(segment_class)
        hidden = None if fill else np.asarray([kind == FILL for kind in kinds], dtype=bool)
        label = paint_labels(segments, segment_class, hidden)
        hist = np.bincount(label.ravel(), minlength=256)
        stats["class_pixel_histogram"] += hist[:k]
        stats["labeled_pixels"] += int(hist[:k].sum())
        stats["pixels"] += int(label.size)
        stats["class_mask_counts"] += np.bincount(segment_class, minlength=k)[:k]
        stats["masks_per_image"].append(len(segment_class))
        stats["sam_masks_per_image"].append(sum(kind != FILL for kind in kinds))
        for kind in kinds:
            stats["segments_by_kind"][kind] = stats["segments_by_kind"].get(kind, 0) + 1
        cols["image"].append({"bytes": data["image_bytes"][i], "path": None})
        cols["label"].append({"bytes": encode_png(label), "path": None})
        cols["segments"].append({"bytes": data["segments_png"][i], "path": None})
        cols["segment_class"].append(segment_class.astype(np.int32).tolist())
        cols["segment_area"].append(data["segment_area"][i])
        cols["segment_iou"].append(data["segment_iou"][i])
        cols["segment_stability"].append(data["segment_stability"][i])
        cols["segment_kind"].append(kinds)
        cols["source"].append(data["source"][i])
        cols["meta"].append(data["meta"][i] or "{}")
    return cols


def new_stats(k: int) -> dict:
    """Empty running totals for `label_rows` over k classes (pixel and mask counts, masks per image)."""
    return {"class_pixel_histogram": np.zeros(k, np.int64), "class_mask_counts": np.zeros(k, np.int64),
            "labeled_pixels": 0, "pixels": 0, "masks_per_image": [], "sam_masks_per_image": [],
            "segments_by_kind": {}}


def write_group(work: WorkDir, group: list[int], clusters: ClusterModel, path: Path, fill: bool = True) -> dict:
    """Write one output shard from the pass-1 shards in `group`; return its stats (JSON-ready).

    Args:
        work: the run's work folder holding the pass-1 shards.
        group: the pass-1 shard indices that make up this output shard (from `group_shards`).
        clusters: the fitted cluster model.
        path: where the parquet shard goes; written to a temporary name, then renamed.
        fill: label fill segments (see `label_rows`).

    Returns:
        This shard's totals as JSON-ready lists and ints, plus the writer's pid, for `merge_stats`.
    """
    from datasets import Dataset

    features = dataset_features()
    stats = new_stats(clusters.num_clusters)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    writer = None
    try:
        for shard in group:
            cols = label_rows(work.read_shard(shard), clusters, stats, fill)
            table = Dataset.from_dict(cols, features=features).data.table
            if writer is None:
                writer = pq.ParquetWriter(tmp, table.schema)
            writer.write_table(table)
        if writer is None:  # an empty group still gets a valid, empty shard
            writer = pq.ParquetWriter(tmp, Dataset.from_dict({n: [] for n in features}, features=features).data.table.schema)
    finally:
        if writer is not None:
            writer.close()
    os.replace(tmp, path)
    # pid: which process wrote the group (multi-process runs); merge_stats ignores it.
    return {"class_pixel_histogram": stats["class_pixel_histogram"].tolist(),
            "class_mask_counts": stats["class_mask_counts"].tolist(), "labeled_pixels": stats["labeled_pixels"],
            "pixels": stats["pixels"], "masks_per_image": stats["masks_per_image"],
            "sam_masks_per_image": stats["sam_masks_per_image"],
            "segments_by_kind": stats["segments_by_kind"], "pid": os.getpid()}


def merge_stats(parts: list[dict], k: int) -> dict:
    """The dataset's summary statistics from the per-shard totals that `write_group` returned.

    Args:
        parts: one dict per output shard (its pid is ignored).
        k: the number of clusters.

    Returns:
        images, images without any SAM (object or stuff) mask, segment totals / mean / median, pixel coverage, and the per-class
        pixel histogram and mask counts (the `stats` of alps_dataset.json).
    """
    total = new_stats(k)
    for p in parts:
        total["class_pixel_histogram"] += np.asarray(p["class_pixel_histogram"], np.int64)
        total["class_mask_counts"] += np.asarray(p["class_mask_counts"], np.int64)
        total["labeled_pixels"] += p["labeled_pixels"]
        total["pixels"] += p["pixels"]
        total["masks_per_image"] += p["masks_per_image"]
        total["sam_masks_per_image"] += p["sam_masks_per_image"]
        for kind, n in (p.get("segments_by_kind") or {}).items():
            total["segments_by_kind"][kind] = total["segments_by_kind"].get(kind, 0) + n
    masks = np.asarray(total["masks_per_image"], dtype=np.float64)
    return {
        "images": len(masks),
        # an image whose segments are all fill has no SAM mask: fill only paints what masks left
        "images_without_masks": sum(n == 0 for n in total["sam_masks_per_image"]),
        "masks_total": int(masks.sum()),
        "masks_per_image_mean": float(masks.mean()) if len(masks) else 0.0,
        "masks_per_image_median": float(np.median(masks)) if len(masks) else 0.0,
        "pixel_coverage": total["labeled_pixels"] / total["pixels"] if total["pixels"] else 0.0,
        "class_pixel_histogram": total["class_pixel_histogram"].tolist(),
        "class_mask_counts": total["class_mask_counts"].tolist(),
        # masks_* count every segment (SAM masks and fill); this says how many of each kind
        "segments_by_kind": {kind: total["segments_by_kind"][kind] for kind in sorted(total["segments_by_kind"])},
    }


def id2label(k: int) -> dict[str, str]:
    """The id2label.json mapping for k pseudo-classes: {"0": "cluster_00", ...}, zero-padded to k's width."""
    width = max(2, len(str(k - 1)))
    return {str(i): f"cluster_{i:0{width}d}" for i in range(k)}


def write_failures(folder: Path, work: WorkDir, num_shards: int) -> list[dict]:
    """Write folder/failures.jsonl: one line per input that pass 1 could not label, in input order.

    Args:
        folder: the output folder.
        work: the run's work folder.
        num_shards: how many pass-1 shards there are.

    Returns:
        The failures written, as {"index", "source", "reason"} dicts.
    """
    failures = []
    for shard in range(num_shards):
        t = work.read_shard(shard, ["index", "source", "error"])
        for idx, src, err in zip(*(t.column(c).to_pylist() for c in ("index", "source", "error")), strict=True):
            if err is not None:
                failures.append({"index": idx, "source": src, "reason": err})
    atomic_write_text(folder / "failures.jsonl", "".join(json.dumps(f, sort_keys=True) + "\n" for f in failures))
    return failures
