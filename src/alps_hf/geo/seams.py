"""The seam rule: which masks of a window to keep, so a border-straddling object is kept once, whole.

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

import torch

from alps_hf.geo.windows import Window
from alps_hf.sam import amg
from alps_hf.sam.masks import MaskSet


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

    Raises:
        ValueError: masks of another size than the window.
    """
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
    cols = amg.any_along(masks.masks, 1)  # (N, W)
    rows = amg.any_along(masks.masks, 2)  # (N, H)
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
