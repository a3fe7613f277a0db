"""Densified prompts (sam/densify.py): points only in uncovered cells, at finer spacing, within a budget."""

from __future__ import annotations

import numpy as np

from alps_hf.sam import amg
from alps_hf.sam.densify import cell_uncovered_share, densify_points, limit_points, round_sides


def test_cell_share_against_a_loop():
    rng = np.random.default_rng(0)
    uncovered = rng.random((37, 23)) < 0.4
    for n in (1, 4, 7, 23, 40, 50):  # 40, 50: more cells than rows / columns, so some are empty
        share = cell_uncovered_share(uncovered, n)
        ys = (np.arange(n + 1) * 37) // n
        xs = (np.arange(n + 1) * 23) // n
        for i in range(n):
            for j in range(n):
                block = uncovered[ys[i]:ys[i + 1], xs[j]:xs[j + 1]]
                assert share[i, j] == (block.mean() if block.size else 0.0)


def test_densified_points_lie_only_in_uncovered_cells():
    h, w = 64, 48
    covered = np.zeros((h, w), dtype=bool)
    covered[:, : w // 2] = True  # left half explained
    covered[40:, :] = True  # bottom explained
    n = 8
    points = densify_points(~covered, n, min_uncovered=0.5)
    assert len(points) > 0
    share = cell_uncovered_share(~covered, n)
    for x, y in points:
        px, py = int(x * w), int(y * h)
        assert not covered[py, px]
        assert share[int(y * n), int(x * n)] >= 0.5
    # They are a subset of the round's regular grid (cell centres), row by row.
    grid = {tuple(p) for p in np.round(amg.build_point_grid(n), 9)}
    assert {tuple(p) for p in np.round(points, 9)} <= grid
    # Exactly the cells of the uncovered top-right block: columns 4..7, rows 0..4 (row 5 is 0 % uncovered).
    assert len(points) == 4 * 5


def test_nothing_uncovered_gives_no_points_and_all_uncovered_gives_the_grid():
    assert densify_points(np.zeros((32, 32), dtype=bool), 8).shape == (0, 2)
    np.testing.assert_allclose(densify_points(np.ones((32, 32), dtype=bool), 8), amg.build_point_grid(8))


def test_rounds_and_budget():
    assert round_sides(16, 2) == [32, 64]
    assert round_sides(16, 0) == []
    points = amg.build_point_grid(10)
    assert len(limit_points(points, 30)) == 30
    assert len(limit_points(points, 0)) == 0
    assert limit_points(points, 500) is points
    picked = limit_points(points, 10)
    # Spread over the whole image, not the first rows only.
    assert picked[:, 1].min() < 0.1 and picked[:, 1].max() > 0.9
