"""Fill segments: the pixels no mask covers get segments of their own, pooled from the same embedding.

After painting (sam/segment_map.py), what is still uncovered (roads between blocks, bare land that no
mask covered, water a grid never hit) would be "no label" (255) and teach a pre-trained network
nothing. Here every connected uncovered region becomes one or more "fill" segments:

1. uncovered pixels (segment 0 and valid) are split into 4-connected regions;
2. each region is cut along a grid of blocks of `cell` x `cell` embedding cells (aligned with the
   SAM embedding grid), so a region spanning road and land is not forced into one class; `cell = 0`
   keeps whole regions;
3. pieces smaller than `min_area` pixels join the segment (painted or fill) of their nearest
   pixel that is not such a piece, so no sliver becomes a segment of its own;
4. each piece's feature is the SAM embedding averaged over it with the exact frame mapping of
   sam/features.py (`axis_coverage`), so fill features live in the same space as mask features
   and are clustered like them.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage

from alps_hf.sam.features import axis_coverage
from alps_hf.sam.generator import EmbeddingFrame


def _block_index(n_pixels: int, n_resized: int, cell_px: float) -> np.ndarray:
    """Block of each original pixel along one axis: where its centre falls in the resized frame."""
    centres = (np.arange(n_pixels) + 0.5) * (n_resized / n_pixels)
    return (centres // cell_px).astype(np.int64)


def fill_pieces(uncovered: np.ndarray, frame: EmbeddingFrame, grid: int, cell: int) -> tuple[np.ndarray, int]:
    """Uncovered regions cut into blocks of `cell` x `cell` embedding cells.

    Args:
        uncovered: (H, W) bool, the pixels to fill (at the frame's original size).
        frame: where the image sits in the SAM input frame.
        grid: E, the embedding's cells per side.
        cell: block side in embedding cells; 0 = whole connected regions.

    Returns:
        (pieces, n): (H, W) int64 map, 0 = not uncovered, 1..n = piece ids in raster order of their
        first pixel.
    """
    regions, n = ndimage.label(uncovered)
    if n == 0 or cell <= 0:
        return regions.astype(np.int64), int(n)
    cell_px = frame.padded / grid * cell
    rows = _block_index(uncovered.shape[0], frame.resized[0], cell_px)
    cols = _block_index(uncovered.shape[1], frame.resized[1], cell_px)
    n_cols = int(cols.max()) + 1
    block = rows[:, None] * n_cols + cols[None, :]
    key = np.where(regions > 0, regions.astype(np.int64) * (block.max() + 1) + block, -1)
    flat = key.ravel()
    inside = flat >= 0
    # Renumber (region, block) keys to 1..n in raster order of first appearance: deterministic ids.
    _, first, inverse = np.unique(flat[inside], return_index=True, return_inverse=True)
    rank = np.empty(len(first), dtype=np.int64)
    rank[np.argsort(first, kind="stable")] = np.arange(1, len(first) + 1)
    out = np.zeros(flat.shape, dtype=np.int64)
    out[inside] = rank[inverse]
    return out.reshape(uncovered.shape), len(first)


def merge_small_pieces(segments: np.ndarray, pieces: np.ndarray, n: int, min_area: int,
                       valid: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, int]:
    """Hand pieces under `min_area` px to the nearest pixel that is painted or a kept piece.

    Args:
        segments: (H, W) painted segment ids, 0 = none.
        pieces: (H, W) piece ids from `fill_pieces`, 0 = none.
        n: number of pieces.
        min_area: pieces with fewer pixels are merged (0 keeps all).
        valid: optional (H, W) bool; invalid pixels are never a merge target.

    Returns:
        (segments, pieces, m): both maps after the merge (a merged pixel takes its target's painted
        id or piece id) and m, the kept pieces renumbered 1..m in their previous order.
    """
    sizes = np.bincount(pieces.ravel(), minlength=n + 1)
    small = (sizes < min_area) & (np.arange(n + 1) > 0)
    if not small.any():
        return segments, pieces, n
    move = small[pieces]
    target = ~move & ((segments > 0) | (pieces > 0))
    if valid is not None:
        target &= valid
    segments, pieces = segments.copy(), pieces.copy()
    if target.any():
        # Nearest target pixel of every pixel (Euclidean, ties by scipy's scan order: deterministic).
        # Indices only: the distances (a float image and a square root per pixel) are never read.
        iy, ix = ndimage.distance_transform_edt(~target, return_distances=False, return_indices=True)
        segments[move] = segments[iy[move], ix[move]]
        pieces[move] = pieces[iy[move], ix[move]]
    else:  # nothing to merge into: the small pieces stay uncovered
        pieces[move] = 0
    kept = ~small
    kept[0] = False
    renumber = np.zeros(n + 1, dtype=np.int64)
    renumber[kept] = np.arange(1, int(kept.sum()) + 1)
    return segments, renumber[pieces], int(kept.sum())


def piece_cell_weights(pieces: torch.Tensor, n: int, frame: EmbeddingFrame, grid: int) -> torch.Tensor:
    """(n, E, E) share of each embedding cell covered by each piece of a label map (H, W), 0 = none.

    The same numbers as `features.mask_cell_weights` on the pieces' one-hot masks (same
    `axis_coverage` matrices), computed by scattering instead of one matmul per mask: each pixel of a
    piece adds its column's few nonzero column-coverage entries (a pixel overlaps 1-2 cells, more only
    when the image is upscaled) to its (piece, row) line, then one contraction with the row coverage.
    """
    h, w = pieces.shape
    if (h, w) != tuple(frame.original):
        raise ValueError(f"piece map is {h}x{w} but the embedding frame was made for {frame.original}")
    device = pieces.device
    a_h = axis_coverage(h, frame.resized[0], grid, frame.padded, device)  # (E, H)
    a_w = axis_coverage(w, frame.resized[1], grid, frame.padded, device)  # (E, W)
    q, j = torch.nonzero(a_w.T > 0, as_tuple=True)  # the (column, cell) pairs of nonzero coverage
    pieces = pieces.long()
    owner = pieces[:, q]  # (H, K): the piece of each pixel in each pair's column
    inside = owner > 0
    line = owner * h + torch.arange(h, device=device)[:, None]  # (piece, row) line of each entry
    # rows[r, p, :] = sum over the columns c of piece r in row p of a_w[:, c].
    rows = torch.zeros(((n + 1) * h * grid,), dtype=a_w.dtype, device=device)
    index = (line * grid + j[None, :])[inside]
    rows.index_add_(0, index, a_w[j, q][None, :].expand(h, -1)[inside])
    rows = rows.view(n + 1, h, grid)[1:]
    return torch.einsum("ip,rpj->rij", a_h, rows)


def piece_features(pieces: torch.Tensor, n: int, embedding: torch.Tensor, frame: EmbeddingFrame) -> torch.Tensor:
    """(n, C) float32 masked-average embedding of each piece (as `features.mask_features` for masks).

    Args:
        pieces: (H, W) integer map at the original size, 0 = none, 1..n = pieces.
        n: number of pieces.
        embedding: (C, E, E) SAM embedding of the same image.
        frame: where the image sits in the SAM input frame.

    Returns:
        float32 features; a piece covering no pixel gets zeros.
    """
    grid = embedding.shape[-1]
    weights = piece_cell_weights(pieces.to(embedding.device), n, frame, grid)
    total = weights.sum(dim=(1, 2))
    pooled = weights.flatten(1) @ embedding.float().flatten(1).T
    return pooled / total.clamp_min(1e-12)[:, None]


def fill_segments(segments: np.ndarray, num_segments: int, frame: EmbeddingFrame, grid: int, *, cell: int,
                  min_area: int, valid: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, int]:
    """Give the uncovered pixels of a segment map fill segments (see the module docstring).

    Args:
        segments: (H, W) painted segment map, 0 = none, 1..num_segments painted.
        num_segments: number of painted segments.
        frame: where the image sits in the SAM input frame.
        grid: E, the embedding's cells per side.
        cell: block side in embedding cells (0 = whole regions).
        min_area: pieces with fewer pixels merge into their nearest neighbour.
        valid: optional (H, W) bool; invalid (no-data) pixels stay 0.

    Returns:
        (segments, pieces, m): the new segment map (int64) where fill piece r has id num_segments + r,
        the (H, W) piece map (0 = not fill, 1..m) to pool fill features from, and m.
    """
    uncovered = segments == 0
    if valid is not None:
        uncovered &= valid
    pieces, n = fill_pieces(uncovered, frame, grid, cell)
    segments, pieces, m = merge_small_pieces(segments.astype(np.int64), pieces, n, min_area, valid)
    out = np.where(pieces > 0, pieces + num_segments, segments)
    return out, pieces, m


def add_fill_segments(segments: np.ndarray, num_segments: int, embedding: torch.Tensor, frame: EmbeddingFrame, *,
                      cell: int, min_area: int, valid: np.ndarray | None = None) -> tuple[np.ndarray, torch.Tensor]:
    """`fill_segments` plus the fill segments' features: what pass 1 appends after the painted masks.

    Args:
        segments: (H, W) painted segment map at the frame's original size.
        num_segments: number of painted segments.
        embedding: (C, E, E) SAM embedding of the image.
        frame: where the image sits in the SAM input frame.
        cell: block side in embedding cells (0 = whole regions).
        min_area: pieces with fewer pixels merge into their nearest neighbour.
        valid: optional (H, W) bool of pixels with data.

    Returns:
        (segments, features): the segment map with fill ids num_segments+1.., and their (m, C) features.
    """
    out, pieces, m = fill_segments(segments, num_segments, frame, embedding.shape[-1], cell=cell,
                                   min_area=min_area, valid=valid)
    if m == 0:
        return out, embedding.new_zeros((0, embedding.shape[0]), dtype=torch.float32)
    return out, piece_features(torch.as_tensor(pieces), m, embedding, frame)
