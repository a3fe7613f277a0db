"""Dataset and model cards, rendered from the Jinja templates shipped in `alps_hf/hub/templates/`.

The YAML metadata is built as data with `huggingface_hub`'s `DatasetCardData` / `ModelCardData`
(never by string concatenation), so `huggingface_hub.metadata_load` and the Hub parse every card.
The body is filled from the machine-readable files the other stages write: `alps_dataset.json`
for datasets; `config.json`, `training_config.json`, `metrics.json`, `id2label.json` for models.
Nothing is invented: a number that was not measured is shown as "not yet measured".
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from huggingface_hub import DatasetCard, DatasetCardData, EvalResult, ModelCard, ModelCardData

from alps_hf import __version__, core
from alps_hf.core import atomic_path, atomic_write_text
from alps_hf.errors import DatasetFormatError, PublishError

TEMPLATES = Path(__file__).with_name("templates")
DATASET_TEMPLATE = TEMPLATES / "dataset_card.md"
MODEL_TEMPLATE = TEMPLATES / "model_card.md"

DATASET_TAGS = ["remote-sensing", "pseudo-labels", "segment-anything", "alps"]
NOT_MEASURED = "not yet measured"
HISTOGRAM_FILE = "class_histogram.png"

# What `huggingface_hub.utils.validate_repo_id` enforces, in words for error messages.
REPO_ID_RULE = (
    "'namespace/name' (or 'name'), each part 1-96 characters of letters, digits, '-', '_' or '.', "
    "not starting or ending with '-' or '.', without '--' or '..'"
)

ALPS_BIBTEX = """@article{zhang2024alps,
  title   = {ALPS: An Auto-Labeling and Pre-training Scheme for Remote Sensing Segmentation With Segment Anything Model},
  author  = {Zhang, Song and Wang, Qingzhong and Liu, Junyi and Xiong, Haoyi},
  journal = {arXiv preprint arXiv:2406.10855},
  year    = {2024}
}"""

SAM_BIBTEX = """@inproceedings{kirillov2023segment,
  title     = {Segment Anything},
  author    = {Kirillov, Alexander and Mintun, Eric and Ravi, Nikhila and Mao, Hanzi and Rolland, Chloe and Gustafson, Laura and Xiao, Tete and Whitehead, Spencer and Berg, Alexander C. and Lo, Wan-Yen and Doll{\\'a}r, Piotr and Girshick, Ross},
  booktitle = {Proceedings of the IEEE/CVF International Conference on Computer Vision (ICCV)},
  year      = {2023}
}"""

SEGFORMER_BIBTEX = """@inproceedings{xie2021segformer,
  title     = {SegFormer: Simple and Efficient Design for Semantic Segmentation with Transformers},
  author    = {Xie, Enze and Wang, Wenhai and Yu, Zhiding and Anandkumar, Anima and Alvarez, Jose M. and Luo, Ping},
  booktitle = {Advances in Neural Information Processing Systems (NeurIPS)},
  year      = {2021}
}"""

MASK2FORMER_BIBTEX = """@inproceedings{cheng2022masked,
  title     = {Masked-attention Mask Transformer for Universal Image Segmentation},
  author    = {Cheng, Bowen and Misra, Ishan and Schwing, Alexander G. and Kirillov, Alexander and Girdhar, Rohit},
  booktitle = {Proceedings of the IEEE/CVF Conference on Computer Vision and Pattern Recognition (CVPR)},
  year      = {2022}
}"""



def generator_keys() -> tuple[str, ...]:
    """Names of the mask-generator settings, in the order `MaskGeneratorConfig` declares them.

    The card lists the `generator` record of alps_dataset.json in this order, so a setting added to
    the declaration appears in the card without touching this module. Imported on first use: the
    generator module pulls in torch, which rendering a card does not otherwise need.
    """
    from alps_hf.sam.generator import MaskGeneratorConfig

    return tuple(f.name for f in dataclasses.fields(MaskGeneratorConfig))


# The last line of every rendered card: a digest of the text above it. A card whose digest still
# matches was not edited by hand since alps_hf wrote it, so publishing may replace it; a card
# whose digest no longer matches (or that has no marker) was edited and is kept.
_MARKER = re.compile(r"\n*<!-- alps_hf card sha256:([0-9a-f]{64})[^\n]*-->\s*\Z")


def _digest(text: str) -> str:
    return hashlib.sha256(text.replace("\r\n", "\n").rstrip().encode("utf-8")).hexdigest()


def _mark(card):
    """Return the same kind of card with the generated-card marker appended."""
    text = str(card).rstrip()
    marked = (
        f"{text}\n\n<!-- alps_hf card sha256:{_digest(text)} "
        "(generated; once edited by hand, `alps-hf push` keeps it unless --overwrite-card) -->\n"
    )
    return type(card)(marked)


def card_is_generated(text: str) -> bool:
    """Whether a card is still exactly as alps_hf rendered it.

    Args:
        text: the README.md text.

    Returns:
        True when its digest marker matches the text above it (nobody edited it since).
    """
    match = _MARKER.search(text)
    return bool(match) and _digest(text[: match.start()]) == match.group(1)


def repo_id_problem(value: object) -> str | None:
    """Why `value` is not a valid Hub repo id, by huggingface_hub's own `validate_repo_id`.

    Args:
        value: the candidate repo id.

    Returns:
        huggingface_hub's message, or None when `value` is a valid repo id.
    """
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    if not isinstance(value, str):
        return f"a repo id is a string, not {type(value).__name__}"
    try:
        validate_repo_id(value)
    except HFValidationError as err:
        return str(err)
    return None


def is_hub_id(value: object) -> bool:
    """The one rule in alps_hf.hub for "does this reference name a Hub repo".

    True when `value` is a valid Hub repo id (`huggingface_hub.utils.validate_repo_id`) and no local
    file or folder of that name exists: a bare `pseudo` or `ckpt` given on the command line that is
    a folder here is a local path, never a Hub id.

    Args:
        value: a model / dataset reference as given by the user or recorded by a run.

    Returns:
        Whether it names a Hub repo.
    """
    return repo_id_problem(value) is None and not Path(str(value)).exists()


_LOCAL = " (local folder)"


def public_name(value: str | None) -> str | None:
    """A dataset / model reference fit for a public card or commit message.

    Hub ids stay as they are; local paths are reduced to their last component (this machine's
    directories are nobody's business on the Hub).

    Args:
        value: a Hub id or a local path (or None).

    Returns:
        The Hub id, `"<folder name> (local folder)"`, or `value` itself when empty.
    """
    if not value or is_hub_id(value) or value.endswith(_LOCAL):
        return value  # (a name made public already stays as it is)
    return f"{Path(value).name or value}{_LOCAL}"


def _fmt(value: Any) -> str:
    """A table cell: floats to 4 significant digits, None as 'not recorded'."""
    if value is None:
        return "not recorded"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple, dict)):
        return f"`{json.dumps(value)}`"
    return str(value).replace("|", "\\|").replace("\n", " ")


def _pct(value: float | None) -> str:
    return NOT_MEASURED if value is None else f"{100 * value:.1f} %"


def _size_category(n: int) -> str:
    """The Hub's `size_categories` bucket for n rows."""
    for limit, name in [
        (1_000, "n<1K"),
        (10_000, "1K<n<10K"),
        (100_000, "10K<n<100K"),
        (1_000_000, "100K<n<1M"),
        (10_000_000, "1M<n<10M"),
        (100_000_000, "10M<n<100M"),
        (1_000_000_000, "100M<n<1B"),
    ]:
        if n < limit:
            return name
    return "n>1T" if n >= 10**12 else "1B<n<10B"


# ---------------------------------------------------------------------------------------------
# dataset cards


def _yaml_type(spec: Mapping[str, Any], column: str) -> dict[str, Any]:
    """The YAML `dataset_info.features` form of one feature given as `Features.to_dict()` writes it."""
    kind = spec.get("_type")
    if kind == "Value":
        return {"dtype": spec["dtype"]}
    if kind == "Image" and not {k: v for k, v in spec.items() if k != "_type" and v not in (None, True)}:
        return {"dtype": "image"}
    if kind in ("List", "Sequence") and spec.get("length", -1) == -1:
        inner = _yaml_type(spec["feature"], column)
        return {"list": inner["dtype"] if set(inner) == {"dtype"} else inner}
    raise DatasetFormatError(
        f"column {column!r} has feature {dict(spec)}, which the dataset card cannot describe; alps_hf datasets "
        "hold Value, Image and List columns only: re-run `alps-hf label` to rewrite alps_dataset.json"
    )


def yaml_features(features) -> list[dict[str, Any]]:
    """The card's YAML `features` list of a `datasets.Features`, built from its public `to_dict()`.

    Args:
        features: the dataset's `datasets.Features`.

    Returns:
        `[{"name": ..., "dtype": ...} | {"name": ..., "list": ...}, ...]` in column order.

    Raises:
        DatasetFormatError: a column of a kind alps_hf datasets never hold (struct, class label, ...).
    """
    return [{"name": name, **_yaml_type(spec, name)} for name, spec in features.to_dict().items()]


def dataset_card_data(info: Mapping[str, Any]) -> DatasetCardData:
    """The YAML header of a dataset card, built as data from an `alps_dataset.json` dict.

    `configs` point each split at its `data/<split>-*` shards and `dataset_info` lists the
    features in the datasets-library YAML form, so `load_dataset(folder)` and the Hub viewer read
    the shards with exactly these features.

    Args:
        info: the `alps_dataset.json` dict.

    Returns:
        The `DatasetCardData` of the card's YAML header.

    Raises:
        DatasetFormatError: `info` lacks `splits` or `features`, or the features do not parse.
    """
    from datasets import Features

    splits = info.get("splits") or {}
    if not splits or "features" not in info:
        raise DatasetFormatError(
            "alps_dataset.json needs 'splits' and 'features' to render a dataset card; "
            f"found keys {sorted(info)}; re-run `alps-hf label` to rewrite it"
        )
    try:
        features = Features.from_dict(info["features"])
        # Columns in the contract's order (image, label first) whatever the key order of the JSON.
        features = Features({name: features[name] for name in _column_order(features)})
    except Exception as err:  # datasets raises several types for a malformed dict
        raise DatasetFormatError(
            f"alps_dataset.json 'features' do not parse as datasets.Features: {err}"
        ) from err
    measured = all(isinstance(s.get("num_rows"), int) for s in splits.values())
    num_rows = sum(int(s.get("num_rows") or 0) for s in splits.values())
    num_bytes = sum(int(s.get("num_bytes") or 0) for s in splits.values())
    dataset_info: dict[str, Any] = {
        # datasets' YAML form of the features, so the Hub and load_dataset agree with the shards.
        "features": yaml_features(features),
    }
    if measured:  # a card rendered before labeling (a template) states no sizes rather than zeros
        dataset_info["splits"] = [
            {
                "name": name,
                "num_bytes": int(s.get("num_bytes") or 0),
                "num_examples": int(s["num_rows"]),
            }
            for name, s in splits.items()
        ]
        dataset_info["download_size"] = num_bytes
        dataset_info["dataset_size"] = num_bytes
    return DatasetCardData(
        license=info.get("license") or "unknown",
        pretty_name=info.get("pretty_name") or None,
        task_categories=["image-segmentation"],
        task_ids=["semantic-segmentation"],
        size_categories=[_size_category(num_rows)] if measured else None,
        tags=list(DATASET_TAGS),
        configs=[
            {
                "config_name": "default",
                "data_files": [{"split": name, "path": f"data/{name}-*"} for name in splits],
            }
        ],
        dataset_info=dataset_info,
    )


_COLUMNS = {
    "image": ("image", "the input image (original bytes kept where possible)"),
    "label": ("8-bit PNG", "pseudo-class `0..K-1` of each pixel; `255` = no mask"),
    "segments": ("16-bit PNG", "index `1..N` of the SAM mask visible at each pixel; `0` = none"),
    "segment_class": ("list of int", "pseudo-class of each segment (entry `i` is segment `i + 1`)"),
    "segment_area": ("list of int", "pixel count of each segment"),
    "segment_iou": ("list of float", "SAM's predicted IoU of each segment"),
    "segment_stability": ("list of float", "stability score of each segment"),
    "segment_kind": ("list of string", "`object`, `stuff` (mask over the area gate) or `fill` (pixels no mask "
                     "covered) for each segment"),
    "source": ("string", "where the image came from (path, dataset id and index, tile window)"),
    "meta": (
        "string (JSON)",
        "per-image metadata recorded at decoding (e.g. size, georeferencing of a window)",
    ),
}


# The statistics of alps_dataset.json shown in the card, in the card's order (labels in the template).
_STAT_KEYS = (
    "images",
    "failed",
    "images_without_masks",
    "masks_total",
    "masks_per_image_mean",
    "masks_per_image_median",
    "pixel_coverage",
)


def _column_order(names) -> list[str]:
    """The contract's column order first (alps_dataset.json may be written with sorted keys)."""
    names = list(names)
    return [n for n in _COLUMNS if n in names] + [n for n in names if n not in _COLUMNS]


def _feature_type(feature: Mapping[str, Any]) -> str:
    return str(feature.get("dtype") or feature.get("_type") or "value")


def _column_rows(info: Mapping[str, Any], k: int) -> list[tuple[str, str, str]]:
    """(name, type, meaning) of every column, in the order of the parquet schema where known."""
    rows = []
    for name in _column_order(info.get("features") or {}):
        kind, meaning = _COLUMNS.get(name, (_feature_type(info["features"][name]), "additional column"))
        rows.append((name, kind, meaning.replace("K-1", str(k - 1))))
    return rows


def _top_classes(stats: Mapping[str, Any], names: Mapping[int, str], limit: int = 10) -> list[dict[str, Any]]:
    """The largest pseudo-classes by pixel share (id, name, share, mask count), largest first.

    `names` are the folder's id2label.json names (a user may have renamed them); missing ids get `cluster_NN`.
    """
    hist = [int(v) for v in stats.get("class_pixel_histogram") or []]
    counts = [int(v) for v in stats.get("class_mask_counts") or []]
    total = sum(hist)
    order = sorted(range(len(hist)), key=lambda i: (-hist[i], i))[:limit]
    return [
        {
            "id": i,
            "name": _fmt(names.get(i, f"cluster_{i:02d}")),
            "share": f"{100 * hist[i] / total:.1f} %" if total else NOT_MEASURED,
            "masks": counts[i] if i < len(counts) else NOT_MEASURED,
        }
        for i in order
    ]


@functools.lru_cache(maxsize=8)
def _sha256_of(paths: tuple[Path, ...], stamp: tuple[tuple[int, int], ...]) -> str:
    # `stamp` (size, mtime) is part of the cache key: a file rewritten in place is hashed again.
    digest = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 24), b""):
                digest.update(block)
    return digest.hexdigest()


def local_weights_sha256(folder: str | Path) -> tuple[str, str] | None:
    """Content hash of the weights of a local `save_pretrained` folder, standing in for a Hub revision.

    Args:
        folder: the model folder (as recorded in the run's config).

    Returns:
        (what was hashed, sha256 hex digest): `model.safetensors`, or the sorted safetensors shards
        hashed as one stream; None when the folder holds no safetensors file (or does not exist here).
    """
    folder = Path(folder)
    single = folder / "model.safetensors"
    paths = (single,) if single.is_file() else tuple(sorted(folder.glob("*.safetensors")))
    if not paths:
        return None
    stamp = tuple((p.stat().st_size, p.stat().st_mtime_ns) for p in paths)
    what = paths[0].name if len(paths) == 1 else f"{len(paths)} safetensors shards"
    return what, _sha256_of(paths, stamp)


def _sam_context(info: Mapping[str, Any], run_config: Mapping[str, Any]) -> dict[str, Any]:
    """Which SAM made the masks, fit for a public card: a Hub id and revision, or a local folder's name and hash."""
    from alps_hf.sam.families import FAMILIES

    sam = run_config.get("sam") or info.get("sam_model") or "unknown"
    family = info.get("sam_family") or run_config.get("sam_family")
    names = {"sam_family": family, "sam_family_title": FAMILIES[family].title if family in FAMILIES else family}
    if is_hub_id(sam) or sam == "unknown":
        return {"sam_model": sam, "sam_is_hub": sam != "unknown", "sam_revision": info.get("sam_revision"),
                "sam_weights": None, **names}
    # The hash recorded at label time; folders from before it was recorded are hashed now, if still here.
    recorded = info.get("sam_weights")
    weights = tuple(recorded) if recorded else local_weights_sha256(sam)
    return {"sam_model": public_name(sam), "sam_is_hub": False, "sam_revision": None,
            "sam_weights": weights, **names}


def _dataset_context(
    info: Mapping[str, Any], repo_id: str | None, run_config: Mapping[str, Any],
    class_names: Mapping[int, str] | None = None,
) -> dict[str, Any]:
    """The values the dataset card template fills in; the prose and its branches live in the template."""
    stats = info.get("stats") or {}
    generator = info.get("generator") or {}
    k = int(info.get("num_clusters") or len(stats.get("class_pixel_histogram") or []) or 0)
    sam = _sam_context(info, run_config)
    coverage = stats.get("pixel_coverage")
    stat_values = {key: _fmt(stats[key]) if key in stats else NOT_MEASURED for key in _STAT_KEYS}
    stat_values["pixel_coverage"] = _pct(coverage)
    splits = info.get("splits") or {}
    split_rows = [
        {
            "name": name,
            "num_rows": s.get("num_rows") if s.get("num_rows") is not None else NOT_MEASURED,
            "num_files": len(s.get("files") or []),
        }
        for name, s in splits.items()
    ]
    title = info.get("pretty_name") or (repo_id.split("/")[-1] if repo_id else "ALPS pseudo-labeled dataset")
    return {
        **sam,
        "title": title,
        "repo_id": repo_id,
        "split": next(iter(splits), "train"),
        "clusters_from": public_name(run_config.get("clusters")),
        "column_rows": _column_rows(info, k),
        "repo_ref": repo_id or "path/to/this/folder",
        "source": info.get("source") or "not recorded",
        "source_citation": info.get("source_citation"),
        "num_clusters": k,
        "feature_normalization": info.get("feature_normalization") or "none",
        "seed": info.get("seed", "not recorded"),
        "alps_hf_version": info.get("alps_hf_version") or "not recorded",
        "generator_rows": _generator_rows(generator),
        "max_area_fraction": _fmt(generator.get("max_area_fraction", 0.3)),
        "tiling": _tiling(info.get("tiling") or {}),
        "stats": stat_values,
        "split_rows": split_rows,
        "top_classes": _top_classes(stats, class_names or {}),
        "figures": info.get("figures") or {},
        "segment_kinds": ", ".join(f"{n} {kind}" for kind, n in (stats.get("segments_by_kind") or {}).items()),
        "stuff": generator.get("large_masks") == "stuff",
        "fill": bool(generator.get("fill")),
        "has_histogram": bool(stats.get("class_pixel_histogram")),
        "uncovered": _pct(1 - coverage) if coverage is not None else None,
        "alps_bibtex": ALPS_BIBTEX,
        "sam_bibtex": SAM_BIBTEX,
    }


def _generator_rows(generator: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(setting, value) of every recorded generator setting: declared ones first, in declared order."""
    declared = generator_keys()
    keys = [k for k in declared if k in generator] + [k for k in generator if k not in declared]
    return [(key, _fmt(generator[key])) for key in keys]


_MAX_READING_ROWS = 20  # scenes listed in the card's band / stretch table (all are in alps_dataset.json)


def _tiling(tiling: Mapping[str, Any]) -> dict[str, Any] | None:
    """How large scenes were cut into windows, for the card (None when no scene was cut)."""
    if not tiling.get("window_size") or not tiling.get("scenes"):
        return None
    readings = tiling.get("scene_readings") or []
    rows = []
    for r in readings[:_MAX_READING_ROWS]:
        bands = r.get("bands") or []
        names = r.get("band_names") or [""] * len(bands)
        stretch = r.get("stretch")
        rows.append({
            "scene": r.get("scene", "?"), "dtype": r.get("dtype", "?"),
            "bands": " ".join(f"{b} ({n})" if n else str(b) for b, n in zip(bands, names, strict=False)),
            "stretch": ", ".join(f"{_fmt(lo)}..{_fmt(hi)}" for lo, hi in stretch) if stretch else "as stored (8-bit)",
        })
    return {**{key: tiling.get(key) for key in ("window_size", "tile_overlap", "scenes", "bands")},
            "readings": rows, "more_readings": max(0, len(readings) - _MAX_READING_ROWS)}


def render_dataset_card(
    info: Mapping[str, Any], repo_id: str | None = None, run_config: Mapping[str, Any] | None = None,
    class_names: Mapping[int, str] | None = None,
) -> DatasetCard:
    """Render the dataset card of an alps_hf pseudo-labeled dataset.

    Args:
        info: the `alps_dataset.json` dict written by `alps-hf label` (optional extra key
            `source_citation`: BibTeX of the source imagery).
        repo_id: the Hub id the card will live under; used in the loading snippets. None: the card
            describes a local folder (snippets read the folder, not the Hub).
        run_config: the run's `label_config.json` dict, when there is one: the SAM folder it names
            is hashed when it is local, and a `--clusters` model is named as the centroids' origin.
        class_names: the folder's id2label.json (id -> name), when it has one: names given by the user
            are shown; None: `cluster_NN`.

    Returns:
        A `huggingface_hub.DatasetCard`; `card.save(folder / "README.md")` writes it. The card
        shows `class_histogram.png`, which `render_class_histogram` draws.

    Raises:
        DatasetFormatError: `info` lacks the splits or features.
    """
    data = dataset_card_data(info)
    card = DatasetCard.from_template(
        data, template_path=str(DATASET_TEMPLATE), **_dataset_context(info, repo_id, run_config or {}, class_names)
    )
    return _mark(card)


def render_class_histogram(info: Mapping[str, Any], path: str | Path) -> Path | None:
    """Draw the share of labeled pixels per pseudo-class as a small PNG.

    Args:
        info: the `alps_dataset.json` dict (its `stats.class_pixel_histogram`).
        path: the PNG to write (atomically).

    Returns:
        `path`, or None (nothing written) when the statistics were not measured.
    """
    hist = [int(v) for v in (info.get("stats") or {}).get("class_pixel_histogram") or []]
    if not hist:
        return None
    import matplotlib

    matplotlib.use("Agg")  # no display on servers; must precede pyplot
    import matplotlib.pyplot as plt

    total = sum(hist) or 1
    fig, ax = plt.subplots(figsize=(max(4.0, 0.16 * len(hist) + 1.5), 2.4), dpi=100)
    ax.bar(range(len(hist)), [100 * v / total for v in hist], color="#4c72b0", width=0.8)
    ax.set_xlabel("pseudo-class")
    ax.set_ylabel("% of labeled pixels")
    ax.set_xlim(-0.6, len(hist) - 0.4)
    ax.set_title(f"Pixels per pseudo-class (K = {len(hist)})", fontsize=9)
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return path


def render_training_curve(history: list[Mapping[str, Any]], evals: list[Mapping[str, Any]], path: str | Path) -> Path:
    """Draw training loss and validation mIoU by step as a PNG, the picture the model card shows.

    Every logged point gets a marker, so a short run is a few visible points rather than an empty
    line; with fewer than two logged steps the plot says in words that there is too little to plot.

    Args:
        history: `{"step", "loss"}` records of the run (metrics.json `history`).
        evals: `{"step", "mean_iou"}` records of its evaluations (metrics.json `evals`).
        path: the PNG to write (atomically).

    Returns:
        `path`.
    """
    import matplotlib

    matplotlib.use("Agg")  # no display on servers; must precede pyplot
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    steps = [h["step"] for h in history]
    ax.plot(steps, [h["loss"] for h in history], "o-", markersize=4, color="tab:blue", label="training loss")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss", color="tab:blue")
    points = [(e["step"], e["mean_iou"]) for e in evals if e.get("mean_iou") is not None]
    if points:
        ax2 = ax.twinx()
        ax2.plot(*zip(*points, strict=True), "s-", color="tab:orange", label="validation mIoU")
        ax2.set_ylabel("validation mIoU", color="tab:orange")
    if len(history) < 2:
        ax.text(0.5, 0.5, f"{len(history)} logged training step(s): too few to plot a curve",
                transform=ax.transAxes, ha="center", va="center", fontsize=11, color="tab:red")
    ax.set_title("training curve")
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return path


def dataset_card_of(folder: str | Path, repo_id: str | None = None) -> DatasetCard:
    """The dataset card of a folder written by `alps-hf label`, from its alps_dataset.json and label_config.json.

    Args:
        folder: the dataset folder.
        repo_id: the Hub id the card will live under (None: a local folder).

    Returns:
        The rendered `DatasetCard`.

    Raises:
        DatasetFormatError: alps_dataset.json (or label_config.json, when present) is missing or bad.
    """
    folder = Path(folder)
    info = read_json(folder / "alps_dataset.json", DatasetFormatError)
    run = folder / "label_config.json"
    run_config = read_json(run, DatasetFormatError) if run.is_file() else {}
    names_file = folder / "id2label.json"
    names = read_json(names_file, DatasetFormatError) if names_file.is_file() else {}
    return render_dataset_card(info, repo_id=repo_id, run_config=run_config,
                               class_names={int(k): str(v) for k, v in names.items()})


def write_dataset_card(folder: str | Path, repo_id: str | None = None) -> Path:
    """(Re)write `README.md` and `class_histogram.png` of a dataset folder from its alps_dataset.json.

    Args:
        folder: the dataset folder.
        repo_id: the Hub id the card will live under (None: a local folder).

    Returns:
        The README path.

    Raises:
        DatasetFormatError: alps_dataset.json is missing or bad.
    """
    folder = Path(folder)
    card = dataset_card_of(folder, repo_id)
    render_class_histogram(read_json(folder / "alps_dataset.json", DatasetFormatError), folder / HISTOGRAM_FILE)
    readme = folder / "README.md"
    atomic_write_text(readme, str(card))
    return readme


# ---------------------------------------------------------------------------------------------
# model cards


def read_json(path: Path, error: type[Exception] = PublishError) -> dict[str, Any]:
    """Read a JSON object, raising `error` naming the file when it is missing or malformed.

    Args:
        path: the JSON file.
        error: the exception class to raise.

    Returns:
        The parsed object.

    Raises:
        error: the file is missing, not JSON, or not a JSON object.
    """
    try:
        data = core.read_json(path)
    except FileNotFoundError as err:
        raise error(f"{path} is missing") from err
    except (OSError, ValueError) as err:
        raise error(f"{path} is not valid JSON: {err}") from err
    if not isinstance(data, dict):
        raise error(f"{path} must hold a JSON object, found {type(data).__name__}")
    return data


def _optional_json(path: Path) -> dict[str, Any]:
    return read_json(path) if path.is_file() else {}


_METRIC_NAMES = {
    "mean_iou": "mean IoU",
    "mean_accuracy": "mean accuracy",
    "overall_accuracy": "overall accuracy",
}


def model_card_data(folder: str | Path, repo_id: str | None = None) -> ModelCardData:
    """The YAML header of a model card, built as data from the JSON files of a model folder.

    Args:
        folder: the model folder (`config.json`, `training_config.json`, `metrics.json`).
        repo_id: the Hub id the card will live under (names the model-index entry).

    Returns:
        The `ModelCardData`; `model-index` results only for metrics that were measured.

    Raises:
        PublishError: one of the JSON files is malformed.
    """
    folder = Path(folder)
    config = _optional_json(folder / "config.json")
    training = _optional_json(folder / "training_config.json")
    metrics = _optional_json(folder / "metrics.json")
    task = training.get("task") or "pretrain"
    model_type = config.get("model_type")
    dataset = training.get("dataset")
    base = training.get("base_model") or training.get("backbone")
    tags = ["remote-sensing", "alps", "image-segmentation"]
    if task == "pretrain":
        tags += ["pseudo-labels", "segment-anything"]
    if model_type:
        tags.append(str(model_type))
    eval_results = []
    values = metrics.get("eval") or {}
    eval_dataset = str(metrics.get("dataset") or dataset or "unknown")
    for key, name in _METRIC_NAMES.items():
        if isinstance(values.get(key), (int, float)):
            eval_results.append(
                EvalResult(
                    task_type="image-segmentation",
                    task_name="Semantic segmentation",
                    dataset_type=eval_dataset,
                    dataset_name=eval_dataset,
                    dataset_split=metrics.get("split"),
                    metric_type=key,
                    metric_name=name,
                    metric_value=float(values[key]),
                )
            )
    return ModelCardData(
        library_name="transformers",
        pipeline_tag="image-segmentation",
        license=training.get("license") or "unknown",
        # Only Hub ids are metadata; a local path would make a broken link on the Hub.
        datasets=[dataset] if is_hub_id(dataset) else None,
        base_model=base if is_hub_id(base) else None,
        tags=tags,
        metrics=[k for k in _METRIC_NAMES if k in values] or None,
        model_name=(repo_id or folder.resolve().name).split("/")[-1],
        eval_results=eval_results or None,
    )


_TRAINING_SKIP = {
    "alps_hf_version",
    "dataset",
    "base_model",
    "backbone",
    "task",
    "model",
    "license",
    "id2label",
    "label2id",
    "output",
    "resume",
    "overwrite",
}

_BIBTEX = {"SegFormer": SEGFORMER_BIBTEX, "Mask2Former": MASK2FORMER_BIBTEX}


def _model_family(model_type: str) -> str:
    """'SegFormer' / 'Mask2Former' for the model types alps_hf trains, else the raw model type."""
    if "mask2former" in model_type:
        return "Mask2Former"
    return "SegFormer" if "segformer" in model_type else model_type


def _model_context(folder: Path, repo_id: str | None) -> dict[str, Any]:
    """The values the model card template fills in; the prose and its branches live in the template."""
    config = _optional_json(folder / "config.json")
    training = _optional_json(folder / "training_config.json")
    metrics = _optional_json(folder / "metrics.json")
    id2label = _optional_json(folder / "id2label.json") or config.get("id2label") or {}
    architecture = (config.get("architectures") or ["unknown"])[0]
    family = _model_family(str(config.get("model_type") or ""))
    dataset = public_name(training.get("dataset")) or "not recorded"
    values = metrics.get("eval") or {}
    return {
        "title": (repo_id or folder.resolve().name).split("/")[-1],
        "task": training.get("task") or "pretrain",
        "architecture": architecture,
        "model_class": architecture if architecture != "unknown" else "AutoModelForSemanticSegmentation",
        "model_family": family,
        "model_bibtex": _BIBTEX.get(family),
        "num_labels": len(id2label) or config.get("num_labels") or "unknown",
        "dataset": dataset,
        "dataset_is_hub": is_hub_id(dataset),
        "base": training.get("base_model") or training.get("backbone"),
        "base_is_hub": is_hub_id(training.get("base_model") or training.get("backbone")),
        "alps_hf_version": training.get("alps_hf_version") or __version__,
        "repo_ref": repo_id or "path/to/this/folder",
        "training_rows": [
            (key, _fmt(value))
            for key, value in sorted(training.items())
            # unset options and this machine's paths say nothing about the model
            if key not in _TRAINING_SKIP
            and value is not None
            and (not isinstance(value, (list, dict)) or len(json.dumps(value)) <= 80)
        ],
        "has_curve": (folder / "training_curve.png").is_file(),
        "curve_points": len(metrics["history"]) if isinstance(metrics.get("history"), list) else None,
        "has_metrics_file": (folder / "metrics.json").is_file(),
        "metric_rows": [
            (name, _fmt(values[key]))
            for key, name in _METRIC_NAMES.items()
            if isinstance(values.get(key), (int, float))
        ],
        "per_class_rows": [
            (str(name), _fmt(v) if v is not None else "n/a (class absent)")
            for name, v in (values.get("per_class_iou") or {}).items()
        ],
        "eval_split": metrics.get("split") or "evaluation",
        "eval_dataset": public_name(metrics.get("dataset")) or dataset,
        "eval_step": metrics.get("step"),
        "alps_bibtex": ALPS_BIBTEX,
    }


def render_model_card(folder: str | Path, repo_id: str | None = None) -> ModelCard:
    """Render the model card of a `save_pretrained` folder written by `alps-hf pretrain/finetune`.

    Reads `config.json`, `training_config.json`, `metrics.json` and `id2label.json` when present
    (the weights are not loaded). Without `metrics.json` the card says "not yet measured" and has
    no model-index.

    Args:
        folder: the model folder.
        repo_id: the Hub id the card will live under; used in the snippets and the model-index name.

    Returns:
        A `huggingface_hub.ModelCard`; `card.save(folder / "README.md")` writes it.

    Raises:
        PublishError: one of the JSON files is malformed.
    """
    folder = Path(folder)
    data = model_card_data(folder, repo_id)
    card = ModelCard.from_template(data, template_path=str(MODEL_TEMPLATE), **_model_context(folder, repo_id))
    return _mark(card)


def write_model_card(folder: str | Path, repo_id: str | None = None) -> Path:
    """(Re)write `README.md` of a model folder, atomically.

    Args:
        folder: the model folder.
        repo_id: the Hub id the card will live under (None: a local folder).

    Returns:
        The README path.

    Raises:
        PublishError: one of the folder's JSON files is malformed.
    """
    folder = Path(folder)
    readme = folder / "README.md"
    atomic_write_text(readme, str(render_model_card(folder, repo_id)))
    return readme
