"""Cut large aerial images into fixed-size overlapping patches, as mmsegmentation's converters do.

iSAID (mmsegmentation `tools/dataset_converters/isaid.py`): 896 x 896 patches with 384 pixels of
overlap, i.e. a stride of 512; the last row / column of windows is shifted back so that it ends
at the image border, and an image smaller than a patch is padded at the bottom / right first.
Potsdam-style 512 x 512 tiles are the same rule with overlap 0. Windows that coincide after the
shift (mmsegmentation writes them twice under one file name) are returned once.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from alps_hf.geo.windows import Window


def _starts(size: int, patch: int, stride: int) -> list[int]:
    # mmsegmentation: range(0, size, stride), a window running past the border is moved back to end on it.
    return sorted({min(start, size - patch) for start in range(0, size, stride)})


def sliding_windows(height: int, width: int, patch: int = 896, overlap: int = 384) -> list[Window]:
    """Windows covering a `height` x `width` image (padded to at least `patch` per side).

    Args:
        height: image height in pixels (before padding).
        width: image width in pixels (before padding).
        patch: patch side in pixels.
        overlap: overlap of neighbouring patches in pixels.

    Returns:
        `Window`s in mmsegmentation's order (columns outer, rows inner), without cores (a patch is a
        sample of its own, not the owner of part of a scene), `scene_size` the padded size.

    Raises:
        ValueError: a non-positive size or patch, or overlap outside [0, patch).
    """
    if height <= 0 or width <= 0 or patch <= 0:
        raise ValueError(f"image {height}x{width} and patch {patch} must be positive")
    if not 0 <= overlap < patch:
        raise ValueError(f"overlap {overlap} must be in [0, patch={patch})")
    height, width = max(height, patch), max(width, patch)
    stride = patch - overlap
    starts = [(x, y) for x in _starts(width, patch, stride) for y in _starts(height, patch, stride)]
    return [
        Window(x, y, x + patch, y + patch, scene_size=(width, height), index=i) for i, (x, y) in enumerate(starts)
    ]


def pad_to_patch(image: np.ndarray, patch: int, value: int = 0) -> np.ndarray:
    """Pad an (H, W[, C]) array at the bottom / right so that both sides are at least `patch`.

    Args:
        image: (H, W) or (H, W, C) array.
        patch: the patch side in pixels.
        value: fill value of the padding.

    Returns:
        `image` itself when it is large enough, else a padded copy filled with `value`.
    """
    pad_h, pad_w = max(0, patch - image.shape[0]), max(0, patch - image.shape[1])
    if not pad_h and not pad_w:
        return image
    widths = [(0, pad_h), (0, pad_w)] + [(0, 0)] * (image.ndim - 2)
    return np.pad(image, widths, constant_values=value)


def cut_patches(
    image: np.ndarray, patch: int = 896, overlap: int = 384, pad_value: int = 0
) -> Iterator[tuple[Window, np.ndarray]]:
    """Cut `image` (H, W[, C]) into patches, padded first when smaller than a patch.

    Args:
        image: (H, W) or (H, W, C) array.
        patch: the patch side in pixels (iSAID: 896).
        overlap: overlap of neighbouring patches in pixels (iSAID: 384).
        pad_value: fill value of the padding.

    Yields:
        (window, patch array) in `sliding_windows` order; patches are views, copy to keep them.

    Raises:
        ValueError: as `sliding_windows`.
    """
    padded = pad_to_patch(image, patch, pad_value)
    for window in sliding_windows(padded.shape[0], padded.shape[1], patch, overlap):
        yield window, padded[window.y0 : window.y1, window.x0 : window.x1]
