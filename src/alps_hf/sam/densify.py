"""Prompt where nothing is yet: further rounds of point prompts only in the cells no kept mask covers.

A regular grid spends most prompts on what is already explained (every point on a large field
returns the same mask) and misses what falls between its points (thin roads, small buildings).
After the first (coarse) grid, each further round lays a grid twice as fine and keeps only the
points whose cell is mostly uncovered by the masks kept so far (and whose centre pixel is
uncovered), so prompts go where the scene is unexplained, up to a budget of prompts per image.
"""

from __future__ import annotations

import numpy as np


def cell_uncovered_share(uncovered: np.ndarray, n_per_side: int) -> np.ndarray:
    """(n, n) share of uncovered pixels in each cell of an n x n grid over the image (row i, column j).

    Cell (i, j) spans rows [floor(i H / n), floor((i + 1) H / n)) and the same for columns; a cell
    with no pixels (n larger than the image) has share 0.
    """
    h, w = uncovered.shape
    ys = (np.arange(n_per_side + 1) * h) // n_per_side
    xs = (np.arange(n_per_side + 1) * w) // n_per_side
    sizes = np.diff(ys)[:, None] * np.diff(xs)[None, :]
    # Block sums with reduceat over row then column bands (a summed-area table's two int64 cumsums cost
    # ~4x more). reduceat gives an empty band the single row / column at its start: zeroed by `sizes`.
    rows = np.add.reduceat(uncovered.view(np.uint8), np.minimum(ys[:-1], h - 1), axis=0, dtype=np.int64)
    counts = np.add.reduceat(rows, np.minimum(xs[:-1], w - 1), axis=1)
    return np.where(sizes > 0, counts / np.maximum(sizes, 1), 0.0)


def densify_points(uncovered: np.ndarray, n_per_side: int, min_uncovered: float = 0.5) -> np.ndarray:
    """Centres of the cells of an n x n grid that are mostly uncovered, as (x, y) in [0, 1].

    The points are those of `amg.build_point_grid(n_per_side)` (cell centres, row by row), kept when
    the cell's uncovered share is at least `min_uncovered` and the pixel under the point is uncovered.

    Args:
        uncovered: (H, W) bool, pixels no kept mask covers (and that are valid).
        n_per_side: grid of this round.
        min_uncovered: least uncovered share of a cell for its point to be prompted, in (0, 1].

    Returns:
        (P, 2) float64 points in the normalised coordinates the generator's point grids use.
    """
    h, w = uncovered.shape
    share = cell_uncovered_share(uncovered, n_per_side)
    centres = (np.arange(n_per_side) + 0.5) / n_per_side
    py = np.minimum((centres * h).astype(np.int64), h - 1)
    px = np.minimum((centres * w).astype(np.int64), w - 1)
    keep = (share >= min_uncovered) & uncovered[py[:, None], px[None, :]]
    rows, cols = np.nonzero(keep)
    return np.stack([centres[cols], centres[rows]], axis=-1).astype(np.float64).reshape(-1, 2)


def round_sides(points_per_side: int, rounds: int) -> list[int]:
    """Grid side of each densify round after the first grid: 2x, 4x, ... the first grid's side."""
    return [points_per_side * 2 ** (r + 1) for r in range(rounds)]


def limit_points(points: np.ndarray, budget: int) -> np.ndarray:
    """At most `budget` points, spread evenly over the list (which is row by row), never clustered at the top."""
    if budget <= 0:
        return points[:0]
    if len(points) <= budget:
        return points
    pick = np.linspace(0, len(points) - 1, budget).round().astype(np.int64)
    return points[np.unique(pick)]
