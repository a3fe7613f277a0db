"""Mask features: the SAM image embedding averaged inside each mask.

The embedding (C x E x E) covers the SAM input frame. For SAM and SAM-HQ that is the image resized so
its longest side is the input size, then padded at the bottom and right to a square; for SAM 2, EdgeTAM
and the SAM 3 tracker the image resized to the whole square (each axis scaled on its own, no padding:
`resized` = (S, S)). The mapping below is per axis, so it is exact for both. A mask in original pixels is mapped
into that frame exactly: original pixel (y, x) covers the resized rectangle
[y*sy, (y+1)*sy) x [x*sx, (x+1)*sx), and embedding cell (i, j) the square
[i*P, (i+1)*P) x [j*P, (j+1)*P) with P = padded / E. The weight of cell (i, j) is the fraction of
it the mask covers; padding is covered by no pixel, so it gets no weight. The feature is the
weight-averaged embedding. The per-axis coverage matrices make this two small matmuls per mask.
"""

from __future__ import annotations

import torch

from alps_hf.sam.generator import EmbeddingFrame


def axis_coverage(n_pixels: int, n_resized: int, n_cells: int, padded: int, device=None) -> torch.Tensor:
    """(n_cells, n_pixels) matrix: share of cell i's extent covered by original pixel p, along one axis."""
    scale = n_resized / n_pixels
    cell = padded / n_cells
    p = torch.arange(n_pixels, dtype=torch.float64, device=device)
    i = torch.arange(n_cells, dtype=torch.float64, device=device)
    lo = torch.maximum(p[None, :] * scale, i[:, None] * cell)
    hi = torch.minimum((p[None, :] + 1) * scale, (i[:, None] + 1) * cell)
    return ((hi - lo).clamp_min(0) / cell).float()


def pixels_per_cell(n_pixels: int, n_resized: int, n_cells: int, padded: int) -> int | None:
    """Original pixels per embedding cell along an axis, k, when cell i spans exactly pixels [i k, (i + 1) k).

    None otherwise. So when a cell is a whole number k of original pixels (padded / n_cells = k * n_resized / n_pixels)
    and the image ends on a cell boundary: e.g. a 512 px tile in a 1024 px SAM frame of 64 cells (k = 8).
    """
    if n_pixels <= 0 or (padded * n_pixels) % (n_cells * n_resized):
        return None
    k = padded * n_pixels // (n_cells * n_resized)
    return k if k > 0 and n_pixels % k == 0 else None


def mask_cell_weights(masks: torch.Tensor, frame: EmbeddingFrame, grid: int, chunk: int = 32) -> torch.Tensor:
    """(N, E, E) fraction of each embedding cell covered by each mask (N, H, W) of the image in `frame`."""
    h, w = masks.shape[-2:]
    if (h, w) != tuple(frame.original):
        raise ValueError(f"masks are {h}x{w} but the embedding frame was made for {frame.original}")
    k_h = pixels_per_cell(h, frame.resized[0], grid, frame.padded)
    k_w = pixels_per_cell(w, frame.resized[1], grid, frame.padded)
    if k_h is not None and k_w is not None and masks.dtype == torch.bool:
        # Cells aligned with pixel blocks: the coverage matrices hold 1/k in each block, so the two
        # matmuls reduce to a count of each block's pixels. Bytes summed over the k rows of a block first
        # (contiguous, vectorised; a uint8 total holds up to 255 rows), then over its k columns: ~15x
        # faster than the matmuls, no float copy of the masks.
        n = masks.shape[0]
        row_sums = masks.view(torch.uint8).reshape(n, h // k_h, k_h, w).sum(
            dim=2, dtype=torch.uint8 if k_h <= 255 else torch.int32)
        counts = row_sums.reshape(n, h // k_h, w // k_w, k_w).sum(dim=-1, dtype=torch.int32)
        out = torch.zeros((n, grid, grid), device=masks.device)
        out[:, : h // k_h, : w // k_w] = counts.float() / float(k_h * k_w)
        return out
    a_h = axis_coverage(h, frame.resized[0], grid, frame.padded, masks.device)
    a_w = axis_coverage(w, frame.resized[1], grid, frame.padded, masks.device)
    out = []
    for start in range(0, masks.shape[0], chunk):
        m = masks[start:start + chunk].float()
        out.append(a_h @ (m @ a_w.T))
    if not out:
        return torch.zeros((0, grid, grid), device=masks.device)
    return torch.cat(out)


def mask_features(masks: torch.Tensor, embedding: torch.Tensor, frame: EmbeddingFrame) -> torch.Tensor:
    """(N, C) masked-average features of masks (N, H, W) bool in the embedding (C, E, E).

    Args:
        masks: boolean masks at the original image resolution.
        embedding: SAM image embedding of the same image (as returned with the masks).
        frame: where the image sits in the SAM input frame.

    Returns:
        float32 features; a mask covering no pixel gets zeros.
    """
    channels, grid, _ = embedding.shape
    weights = mask_cell_weights(masks, frame, grid)  # (N, E, E)
    total = weights.sum(dim=(1, 2))
    pooled = weights.flatten(1) @ embedding.float().flatten(1).T  # (N, C)
    return pooled / total.clamp_min(1e-12)[:, None]
