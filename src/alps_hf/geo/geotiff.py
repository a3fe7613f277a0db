"""GeoTIFF (and other GDAL rasters) through rasterio: band choice, scaling to 8 bits, no-data, CRS.

Needs the optional extra `pip install alps_hf[geo]` (rasterio); imported lazily, so the rest of
alps_hf works without it.

Rules (the README's "Large scenes and GeoTIFF" section states them for users):
  * Bands: `bands` (the `--bands` flag) takes 1 or 3 one-based band indices. Default: the bands
    whose colour interpretation or description says red, green, blue (in that order) when all
    three are present (descriptions before colour interpretation); otherwise bands 1, 2, 3; a scene with fewer than 3 bands is read as
    grey (band 1 repeated).
  * Scaling: the one >8-bit rule of `alps_hf.images` (PNG / JPEG inputs get the same): uint8
    bands are used as they are; any other type (uint16, int16, float32, ...) is stretched per
    band, linearly, from its 2nd..98th percentile to 0..255 (clipped), by `images.band_stretch` /
    `images.stretch_to_uint8`. The percentiles are computed once per scene from a decimated read
    (longest side <= 1024 px, GDAL overviews when the file has them; all pixels when the scene is
    no larger) of the band's valid pixels (not its nodata value, not masked), so every window of
    a scene uses the same scaling and seams do not show. A band with no spread in that range
    falls back to its min..max; a constant band becomes 0.
  * No-data: a pixel is invalid when every selected band is masked by GDAL (the band's nodata
    value, an internal / sidecar mask, or an alpha band) or is not finite; invalid pixels are
    black in `rgb` and False in `valid`, so the pipeline labels them 255.
  * CRS: windows carry the scene's CRS (WKT) and the affine transform of the window; a scene
    without a CRS is labeled anyway, with a warning that its outputs have no CRS.
"""

from __future__ import annotations

import functools
import operator
import os
import warnings
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np

from alps_hf.errors import ConfigError, ImageError, InputError
from alps_hf.geo.windows import Window
from alps_hf.images import LoadedImage, band_stretch, stretch_to_uint8

# GDAL's block cache defaults to 5 % of RAM; a decoded-block cache that large would make memory
# grow with the scene. 64 MiB holds several 1024-px windows of blocks.
GDAL_CACHE_BYTES = 64 * 2**20
STATS_MAX_SIDE = 1024

_RGB_NAMES = {"red": ("red", "r"), "green": ("green", "g"), "blue": ("blue", "b")}


def rasterio_module():
    """Import rasterio.

    Returns:
        The `rasterio` module.

    Raises:
        InputError: rasterio is not installed (the message says how to install the geo extra).
    """
    try:
        import rasterio
    except ImportError:
        raise InputError(
            "reading GeoTIFF / TIFF scenes needs rasterio: pip install alps_hf[geo] (or pip install rasterio)"
        ) from None
    return rasterio


def rasterio_available() -> bool:
    """True when the geo extra (rasterio) is installed."""
    try:
        import rasterio  # noqa: F401
    except ImportError:
        return False
    return True


@contextmanager
def _open(path: str):
    """Open `path` read-only under a bounded GDAL cache; raise `ImageError` when it cannot be opened."""
    rasterio = rasterio_module()
    from rasterio.errors import NotGeoreferencedWarning, RasterioIOError

    with rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_BYTES):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", NotGeoreferencedWarning)  # we warn once, in our words
                src = rasterio.open(path)
        except RasterioIOError as err:
            raise ImageError(f"{path}: cannot be opened as a raster ({err})") from None
        try:
            yield src
        finally:
            src.close()


def scene_header(path: str | os.PathLike) -> tuple[int, int]:
    """(width, height) of a raster from its header.

    Args:
        path: the raster file.

    Returns:
        (width, height) in pixels.

    Raises:
        ImageError: the file cannot be opened as a raster.
        InputError: rasterio is not installed.
    """
    with _open(str(path)) as src:
        return src.width, src.height


@dataclass(frozen=True)
class GeoScene:
    """What one scene's windows need to be read the same way: opened once, then shared by loaders.

    Attributes:
        path: the file.
        width, height: scene size in pixels.
        band_count: bands in the file.
        bands: the 1-based bands read, 1 (grey) or 3 (R, G, B order).
        dtype: numpy dtype name of the selected bands.
        scale: per selected band (lo, hi) mapped to 0..255, or None for uint8 data (no scaling).
        crs: the CRS as WKT, or None.
        transform: the scene's affine transform (a, b, c, d, e, f), or None when not georeferenced.
        descriptions: each band's description ("" when none), for messages.
    """

    path: str
    width: int
    height: int
    band_count: int
    bands: tuple[int, ...]
    dtype: str
    scale: tuple[tuple[float, float], ...] | None
    crs: str | None
    transform: tuple[float, float, float, float, float, float] | None
    descriptions: tuple[str, ...]

    def reading(self) -> dict[str, Any]:
        """How the scene's pixels became RGB, for alps_dataset.json and the card.

        Returns:
            {"bands": the 1-based bands read, "band_names": their descriptions or colour names ("" when
            none), "dtype": their data type, "stretch": per band [lo, hi] mapped to 0..255 (the
            2..98 percentile rule), or None for uint8 bands used as they are}.
        """
        return {"bands": list(self.bands), "band_names": [self.descriptions[b - 1] for b in self.bands],
                "dtype": self.dtype, "stretch": [list(pair) for pair in self.scale] if self.scale else None}


def _band_names(src) -> list[str]:
    names = []
    for i in range(src.count):
        desc = (src.descriptions[i] or "").strip()
        interp = src.colorinterp[i].name if src.colorinterp else ""
        names.append(desc or (interp if interp not in ("undefined", "gray", "grey") else ""))
    return names


def _describe_bands(names: list[str]) -> str:
    return ", ".join(f"{i + 1}" + (f" ({n})" if n else "") for i, n in enumerate(names))


def validate_bands(bands: list[int] | tuple[int, ...] | None) -> list[int] | None:
    """The one check of `--bands` that needs no scene: 1 or 3 one-based band indices.

    Called when the configuration is validated (before any model loads) and again by `select_bands`
    for callers of the library; whether the bands exist is checked against each scene.

    Args:
        bands: the requested band indices, or None for the default choice.

    Returns:
        The indices as a list of ints, or None.

    Raises:
        ConfigError: not 1 or 3 indices, or an index that is not an integer >= 1.
    """
    if bands is None:
        return None
    try:
        indices = [operator.index(b) for b in bands]
    except TypeError:
        indices = None
    if indices is None or len(indices) not in (1, 3) or any(b < 1 or isinstance(b, bool) for b in indices):
        raise ConfigError(
            f"--bands {list(bands)} is not allowed: give 1 band (grey) or 3 bands (R G B order) as 1-based "
            "indices, e.g. --bands 4 3 2"
        )
    return indices


def select_bands(src, requested: list[int] | None, path: str) -> tuple[int, ...]:
    """The 1-based bands to read from an open dataset (see module docstring for the default rule).

    Args:
        src: an open rasterio dataset.
        requested: the `--bands` indices, or None for the default choice.
        path: the scene's path, for messages.

    Returns:
        The bands to read: one (grey) or three (R, G, B order).

    Raises:
        ConfigError: a request `validate_bands` refuses, or an index the scene does not have.
    """
    count = src.count
    requested = validate_bands(requested)
    if requested is not None:
        bad = [b for b in requested if b > count]
        if bad:
            raise ConfigError(
                f"--bands {requested}: band {bad[0]} does not exist in {path}, which has {count} "
                f"band(s): {_describe_bands(_band_names(src))} (indices are 1-based)"
            )
        return tuple(requested)
    if count < 3:
        return (1,)
    # Descriptions first (they are what a user wrote), then GDAL's colour interpretation.
    descriptions = [(d or "").strip().lower() for d in src.descriptions]
    interps = [c.name for c in src.colorinterp] if src.colorinterp else [""] * count
    for labels, matches in ((descriptions, lambda lab, colour: lab in _RGB_NAMES[colour]),
                            (interps, lambda lab, colour: lab == colour)):
        found = {}
        for colour in ("red", "green", "blue"):
            hits = [i + 1 for i, lab in enumerate(labels) if matches(lab, colour)]
            if hits:
                found[colour] = hits[0]
        if len(found) == 3 and len(set(found.values())) == 3:
            return found["red"], found["green"], found["blue"]
    return 1, 2, 3


def _valid_from_masks(masks: np.ndarray, data: np.ndarray) -> np.ndarray:
    """Valid where any selected band is unmasked and finite (see module docstring)."""
    ok = masks > 0
    if np.issubdtype(data.dtype, np.floating):
        ok &= np.isfinite(data)
    return ok.any(axis=0)


def _scene_scaling(src, bands: tuple[int, ...]) -> tuple[tuple[float, float], ...]:
    """Per-band (lo, hi) by `images.band_stretch` from a decimated read of the whole scene."""
    factor = max(1, int(np.ceil(max(src.width, src.height) / STATS_MAX_SIDE)))
    shape = (len(bands), max(1, src.height // factor), max(1, src.width // factor))
    data = src.read(list(bands), out_shape=shape)
    masks = src.read_masks(list(bands), out_shape=shape)
    # Each band's own mask: a band's nodata value is no measurement, even where others have one.
    return tuple(band_stretch(data[k][masks[k] > 0]) for k in range(len(bands)))


def open_scene(path: str | os.PathLike, bands: list[int] | None = None) -> GeoScene:
    """Open a raster scene, choose its bands and fix its scaling; warns when it has no CRS.

    Args:
        path: the scene file.
        bands: the `--bands` indices (1-based), or None for the default choice (module docstring).

    Returns:
        The `GeoScene` every window loader of the scene shares.

    Raises:
        ImageError: the file cannot be opened, or has an unsupported data type (complex).
        ConfigError: `bands` names a band that does not exist (the message lists the bands).
        InputError: rasterio is not installed.
    """
    path = str(path)
    with _open(path) as src:
        chosen = select_bands(src, bands, path)
        dtypes = {src.dtypes[b - 1] for b in chosen}
        if any(np.dtype(d).kind == "c" for d in dtypes):
            raise ImageError(f"{path}: complex-valued bands ({sorted(dtypes)}) cannot be shown as an image")
        dtype = np.result_type(*[np.dtype(d) for d in dtypes]).name
        scale = None if dtype == "uint8" else _scene_scaling(src, chosen)
        crs = src.crs.to_wkt() if src.crs else None
        transform = tuple(float(v) for v in src.transform[:6])
        if crs is None:
            warnings.warn(
                f"{path} has no CRS: its label rows and stitched raster will carry pixel coordinates only",
                UserWarning,
                stacklevel=2,
            )
            if src.transform.is_identity:
                transform = None
        return GeoScene(
            path=path,
            width=src.width,
            height=src.height,
            band_count=src.count,
            bands=chosen,
            dtype=dtype,
            scale=scale,
            crs=crs,
            transform=transform,
            descriptions=tuple(_band_names(src)),
        )


def window_transform(scene: GeoScene, window: Window) -> list[float] | None:
    """The affine transform of one window of a scene.

    Args:
        scene: the opened scene.
        window: a window of it.

    Returns:
        (a, b, c, d, e, f) of the window, by rasterio's `windows.transform`; None when the scene
        is not georeferenced.
    """
    if scene.transform is None:
        return None
    rasterio_module()
    from rasterio import Affine
    from rasterio.windows import Window as RioWindow
    from rasterio.windows import transform

    rio_window = RioWindow(window.x0, window.y0, window.width, window.height)
    return list(transform(rio_window, Affine(*scene.transform)))[:6]


def window_meta(scene: GeoScene, window: Window) -> dict[str, Any]:
    """The meta dict of a window row.

    Args:
        scene: the opened scene.
        window: a window of it.

    Returns:
        {"scene", "window", "scene_size", "crs", "transform"}, see `alps_hf.images.LoadedImage`.
    """
    return {
        "scene": scene.path,
        "window": window.bounds,
        "scene_size": [scene.width, scene.height],
        "crs": scene.crs,
        "transform": window_transform(scene, window),
    }


def read_window(scene: GeoScene, window: Window) -> LoadedImage:
    """Read one window of a scene: RGB uint8 pixels, validity, meta.

    Args:
        scene: the opened scene (bands and scaling fixed for all its windows).
        window: the window to read.

    Returns:
        The window as a `LoadedImage` (`valid` None when every pixel has data).

    Raises:
        ImageError: the window cannot be read (corrupt blocks, file gone), with GDAL's reason.
    """
    rasterio_module()
    from rasterio.errors import RasterioError
    from rasterio.windows import Window as RioWindow

    rio_window = RioWindow(window.x0, window.y0, window.width, window.height)
    try:
        with _open(scene.path) as src:
            if (src.width, src.height) != (scene.width, scene.height):
                raise ImageError(
                    f"{scene.path}: size changed from {scene.width}x{scene.height} to {src.width}x{src.height}"
                )
            data = src.read(list(scene.bands), window=rio_window)
            masks = src.read_masks(list(scene.bands), window=rio_window)
    except RasterioError as err:
        # rasterio's message says "see previous exception": GDAL's reason is its cause.
        reason = f"{err}: {err.__cause__}" if err.__cause__ is not None else str(err)
        raise ImageError(f"{scene.path}: window {window.bounds} cannot be read ({reason})") from None
    valid = _valid_from_masks(masks, data)
    pixels = stretch_to_uint8(data, scene.scale)
    del data
    if pixels.shape[0] == 1:
        pixels = np.repeat(pixels, 3, axis=0)
    rgb = np.ascontiguousarray(pixels.transpose(1, 2, 0))
    all_valid = bool(valid.all())
    if not all_valid:
        rgb[~valid] = 0
    return LoadedImage(rgb=rgb, image_bytes=None, valid=None if all_valid else valid, meta=window_meta(scene, window))


def window_loader(scene: GeoScene, window: Window) -> Callable[[], LoadedImage]:
    """A zero-argument loader for one window: `read_window(scene, window)` when called.

    Args:
        scene: the opened scene.
        window: the window the loader reads.

    Returns:
        The loader. Picklable (a partial of `read_window`), so it can cross to DataLoader workers under any start method.
    """
    return functools.partial(read_window, scene, window)
