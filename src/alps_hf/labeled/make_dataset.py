"""`alps-hf make-dataset`: an images/ + labels/ folder pair -> a Hub-layout labeled dataset folder.

The folder is what `alps-hf finetune --dataset DIR` / `evaluate` and `load_dataset(DIR)` read as
it is: `data/<split>-NNNNN-of-NNNNN.parquet` with `image` / `label` Image columns (plus `source`,
the image's path inside its folder), `id2label.json`, `labeled_dataset.json` (what was made from
what, class pixel counts) and a dataset card (`README.md`) whose YAML `configs` list the splits.
Splits are added one run at a time (`--split validation --add-split`), each from its own pair.

The whole split is written to a temporary folder first: a bad label found at file 300 leaves no
half-made dataset behind that would block the retry.
"""

from __future__ import annotations

import io
import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from alps_hf.config_utils import arg
from alps_hf.core import IGNORE_INDEX, atomic_write_text, read_json, write_json
from alps_hf.errors import ConfigError, DatasetFormatError, InputError
from alps_hf.labeled.pairs import LabelPair, match_pairs, parse_palette, read_pair_label, resolve_folders

INFO_FILE = "labeled_dataset.json"
CARD_TEMPLATE = Path(__file__).with_name("templates") / "labeled_dataset_card.md"
_SPLIT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_]*$")
# Rows written to the parquet file at a time (bounds memory to a few dozen images, not a shard).
_WRITE_BATCH = 32
_FOLDERS_HELP = (
    "IMAGES LABELS: a folder of images and a folder of label masks with the same file names (suffix ignored), "
    "or one folder holding images/ and labels/."
)


@dataclass
class MakeDatasetConfig:
    """Everything `alps-hf make-dataset` needs: the folder pair, class names, colour table, output."""

    folders: list[str] = arg([], _FOLDERS_HELP)
    output: str = arg(None, "Output folder (Hub dataset layout). Required.")
    id2label: str | None = arg(
        None, 'Class names: a JSON file or inline JSON like \'{"0": "building", "1": "land"}\'; default class_0.. up to the largest label value.'
    )
    palette: str | None = arg(
        None, 'Colour table of RGB masks: JSON file or inline, \'{"#3C1098": 0, "#000000": 255}\' (255 = ignore). Needed for colour masks only.'
    )
    split: str = arg("train", "Split name of these images (train, validation, test, ...).")
    add_split: bool = arg(False, "Add --split to an existing make-dataset folder (same classes) instead of refusing it.")
    overwrite: bool = arg(False, "Replace an existing --output folder.")
    max_shard_bytes: int = arg(500_000_000, "Target size of each parquet shard (Hub-friendly ~500 MB).")
    pretty_name: str | None = arg(None, "Human-readable dataset name for the card.")
    license: str | None = arg(None, "License of the imagery and labels, written into the card.")

    def __post_init__(self) -> None:
        if not self.folders:
            raise ConfigError("give the folders: alps-hf make-dataset IMAGES LABELS --output DIR (or one folder holding images/ and labels/)")
        if not self.output:
            raise ConfigError("--output is required: the folder to write the labeled dataset to")
        if not _SPLIT_NAME.match(self.split):
            raise ConfigError(f"--split {self.split!r}: use letters, digits and '_' (e.g. train, validation)")
        if self.add_split and self.overwrite:
            raise ConfigError("give --add-split (keep the folder, add a split) or --overwrite (replace it), not both")
        if self.max_shard_bytes < 1:
            raise ConfigError(f"--max-shard-bytes {self.max_shard_bytes} must be >= 1")
        parse_palette(self.palette)  # a bad table fails now, before any file is read


def labeled_features():
    """The `datasets.Features` of a labeled dataset: `image`, `label` (Image) and `source` (string)."""
    from datasets import Features, Value
    from datasets import Image as ImageFeature

    return Features({"image": ImageFeature(), "label": ImageFeature(), "source": Value("string")})


def parse_id2label(value: str | None) -> dict[int, str] | None:
    """Class names of `--id2label` (JSON file or inline), or None.

    Raises:
        ConfigError: not a JSON object of indices 0..K-1 (K >= 2) to names.
    """
    if value is None:
        return None
    text = Path(value).read_text(encoding="utf-8") if Path(value).is_file() else value
    try:
        raw = json.loads(text)
        names = {int(k): str(v) for k, v in raw.items()} if isinstance(raw, dict) else None
    except (ValueError, TypeError):  # JSONDecodeError is a ValueError; int("road") too
        names = None
    if not names or sorted(names) != list(range(len(names))) or len(names) < 2 or len(names) > IGNORE_INDEX:
        raise ConfigError(
            f"--id2label {value[:80]!r}: expected a JSON object of class indices 0..K-1 (2 <= K <= 255) to names, "
            "e.g. '{\"0\": \"building\", \"1\": \"land\"}'"
        )
    return dict(sorted(names.items()))


def _encode_label(label: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(label.astype(np.uint8), mode="L").save(buf, format="PNG")
    return buf.getvalue()


def _shard_groups(pairs: list[LabelPair], max_bytes: int) -> list[list[LabelPair]]:
    """Consecutive pairs grouped by file size, so the shard count is known before any shard is written."""
    groups: list[list[LabelPair]] = [[]]
    total = 0
    for pair in pairs:
        size = pair.image.stat().st_size + pair.label.stat().st_size
        if groups[-1] and total + size > max_bytes:
            groups.append([])
            total = 0
        groups[-1].append(pair)
        total += size
    return groups


def _check_classes(label: np.ndarray, num_classes: int | None, pair: LabelPair) -> None:
    if num_classes is None:
        return
    values = np.unique(label)
    bad = values[(values >= num_classes) & (values != IGNORE_INDEX)]
    if bad.size:
        raise DatasetFormatError(
            f"{pair.label}: label values {bad[:10].tolist()} outside the {num_classes} classes of --id2label "
            f"(0..{num_classes - 1}, 255 = ignore); pass an --id2label that names them"
        )


def write_split(pairs: list[LabelPair], folder: Path, split: str, *, palette=None, num_classes: int | None = None,
                max_shard_bytes: int = 500_000_000) -> dict[str, Any]:
    """Write the parquet shards of one split into `folder/data/`.

    Args:
        pairs: the image/label pairs, in row order.
        folder: the dataset folder (its `data/` is created).
        split: the split name of the shard files.
        palette: colour -> class table for RGB masks (see `pairs.parse_palette`).
        num_classes: when given, label values must be below it (or 255).
        max_shard_bytes: target shard size.

    Returns:
        `{"num_rows", "num_bytes", "num_shards", "class_pixels": [count per value 0..255]}`.

    Raises:
        DatasetFormatError: a label of the wrong size, with unknown colours or out-of-range values.
    """
    import pyarrow.parquet as pq
    from datasets import Dataset

    features = labeled_features()
    data = folder / "data"
    data.mkdir(parents=True, exist_ok=True)
    groups = _shard_groups(pairs, max_shard_bytes)
    class_pixels = np.zeros(256, np.int64)
    num_bytes = 0
    for index, group in enumerate(groups):
        path = data / f"{split}-{index:05d}-of-{len(groups):05d}.parquet"
        writer = None
        for start in range(0, len(group), _WRITE_BATCH):
            cols: dict[str, list] = {"image": [], "label": [], "source": []}
            for pair in group[start : start + _WRITE_BATCH]:
                label = read_pair_label(pair, palette)
                _check_classes(label, num_classes, pair)
                class_pixels += np.bincount(label.ravel(), minlength=256)
                source = pair.image.name if "/" not in pair.name else f"{pair.name}{pair.image.suffix}"
                cols["image"].append({"bytes": pair.image.read_bytes(), "path": source})
                cols["label"].append({"bytes": _encode_label(label), "path": None})
                cols["source"].append(source)
            table = Dataset.from_dict(cols, features=features).data.table
            writer = writer or pq.ParquetWriter(path, table.schema)
            writer.write_table(table)
        writer.close()
        num_bytes += path.stat().st_size
    return {"num_rows": len(pairs), "num_bytes": num_bytes, "num_shards": len(groups), "class_pixels": class_pixels.tolist()}


def _pct(count: int, total: int) -> str:
    return f"{100 * count / total:.1f} %" if total else "n/a"


def render_card(info: dict[str, Any], folder_name: str) -> str:
    """The README.md (dataset card) text of a labeled dataset folder, from its `labeled_dataset.json` dict."""
    from huggingface_hub import DatasetCard, DatasetCardData

    from alps_hf.hub.cards import yaml_features

    splits = info["splits"]
    num_bytes = sum(s["num_bytes"] for s in splits.values())
    data = DatasetCardData(
        license=info.get("license") or "unknown",
        pretty_name=info.get("pretty_name") or None,
        task_categories=["image-segmentation"],
        task_ids=["semantic-segmentation"],
        tags=["remote-sensing", "ground-truth"],
        configs=[{"config_name": "default", "data_files": [{"split": n, "path": f"data/{n}-*"} for n in splits]}],
        dataset_info={
            "features": yaml_features(labeled_features()),
            "splits": [{"name": n, "num_bytes": s["num_bytes"], "num_examples": s["num_rows"]} for n, s in splits.items()],
            "download_size": num_bytes,
            "dataset_size": num_bytes,
        },
    )
    pixels = np.sum([s["class_pixels"] for s in splits.values()], axis=0)
    total = int(pixels.sum())
    classes = [{"id": i, "name": name, "share": _pct(int(pixels[int(i)]), total)} for i, name in info["id2label"].items()]
    card = DatasetCard.from_template(
        data,
        template_path=str(CARD_TEMPLATE),
        title=info.get("pretty_name") or folder_name,
        load_id=folder_name,
        splits=[{"name": n, **s} for n, s in splits.items()],
        classes=classes,
        ignore_share=_pct(int(pixels[IGNORE_INDEX]), total) if pixels[IGNORE_INDEX] else None,
    )
    return str(card)


def _default_id2label(class_pixels: list[int], split: str) -> dict[int, str]:
    used = [v for v, n in enumerate(class_pixels) if n and v != IGNORE_INDEX]
    if not used or max(used) < 1:
        raise DatasetFormatError(
            f"split {split!r}: the labels hold {len(used)} class value(s) {used}; a segmentation dataset needs "
            "at least 2 classes: check the labels folder, or pass --id2label with the full class list"
        )
    return {i: f"class_{i}" for i in range(max(used) + 1)}


def _existing_info(cfg: MakeDatasetConfig, output: Path) -> dict[str, Any] | None:
    """The info of the folder a split is added to, None for a new folder; refuses what cannot be done."""
    if not output.exists():
        if cfg.add_split:
            raise InputError(f"--add-split: {output} does not exist; make it first without --add-split")
        return None
    if cfg.overwrite:
        return None
    if not cfg.add_split:
        raise InputError(f"--output {output} exists; pass --overwrite to replace it or --add-split to add a split to it")
    if not (output / INFO_FILE).is_file():
        raise InputError(f"--add-split: {output} has no {INFO_FILE}, so it was not written by make-dataset; choose a new --output")
    info = read_json(output / INFO_FILE)
    if cfg.split in info["splits"]:
        raise InputError(f"--add-split: {output} has a split {cfg.split!r} already; choose another --split or --overwrite")
    return info


def make_dataset(cfg: MakeDatasetConfig) -> dict[str, Any]:
    """Write (or extend) a labeled dataset folder from one images/labels folder pair.

    Returns:
        The `labeled_dataset.json` dict written.

    Raises:
        InputError: folders missing, names that do not pair up, or an output folder in the way.
        DatasetFormatError: labels of the wrong size, unknown colours or out-of-range values.
        ConfigError: bad --id2label / --palette.
    """
    images, labels = resolve_folders(cfg.folders)
    output = Path(cfg.output)
    info = _existing_info(cfg, output)
    id2label = parse_id2label(cfg.id2label)
    if info is not None:
        known = {int(k): v for k, v in info["id2label"].items()}
        if id2label is not None and id2label != known:
            raise ConfigError(f"--id2label {cfg.id2label!r} differs from {output / 'id2label.json'}; a split must share the classes")
        id2label = known
    pairs = match_pairs(images, labels)
    palette = parse_palette(cfg.palette)
    stage = output.parent / f".{output.name}.tmp-make-dataset"
    shutil.rmtree(stage, ignore_errors=True)
    try:
        split = write_split(pairs, stage, cfg.split, palette=palette, num_classes=len(id2label) if id2label else None,
                            max_shard_bytes=cfg.max_shard_bytes)
        id2label = id2label or _default_id2label(split["class_pixels"], cfg.split)
        split.update(images=images.name, labels=labels.name, palette=len(palette) if palette else None)
        info = info or {"format": "alps_hf labeled dataset", "splits": {}, "license": cfg.license, "pretty_name": cfg.pretty_name}
        info["splits"][cfg.split] = split
        info["id2label"] = {str(k): v for k, v in id2label.items()}
        _finish(stage, output, info, cfg.add_split)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return info


def _finish(stage: Path, output: Path, info: dict[str, Any], add: bool) -> None:
    """Move the staged split into place, then write id2label.json, labeled_dataset.json and the card."""
    if add:
        for shard in sorted((stage / "data").iterdir()):
            shard.replace(output / "data" / shard.name)
    else:
        shutil.rmtree(output, ignore_errors=True)
        stage.replace(output)
    write_json(output / "id2label.json", info["id2label"])
    write_json(output / INFO_FILE, info)
    atomic_write_text(output / "README.md", render_card(info, output.name))


def run_make_dataset(cfg: MakeDatasetConfig) -> int:
    """CLI entry of `alps-hf make-dataset`: write the folder and print one summary line per split."""
    info = make_dataset(cfg)
    for name, split in info["splits"].items():
        print(f"{cfg.output}: split {name!r}: {split['num_rows']} images in {split['num_shards']} shard(s)")
    print(f"{len(info['id2label'])} classes: " + ", ".join(f"{k}={v}" for k, v in info["id2label"].items()))
    return 0
