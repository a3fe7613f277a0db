"""Fill segments (sam/fill.py): regions found, cut, merged, pooled against a naive loop, and assigned ids."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from alps_hf.sam.features import mask_cell_weights
from alps_hf.sam.fill import (
    fill_pieces,
    fill_segments,
    merge_small_pieces,
    piece_cell_weights,
    piece_features,
)
from alps_hf.sam.generator import EmbeddingFrame


def _naive_piece_feature(pieces: np.ndarray, r: int, embedding: np.ndarray, frame: EmbeddingFrame) -> np.ndarray:
    """Pixel by pixel, cell by cell: the overlap area of the pixel's resized rectangle with each cell."""
    channels, grid, _ = embedding.shape
    h, w = pieces.shape
    sy, sx = frame.resized[0] / h, frame.resized[1] / w
    cell = frame.padded / grid
    weights = np.zeros((grid, grid))
    for y in range(h):
        for x in range(w):
            if pieces[y, x] != r:
                continue
            for i in range(grid):
                oy = max(0.0, min((y + 1) * sy, (i + 1) * cell) - max(y * sy, i * cell))
                for j in range(grid):
                    ox = max(0.0, min((x + 1) * sx, (j + 1) * cell) - max(x * sx, j * cell))
                    weights[i, j] += oy * ox / (cell * cell)
    return (weights[None] * embedding).sum(axis=(1, 2)) / weights.sum()


@pytest.mark.parametrize("shape", [(12, 10), (7, 13)])
def test_piece_features_match_naive_loop(shape):
    h, w = shape
    rng = np.random.default_rng(0)
    pieces = rng.integers(0, 4, size=(h, w))
    long = max(h, w)
    frame = EmbeddingFrame((h, w), (round(h * 16 / long), round(w * 16 / long)), 16)
    embedding = rng.standard_normal((5, 4, 4)).astype(np.float32)
    feats = piece_features(torch.as_tensor(pieces), 3, torch.as_tensor(embedding), frame)
    assert feats.shape == (3, 5)
    for r in range(1, 4):
        np.testing.assert_allclose(feats[r - 1].numpy(), _naive_piece_feature(pieces, r, embedding, frame),
                                   rtol=1e-4, atol=1e-5)


def test_piece_weights_equal_mask_weights_of_one_hot_masks():
    rng = np.random.default_rng(1)
    pieces = rng.integers(0, 6, size=(20, 30))
    frame = EmbeddingFrame((20, 30), (21, 32), 32)
    one_hot = torch.as_tensor(np.stack([pieces == r for r in range(1, 6)]))
    expected = mask_cell_weights(one_hot, frame, 8)
    got = piece_cell_weights(torch.as_tensor(pieces), 5, frame, 8)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    # an upscaled image: every pixel overlaps several cells along each axis
    small = rng.integers(0, 3, size=(3, 5))
    up = EmbeddingFrame((3, 5), (19, 32), 32)
    one_hot = torch.as_tensor(np.stack([small == r for r in range(1, 3)]))
    torch.testing.assert_close(piece_cell_weights(torch.as_tensor(small), 2, up, 8), mask_cell_weights(one_hot, up, 8),
                               rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="20x30"):
        piece_cell_weights(torch.as_tensor(pieces), 5, EmbeddingFrame((10, 10), (32, 32), 32), 8)


def test_fill_pieces_whole_regions_and_cells():
    uncovered = np.zeros((8, 8), dtype=bool)
    uncovered[:, 0:2] = True  # a strip down the left
    uncovered[6:8, 5:8] = True  # a block at the bottom right
    frame = EmbeddingFrame((8, 8), (8, 8), 8)  # 1 px per embedding cell when grid = 8
    pieces, n = fill_pieces(uncovered, frame, grid=8, cell=0)
    assert n == 2
    assert set(np.unique(pieces[:, 0:2])) == {1} and set(np.unique(pieces[6:8, 5:8])) == {2}
    assert (pieces[~uncovered] == 0).all()
    # Blocks of 4 embedding cells (4 px): the strip is cut at row 4, the bottom-right block at column 4.
    pieces, n = fill_pieces(uncovered, frame, grid=8, cell=4)
    assert n == 3
    assert len(np.unique(pieces[0:4, 0:2])) == 1 and len(np.unique(pieces[4:8, 0:2])) == 1
    assert pieces[0, 0] != pieces[4, 0]
    assert len(np.unique(pieces[6:8, 5:8])) == 1
    # Ids follow the raster order of each piece's first pixel.
    assert pieces[0, 0] == 1 and pieces[4, 0] == 2 and pieces[6, 5] == 3


def test_small_pieces_merge_into_their_nearest_segment():
    segments = np.zeros((6, 6), dtype=np.int64)
    segments[:, 0:3] = 1
    segments[:, 4:6] = 2
    segments[0, 3] = 2
    # Column 3 rows 1..5 is uncovered: 5 px, below min_area 6: it takes the nearest painted ids.
    pieces, n = fill_pieces(segments == 0, EmbeddingFrame((6, 6), (6, 6), 6), 6, 0)
    assert n == 1
    merged, kept, m = merge_small_pieces(segments, pieces, n, min_area=6)
    assert m == 0 and (kept == 0).all()
    assert (merged > 0).all()
    assert set(np.unique(merged[1:, 3])) <= {1, 2}
    # At min_area 5 the piece is kept and nothing moves.
    same, kept, m = merge_small_pieces(segments, pieces, n, min_area=5)
    assert m == 1 and (kept[1:, 3] == 1).all()
    np.testing.assert_array_equal(same, segments)


def test_fill_segments_ids_follow_painted_ones_and_skip_invalid():
    segments = np.zeros((16, 16), dtype=np.int64)
    segments[0:8, 0:8] = 1
    segments[8:16, 8:16] = 2
    valid = np.ones((16, 16), dtype=bool)
    valid[0:8, 8:16] = False  # no-data corner: never filled
    frame = EmbeddingFrame((16, 16), (16, 16), 16)
    out, pieces, m = fill_segments(segments, 2, frame, 4, cell=0, min_area=4, valid=valid)
    assert m == 1
    assert (out[8:16, 0:8] == 3).all() and (pieces[8:16, 0:8] == 1).all()
    assert (out[0:8, 8:16] == 0).all()
    np.testing.assert_array_equal(out[0:8, 0:8], 1)
    # Every valid pixel now has a segment.
    assert (out[valid] > 0).all()
