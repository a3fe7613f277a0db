"""`alps-hf score`: how good are pseudo-labels? An alps_hf output folder against ground truth.

Ground truth is a labeled dataset (a Hub-layout or `save_to_disk` folder, or a Hub id, e.g. the
output of `alps-hf make-dataset`) or an images/ + labels/ folder pair. Rows are matched by file
name without suffix: the pseudo-label's `source` against the ground truth's `source` column (else
its image file name) or the label file's name. The windows of a tiled scene are matched by the
scene's name and each scores the scene pixels it owns (its core), so every pixel counts once. Every name must pair up (`--only-matched` scores
the names both sides share).

Pseudo-classes have no names, so `alps_hf.metrics.confusion` maps clusters onto classes, many to
one (majority) and one to one (Hungarian), and scores them twice: over the whole image (pixels no
mask covered count as wrong, the number that matters for pre-training) and over covered pixels only
(the purity of what was labeled). The report also gives coverage, per-class IoU and the
cluster -> class table, as JSON and markdown.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from alps_hf.config_utils import arg
from alps_hf.core import IGNORE_INDEX, atomic_write_text, read_json, write_json
from alps_hf.errors import ConfigError, DatasetFormatError, InputError
from alps_hf.labeled.make_dataset import parse_id2label
from alps_hf.labeled.pairs import (
    LAYOUTS,
    label_from_pil,
    match_pairs,
    missing_names_message,
    parse_palette,
    read_label,
    resolve_folders,
)
from alps_hf.metrics.confusion import cluster_class_confusion, pseudo_label_quality

# Ground-truth values counted before the classes are known (0..254; 255 is ignore); trimmed after.
_MAX_CLASSES = IGNORE_INDEX


@dataclass
class ScoreConfig:
    """Everything `alps-hf score` needs: the pseudo-labeled folder, the ground truth, the report path."""

    pseudo: str = arg(None, "A folder written by `alps-hf label` / `recluster` (rows with `label` and `source`).")
    ground_truth: list[str] = arg(
        [],
        "Ground truth: a labeled dataset (folder, save_to_disk folder or Hub id), one folder holding images/ and "
        "labels/, or two folders IMAGES LABELS.",
    )
    output: str | None = arg(None, "Write the report as JSON here and as markdown beside it (.md); default: print only.")
    split: str | None = arg(None, "Split of the pseudo-labels to score (data/<split>-*.parquet); default: every shard.")
    gt_split: str | None = arg(None, "Split of a ground-truth dataset; default: every split.")
    id2label: str | None = arg(None, "Ground-truth class names (JSON file or inline); default: the dataset's id2label.json, else class_0..")
    palette: str | None = arg(None, 'Colour table of RGB ground-truth masks, e.g. \'{"#3C1098": 0}\' (as make-dataset --palette).')
    only_matched: bool = arg(False, "Score the names found on both sides instead of refusing names without a partner.")

    def __post_init__(self) -> None:
        if not self.pseudo:
            raise ConfigError("give the pseudo-labeled folder: alps-hf score PSEUDO --ground-truth GT")
        if not self.ground_truth:
            raise ConfigError("--ground-truth is required: a labeled dataset, or an images/labels folder pair")
        if len(self.ground_truth) > 2:
            raise ConfigError(f"--ground-truth takes one dataset / folder or two folders IMAGES LABELS, got {len(self.ground_truth)}: {self.ground_truth}")
        parse_palette(self.palette)
        parse_id2label(self.id2label)


def _key(name: str) -> str:
    """The match key of a source / file name: its last path part without suffix."""
    return Path(str(name).replace("\\", "/")).stem


def _decode(value: dict, palette, where: str) -> np.ndarray:
    with Image.open(io.BytesIO(value["bytes"]) if value.get("bytes") else value["path"]) as im:
        im.load()
        return label_from_pil(im, palette, where)


def pseudo_rows(folder: Path, split: str | None) -> tuple[dict[str, tuple[str, list]], int]:
    """The pseudo-label rows of an alps_hf output folder, by key, and K.

    A plain row is `{key: (source, [(None, label dict)])}`. The windows of a tiled scene (`--tile-size`,
    GeoTIFF) are one entry under the scene's key: `{key: (scene, [(Window, label dict), ...])}`, each
    window with its core (the scene pixels it owns), so each scene pixel is scored once against the
    scene's ground truth.

    Raises:
        InputError: not an alps_hf output folder, or no shard of `split`.
        DatasetFormatError: two rows share a name.
    """
    import json

    import pyarrow.parquet as pq

    from alps_hf.geo.windows import window_from_meta

    if not (folder / "id2label.json").is_file() or not (folder / "data").is_dir():
        raise InputError(f"PSEUDO {str(folder)!r}: expected a folder written by `alps-hf label` (data/*.parquet + id2label.json)")
    num_clusters = len(read_json(folder / "id2label.json"))
    files = sorted((folder / "data").glob(f"{split or '*'}-*.parquet"))
    if not files:
        raise InputError(f"PSEUDO {str(folder)!r} has no shard data/{split or '*'}-*.parquet; check --split")
    info = read_json(folder / "alps_dataset.json") if (folder / "alps_dataset.json").is_file() else {}
    tiling = info.get("tiling") or {}
    rows: dict[str, tuple[str, list]] = {}
    for f in files:
        has_meta = "meta" in pq.read_schema(f).names
        table = pq.read_table(f, columns=["label", "source", *(["meta"] if has_meta else [])])
        metas = table.column("meta").to_pylist() if has_meta else [None] * table.num_rows
        for label, source, meta in zip(table.column("label").to_pylist(), table.column("source").to_pylist(), metas,
                                       strict=True):
            meta = json.loads(meta or "{}")
            if "window" in meta:  # one window of a tiled scene
                window = window_from_meta(meta, tiling.get("window_size"), tiling.get("tile_overlap", 0))
                scene = meta.get("scene") or source.split("#", 1)[0]
                key = _key(scene)
                if key in rows and rows[key][0] != scene:
                    raise DatasetFormatError(f"PSEUDO: scenes {rows[key][0]!r} and {scene!r} share the name {key!r}; names must be unique to match")
                rows.setdefault(key, (scene, []))[1].append((window, label))
                continue
            key = _key(source)
            if key in rows:
                raise DatasetFormatError(f"PSEUDO: rows {rows[key][0]!r} and {source!r} share the name {key!r}; names must be unique to match")
            rows[key] = (source, [(None, label)])
    return rows, num_clusters


def _gt_dataset(source: str, split: str | None):
    """Every (or the chosen) split of a ground-truth dataset, as one `datasets.Dataset`."""
    import datasets

    path = Path(source)
    try:
        if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
            loaded = datasets.load_from_disk(str(path))
        else:
            loaded = datasets.load_dataset(str(path))
    except Exception as err:  # noqa: BLE001 - datasets raises many types for unreadable input
        raise InputError(f"--ground-truth {source!r} cannot be loaded as a dataset: {type(err).__name__}: {str(err).splitlines()[0][:200]}") from None
    if isinstance(loaded, datasets.Dataset):
        return loaded
    if split is not None:
        if split not in loaded:
            raise InputError(f"--gt-split {split!r}: {source!r} has splits {list(loaded)}")
        return loaded[split]
    return datasets.concatenate_datasets(list(loaded.values()))


def gt_rows(cfg: ScoreConfig) -> tuple[dict[str, tuple[str, Any]], dict[int, str] | None]:
    """Ground-truth rows by key, `{key: (name, loader)}`, and the class names found with them (or None).

    A loader is a no-argument function returning the (H, W) uint8 class map; nothing is decoded yet.

    Raises:
        InputError: unreadable ground truth, or rows that cannot be named.
    """
    palette = parse_palette(cfg.palette)
    first = Path(cfg.ground_truth[0])
    is_pair = len(cfg.ground_truth) == 2 or any((first / a).is_dir() and (first / b).is_dir() for a, b in LAYOUTS)
    if is_pair:
        images, labels = resolve_folders(cfg.ground_truth)
        rows = {}
        for pair in match_pairs(images, labels):
            rows[_key(pair.name)] = (str(pair.label), lambda pair=pair: read_label(pair.label, palette))
        names = (first / "id2label.json") if len(cfg.ground_truth) == 1 else None
        return rows, ({int(k): v for k, v in read_json(names).items()} if names and names.is_file() else None)
    from datasets import Image as ImageFeature

    ds = _gt_dataset(cfg.ground_truth[0], cfg.gt_split)
    if "label" not in ds.column_names:
        raise InputError(f"--ground-truth {cfg.ground_truth[0]!r} has no 'label' column; columns: {ds.column_names}")
    ds = ds.cast_column("label", ImageFeature(decode=False))
    if "source" in ds.column_names:
        names = ds["source"]
    elif "image" in ds.column_names:
        names = [v.get("path") for v in ds.cast_column("image", ImageFeature(decode=False))["image"]]
    else:
        names = []
    if len(names) != len(ds) or not all(names):
        raise InputError(
            f"--ground-truth {cfg.ground_truth[0]!r}: rows have neither a 'source' column nor image file names, so "
            "they cannot be matched to pseudo-labels; write the dataset with `alps-hf make-dataset`"
        )
    rows = {}
    for i, name in enumerate(names):
        rows[_key(name)] = (name, lambda i=i, name=name: _decode(ds[i]["label"], palette, f"ground truth {name}"))
    folder = Path(cfg.ground_truth[0]) / "id2label.json"
    return rows, ({int(k): v for k, v in read_json(folder).items()} if folder.is_file() else None)


def _pair_up(pseudo: dict, gt: dict, cfg: ScoreConfig) -> list[str]:
    """The keys to score, sorted; refuses names without a partner unless --only-matched."""
    no_gt = sorted(set(pseudo) - set(gt))
    no_pseudo = sorted(set(gt) - set(pseudo))
    common = sorted(set(pseudo) & set(gt))
    detail = missing_names_message(f"pseudo-labels in {cfg.pseudo}", no_gt, f"ground-truth labels in {' '.join(cfg.ground_truth)}", no_pseudo)
    if not common:
        raise InputError(f"no pseudo-label pairs up with a ground-truth label by file name: {detail}")
    if detail and not cfg.only_matched:
        raise InputError(f"pseudo-labels and ground truth do not pair up by file name (suffix ignored): {detail}; "
                         "pass --only-matched to score the names both sides share")
    return common


def _accumulate(keys: list[str], pseudo: dict, gt: dict, num_clusters: int) -> tuple[np.ndarray, np.ndarray, int]:
    """K x 255 confusion and per-value unlabeled counts over all pairs, plus the images scored."""
    confusion = np.zeros((num_clusters, _MAX_CLASSES), np.int64)
    unlabeled = np.zeros(_MAX_CLASSES, np.int64)
    for key in keys:
        source, parts = pseudo[key]
        name, load = gt[key]
        truth = load()
        for window, value in parts:
            label = _decode(value, None, f"pseudo-label {source}")
            if window is None:
                size, what, part_truth = label.shape, f"pseudo-label {source!r}", truth
            else:  # the window's core, against the same pixels of the scene's ground truth
                size, what = (window.scene_size[1], window.scene_size[0]), f"scene {source!r} (its windows' scene_size)"
                cx0, cy0, cx1, cy1 = window.core_local()
                label = label[cy0:cy1, cx0:cx1]
                part_truth = truth[window.y0 + cy0:window.y0 + cy1, window.x0 + cx0:window.x0 + cx1]
            if tuple(size) != truth.shape:
                raise DatasetFormatError(
                    f"{key}: {what} is {size[1]}x{size[0]} but ground truth {name!r} is "
                    f"{truth.shape[1]}x{truth.shape[0]} (W x H); score labels of the same images at the same size"
                )
            try:
                conf, unl = cluster_class_confusion(label, part_truth, num_clusters, _MAX_CLASSES)
            except ValueError as err:
                raise DatasetFormatError(f"{key}: {err} (K = {num_clusters} from the PSEUDO folder's id2label.json)") from None
            confusion += conf
            unlabeled += unl
    return confusion, unlabeled, len(keys)


def _class_names(confusion: np.ndarray, unlabeled: np.ndarray, names: dict[int, str] | None) -> list[str]:
    """The class names, after checking that no ground-truth value lies beyond them."""
    used = np.flatnonzero(confusion.sum(axis=0) + unlabeled)
    top = int(used.max()) + 1 if used.size else 0
    if names is None:
        return [f"class_{i}" for i in range(max(top, 2))]
    if top > len(names):
        raise DatasetFormatError(
            f"ground truth holds class values up to {top - 1}, beyond its {len(names)} class names (0..{len(names) - 1}); "
            "pass an --id2label that names every class"
        )
    return [names[i] for i in range(len(names))]


def _cluster_table(confusion: np.ndarray, quality: dict, names: list[str]) -> list[dict[str, Any]]:
    """One row per cluster: pixels, share, majority class, purity, Hungarian class, pixels per class."""
    total = int(confusion.sum())
    many, one = quality["many_to_one"]["mapping"], quality["one_to_one"]["mapping"]
    rows = []
    for k, counts in enumerate(confusion):
        pixels = int(counts.sum())
        rows.append({
            "cluster": k,
            "pixels": pixels,
            "share": pixels / total if total else 0.0,
            "majority_class": names[many[k]] if k in many else None,
            "purity": float(counts.max() / pixels) if pixels else None,
            "hungarian_class": names[one[k]] if k in one else None,
            "class_pixels": {names[c]: int(v) for c, v in enumerate(counts) if v},
        })
    return rows


def _mapping_scores(quality: dict) -> dict[str, Any]:
    return {name: {key: quality[side][key] for key in ("mean_iou", "pixel_accuracy", "per_class_iou")}
            for name, side in (("majority", "many_to_one"), ("hungarian", "one_to_one"))}


def score_report(confusion: np.ndarray, unlabeled: np.ndarray, class_names: list[str]) -> dict[str, Any]:
    """The score of K x C cluster-vs-class counts: whole image (uncovered = wrong) and covered pixels only.

    Args:
        confusion: K x C pixel counts over pixels with a pseudo-label and a ground-truth class.
        unlabeled: length-C counts of annotated pixels without pseudo-label.
        class_names: the C class names.

    Returns:
        `coverage`, `whole_image` / `covered_pixels` (each `majority` / `hungarian` with `mean_iou`,
        `pixel_accuracy`, `per_class_iou`), `clusters` (the cluster -> class table), `class_pixels`,
        `confusion` (K x C list), `unlabeled`, `num_clusters`, `num_classes`, `num_pixels`, `clusters_used`.
    """
    whole = pseudo_label_quality(confusion, unlabeled, class_names)
    covered = pseudo_label_quality(confusion, None, class_names)
    return {
        "coverage": whole["coverage"],
        "num_clusters": whole["num_clusters"],
        "num_classes": whole["num_classes"],
        "num_pixels": whole["num_pixels"],
        "clusters_used": whole["clusters_used"],
        "whole_image": _mapping_scores(whole),
        "covered_pixels": _mapping_scores(covered),
        "clusters": _cluster_table(confusion, whole, class_names),
        "class_pixels": {n: int(v) for n, v in zip(class_names, confusion.sum(axis=0) + unlabeled, strict=True)},
        "confusion": confusion.tolist(),
        "unlabeled": unlabeled.tolist(),
    }


def score(cfg: ScoreConfig) -> dict[str, Any]:
    """Score the pseudo-labels of `cfg.pseudo` against `cfg.ground_truth` (see the module docstring).

    Returns:
        The `score_report` dict plus `pseudo`, `ground_truth`, `images` (pairs scored) and `class_names`.

    Raises:
        InputError: unreadable inputs, or names that do not pair up (listed per side).
        DatasetFormatError: sizes that differ (file and both sizes), values out of range.
    """
    pseudo, num_clusters = pseudo_rows(Path(cfg.pseudo), cfg.split)
    gt, found_names = gt_rows(cfg)
    keys = _pair_up(pseudo, gt, cfg)
    confusion, unlabeled, images = _accumulate(keys, pseudo, gt, num_clusters)
    names = _class_names(confusion, unlabeled, parse_id2label(cfg.id2label) or found_names)
    c = len(names)
    report = score_report(confusion[:, :c], unlabeled[:c], names)
    return {"pseudo": cfg.pseudo, "ground_truth": cfg.ground_truth, "images": images, "class_names": names, **report}


def _pct(value: float | None) -> str:
    return "n/a" if value is None or value != value else f"{100 * value:.1f}"


def markdown(report: dict[str, Any]) -> str:
    """The report as markdown: summary, per-class IoU and the cluster -> class table (values in %)."""
    whole, cov = report["whole_image"], report["covered_pixels"]
    lines = [
        f"Pseudo-labels `{report['pseudo']}` vs ground truth `{' '.join(report['ground_truth'])}`: "
        f"{report['images']} images, K = {report['num_clusters']}, {report['num_classes']} classes, "
        f"coverage {_pct(report['coverage'])} %",
        "",
        "| % | majority mIoU | Hungarian mIoU | majority pixel acc. | Hungarian pixel acc. |",
        "|---|---|---|---|---|",
    ]
    for title, part in (("whole image (uncovered = wrong)", whole), ("covered pixels", cov)):
        lines.append(f"| {title} | {_pct(part['majority']['mean_iou'])} | {_pct(part['hungarian']['mean_iou'])} | "
                     f"{_pct(part['majority']['pixel_accuracy'])} | {_pct(part['hungarian']['pixel_accuracy'])} |")
    total = sum(report["class_pixels"].values()) or 1
    lines += ["", "| class | pixel share | IoU majority | IoU Hungarian | IoU majority, covered |", "|---|---|---|---|---|"]
    for name in report["class_names"]:
        lines.append(f"| {name} | {_pct(report['class_pixels'][name] / total)} | {_pct(whole['majority']['per_class_iou'][name])} | "
                     f"{_pct(whole['hungarian']['per_class_iou'][name])} | {_pct(cov['majority']['per_class_iou'][name])} |")
    lines += ["", "| cluster | share of covered pixels | majority class | purity | Hungarian class |", "|---|---|---|---|---|"]
    for row in report["clusters"]:
        lines.append(f"| {row['cluster']} | {_pct(row['share'])} | {row['majority_class'] or '-'} | {_pct(row['purity'])} | "
                     f"{row['hungarian_class'] or '-'} |")
    return "\n".join(lines) + "\n"


def run_score(cfg: ScoreConfig) -> int:
    """CLI entry of `alps-hf score`: print the markdown report; with --output write JSON + markdown."""
    report = score(cfg)
    text = markdown(report)
    print(text, end="")
    if report["class_names"] and report["class_names"][0] == "class_0" and not cfg.id2label:
        print("(no class names: the ground truth has no id2label.json; pass --id2label '{\"0\": \"building\", ...}' "
              "or score against a dataset written by `alps-hf make-dataset --id2label ...`)")
    if cfg.output:
        path = Path(cfg.output)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json(path, report)
        atomic_write_text(path.with_suffix(".md"), text)
        print(f"wrote {path} and {path.with_suffix('.md')}")
    return 0
