"""Windowed upsampling: a mask's low-res logits upsampled only where the mask can be, to the same pixels.

The generator checks every low-res survivor at full resolution (stability at two thresholds, area, box).
Upsampling its whole frame costs the same for a 200 px roof as for the land around it; most masks are
small (toy SAM scenes: the median survivor's window is 6 % of the frame). When the family's upsampling
is one bilinear resize (align_corners=False) by integer factors (sy, sx) followed by a crop (the adapter's
`upsample_factors`), the output pixel (y, x) is a convex blend of the low-res logits in rows
floor((y + .5) / sy - .5) and the next, columns likewise. So:

- a pixel whose low-res rows or columns hold no logit above the lowest threshold in play (mask threshold
  minus the stability offset, less a rounding margin) is below every threshold: it is in no count;
- the rows `lo - 1 .. hi + 1` and columns likewise around the logits above it, upsampled on their own by
  (sy, sx), give the same blends (the same source rows, the same weights: (y + .5) / s - .5 shifts by an
  integer, exactly in floating point when s is a power of two, as SAM's 4x is) for every pixel they can
  affect; pixels at the window's edge whose sources it clamps are surely below the thresholds in both.

"The same blends" is arithmetic; "the same floats" is torch's kernel. On this CPU build (torch 2.13) a
window gives bit-identical pixels once its output has more than 4096 values, not always below (a smaller
output takes another code path); windows are at least `MIN_SIDE` low-res cells per side, and
`windows_are_exact` checks the kernel once per process, size, device and dtype against the whole-frame
resize. Where it does not reproduce it, the generator upsamples whole frames as before.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
import torch.nn.functional as F

#: Low-res cells per window side at the least (32 x 32 cells by 4 x 4 is 16384 output pixels).
MIN_SIDE = 32


def bilinear(logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(n, 1, h, w) logits resized to `size`: the one resize of the adapters' `upsample` and of the windows."""
    return F.interpolate(logits, size, mode="bilinear", align_corners=False)


def window(profile: np.ndarray, min_side: int = MIN_SIDE) -> tuple[int, int]:
    """Low-res [start, stop) along one axis covering one cell beyond the first and last True of `profile`.

    Widened (evenly, then against the far end) to `min_side` cells or the whole axis. `profile` must hold a
    True value.
    """
    n = len(profile)
    hits = np.flatnonzero(profile)
    start, stop = max(int(hits[0]) - 1, 0), min(int(hits[-1]) + 2, n)
    short = min(min_side, n) - (stop - start)
    if short > 0:
        start = max(start - short // 2, 0)
        stop = min(start + min(min_side, n), n)
        start = stop - min(min_side, n)
    return start, stop


def upsample_window(logits: torch.Tensor, rows: tuple[int, int], cols: tuple[int, int],
                    factors: tuple[int, int], out_size: tuple[int, int]) -> tuple[torch.Tensor, int, int]:
    """The full-resolution pixels of one mask's low-res window.

    Args:
        logits: (h, w) low-res logits of one mask.
        rows: the low-res window's rows, [start, stop) (`window`).
        cols: its columns, likewise.
        factors: (sy, sx), the integer factors of the family's resize.
        out_size: (H, W), the full-resolution frame (the crop after the resize).

    Returns:
        (pixels, y0, x0): the window's (H', W') float logits, whose top-left pixel is (y0, x0) of the frame;
        clipped to the frame.
    """
    (r0, r1), (c0, c1), (sy, sx) = rows, cols, factors
    part = logits[r0:r1, c0:c1].contiguous()[None, None]
    pixels = bilinear(part, ((r1 - r0) * sy, (c1 - c0) * sx))[0, 0]
    y0, x0 = r0 * sy, c0 * sx
    return pixels[: max(out_size[0] - y0, 0), : max(out_size[1] - x0, 0)], y0, x0


@functools.cache
def windows_are_exact(low: tuple[int, int], factors: tuple[int, int], device: str, dtype: torch.dtype) -> bool:
    """Whether windows of `low`-sized logits upsample to the very floats of the whole-frame resize here.

    Never for factors that are not powers of two.
    Seeded random logits on the device, two masks resized together (as the generator's chunks are),
    windows of the least size and larger ones at several offsets; only the pixels a window can affect
    (those whose sources it does not clamp) are compared.
    """
    h, w = low
    sy, sx = factors
    if any(s < 1 or s & (s - 1) for s in factors):  # 1 / s inexact: source positions round differently
        return False
    gen = torch.Generator().manual_seed(0)
    logits = (torch.randn((2, 1, h, w), generator=gen) * 8).to(device=device, dtype=dtype)
    whole = bilinear(logits, (h * sy, w * sx))
    side_h, side_w = min(MIN_SIDE, h), min(MIN_SIDE, w)
    cases = [((0, side_h), (0, side_w)), ((h - side_h, h), (w - side_w, w)),
             ((h // 3, h // 3 + side_h), (w // 5, w // 5 + side_w)),
             ((1, h - 1), (w // 2 - side_w // 2, w // 2 - side_w // 2 + side_w)),
             ((h // 4, min(h, h // 4 + side_h + 7)), (1, min(w, side_w + 10)))]
    for (r0, r1), (c0, c1) in cases:
        if r1 > h or c1 > w or r0 < 0 or c0 < 0:
            continue
        for k in range(2):
            pixels, y0, x0 = upsample_window(logits[k, 0], (r0, r1), (c0, c1), factors, (h * sy, w * sx))
            # Pixels whose sources lie inside the window: a clamped edge differs by design.
            top = (sy + 1) // 2 if r0 > 0 else 0
            left = (sx + 1) // 2 if c0 > 0 else 0
            bottom = pixels.shape[0] - ((sy + 1) // 2 if r1 < h else 0)
            right = pixels.shape[1] - ((sx + 1) // 2 if c1 < w else 0)
            got = pixels[top:bottom, left:right]
            want = whole[k, 0, y0 + top:y0 + bottom, x0 + left:x0 + right]
            if not torch.equal(got, want):
                return False
    return True
