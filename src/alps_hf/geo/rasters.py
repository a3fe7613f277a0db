"""Large rasters: cutting a scene into overlapping windows, and resolving masks at window seams.

A scene larger than `--tile-size` is read as a grid of overlapping windows (`plan_windows`); each
window is labeled as an image of its own; `resolve_seams` decides which masks of a window to keep
so that an object straddling a window border is neither split nor counted twice; `Stitcher`
(in `alps_hf.geo.stitch`) puts the per-window label maps back together into one scene raster.

Seam rule ("centre ownership"):
  * every window has a *core*: the cores of all windows partition the scene exactly (the border
    between two neighbouring windows' cores lies in the middle of their overlap);
  * a mask that touches an *internal* edge of its window (an edge that is not the scene border)
    was cut by the window and is dropped: the object continues outside the window;
  * a mask that is not cut is kept only by the window whose core contains the centre of its
    bounding box (in scene coordinates), so an object seen whole by two windows is kept once.
  Guarantee: an object whose box is at most `overlap - 3` pixels wide and high (`overlap - 3 -
  2 * edge_margin` with a margin) lies whole, off every seam, in the one window whose core holds
  its centre, so it is kept exactly once and unsplit. Larger objects may be cut by
  every window that sees them and are then dropped (label 255): choose `--tile-overlap` at least
  as large as the largest object you care about (ALPS' area gate drops masks above 30 % of a tile
  anyway).
"""

from __future__ import annotations

import functools
import math
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from alps_hf.errors import ConfigError, ImageError, InputError

if TYPE_CHECKING:
    from alps_hf.sam.masks import MaskSet

# Below this a window holds too little context for SAM's 1024-px encoder input (upsampled 16x+),
# and the per-window overhead dominates.
MIN_TILE_SIZE = 64

# Suffixes read through rasterio (GDAL) with windowed reads when the geo extra is installed.
RASTERIO_SUFFIXES = (".tif", ".tiff", ".vrt", ".jp2", ".img")


@dataclass(frozen=True)
class Window:
    """One window of a scene, in scene pixel coordinates (x to the right, y down, ends exclusive).

    Attributes:
        x0, y0, x1, y1: the window's pixels are columns x0..x1-1 and rows y0..y1-1.
        core: (cx0, cy0, cx1, cy1), the part of the scene this window owns; cores of all windows
            of a scene partition it, so every scene pixel is owned by exactly one window.
        scene_size: (width, height) of the scene.
        index: position in the row-major window list of the scene.
    """

    x0: int
    y0: int
    x1: int
    y1: int
    core: tuple[int, int, int, int]
    scene_size: tuple[int, int]
    index: int = 0

    @property
    def width(self) -> int:
        return self.x1 - self.x0

    @property
    def height(self) -> int:
        return self.y1 - self.y0

    @property
    def bounds(self) -> list[int]:
        """[x0, y0, x1, y1], the form stored in each row's `window` meta."""
        return [self.x0, self.y0, self.x1, self.y1]

    @property
    def internal_edges(self) -> tuple[bool, bool, bool, bool]:
        """(left, top, right, bottom): True where that edge lies inside the scene (a seam)."""
        width, height = self.scene_size
        return self.x0 > 0, self.y0 > 0, self.x1 < width, self.y1 < height

    def core_local(self) -> tuple[int, int, int, int]:
        """The core in window-local pixel coordinates (cx0, cy0, cx1, cy1)."""
        cx0, cy0, cx1, cy1 = self.core
        return cx0 - self.x0, cy0 - self.y0, cx1 - self.x0, cy1 - self.y0


def _axis_spans(size: int, tile: int, overlap: int) -> list[tuple[int, int, int, int]]:
    """(start, end, core_start, core_end) of the windows along one axis."""
    if size <= tile:
        return [(0, size, 0, size)]
    stride = tile - overlap
    starts = list(range(0, size - tile, stride)) + [size - tile]  # last window flush with the edge
    spans = [(s, s + tile) for s in starts]
    # Core borders sit in the middle of each overlap, so both neighbours keep overlap/2 of context.
    borders = [0] + [(spans[i + 1][0] + spans[i][1]) // 2 for i in range(len(spans) - 1)] + [size]
    return [(s, e, borders[i], borders[i + 1]) for i, (s, e) in enumerate(spans)]


def validate_tiling(tile_size: int, overlap: int) -> None:
    """Raise `ConfigError` unless `MIN_TILE_SIZE <= tile_size` and `0 <= overlap < tile_size`."""
    if not isinstance(tile_size, int) or isinstance(tile_size, bool) or tile_size < MIN_TILE_SIZE:
        raise ConfigError(
            f"tile size {tile_size!r} is too small: --tile-size must be an integer >= {MIN_TILE_SIZE} pixels"
        )
    if not isinstance(overlap, int) or isinstance(overlap, bool) or overlap < 0:
        raise ConfigError(f"tile overlap {overlap!r} is invalid: --tile-overlap must be an integer >= 0")
    if overlap >= tile_size:
        raise ConfigError(
            f"tile overlap {overlap} must be smaller than the tile size {tile_size}: "
            f"lower --tile-overlap (e.g. {tile_size // 8}) or raise --tile-size"
        )


def plan_windows(width: int, height: int, tile_size: int, overlap: int) -> list[Window]:
    """Cut a width x height scene into overlapping tile_size windows, row-major.

    Windows step by `tile_size - overlap`; the last window of each row / column is moved back to
    end flush with the scene edge (so it overlaps its neighbour by at least `overlap`), and no
    window is smaller than the tile unless the scene itself is. A scene no larger than the tile
    gives one window. Deterministic: the same arguments always give the same list.

    Raises:
        ConfigError: tile size below `MIN_TILE_SIZE`, negative overlap, overlap >= tile size,
            or a non-positive scene size.
    """
    validate_tiling(tile_size, overlap)
    if width <= 0 or height <= 0:
        raise ConfigError(f"scene size {width}x{height} is empty: width and height must be > 0")
    xs = _axis_spans(width, tile_size, overlap)
    ys = _axis_spans(height, tile_size, overlap)
    windows = []
    for y0, y1, cy0, cy1 in ys:
        for x0, x1, cx0, cx1 in xs:
            windows.append(Window(x0, y0, x1, y1, (cx0, cy0, cx1, cy1), (width, height), len(windows)))
    return windows


@functools.lru_cache(maxsize=64)
def _plan_by_bounds(width: int, height: int, tile_size: int, overlap: int) -> dict[tuple[int, ...], Window]:
    return {tuple(w.bounds): w for w in plan_windows(width, height, tile_size, overlap)}


def window_from_meta(meta: dict, tile_size: int, overlap: int) -> Window:
    """The `Window` (with its core) of a window row, from its meta `window` and `scene_size`.

    Raises:
        ValueError: the bounds are not a window of that scene under this tiling.
    """
    width, height = (int(v) for v in meta["scene_size"])
    bounds = tuple(int(v) for v in meta["window"])
    window = _plan_by_bounds(width, height, tile_size, overlap).get(bounds)
    if window is None:
        raise ValueError(
            f"window {list(bounds)} is not a window of a {width}x{height} scene tiled "
            f"{tile_size} px with {overlap} px overlap"
        )
    return window


def resolve_seams(masks: MaskSet, window: Window, edge_margin: int = 0) -> MaskSet:
    """Keep the masks of `window` that this window owns under the centre-ownership seam rule.

    A mask is dropped when it has a pixel within `edge_margin` pixels of an internal edge of the
    window (0: on the outermost row / column), since the object was cut by the window; a mask is
    kept only when the centre of its bounding box (computed from the mask's pixels, in scene
    coordinates) lies in the window's core. Empty masks are dropped. See the
    module docstring for the guarantee this gives. The scene border is never a seam: masks touching
    it are kept.

    Args:
        masks: masks of the window, at the window's resolution (`masks.image_size` must equal
            (window.height, window.width)).
        window: the window the masks were generated for.
        edge_margin: width in pixels of the band along internal edges that counts as "touching".

    Returns:
        The kept masks, in their original order.
    """
    import torch

    if masks.image_size != (window.height, window.width):
        raise ValueError(
            f"masks are {masks.image_size[1]}x{masks.image_size[0]} but window {window.bounds} is "
            f"{window.width}x{window.height}"
        )
    if len(masks) == 0:
        return masks
    band = edge_margin + 1
    left, top, right, bottom = window.internal_edges
    # Extents from the mask pixels themselves (not `boxes`), so the rule does not depend on the
    # box convention and cannot disagree with the pixels that get painted.
    cols = masks.masks.any(dim=1)  # (N, W)
    rows = masks.masks.any(dim=2)  # (N, H)
    nonempty = cols.any(dim=1)
    cut = torch.zeros_like(nonempty)
    if left:
        cut |= cols[:, :band].any(dim=1)
    if right:
        cut |= cols[:, -band:].any(dim=1)
    if top:
        cut |= rows[:, :band].any(dim=1)
    if bottom:
        cut |= rows[:, -band:].any(dim=1)
    width, height = cols.shape[1], rows.shape[1]
    x_first = cols.to(torch.uint8).argmax(dim=1)
    x_last = width - 1 - cols.flip(1).to(torch.uint8).argmax(dim=1)
    y_first = rows.to(torch.uint8).argmax(dim=1)
    y_last = height - 1 - rows.flip(1).to(torch.uint8).argmax(dim=1)
    # Centre of the pixel extent [first, last + 1), in scene coordinates.
    cx = (x_first + x_last + 1).to(torch.float64) / 2 + window.x0
    cy = (y_first + y_last + 1).to(torch.float64) / 2 + window.y0
    kx0, ky0, kx1, ky1 = window.core
    owned = (cx >= kx0) & (cx < kx1) & (cy >= ky0) & (cy < ky1)
    return masks.filter(owned & nonempty & ~cut)


# ----------------------------------------------------------------------------------------------
# Per-window loaders


@dataclass
class WindowImage:
    """What a window loader returns; same fields as the pipeline's `LoadedImage`.

    Attributes:
        rgb: (h, w, 3) uint8 pixels of the window.
        image_bytes: always None (the pipeline encodes `rgb` as PNG for the `image` column).
        valid: (h, w) bool, False where the scene has no data (label 255); None when all valid.
        meta: {"scene": path, "window": [x0, y0, x1, y1], "scene_size": [W, H],
            "crs": WKT or None, "transform": [a, b, c, d, e, f] of the window or None}.
    """

    rgb: np.ndarray
    image_bytes: bytes | None = None
    valid: np.ndarray | None = None
    meta: dict[str, Any] = field(default_factory=dict)


def window_source(path: str, window: Window) -> str:
    """The `source` string of a window row: `<scene path>#window=x0,y0,x1,y1`."""
    return f"{path}#window={window.x0},{window.y0},{window.x1},{window.y1}"


def uses_rasterio(path: str | os.PathLike) -> bool:
    """True when `path` is a format read with windowed reads through rasterio (TIFF, VRT, JP2, IMG)."""
    return Path(path).suffix.lower() in RASTERIO_SUFFIXES


def raster_size(path: str | os.PathLike) -> tuple[int, int]:
    """(width, height) of an image file from its header only (no pixel decoding).

    Raises:
        ImageError: the file cannot be opened.
        InputError: a TIFF-like file and rasterio is not installed.
    """
    if uses_rasterio(path):
        from alps_hf.geo.geotiff import scene_header

        return scene_header(path)
    from PIL import Image, UnidentifiedImageError

    from alps_hf.images import MAX_IMAGE_PIXELS  # noqa: F401  (importing it raises PIL's pixel limit for big scenes)

    try:
        with Image.open(path) as image:
            return image.size
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise ImageError(f"{path}: cannot be opened as an image ({err})") from None


def wants_windows(path: str | os.PathLike, tile_size: int) -> bool:
    """Whether the pipeline should label `path` through `scene_windows` rather than whole.

    True for rasterio formats (so geo meta, band choice, scaling and no-data apply even to small
    GeoTIFFs) and for any image whose width or height exceeds `tile_size`. False for a file whose
    header cannot be read, so that the ordinary loader reports it as a failure.
    """
    if uses_rasterio(path):
        return True
    try:
        width, height = raster_size(path)
    except ImageError:
        return False
    return width > tile_size or height > tile_size


class _DecodedScene:
    """A one-scene cache so that the windows of a PIL-only image decode the file once per process."""

    _lock = threading.Lock()
    _path: str | None = None
    _rgb: np.ndarray | None = None

    @classmethod
    def get(cls, path: str) -> np.ndarray:
        from alps_hf.images import decode_image_bytes

        with cls._lock:
            if cls._path != path:
                cls._path, cls._rgb = None, None  # release the previous scene before decoding
                data = Path(path).read_bytes()
                cls._rgb = decode_image_bytes(data, str(path))
                cls._path = path
            return cls._rgb


def _read_pil_window(path: str, window: Window) -> WindowImage:
    """Crop one window out of a PIL-decoded scene (decoded once per process, see `_DecodedScene`)."""
    try:
        rgb = _DecodedScene.get(path)
    except OSError as err:
        raise ImageError(f"{path}: cannot be read ({err})") from None
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
    return WindowImage(rgb=crop, image_bytes=None, valid=None, meta=meta)


def scene_windows(
    path: str | os.PathLike, tile_size: int, overlap: int, bands: list[int] | None = None
) -> list[tuple[str, Callable[[], WindowImage]]]:
    """One lazy loader per window of the scene at `path`, row-major.

    GeoTIFF / TIFF (and other GDAL formats, see `RASTERIO_SUFFIXES`) are read through rasterio
    with a windowed read per loader call, so memory is bounded by the window, not the scene;
    band choice, 16-bit scaling, no-data and CRS follow `alps_hf.geo.geotiff`. Other formats (PNG, JPEG,
    ...) cannot be read by window: their loaders decode the whole scene once per process (cached
    for consecutive windows of the same scene) and crop, so such a scene costs W*H*3 bytes.
    A scene no larger than the tile gives one window covering it.

    Args:
        path: the scene file.
        tile_size, overlap: window side and overlap in pixels (see `plan_windows`).
        bands: 1-based band indices (1 or 3 of them) for rasterio formats; None = default choice.
            Ignored for PIL formats, which are always RGB.

    Returns:
        [(source, loader)]: `source` from `window_source`, `loader()` returns a `WindowImage` and
        raises `ImageError` with the reason when the window cannot be read.

    Raises:
        ConfigError: bad tile size / overlap, or a band index the scene does not have.
        ImageError: the scene cannot be opened.
        InputError: a rasterio format and rasterio is not installed (`pip install alps_hf[geo]`).
    """
    validate_tiling(tile_size, overlap)
    path = str(path)
    if uses_rasterio(path):
        from alps_hf.geo.geotiff import open_scene, window_loader

        scene = open_scene(path, bands=bands)
        windows = plan_windows(scene.width, scene.height, tile_size, overlap)
        return [(window_source(path, w), window_loader(scene, w)) for w in windows]
    if bands is not None and list(bands) != [1, 2, 3]:
        raise InputError(
            f"{path}: --bands {list(bands)} applies to GeoTIFF / TIFF scenes only; "
            "this file is read as RGB (drop --bands or convert it to GeoTIFF)"
        )
    width, height = raster_size(path)
    windows = plan_windows(width, height, tile_size, overlap)
    return [(window_source(path, w), functools.partial(_read_pil_window, path, w)) for w in windows]


def num_windows(width: int, height: int, tile_size: int, overlap: int) -> int:
    """Number of windows `plan_windows` gives, without building them."""
    validate_tiling(tile_size, overlap)

    def count(size: int) -> int:
        return 1 if size <= tile_size else math.ceil((size - tile_size) / (tile_size - overlap)) + 1

    return count(width) * count(height)
