"""Decoding images into the RGB uint8 arrays SAM and the segmentation models take.

Odd but valid images are converted, never rejected: grayscale, palette, RGBA / LA (alpha dropped),
CMYK, 16-bit and 32-bit integer or float images, and EXIF-rotated JPEGs (rotated upright, as
`datasets.Image` does on decode, so that image and label stay aligned). A file that cannot be
decoded raises `ImageError` with the reason.

One rule for data deeper than 8 bits, whatever its container (16-bit PNG, float TIFF read by PIL,
a GeoTIFF read through rasterio in `alps_hf.geo.geotiff`, a numpy array): each band is stretched
linearly from its 2nd..98th percentile over the valid, finite pixels of the scene to 0..255 and
clipped (`band_stretch`, `stretch_to_uint8`). For a PIL image or an array the scene is the image.
A band with no spread between those percentiles falls back to its min..max; a constant band
becomes 0. 8-bit data is used as it is.

Also the one record every image loader returns (`LoadedImage`), and `allow_large_images`, the
raised decompression-bomb limit scoped to our own opens.
"""

from __future__ import annotations

import io
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from alps_hf.errors import ImageError

# Decompression-bomb guard for our own opens: PIL's default (~89 Mpx) would refuse large aerial
# scenes. Larger images are cut into windows by the raster reader instead of being decoded whole.
MAX_IMAGE_PIXELS = 40_000 * 40_000

# Percentiles of the >8-bit stretch (see the module docstring).
STRETCH_PERCENTILES = (2.0, 98.0)

_HIGH_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")

# PIL reads its limit from a module global: nested or concurrent (decoder threads) users share one
# raise, and the caller's value comes back when the last of them leaves.
_limit_lock = threading.Lock()
_limit_users = 0
_limit_saved: int | None = None


@contextmanager
def allow_large_images() -> Iterator[None]:
    """Raise PIL's decompression-bomb limit to `MAX_IMAGE_PIXELS` while the block runs.

    Used around alps_hf's own `Image.open` calls, so importing alps_hf changes nothing for other
    code; thread-safe (a counter, so overlapping blocks on decoder threads keep the raise until the
    last one ends). A limit the caller set higher (or None, no limit) is kept.

    Yields:
        None.
    """
    global _limit_users, _limit_saved
    with _limit_lock:
        if _limit_users == 0:
            _limit_saved = Image.MAX_IMAGE_PIXELS
            if _limit_saved is not None and _limit_saved < MAX_IMAGE_PIXELS:
                Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS
        _limit_users += 1
    try:
        yield
    finally:
        with _limit_lock:
            _limit_users -= 1
            if _limit_users == 0:
                Image.MAX_IMAGE_PIXELS = _limit_saved


@dataclass
class LoadedImage:
    """One decoded input: an image file, a dataset row or a window of a large scene.

    Attributes:
        rgb: (H, W, 3) uint8, upright (EXIF applied).
        image_bytes: encoded bytes for the dataset's `image` column (the original file where possible);
            None means: encode `rgb` as PNG (always None for a window).
        valid: optional (H, W) bool; False = no-data, labeled 255; None when every pixel is valid.
        meta: extra facts about the row; for a window {"scene": path, "window": [x0, y0, x1, y1],
            "scene_size": [W, H], "crs": WKT or None, "transform": [a, b, c, d, e, f] of the window or None}.
    """

    rgb: np.ndarray
    image_bytes: bytes | None = None
    valid: np.ndarray | None = None
    meta: dict[str, Any] = field(default_factory=dict)


def band_stretch(values: np.ndarray) -> tuple[float, float]:
    """The (lo, hi) of one band that `stretch_to_uint8` maps to 0..255 (the module's >8-bit rule).

    Args:
        values: the band's valid pixels, any shape and numeric dtype; non-finite values are ignored.

    Returns:
        The 2nd and 98th percentile of the finite values; their min and max when those percentiles
        are equal; (0.0, 1.0) when there is no finite value. hi <= lo means a constant band.
    """
    values = np.asarray(values, dtype=np.float64).ravel()
    values = values[np.isfinite(values)]
    if values.size == 0:
        return 0.0, 1.0
    lo, hi = (float(v) for v in np.percentile(values, STRETCH_PERCENTILES))
    if hi <= lo:
        lo, hi = float(values.min()), float(values.max())
    return lo, hi


def stretch_to_uint8(data: np.ndarray, scale: tuple[tuple[float, float], ...] | None) -> np.ndarray:
    """(bands, h, w) data to uint8 with one (lo, hi) per band from `band_stretch`.

    Args:
        data: (bands, h, w) array of any real dtype.
        scale: per band (lo, hi): lo -> 0, hi -> 255, linear, rounded, clipped; NaN and -inf -> 0,
            +inf -> 255; a band with hi <= lo becomes 0. None: the data is uint8 already, used as is.

    Returns:
        (bands, h, w) uint8 array.
    """
    if scale is None:
        return data.astype(np.uint8, copy=False)
    out = np.empty(data.shape, np.uint8)
    for k, (lo, hi) in enumerate(scale):
        span = hi - lo
        if span <= 0:
            out[k] = 0
            continue
        # float32 bounds the memory of a window-sized band; 8-bit output needs no more precision.
        band = data[k].astype(np.float32)
        band -= lo
        band *= 255.0 / span
        np.nan_to_num(band, copy=False, nan=0.0, posinf=255.0, neginf=0.0)
        np.clip(band, 0, 255, out=band)
        out[k] = np.rint(band)
    return out


def _stretch_image(array: np.ndarray) -> np.ndarray:
    """(H, W) or (H, W, C) >8-bit array -> uint8 of the same shape, each channel by the module's rule."""
    bands = array[None] if array.ndim == 2 else np.moveaxis(array, 2, 0)
    scale = tuple(band_stretch(band) for band in bands)
    out = stretch_to_uint8(bands, scale)
    return out[0] if array.ndim == 2 else np.moveaxis(out, 0, 2)


def pil_to_rgb_array(image: Image.Image) -> np.ndarray:
    """An (H, W, 3) uint8 RGB array for any PIL image mode (see the module docstring).

    Args:
        image: an opened PIL image, any mode.

    Returns:
        (H, W, 3) uint8, upright (EXIF orientation applied); >8-bit modes stretched by the module's rule.
    """
    image = ImageOps.exif_transpose(image) if image.getexif().get(0x0112) else image
    mode = image.mode
    if mode in _HIGH_BIT_MODES:
        gray = _stretch_image(np.asarray(image))
        return np.repeat(gray[..., None], 3, axis=2)
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in image.info):
        image = image.convert("RGBA").convert("RGB")
    elif mode != "RGB":
        image = image.convert("RGB")
    return np.ascontiguousarray(np.asarray(image, dtype=np.uint8))


def decode_image_bytes(data: bytes, name: str = "<bytes>") -> np.ndarray:
    """Decode encoded image bytes to an RGB uint8 array.

    Args:
        data: the encoded file (PNG, JPEG, TIFF, ... anything PIL reads).
        name: how the image is named in error messages (its path or dataset index).

    Returns:
        (H, W, 3) uint8 array, see `pil_to_rgb_array`.

    Raises:
        ImageError: empty, not an image, corrupt or truncated, larger than `MAX_IMAGE_PIXELS`, or zero-sized.
    """
    if not data:
        raise ImageError(f"{name}: empty file (0 bytes)")
    try:
        with allow_large_images(), warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            image.load()
    except UnidentifiedImageError:
        raise ImageError(f"{name}: not an image PIL can read") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise ImageError(f"{name}: corrupt or truncated image ({err})") from None
    if image.width == 0 or image.height == 0:
        raise ImageError(f"{name}: zero-sized image ({image.width}x{image.height})")
    return pil_to_rgb_array(image)


def image_size(path: str) -> tuple[int, int]:
    """(width, height) of an image file from its header only (no pixel decoding).

    Args:
        path: the file.

    Returns:
        (width, height) in pixels.

    Raises:
        ImageError: the file cannot be opened as an image.
    """
    try:
        with allow_large_images(), Image.open(path) as image:
            return image.size
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise ImageError(f"{path}: cannot be opened as an image ({err})") from None


def to_rgb_array(value) -> np.ndarray:
    """An RGB uint8 array from a PIL image, an array or a `datasets` image dict.

    Args:
        value: a PIL image; an (H, W[, C]) array with C in 1, 3, 4 (a non-uint8 array is stretched by
            the module's rule, alpha dropped); or a dict with `bytes` and / or `path`.

    Returns:
        (H, W, 3) uint8 array.

    Raises:
        ImageError: the value cannot be decoded, or an array that is not an image.
    """
    if isinstance(value, Image.Image):
        return pil_to_rgb_array(value)
    if isinstance(value, dict) and ("bytes" in value or "path" in value):
        if value.get("bytes"):
            return decode_image_bytes(value["bytes"], value.get("path") or "<bytes>")
        with open(value["path"], "rb") as fh:
            return decode_image_bytes(fh.read(), value["path"])
    array = np.asarray(value)
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3 or array.shape[2] not in (1, 3, 4):
        raise ImageError(f"array of shape {array.shape} is not an image (expected H x W, H x W x 1/3/4)")
    array = array[..., :3]
    if array.dtype != np.uint8:
        array = _stretch_image(array)
    if array.shape[2] == 1:
        array = np.repeat(array, 3, axis=2)
    return np.ascontiguousarray(array)
