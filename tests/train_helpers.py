"""Tiny datasets and model overrides shared by the training tests."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import numpy as np
from PIL import Image

TINY_SEGFORMER = {"hidden_sizes": [8, 16, 24, 32], "depths": [1, 1, 1, 1], "num_attention_heads": [1, 1, 1, 1], "decoder_hidden_size": 16}
TINY_MASK2FORMER = {
    "backbone_config": {"embed_dim": 16, "depths": [1, 1, 1, 1], "num_heads": [1, 1, 1, 1], "window_size": 2, "drop_path_rate": 0.0},
    "hidden_dim": 32, "mask_feature_size": 32, "feature_size": 32, "encoder_layers": 1, "decoder_layers": 2,
    "num_queries": 8, "dim_feedforward": 32, "encoder_feedforward_dim": 32, "num_attention_heads": 2, "train_num_points": 64,
}
PALETTE = np.array([[200, 30, 30], [30, 200, 30], [30, 30, 200], [200, 200, 30], [90, 90, 90], [10, 200, 200]], np.uint8)


def tiny_pair(rng: np.random.Generator, k: int, size: int = 40) -> tuple[Image.Image, Image.Image]:
    """An image of coloured squares and its label map (class = square colour, 255 on the top rows)."""
    label = np.zeros((size, size), np.uint8)
    for c in range(k):
        y, x = rng.integers(0, size - 12, 2)
        label[y : y + 12, x : x + 12] = c
    label[:2] = 255
    image = PALETTE[np.minimum(label, 5) % 6] + rng.integers(0, 20, (size, size, 3)).astype(np.uint8)
    return Image.fromarray(image), Image.fromarray(label)


def write_dataset(folder: Path, k: int = 4, n: int = 6, splits=("train", "validation"), seed: int = 0,
                  pairs: dict | None = None) -> Path:
    """A Hub-layout dataset folder: data/<split>-00000-of-00001.parquet (image, label) + id2label.json."""
    rng = np.random.default_rng(seed)
    (folder / "data").mkdir(parents=True, exist_ok=True)
    features = datasets.Features({"image": datasets.Image(), "label": datasets.Image()})
    for split in splits:
        items = (pairs or {}).get(split) or [tiny_pair(rng, k) for _ in range(n)]
        ds = datasets.Dataset.from_dict({"image": [a for a, _ in items], "label": [b for _, b in items]}, features=features)
        ds.to_parquet(str(folder / "data" / f"{split}-00000-of-00001.parquet"))
    (folder / "id2label.json").write_text(json.dumps({str(i): f"cluster_{i:02d}" for i in range(k)}))
    return folder


def seg_args(dataset: Path, output: Path, *extra: str) -> list[str]:
    """Flags of a tiny, fast SegFormer run."""
    return ["--dataset", str(dataset), "--output", str(output), "--model", "segformer-b0", "--from-scratch",
            "--model-config-overrides", json.dumps(TINY_SEGFORMER), "--crop-size", "32", "--batch-size", "2",
            "--num-workers", "0", "--logging-steps", "1", *extra]


def m2f_args(dataset: Path, output: Path, *extra: str) -> list[str]:
    """Flags of a tiny, fast Mask2Former run."""
    return ["--dataset", str(dataset), "--output", str(output), "--model", "mask2former-swin-tiny", "--from-scratch",
            "--model-config-overrides", json.dumps(TINY_MASK2FORMER), "--crop-size", "32", "--batch-size", "2",
            "--num-workers", "0", "--logging-steps", "1", *extra]
