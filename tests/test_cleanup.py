"""Small-region cleanup (sam/cleanup.py) against a brute-force flood-fill reference of upstream's rules."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from alps_hf.sam import amg
from alps_hf.sam.cleanup import fill_holes_and_sprinkles, postprocess_small_regions, remove_small_regions
from alps_hf.sam.masks import MaskSet


def _flood_components(binary: np.ndarray) -> list[list[tuple[int, int]]]:
    """8-connected components of a 2-D bool array, in raster order of their first pixel (as cv2 / ndimage)."""
    h, w = binary.shape
    seen = np.zeros_like(binary, dtype=bool)
    comps = []
    for y in range(h):
        for x in range(w):
            if not binary[y, x] or seen[y, x]:
                continue
            stack, comp = [(y, x)], []
            seen[y, x] = True
            while stack:
                cy, cx = stack.pop()
                comp.append((cy, cx))
                for dy in (-1, 0, 1):
                    for dx in (-1, 0, 1):
                        ny, nx = cy + dy, cx + dx
                        if 0 <= ny < h and 0 <= nx < w and binary[ny, nx] and not seen[ny, nx]:
                            seen[ny, nx] = True
                            stack.append((ny, nx))
            comps.append(comp)
    return comps


def _reference(mask: np.ndarray, area: int) -> tuple[np.ndarray, bool]:
    """segment-anything's remove_small_regions, holes then islands, with a Python flood fill."""
    out = mask.copy()
    changed = False
    for comp in _flood_components(~out):
        if len(comp) < area:
            changed = True
            for y, x in comp:
                out[y, x] = True
    comps = _flood_components(out)
    small = [c for c in comps if len(c) < area]
    if small:
        changed = True
        big = [c for c in comps if len(c) >= area]
        keep = big if big else [max(comps, key=len)]  # max keeps the first of equal sizes, as np.argmax
        out = np.zeros_like(out)
        for comp in keep:
            for y, x in comp:
                out[y, x] = True
    return out, changed


def _random_masks(seed: int, n: int = 12, size: int = 24) -> np.ndarray:
    rng = np.random.default_rng(seed)
    masks = np.zeros((n, size, size), dtype=bool)
    for i in range(n):
        # Blobs of several densities: islands, holes, all-small masks and empty masks all occur.
        density = rng.choice([0.0, 0.05, 0.3, 0.6, 0.9])
        masks[i] = rng.random((size, size)) < density
        if i % 3 == 0:
            y0, x0 = rng.integers(0, size // 2, 2)
            masks[i, y0:y0 + size // 2, x0:x0 + size // 2] = True
    return masks


def test_remove_small_regions_matches_brute_force():
    for seed in range(6):
        masks = _random_masks(seed)
        for area in (1, 3, 8, 40):
            cleaned, changed = remove_small_regions(masks, area)
            for i in range(len(masks)):
                ref, ref_changed = _reference(masks[i], area)
                np.testing.assert_array_equal(cleaned[i], ref, err_msg=f"seed {seed} area {area} mask {i}")
                assert bool(changed[i]) == ref_changed, (seed, area, i)


def test_hand_made_hole_and_island():
    mask = np.zeros((10, 10), dtype=bool)
    mask[1:8, 1:8] = True
    mask[4, 4] = False  # a 1-px hole
    mask[9, 9] = True  # a 1-px island
    cleaned, changed = remove_small_regions(mask[None], 2)
    expected = np.zeros((10, 10), dtype=bool)
    expected[1:8, 1:8] = True
    np.testing.assert_array_equal(cleaned[0], expected)
    assert changed.tolist() == [True]
    # Below the size of every region nothing changes.
    same, changed = remove_small_regions(mask[None], 1)
    np.testing.assert_array_equal(same[0], mask)
    assert changed.tolist() == [False]


def test_all_small_islands_keep_the_largest():
    mask = np.zeros((9, 9), dtype=bool)
    mask[0, 0] = True
    mask[4:6, 4:6] = True  # 4 px, the largest
    mask[8, 0:2] = True
    cleaned, changed = remove_small_regions(mask[None], 10)
    assert cleaned[0].sum() == 4 and cleaned[0, 4:6, 4:6].all()
    assert changed.tolist() == [True]


def test_postprocess_prefers_unchanged_masks_in_nms():
    h = w = 16
    clean = np.zeros((h, w), dtype=bool)
    clean[2:12, 2:12] = True
    noisy = clean.copy()
    noisy[6, 6] = False  # same box, a hole: changed, so it loses NMS although it scores higher
    tiny = np.zeros((h, w), dtype=bool)
    tiny[14:16, 14:16] = True
    stack = torch.as_tensor(np.stack([noisy, clean, tiny]))
    masks = MaskSet(stack, amg.masks_to_boxes(stack), torch.tensor([0.99, 0.5, 0.7]), torch.ones(3),
                    stack.sum(dim=(1, 2)), torch.zeros(3, 2))
    out = postprocess_small_regions(masks, min_area=2, nms_thresh=0.7)
    assert len(out) == 2
    # The unchanged masks come first in NMS order (score 1), then nothing else survives but the tiny one.
    assert out.iou_scores.tolist() == pytest.approx([0.5, 0.7])
    assert out.areas.tolist() == [100, 4]
    assert out.boxes[0].tolist() == [2.0, 2.0, 11.0, 11.0]
    # min_area 0 is the identity.
    assert postprocess_small_regions(masks, 0, 0.7) is masks


def test_postprocess_updates_area_and_box_of_changed_masks():
    m = np.zeros((12, 12), dtype=bool)
    m[0:6, 0:6] = True
    m[11, 11] = True  # an island that stretches the box to the far corner
    stack = torch.as_tensor(m[None])
    masks = MaskSet(stack, amg.masks_to_boxes(stack), torch.tensor([0.9]), torch.ones(1), stack.sum(dim=(1, 2)),
                    torch.zeros(1, 2))
    out = postprocess_small_regions(masks, min_area=3, nms_thresh=0.7)
    assert out.areas.tolist() == [36]
    assert out.boxes[0].tolist() == [0.0, 0.0, 5.0, 5.0]


def naive_sam2_cleanup(logits: np.ndarray, max_area: int, threshold: float) -> np.ndarray:
    """SAM2Transforms.postprocess_masks' hole / sprinkle rules, one mask and one component at a time."""
    out = logits.copy()
    for i, plane in enumerate(logits):
        for comp in _flood_components(plane <= threshold):
            if len(comp) <= max_area:
                for y, x in comp:
                    out[i, y, x] = threshold + 10.0
        for comp in _flood_components(plane > threshold):
            if len(comp) <= max_area:
                for y, x in comp:
                    out[i, y, x] = threshold - 10.0
    return out


@pytest.mark.parametrize("max_area, threshold", [(1, 0.0), (4, 0.0), (9, 0.3)])
def test_sam2_hole_and_sprinkle_fill_matches_brute_force(max_area, threshold):
    rng = np.random.default_rng(max_area)
    logits = rng.normal(size=(5, 14, 17)).astype(np.float32)
    logits[3] = -1.0  # all background: one big component, left alone
    logits[3, 0, 0] = 2.0  # a one-pixel sprinkle in the corner
    got = fill_holes_and_sprinkles(torch.as_tensor(logits), max_area, threshold)
    assert got.dtype == torch.float32 and got.shape == logits.shape
    np.testing.assert_array_equal(got.numpy(), naive_sam2_cleanup(logits, max_area, threshold))
    assert got[3, 0, 0] == threshold - 10.0 and (got[3, 1:] == -1.0).all()


def test_sam2_fill_uses_at_most_and_eight_connectivity():
    logits = -np.ones((1, 6, 6), dtype=np.float32)
    logits[0, 1, 1] = logits[0, 2, 2] = 1.0  # diagonal neighbours: one component of 2 pixels
    logits[0, 4, 4] = 1.0  # a single pixel
    got = fill_holes_and_sprinkles(torch.as_tensor(logits), 1, 0.0)[0]
    assert got[4, 4] == -10.0 and got[1, 1] == 1.0 and got[2, 2] == 1.0  # 2 > 1: kept; 1 <= 1: removed
    assert fill_holes_and_sprinkles(torch.as_tensor(logits), 2, 0.0)[0, 1, 1] == -10.0
    same = torch.as_tensor(logits)
    assert fill_holes_and_sprinkles(same, 0, 0.0) is same  # 0 = off
