"""Training and evaluation data for segmentation: loading, checking, subsets, aerial augmentation.

Any `datasets` dataset with an image column and a label column works: a local Hub-layout folder
(`load_dataset(folder)`, e.g. the output of `alps-hf label`), a `save_to_disk` folder
(`load_from_disk`), or a Hub id. Class names come from `id2label.json` beside the data (or
`--id2label`); label 255 is "ignore".

Decoding and augmentation run in `__getitem__`, i.e. in the DataLoader workers. Training
randomness is a function of (seed, epoch, example index) only, drawn from its own generator: the
same example in the same epoch gets the same crop whatever the worker, process count or restart,
which is what lets a resumed run end with the same weights as an uninterrupted one.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from alps_hf.core import IGNORE_INDEX
from alps_hf.errors import ConfigError, DatasetFormatError, InputError
from alps_hf.images import to_rgb_array

# ---------------------------------------------------------------------------------------------------
# Loading


def load_splits(source: str, dataset_config: str | None = None):
    """Load every split of a dataset as a `datasets.DatasetDict`.

    Args:
        source: a `save_to_disk` folder, a Hub-layout folder (parquet shards under `data/`, or any
            folder `load_dataset` reads), or a Hub dataset id.
        dataset_config: the Hub config name, if the dataset has several.

    Raises:
        InputError: nothing readable there.
    """
    import datasets

    path = Path(source)
    try:
        if path.is_dir() and ((path / "dataset_dict.json").is_file() or (path / "state.json").is_file()):
            loaded = datasets.load_from_disk(str(path))
        elif path.exists() or not _looks_like_hub_id(source):
            if not path.exists():
                raise InputError(f"--dataset {source!r}: no such folder, and not a Hub id ('namespace/name')")
            loaded = datasets.load_dataset(str(path), dataset_config)
        else:
            loaded = datasets.load_dataset(source, dataset_config)
    except InputError:
        raise
    except Exception as err:  # noqa: BLE001 - datasets raises many types for unreadable input
        raise InputError(f"--dataset {source!r} cannot be loaded: {type(err).__name__}: {str(err).splitlines()[0][:300]}") from None
    if isinstance(loaded, datasets.Dataset):
        loaded = datasets.DatasetDict({"train": loaded})
    return loaded


def _looks_like_hub_id(value: str) -> bool:
    return value.count("/") == 1 and not value.startswith((".", "/"))


def read_id2label(source: str, override: str | None = None) -> dict[int, str]:
    """Class names: `override` (a JSON file or inline JSON), else `id2label.json` of the dataset.

    Raises:
        InputError: no id2label found, or it is malformed.
    """
    text, origin = None, None
    if override:
        origin = "--id2label"
        text = Path(override).read_text(encoding="utf-8") if Path(override).is_file() else override
    elif (Path(source) / "id2label.json").is_file():
        origin = str(Path(source) / "id2label.json")
        text = (Path(source) / "id2label.json").read_text(encoding="utf-8")
    elif not Path(source).exists() and _looks_like_hub_id(source):
        try:
            from huggingface_hub import hf_hub_download

            file = hf_hub_download(source, "id2label.json", repo_type="dataset")
            origin, text = f"{source}/id2label.json", Path(file).read_text(encoding="utf-8")
        except Exception:  # noqa: BLE001 - missing file, offline, ...: fall through to the error
            text = None
    if text is None:
        raise InputError(f"--dataset {source!r} has no id2label.json; pass --id2label FILE or a JSON object like '{{\"0\": \"road\"}}'")
    try:
        raw = json.loads(text)
        id2label = {int(k): str(v) for k, v in raw.items()}
    except (json.JSONDecodeError, AttributeError, ValueError) as err:
        raise InputError(f"{origin}: not a JSON object of class index -> name ({err})") from None
    if sorted(id2label) != list(range(len(id2label))) or len(id2label) < 2:
        raise InputError(f"{origin}: class indices must be 0..K-1 with K >= 2, got {sorted(id2label)[:20]}")
    return id2label


# ---------------------------------------------------------------------------------------------------
# Checks and subsets


def label_array(value: Any, where: str) -> np.ndarray:
    """A label image (PIL / array / datasets dict) as an (H, W) int64 array of class indices."""
    if isinstance(value, dict) and value.get("bytes"):
        import io

        value = Image.open(io.BytesIO(value["bytes"]))
    elif isinstance(value, dict) and value.get("path"):
        value = Image.open(value["path"])
    if isinstance(value, Image.Image):
        if value.mode in ("RGB", "RGBA"):
            raise DatasetFormatError(f"{where}: label image is {value.mode}; labels must be single-channel class indices (8-bit 'L'/'P' or 16-bit)")
        value = np.asarray(value)
    array = np.asarray(value)
    if array.ndim != 2:
        raise DatasetFormatError(f"{where}: label has shape {array.shape}; expected a 2-D map of class indices")
    return array.astype(np.int64)


def check_label_values(label: np.ndarray, num_labels: int, where: str) -> None:
    """Raise `DatasetFormatError` naming `where` and the bad values if any is outside 0..K-1 and 255."""
    values = np.unique(label)
    bad = values[((values < 0) | (values >= num_labels)) & (values != IGNORE_INDEX)]
    if bad.size:
        raise DatasetFormatError(
            f"{where}: label values {bad[:10].tolist()} outside 0..{num_labels - 1} and {IGNORE_INDEX} (ignore); "
            f"the dataset's id2label has {num_labels} classes (fix the labels or pass a matching --id2label)"
        )


def _example_name(ds, index: int, split: str) -> str:
    name = f"{split} example {index}"
    if "source" in ds.column_names:
        try:
            name += f" ({ds[index]['source']})"
        except Exception:  # noqa: BLE001 - the name is a courtesy
            pass
    return name


def validate_split(ds, split: str, image_column: str, label_column: str, num_labels: int, max_examples: int | None) -> None:
    """Check a split before training: columns, non-empty, label range and image/label sizes.

    Checks the first `max_examples` rows (all with None); the rest are checked as they are loaded.

    Raises:
        DatasetFormatError: naming the split / example and what is wrong.
    """
    missing = [c for c in (image_column, label_column) if c not in ds.column_names]
    if missing:
        flag = "--image-column" if image_column in missing else "--label-column"
        raise DatasetFormatError(f"split {split!r} has no column {missing[0]!r}; columns found: {ds.column_names} (choose with {flag})")
    if len(ds) == 0:
        raise DatasetFormatError(f"split {split!r} is empty (0 examples)")
    n = len(ds) if max_examples is None else min(len(ds), max_examples)
    view = ds.select_columns([image_column, label_column]).select(range(n))
    for i, row in enumerate(view):
        where = _example_name(ds, i, split)
        label = label_array(row[label_column], where)
        check_label_values(label, num_labels, where)
        image = row[image_column]
        size = (image.height, image.width) if isinstance(image, Image.Image) else to_rgb_array(image).shape[:2]
        if tuple(size) != label.shape:
            raise DatasetFormatError(f"{where}: image is {size[1]}x{size[0]} but label is {label.shape[1]}x{label.shape[0]} (W x H); they must match")


def select_subset(ds, fraction: float | None = None, samples: int | None = None, seed: int = 0):
    """A seeded random subset of a split, for label-scarce runs (the same rows for the same seed).

    Args:
        ds: the split (a `datasets.Dataset`).
        fraction: keep round(fraction * N) rows (at least 1), 0 < fraction <= 1.
        samples: keep this many rows (at most N).
        seed: the seed of the permutation.

    Returns:
        The selected rows, in their original order (the split itself when all are kept).

    Raises:
        ConfigError: both given, or a value out of range.
    """
    if fraction is not None and samples is not None:
        raise ConfigError("give --train-fraction or --train-samples, not both")
    if fraction is None and samples is None:
        return ds
    n = len(ds)
    if fraction is not None:
        if not 0 < fraction <= 1:
            raise ConfigError(f"--train-fraction {fraction} must be in (0, 1]")
        k = max(1, round(fraction * n))
    else:
        if samples < 1:
            raise ConfigError(f"--train-samples {samples} must be >= 1")
        k = min(samples, n)
    if k == n:
        return ds
    order = np.random.default_rng(seed).permutation(n)[:k]
    return ds.select(sorted(order.tolist()))


# ---------------------------------------------------------------------------------------------------
# Augmentation


def _resize(array: np.ndarray, height: int, width: int, nearest: bool) -> np.ndarray:
    """Resize with PIL: bilinear for images, nearest for labels (never invents classes)."""
    if array.shape[:2] == (height, width):
        return array
    resample = Image.NEAREST if nearest else Image.BILINEAR
    if nearest:
        # Labels go through a 32-bit int image so 16-bit class ids survive.
        return np.asarray(Image.fromarray(array.astype(np.int32), mode="I").resize((width, height), resample)).astype(np.int64)
    return np.asarray(Image.fromarray(array).resize((width, height), resample))


def augment(image: np.ndarray, label: np.ndarray, crop: int, rng: np.random.Generator, *, scale: tuple[float, float] = (0.5, 2.0),
            flips: bool = True, rotate: bool = True, jitter: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """Aerial training augmentation: random scale, pad + random crop to `crop`, flips, 90-degree turns, colour jitter.

    Overhead imagery has no "up", so vertical flips and 90-degree rotations are label-preserving.
    Labels are resampled with nearest neighbour and padded with 255 (ignored by the loss).

    Returns:
        (crop x crop x 3 uint8 image, crop x crop int64 label).
    """
    s = float(rng.uniform(*scale))
    h, w = label.shape
    nh, nw = max(1, round(h * s)), max(1, round(w * s))
    image, label = _resize(image, nh, nw, nearest=False), _resize(label, nh, nw, nearest=True)
    ph, pw = max(crop - nh, 0), max(crop - nw, 0)
    if ph or pw:
        image = np.pad(image, ((0, ph), (0, pw), (0, 0)), constant_values=0)
        label = np.pad(label, ((0, ph), (0, pw)), constant_values=IGNORE_INDEX)
    y = int(rng.integers(0, label.shape[0] - crop + 1))
    x = int(rng.integers(0, label.shape[1] - crop + 1))
    image, label = image[y : y + crop, x : x + crop], label[y : y + crop, x : x + crop]
    if flips and rng.random() < 0.5:
        image, label = image[:, ::-1], label[:, ::-1]
    if flips and rng.random() < 0.5:
        image, label = image[::-1], label[::-1]
    if rotate:
        k = int(rng.integers(0, 4))
        image, label = np.rot90(image, k), np.rot90(label, k)
    if jitter > 0:
        img = image.astype(np.float32)
        brightness, contrast, saturation = rng.uniform(1 - jitter, 1 + jitter, size=3)
        img = img * brightness
        img = (img - img.mean()) * contrast + img.mean()
        gray = img.mean(axis=2, keepdims=True)
        img = (img - gray) * saturation + gray
        image = np.clip(img, 0, 255).astype(np.uint8)
    return np.ascontiguousarray(image), np.ascontiguousarray(label)


def normalize(image: np.ndarray, mean, std) -> torch.Tensor:
    """uint8 H x W x 3 -> float32 3 x H x W, scaled to 0..1 then normalised like the image processor."""
    img = torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1).float().div_(255.0)
    mean = torch.tensor(mean, dtype=torch.float32)[:, None, None]
    std = torch.tensor(std, dtype=torch.float32)[:, None, None]
    return (img - mean) / std


def mask2former_targets(label: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Binary masks (N, H, W) and class ids (N,) of the classes present in a semantic map (255 dropped)."""
    classes = torch.unique(label)
    classes = classes[classes != IGNORE_INDEX]
    masks = (label[None] == classes[:, None, None]).float()
    return masks, classes.long()


class SegmentationDataset(torch.utils.data.Dataset):
    """Decodes, checks and transforms rows of a `datasets` split, in the DataLoader workers.

    Training items are addressed by `(epoch, index)` (see `EpochSampler`): the augmentation is
    drawn from `np.random.default_rng([seed, epoch, index])`. Evaluation items are plain indices:
    image and label at full resolution (inference slides windows over the image, see
    `alps_hf.training.evaluation`).
    """

    def __init__(self, ds, *, image_column: str, label_column: str, num_labels: int, mean, std, crop_size: int,
                 train: bool, architecture: str, seed: int = 0, scale: tuple[float, float] = (0.5, 2.0),
                 flips: bool = True, rotate: bool = True, jitter: float = 0.1, split: str = "train"):
        self.ds = ds.select_columns([image_column, label_column])
        self.image_column, self.label_column = image_column, label_column
        self.num_labels, self.mean, self.std = num_labels, list(mean), list(std)
        self.crop_size, self.train, self.architecture, self.seed = crop_size, train, architecture, seed
        self.scale, self.flips, self.rotate, self.jitter = scale, flips, rotate, jitter
        self.split = split

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, key) -> dict[str, Any]:
        epoch, index = key if isinstance(key, tuple) else (0, key)
        row = self.ds[int(index)]
        where = f"{self.split} example {index}"
        image = to_rgb_array(row[self.image_column])
        label = label_array(row[self.label_column], where)
        check_label_values(label, self.num_labels, where)
        if image.shape[:2] != label.shape:
            raise DatasetFormatError(f"{where}: image is {image.shape[1]}x{image.shape[0]} but label is {label.shape[1]}x{label.shape[0]} (W x H)")
        if self.train:
            rng = np.random.default_rng([self.seed, int(epoch), int(index)])
            image, label = augment(image, label, self.crop_size, rng, scale=self.scale, flips=self.flips,
                                   rotate=self.rotate, jitter=self.jitter)
        item = {"pixel_values": normalize(image, self.mean, self.std), "labels": torch.from_numpy(label.astype(np.int64))}
        if self.train and self.architecture == "mask2former":
            item["mask_labels"], item["class_labels"] = mask2former_targets(item["labels"])
        return item


class EpochSampler(torch.utils.data.Sampler):
    """A seeded permutation per epoch, yielding `(epoch, index)` keys.

    The order depends only on (seed, epoch), never on the global RNG, so a resumed run sees the
    same batches; `set_epoch` selects the epoch (call it before iterating).
    """

    def __init__(self, num_examples: int, seed: int, shuffle: bool = True):
        self.num_examples, self.seed, self.shuffle, self.epoch, self.skip = num_examples, seed, shuffle, 0, 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose permutation the next pass yields."""
        self.epoch = int(epoch)

    def skip_next(self, num_examples: int) -> None:
        """Leave out the first `num_examples` of the next pass only (resuming mid-epoch).

        Skipping here rather than with `accelerator.skip_first_batches` keeps batch boundaries and
        the batch -> process assignment of the uninterrupted run (skip whole global batches).
        """
        self.skip = int(num_examples)

    def __len__(self) -> int:
        return self.num_examples

    def __iter__(self) -> Iterator[tuple[int, int]]:
        if self.shuffle:
            order = torch.randperm(self.num_examples, generator=torch.Generator().manual_seed(self.seed * 100_003 + self.epoch))
        else:
            order = torch.arange(self.num_examples)
        skip, self.skip = self.skip, 0
        for i in order.tolist()[skip:]:
            yield (self.epoch, i)


def collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack pixel values; stack labels when they share a size (training), else keep a list."""
    batch: dict[str, Any] = {"pixel_values": torch.stack([it["pixel_values"] for it in items])}
    labels = [it["labels"] for it in items]
    same = all(lbl.shape == labels[0].shape for lbl in labels)
    batch["labels"] = torch.stack(labels) if same else labels
    if "mask_labels" in items[0]:
        batch["mask_labels"] = [it["mask_labels"] for it in items]
        batch["class_labels"] = [it["class_labels"] for it in items]
    return batch


def eval_collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Evaluation batches: images and labels stay lists (each at its own full resolution)."""
    return {"pixel_values": [it["pixel_values"] for it in items], "labels": [it["labels"] for it in items]}

