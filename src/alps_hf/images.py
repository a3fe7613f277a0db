"""Decoding images into the RGB uint8 arrays SAM and the segmentation models take.

Odd but valid images are converted, never rejected: grayscale, palette, RGBA / LA (alpha dropped),
CMYK, 16-bit and 32-bit integer or float images (scaled linearly from their own min..max to
0..255), and EXIF-rotated JPEGs (rotated upright, as `datasets.Image` does on decode, so that
image and label stay aligned). A file that cannot be decoded raises `ImageError` with the reason.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from alps_hf.errors import ImageError

# Decompression-bomb guard: PIL's default would refuse large aerial scenes. Larger images are cut
# into windows by the raster reader instead of being decoded whole.
MAX_IMAGE_PIXELS = 40_000 * 40_000
Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS


def _scale_to_uint8(array: np.ndarray) -> np.ndarray:
    """Linear min..max scaling of a high-bit-depth array to uint8 (constant images map to 0)."""
    array = array.astype(np.float64)
    finite = np.isfinite(array)
    if not finite.any():
        return np.zeros(array.shape, np.uint8)
    lo, hi = float(array[finite].min()), float(array[finite].max())
    if hi <= lo:
        return np.zeros(array.shape, np.uint8)
    scaled = (np.where(finite, array, lo) - lo) * (255.0 / (hi - lo))
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def pil_to_rgb_array(image: Image.Image) -> np.ndarray:
    """Return an (H, W, 3) uint8 RGB array for any PIL image mode (see module docstring)."""
    image = ImageOps.exif_transpose(image) if image.getexif().get(0x0112) else image
    mode = image.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        gray = _scale_to_uint8(np.asarray(image))
        return np.repeat(gray[..., None], 3, axis=2)
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in image.info):
        image = image.convert("RGBA").convert("RGB")
    elif mode != "RGB":
        image = image.convert("RGB")
    return np.ascontiguousarray(np.asarray(image, dtype=np.uint8))


def decode_image_bytes(data: bytes, name: str = "<bytes>") -> np.ndarray:
    """Decode encoded image bytes to an RGB uint8 array; raise `ImageError` saying why not."""
    if not data:
        raise ImageError(f"{name}: empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
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


def to_rgb_array(value) -> np.ndarray:
    """RGB uint8 array from a PIL image, an array (H, W[, C]) or a `datasets` image dict."""
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
    if array.dtype != np.uint8:
        array = _scale_to_uint8(array)
    if array.shape[2] == 1:
        array = np.repeat(array, 3, axis=2)
    return np.ascontiguousarray(array[..., :3])
