"""Reading a scene window by window: which reader a file gets, and the PIL reader for non-GDAL formats.

GeoTIFF / TIFF and the other GDAL formats (`RASTERIO_SUFFIXES`) go through rasterio
(`alps_hf.geo.geotiff`) with one windowed read per window, so memory is bounded by the window.
Other formats (PNG, JPEG, ...) cannot be read by window: their loaders decode the whole scene
and crop; a `SceneCache` owned by the caller (the run's inputs) keeps the last decoded scene so
that consecutive windows of one scene decode it once.
"""

from __future__ import annotations

import functools
import os
import threading
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import numpy as np

from alps_hf.errors import ImageError, InputError
from alps_hf.geo.geotiff import open_scene, scene_header, window_loader
from alps_hf.geo.windows import Window, plan_windows, validate_tiling, window_source
from alps_hf.images import LoadedImage, decode_image_bytes, image_size

# Suffixes read through rasterio (GDAL) with windowed reads when the geo extra is installed.
RASTERIO_SUFFIXES = (".tif", ".tiff", ".vrt", ".jp2", ".img")


def uses_rasterio(path: str | os.PathLike) -> bool:
    """Whether `path` is read through rasterio.

    Args:
        path: a file name; only its suffix counts.

    Returns:
        True for the formats read by window through rasterio (TIFF, VRT, JP2, IMG: `RASTERIO_SUFFIXES`).
    """
    return Path(path).suffix.lower() in RASTERIO_SUFFIXES


def raster_size(path: str | os.PathLike) -> tuple[int, int]:
    """(width, height) of an image file from its header only (no pixel decoding).

    Args:
        path: the file.

    Returns:
        (width, height) in pixels.

    Raises:
        ImageError: the file cannot be opened.
        InputError: a TIFF-like file and rasterio is not installed.
    """
    if uses_rasterio(path):
        return scene_header(path)
    return image_size(str(path))


def wants_windows(path: str | os.PathLike, tile_size: int) -> bool:
    """Whether the pipeline should label `path` through `scene_windows` rather than whole.

    True for rasterio formats (so geo meta, band choice, scaling and no-data apply even to small
    GeoTIFFs) and for any image whose width or height exceeds `tile_size`. False for a file whose
    header cannot be read, so that the ordinary loader reports it as a failure.

    Args:
        path: the file.
        tile_size: `--tile-size`.

    Returns:
        Whether to cut the file into windows.
    """
    if uses_rasterio(path):
        return True
    try:
        width, height = raster_size(path)
    except ImageError:
        return False
    return width > tile_size or height > tile_size


class SceneCache:
    """The last decoded PIL-read scenes, shared by the window loaders of one run (an LRU).

    A scene costs W*H*3 bytes, so by default only one is held: windows of a scene follow each other
    in the input order. Thread-safe (decoder threads); a pickled cache arrives empty, so each
    DataLoader worker decodes for itself.

    Args:
        max_scenes: how many decoded scenes to keep.
    """

    def __init__(self, max_scenes: int = 1) -> None:
        self.max_scenes = max_scenes
        self._lock = threading.Lock()
        self._scenes: OrderedDict[str, np.ndarray] = OrderedDict()

    def get(self, path: str) -> np.ndarray:
        """The (H, W, 3) uint8 pixels of the scene at `path`, decoded on first use.

        Args:
            path: the scene file.

        Returns:
            The decoded scene (shared: do not modify it; crop and copy).

        Raises:
            ImageError: the file cannot be read or decoded.
        """
        # One lock for the decode too: two threads asking for one scene must not decode it twice.
        with self._lock:
            if path in self._scenes:
                self._scenes.move_to_end(path)
                return self._scenes[path]
            while len(self._scenes) >= self.max_scenes:
                self._scenes.popitem(last=False)  # release before decoding the next scene
            try:
                data = Path(path).read_bytes()
            except OSError as err:
                raise ImageError(f"{path}: cannot be read ({err})") from None
            rgb = decode_image_bytes(data, str(path))
            self._scenes[path] = rgb
            return rgb

    def __getstate__(self) -> dict:
        return {"max_scenes": self.max_scenes}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["max_scenes"])


def read_pil_window(cache: SceneCache, path: str, window: Window) -> LoadedImage:
    """Crop one window out of a PIL-decoded scene.

    Args:
        cache: where the decoded scene is kept between windows.
        path: the scene file.
        window: a window of that scene from `plan_windows`.

    Returns:
        The window's pixels, with meta `scene`, `window`, `scene_size` (no CRS, no transform).

    Raises:
        ImageError: the file cannot be read, or decodes to another size than its header said.
    """
    rgb = cache.get(path)
    if (rgb.shape[1], rgb.shape[0]) != window.scene_size:
        raise ImageError(f"{path}: decoded size {rgb.shape[1]}x{rgb.shape[0]} differs from its header")
    crop = np.ascontiguousarray(rgb[window.y0 : window.y1, window.x0 : window.x1])
    meta = {
        "scene": path,
        "window": window.bounds,
        "scene_size": list(window.scene_size),
        "crs": None,
        "transform": None,
    }
    return LoadedImage(rgb=crop, image_bytes=None, valid=None, meta=meta)


def scene_windows(
    path: str | os.PathLike,
    tile_size: int,
    overlap: int,
    bands: list[int] | None = None,
    cache: SceneCache | None = None,
    readings: list[dict] | None = None,
) -> list[tuple[str, Callable[[], LoadedImage]]]:
    """One lazy loader per window of the scene at `path`, row-major.

    GeoTIFF / TIFF (and other GDAL formats, see `RASTERIO_SUFFIXES`) are read through rasterio
    with a windowed read per loader call, so memory is bounded by the window, not the scene;
    band choice, 16-bit scaling, no-data and CRS follow `alps_hf.geo.geotiff`. Other formats (PNG, JPEG,
    ...) cannot be read by window: their loaders decode the whole scene into `cache` and crop, so
    such a scene costs W*H*3 bytes. A scene no larger than the tile gives one window covering it.

    Args:
        path: the scene file.
        tile_size: window side in pixels (see `plan_windows`).
        overlap: overlap of neighbouring windows in pixels.
        bands: 1-based band indices (1 or 3 of them) for rasterio formats; None = default choice.
            Only None or [1, 2, 3] for PIL formats, which are always RGB.
        cache: the decoded-scene cache of PIL formats (pass the run's one); None = one for this scene.
        readings: when given, a rasterio scene appends how it is read (`GeoScene.reading()`: bands chosen,
            their names, data type and per-band stretch) with its "scene" path.

    Returns:
        [(source, loader)]: `source` from `window_source`, `loader()` returns a `LoadedImage` and
        raises `ImageError` with the reason when the window cannot be read. Loaders are picklable.

    Raises:
        ConfigError: bad tile size / overlap, or bad band indices.
        ImageError: the scene cannot be opened.
        InputError: a rasterio format and rasterio is not installed (`pip install alps_hf[geo]`), or
            `bands` for a PIL format.
    """
    validate_tiling(tile_size, overlap)
    path = str(path)
    if uses_rasterio(path):
        scene = open_scene(path, bands=bands)
        if readings is not None:
            readings.append({"scene": path, **scene.reading()})
        windows = plan_windows(scene.width, scene.height, tile_size, overlap)
        return [(window_source(path, w), window_loader(scene, w)) for w in windows]
    if bands is not None and list(bands) != [1, 2, 3]:
        raise InputError(
            f"{path}: --bands {list(bands)} applies to GeoTIFF / TIFF scenes only; "
            "this file is read as RGB (drop --bands or convert it to GeoTIFF)"
        )
    width, height = raster_size(path)
    windows = plan_windows(width, height, tile_size, overlap)
    cache = SceneCache() if cache is None else cache
    return [(window_source(path, w), functools.partial(read_pil_window, cache, path, w)) for w in windows]
