"""Input resolution: what `alps-hf label` reads, as a sorted list of lazily loaded items.

An input is a folder of images (searched recursively, sorted; every non-hidden file is an input,
so a stray non-image file is reported in failures.jsonl rather than silently ignored), image files,
a `save_to_disk` folder, a Hub-layout dataset folder, or a Hub dataset id.
Resolution is cheap (no image is decoded) and happens before any model loads.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from alps_hf.errors import ImageError, InputError
from alps_hf.geo import geotiff, readers
from alps_hf.hub.cards import is_hub_id
from alps_hf.images import LoadedImage, decode_image_bytes


@dataclass
class ImageItem:
    """An input not yet decoded: `load()` returns a LoadedImage or raises ImageError."""

    source: str
    load: Callable[[], LoadedImage]


@dataclass
class InputSet:
    """What the command's inputs resolved to.

    Attributes:
        items: the inputs in their sorted order, windows of a scene in a row.
        description: how the inputs are named in the run summary.
        scenes: files cut into windows (each window is one of `items`).
        readings: per GeoTIFF-family scene, how its pixels were read (`GeoScene.reading()`: bands,
            their names, data type, per-band stretch), with the scene's name as shown in the rows.
    """

    items: list[ImageItem]
    description: str
    scenes: int = 0
    readings: list[dict] = dataclasses.field(default_factory=list)


@dataclass(frozen=True)
class Tiling:
    """How files are cut into windows (see `alps_hf.geo.windows` and `alps_hf.geo.readers`).

    Attributes:
        tile_size: --tile-size; None = only GeoTIFF-family scenes are windowed, at `window_size`.
        window_size: the window side used (tile_size, or the GeoTIFF default).
        overlap: --tile-overlap.
        bands: --bands (1-based), or None for the default choice.
    """

    tile_size: int | None
    window_size: int
    overlap: int
    bands: list[int] | None = None


def _failing_item(source: str, error: Exception) -> ImageItem:
    def load() -> LoadedImage:
        raise error

    return ImageItem(source, load)


def _window_item(source: str, shown_scene: str, loader: Callable[[], LoadedImage]) -> ImageItem:
    def load() -> LoadedImage:
        window = loader()
        return dataclasses.replace(window, meta={**window.meta, "scene": shown_scene})

    return ImageItem(source, load)


def _path_items(path: Path, shown: str, tiling: Tiling | None, cache: readers.SceneCache,
                readings: list[dict]) -> list[ImageItem]:
    """The items of one file: itself, or one item per window when tiling applies to it.

    A scene whose header cannot be read becomes one failing item (listed in failures.jsonl);
    configuration problems (a band the scene lacks, rasterio missing for --tile-size) raise.
    """
    if tiling is None:
        return [_file_item(path, shown)]
    geo_format = readers.uses_rasterio(path)
    if geo_format:
        if not geotiff.rasterio_available():
            if tiling.tile_size is None and tiling.bands is None:
                return [_file_item(path, shown)]  # read whole by PIL, as any image
            raise InputError(
                f"{shown}: --tile-size / --bands read TIFF-family scenes through rasterio, which is not installed; "
                "pip install 'alps_hf[geo]'"
            )
    elif not (tiling.tile_size is not None and readers.wants_windows(path, tiling.tile_size)):
        return [_file_item(path, shown)]
    bands = tiling.bands if geo_format else None
    read: list[dict] = []
    try:
        windows = readers.scene_windows(path, tiling.window_size, tiling.overlap, bands, cache, read)
    except ImageError as err:
        return [_failing_item(shown, err)]
    readings += [{**r, "scene": shown} for r in read]
    prefix = len(str(path))
    return [_window_item(shown + source[prefix:], shown, loader) for source, loader in windows]


def _expand(files: list[tuple[Path, str]], tiling: Tiling | None, description: str) -> InputSet:
    items: list[ImageItem] = []
    scenes = 0
    readings: list[dict] = []
    # One decoded-scene cache for the run's PIL-read scenes, dropped with the items.
    cache = readers.SceneCache()
    for path, shown in files:
        got = _path_items(path, shown, tiling, cache, readings)
        scenes += got[0].source != shown
        items += got
    return InputSet(items, description, scenes, readings)


def _read_file(path: Path) -> LoadedImage:
    try:
        data = path.read_bytes()
    except OSError as err:
        raise ImageError(f"{path}: cannot read ({err.strerror or err})") from None
    return LoadedImage(rgb=decode_image_bytes(data, str(path)), image_bytes=data)


def _file_item(path: Path, shown: str) -> ImageItem:
    return ImageItem(source=shown, load=lambda: _read_file(path))


# GDAL sidecars: read by GDAL together with their scene, never images of their own.
_SIDECAR_SUFFIXES = (".aux.xml", ".ovr", ".msk")
_WORLD_FILE_SUFFIXES = (".tfw", ".tifw", ".jgw", ".pgw", ".wld", ".prj")


def _drop_sidecars(files: list[Path]) -> list[Path]:
    """Files minus GDAL sidecars of another listed file.

    Sidecars are `x.tif.aux.xml`, `x.tif.ovr`, `x.tif.msk`, and world / projection files `x.tfw`,
    `x.prj`, ... beside an image `x.*`.
    """
    names = {f.as_posix() for f in files}
    stems = {f.with_suffix("").as_posix() for f in files if f.suffix.lower() not in _WORLD_FILE_SUFFIXES}

    def sidecar(f: Path) -> bool:
        text = f.as_posix()
        lower = text.lower()
        for suffix in _SIDECAR_SUFFIXES:
            if lower.endswith(suffix) and text[: -len(suffix)] in names:
                return True
        return f.suffix.lower() in _WORLD_FILE_SUFFIXES and f.with_suffix("").as_posix() in stems

    return [f for f in files if not sidecar(f)]


def list_image_files(folder: Path, exclude: str | os.PathLike | None = None) -> list[Path]:
    """Every regular, non-hidden file under `folder`, sorted by relative POSIX path.

    Args:
        folder: the input folder, searched recursively (hidden files and folders skipped).
        exclude: a folder never listed (the run's output, when it lies inside an input folder).

    Returns:
        The files, without GDAL sidecars of a listed scene (`x.tif.aux.xml`, `x.tif.ovr`, `x.tfw`,
        ...), which GDAL reads with the scene.
    """
    skip = Path(exclude).resolve() if exclude is not None else None
    files = []
    for root, dirs, names in os.walk(folder):
        dirs[:] = sorted(d for d in dirs
                         if not d.startswith(".") and (skip is None or (Path(root) / d).resolve() != skip))
        files += [Path(root) / n for n in names if not n.startswith(".")]
    files = _drop_sidecars([f for f in files if f.is_file()])
    return sorted(files, key=lambda p: p.relative_to(folder).as_posix())


def _is_saved_dataset(folder: Path) -> bool:
    return (folder / "dataset_info.json").is_file() and (folder / "state.json").is_file() or (
        folder / "dataset_dict.json").is_file()


def _is_hub_layout(folder: Path) -> bool:
    readme = folder / "README.md"
    if readme.is_file() and "configs:" in readme.read_text(encoding="utf-8", errors="ignore"):
        return True
    data = folder / "data"
    return data.is_dir() and any(p.suffix in (".parquet", ".arrow") for p in data.iterdir())


def _dataset_items(ds, name: str, split: str, image_column: str) -> list[ImageItem]:
    from datasets import Image as ImageFeature

    if image_column not in ds.column_names:
        raise InputError(
            f"dataset {name} has no column {image_column!r}; its columns are {ds.column_names}: pass --image-column"
        )
    ds = ds.cast_column(image_column, ImageFeature(decode=False))

    def loader(i: int) -> Callable[[], LoadedImage]:
        def load() -> LoadedImage:
            value = ds[i][image_column]
            if value is None:
                raise ImageError(f"{name}[{split}][{i}]: empty image cell")
            data = value.get("bytes")
            if data is None and value.get("path"):
                return _read_file(Path(value["path"]))
            return LoadedImage(rgb=decode_image_bytes(data or b"", f"{name}[{split}][{i}]"), image_bytes=data)
        return load

    return [ImageItem(f"{name}:{split}[{i}]", loader(i)) for i in range(len(ds))]


def _pick_split(obj, name: str, split: str):
    from datasets import DatasetDict

    if isinstance(obj, DatasetDict):
        if split not in obj:
            raise InputError(f"dataset {name} has no split {split!r}; its splits are {list(obj)}: pass --split")
        return obj[split]
    return obj


def resolve_inputs(inputs: list[str], split: str = "train", image_column: str = "image",
                   exclude: str | os.PathLike | None = None, tiling: Tiling | None = None) -> InputSet:
    """Turn the command's inputs into a sorted list of lazily loaded items (nothing is decoded).

    Args:
        inputs: one folder, saved dataset, Hub-layout dataset folder or Hub dataset id; or image
            files and folders (listed together, sorted by path).
        split: the split of a dataset input (`--split`).
        image_column: the image column of a dataset input (`--image-column`).
        exclude: a folder never read as input (the output folder: it may lie inside an input folder).
        tiling: cut image files into windows (GeoTIFF-family always, others when larger than the
            tile); the windows of a file follow each other row-major, in the file's place in the
            sorted order. Dataset inputs are never cut. None: nothing is cut.

    Returns:
        The `InputSet`.

    Raises:
        InputError: a path that does not exist, nothing to read, a dataset without that split or
            column, a Hub id that cannot be loaded, or rasterio missing for tiled TIFFs.
        ConfigError: a tiling or `--bands` a scene cannot take.
    """
    if len(inputs) == 1:
        target = inputs[0]
        path = Path(target)
        if path.is_dir():
            # Rows and the card name a local dataset by its folder's name: a local path is no one else's business.
            shown = path.resolve().name
            if _is_saved_dataset(path):
                from datasets import load_from_disk

                ds = _pick_split(load_from_disk(str(path)), target, split)
                return InputSet(_dataset_items(ds, shown, split, image_column), f"dataset folder {shown} (save_to_disk)")
            if _is_hub_layout(path):
                from datasets import load_dataset

                try:
                    ds = load_dataset(str(path), split=split)
                except ValueError as err:
                    raise InputError(f"cannot read split {split!r} of dataset folder {target}: {err}") from None
                return InputSet(_dataset_items(ds, shown, split, image_column), f"dataset folder {shown}")
            files = list_image_files(path, exclude)
            if not files:
                raise InputError(f"input folder {target} holds no files; point to a folder with images")
            return _expand([(f, f.relative_to(path).as_posix()) for f in files], tiling,
                           f"folder {path.name or target} ({len(files)} files)")
        # A dataset id has a namespace; huggingface_hub's rule (alps_hf.hub) decides the rest.
        if not path.exists() and "/" in target and is_hub_id(target):
            from datasets import load_dataset

            try:
                ds = load_dataset(target, split=split)
            except Exception as err:  # noqa: BLE001 - any Hub failure becomes one clear message
                raise InputError(
                    f"input {target!r} is not a local path, and loading it as a Hub dataset failed: "
                    f"{type(err).__name__}: {err}"
                ) from None
            return InputSet(_dataset_items(ds, target, split, image_column), f"Hub dataset {target} ({split})")
    missing = [p for p in inputs if not Path(p).exists()]
    if missing:
        raise InputError(f"input path {missing[0]} does not exist; pass an existing folder, files or a dataset id")
    files: list[tuple[Path, str]] = []
    for p in inputs:
        path = Path(p)
        if path.is_dir():
            files += [(f, f.as_posix()) for f in list_image_files(path, exclude)]
        else:
            files.append((path, path.as_posix()))
    if not files:
        raise InputError(f"inputs {inputs} hold no files; point to images")
    files.sort(key=lambda f: f[1])
    return _expand(files, tiling, f"{len(files)} files")
