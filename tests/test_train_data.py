"""Augmentation, targets, subsets and the seeded sampler of alps_hf.training.data."""

import datasets
import numpy as np
import pytest
import torch

from alps_hf.errors import ConfigError
from alps_hf.training.data import (
    EpochSampler,
    SegmentationDataset,
    augment,
    mask2former_targets,
    select_subset,
)


def test_augment_keeps_labels_aligned_and_pads_with_ignore():
    rng = np.random.default_rng(0)
    # Image encodes the label in its red channel, so alignment survives flips / rotations / scaling.
    label = rng.integers(0, 4, size=(5, 6)).repeat(8, 0).repeat(8, 1)
    image = np.stack([label * 60, np.zeros_like(label), np.zeros_like(label)], -1).astype(np.uint8)
    for seed in range(8):
        img, lab = augment(image, label, 64, np.random.default_rng(seed), scale=(0.5, 1.0), jitter=0.0)
        assert img.shape == (64, 64, 3) and lab.shape == (64, 64)
        assert set(np.unique(lab)) <= {0, 1, 2, 3, 255}  # nearest neighbour: no invented classes
        assert (lab == 255).any()  # 48 x 40 scaled down < 64: padded with ignore
        inside = lab != 255
        # Bilinear image vs nearest label differ only on class borders: most pixels agree.
        assert np.mean(np.abs(img[..., 0][inside].astype(int) - lab[inside] * 60) <= 30) > 0.9
        assert (img[~inside] == 0).all()


def test_augment_is_a_function_of_the_seed():
    image = np.random.default_rng(1).integers(0, 255, (50, 50, 3), dtype=np.uint8)
    label = np.random.default_rng(2).integers(0, 5, (50, 50))
    a = augment(image, label, 32, np.random.default_rng([7, 0, 3]))
    b = augment(image, label, 32, np.random.default_rng([7, 0, 3]))
    c = augment(image, label, 32, np.random.default_rng([7, 1, 3]))
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])


def test_mask2former_targets_from_semantic_map():
    label = torch.tensor([[0, 0, 3], [255, 3, 3]])
    masks, classes = mask2former_targets(label)
    assert classes.tolist() == [0, 3]
    assert masks.tolist() == [[[1, 1, 0], [0, 0, 0]], [[0, 0, 1], [0, 1, 1]]]


def test_dataset_items_for_both_architectures():
    from PIL import Image

    features = datasets.Features({"image": datasets.Image(), "label": datasets.Image()})
    label = np.zeros((20, 30), np.uint8)
    label[:, 15:] = 2
    ds = datasets.Dataset.from_dict({"image": [Image.new("RGB", (30, 20), (255, 0, 0))], "label": [Image.fromarray(label)]}, features=features)
    common = {"image_column": "image", "label_column": "label", "num_labels": 3, "mean": [0.5] * 3, "std": [0.5] * 3, "crop_size": 16}
    item = SegmentationDataset(ds, train=True, architecture="mask2former", jitter=0.0, **common)[(0, 0)]
    assert item["pixel_values"].shape == (3, 16, 16) and item["labels"].shape == (16, 16)
    assert item["class_labels"].tolist() == sorted({int(v) for v in item["labels"].unique()} - {255})
    assert item["pixel_values"][0].max().item() == pytest.approx(1.0)  # (1 - 0.5) / 0.5
    ev = SegmentationDataset(ds, train=False, architecture="segformer", **common)[0]
    # Evaluation keeps image and label at full resolution (issue 12.20): no resize to the crop.
    assert ev["pixel_values"].shape == (3, 20, 30) and ev["labels"].shape == (20, 30)


def test_sliding_windows_cover_the_image_like_mmsegmentation():
    from alps_hf.training.evaluation import sliding_windows

    windows = sliding_windows(40, 50, crop=32, stride=21)
    # Rows: origins 0, then flush with the border (8); columns 0, 18 (flush).
    assert windows == [(0, 32, 0, 32), (0, 32, 18, 50), (8, 40, 0, 32), (8, 40, 18, 50)]
    covered = np.zeros((40, 50), int)
    for y0, y1, x0, x1 in windows:
        covered[y0:y1, x0:x1] += 1
    assert covered.min() >= 1
    assert sliding_windows(20, 30, crop=32, stride=21) == [(0, 20, 0, 30)]  # smaller than the crop: the whole image


class _StripeModel(torch.nn.Module):
    """A stand-in SegFormer: class scores = the first 2 input channels at 1/4 resolution per 4x4 block
    (as SegFormer's logits are), so a prediction is only right if the input was full resolution."""

    def __init__(self):
        super().__init__()
        self.config = type("Config", (), {"model_type": "segformer"})()
        self.sizes = []

    def forward(self, pixel_values):
        self.sizes.append((pixel_values.shape[0], *pixel_values.shape[-2:]))
        return type("Out", (), {"logits": torch.nn.functional.avg_pool2d(pixel_values[:, :2], 4)})()


def test_evaluation_infers_at_full_resolution_in_windows_of_the_crop():
    """Issue 12.20: a 64 x 96 image scored with crop 32 is cut into 32 x 32 windows, never shrunk to 32 x 32."""
    from accelerate import Accelerator

    from alps_hf.training.data import eval_collate
    from alps_hf.training.evaluation import evaluate

    label = np.zeros((64, 96), np.int64)
    label[:, 48:] = 1
    label[:8] = 255
    image = torch.zeros(3, 64, 96)
    image[0][label == 0], image[1][label == 1] = 1.0, 1.0  # channel c is high where the class is c
    model = _StripeModel()
    loader = torch.utils.data.DataLoader([{"pixel_values": image, "labels": torch.from_numpy(label)}], batch_size=4,
                                         collate_fn=eval_collate)
    scores = evaluate(model, loader, Accelerator(cpu=True), 2, {0: "a", 1: "b"}, crop=32, stride=32)
    assert all((h, w) == (32, 32) for _, h, w in model.sizes)
    assert sum(b for b, _, _ in model.sizes) == 6  # 2 rows x 3 columns of 32 x 32 windows
    assert scores["mean_iou"] == 1.0 and scores["num_pixels"] == 56 * 96


def test_subsets_are_seeded_and_sized():
    ds = datasets.Dataset.from_dict({"x": list(range(100))})
    a = select_subset(ds, fraction=0.05, seed=3)["x"]
    assert len(a) == 5 and a == select_subset(ds, fraction=0.05, seed=3)["x"] and a != select_subset(ds, fraction=0.05, seed=4)["x"]
    assert len(select_subset(ds, samples=7, seed=0)) == 7 and len(select_subset(ds, samples=500)) == 100
    assert len(select_subset(ds, fraction=0.001)) == 1
    with pytest.raises(ConfigError, match=r"--train-fraction 1.5 must be in \(0, 1\]"):
        select_subset(ds, fraction=1.5)


def test_epoch_sampler_order_depends_on_seed_and_epoch_only():
    s = EpochSampler(10, seed=5)
    first = list(s)
    assert sorted(i for _, i in first) == list(range(10)) and all(e == 0 for e, _ in first)
    s.set_epoch(1)
    second = list(s)
    assert [i for _, i in second] != [i for _, i in first] and second[0][0] == 1
    s.set_epoch(1)
    s.skip_next(4)
    assert list(s) == second[4:]  # skip applies to one pass
    assert list(s) == second
