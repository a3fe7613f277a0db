"""Geometry of automatic mask generation (alps_hf.sam.amg), checked against hand-computed values and
against a brute-force NMS written from the definition (sam_fixtures.brute_force_nms)."""

import numpy as np
import pytest
import torch

from alps_hf.sam import amg
from sam_fixtures import brute_force_nms


def test_point_grid_two_per_side():
    grid = amg.build_point_grid(2)
    expected = [(0.25, 0.25), (0.75, 0.25), (0.25, 0.75), (0.75, 0.75)]
    np.testing.assert_allclose(grid, expected)


def test_point_grid_is_cell_centres_row_by_row():
    n = 5
    grid = amg.build_point_grid(n)
    assert grid.shape == (n * n, 2)
    for k, (x, y) in enumerate(grid):
        row, col = divmod(k, n)
        assert x == pytest.approx((col + 0.5) / n)
        assert y == pytest.approx((row + 0.5) / n)
    np.testing.assert_allclose(amg.build_point_grid(1), [[0.5, 0.5]])


def test_layer_point_grids_downscale():
    grids = amg.build_layer_point_grids(8, 2, 2)
    assert [len(g) for g in grids] == [64, 16, 4]
    np.testing.assert_allclose(grids[2], amg.build_point_grid(2))


def test_crop_boxes_known_size():
    # 200 wide, 100 high; overlap 0.25 of the short side at layer 1 (hand-computed, segment-anything formula).
    boxes, layers = amg.generate_crop_boxes((100, 200), 2, 0.25)
    assert boxes[0] == [0, 0, 200, 100] and layers[0] == 0
    # layer 1: overlap 25, crop 113 x 63, x0 in (0, 88), y0 in (0, 38); product order: x0 outer.
    assert boxes[1:5] == [[0, 0, 113, 63], [0, 38, 113, 100], [88, 0, 200, 63], [88, 38, 200, 100]]
    assert layers[1:5] == [1, 1, 1, 1]
    # layer 2: overlap 12, crop 59 x 34, x0 in (0, 47, 94, 141), y0 in (0, 22, 44, 66).
    layer2 = boxes[5:]
    assert len(layer2) == 16 and layers[5:] == [2] * 16
    assert layer2[0] == [0, 0, 59, 34]
    assert layer2[1] == [0, 22, 59, 56]
    assert layer2[-1] == [141, 66, 200, 100]
    assert {b[0] for b in layer2} == {0, 47, 94, 141}
    assert {b[1] for b in layer2} == {0, 22, 44, 66}


def test_crop_boxes_no_layers():
    boxes, layers = amg.generate_crop_boxes((37, 53), 0, 512 / 1500)
    assert boxes == [[0, 0, 53, 37]] and layers == [0]


def test_stability_score_hand_made():
    logits = torch.tensor([
        [[-2.0, -0.5, 0.5, 1.5, 3.0]],  # > 1: 2 pixels, > -1: 4 pixels -> 0.5
        [[-5.0, -5.0, -5.0, -5.0, -5.0]],  # looser mask empty -> 1.0 by definition
        [[2.0, 2.0, 2.0, 2.0, 2.0]],  # both full -> 1.0
        [[0.2, 0.3, -0.2, -3.0, -3.0]],  # > 1: 0, > -1: 3 -> 0.0
    ])
    score = amg.stability_score(logits, 0.0, 1.0)
    np.testing.assert_allclose(score.numpy(), [0.5, 1.0, 1.0, 0.0])
    # threshold and offset move both cut-offs: > 1.5 (1.5 excluded): {3}; > -0.5 (-0.5 excluded): {0.5, 1.5, 3}
    np.testing.assert_allclose(amg.stability_score(logits[:1], 0.5, 1.0).numpy(), [1 / 3])


def test_count_true_equals_a_bool_sum():
    gen = torch.Generator().manual_seed(0)
    masks = torch.rand(5, 37, 300, generator=gen) > 0.3
    masks[1] = False
    masks[2] = True  # 11100 pixels: above the 255 a uint8 accumulator would hold
    expected = masks.sum(dim=(-1, -2), dtype=torch.int64)
    got = amg.count_true(masks)
    assert got.dtype == torch.int64 and got.tolist() == expected.tolist() and got[2] == 37 * 300
    sliced = masks[:, 3:20, 10:200]  # not contiguous, as the low-res filter's valid region
    assert amg.count_true(sliced).tolist() == sliced.sum(dim=(-1, -2)).tolist()
    assert amg.count_true(masks[:0]).shape == (0,)


def test_any_along_equals_bool_any():
    gen = torch.Generator().manual_seed(0)
    masks = torch.rand(4, 33, 70, generator=gen) > 0.98
    masks[1] = False
    masks[2, :, 5] = True
    for m in (masks, masks[:, 3:20, 10:60], masks[:0], masks[:, :0]):  # sliced, no masks, no rows
        for dim in range(3):
            got = amg.any_along(m, dim)
            assert got.dtype == torch.bool and torch.equal(got, m.any(dim=dim)), (tuple(m.shape), dim)


def test_masks_to_boxes():
    masks = torch.zeros((3, 10, 12), dtype=torch.bool)
    masks[0, 2:5, 3:8] = True
    masks[1, 9, 11] = True
    boxes = amg.masks_to_boxes(masks)
    assert boxes.tolist() == [[3.0, 2.0, 7.0, 4.0], [11.0, 9.0, 11.0, 9.0], [0.0, 0.0, 0.0, 0.0]]
    assert amg.masks_to_boxes(torch.zeros((0, 4, 4), dtype=torch.bool)).shape == (0, 4)


def test_masks_to_boxes_random_against_numpy():
    rng = np.random.default_rng(3)
    masks = rng.random((20, 15, 17)) < 0.02
    boxes = amg.masks_to_boxes(torch.as_tensor(masks)).numpy()
    for m, b in zip(masks, boxes, strict=True):
        ys, xs = np.nonzero(m)
        expected = [xs.min(), ys.min(), xs.max(), ys.max()] if len(xs) else [0, 0, 0, 0]
        assert b.tolist() == expected


def test_box_iou_values():
    a = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    b = torch.tensor([[5.0, 0.0, 15.0, 10.0], [20.0, 20.0, 30.0, 30.0], [0.0, 0.0, 10.0, 10.0], [3, 3, 3, 3]])
    np.testing.assert_allclose(amg.box_iou(a, b).numpy(), [[50 / 150, 0.0, 1.0, 0.0]])
    # two zero-area boxes: union 0 -> IoU 0, not NaN
    z = torch.tensor([[1.0, 1.0, 1.0, 1.0]])
    assert amg.box_iou(z, z).item() == 0.0


def random_boxes(rng, n: int, size: int = 40) -> list[list[int]]:
    xy = rng.integers(0, size, (n, 2))
    wh = rng.integers(0, size // 2, (n, 2))  # zero width / height included
    return np.concatenate([xy, xy + wh], axis=1).tolist()


@pytest.mark.parametrize("seed", range(60))
@pytest.mark.parametrize("thresh", [0.3, 0.5, 0.7])
def test_nms_matches_brute_force(seed, thresh):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 60))
    boxes = random_boxes(rng, n)
    if seed % 3 == 0:
        # many ties: scores from a small set, and repeated boxes
        scores = (rng.integers(0, 4, n) / 4).tolist()
        for i in range(0, n, 5):
            boxes[i] = boxes[0]
    else:
        scores = rng.random(n).astype(np.float32).tolist()
    got = amg.nms(torch.tensor(boxes, dtype=torch.float32), torch.tensor(scores), thresh).tolist()
    assert got == brute_force_nms(boxes, scores, thresh)


def test_nms_ties_keep_lower_index_and_empty_input():
    boxes = torch.tensor([[0.0, 0, 10, 10], [0.0, 0, 10, 10], [0.0, 0, 10, 10]])
    assert amg.nms(boxes, torch.tensor([0.5, 0.9, 0.9]), 0.7).tolist() == [1]
    assert amg.nms(torch.zeros((0, 4)), torch.zeros(0), 0.7).tolist() == []


def test_uncrop_and_crop_edge():
    boxes = torch.tensor([[0.0, 0, 5, 5], [30.0, 30, 40, 40]])
    crop = [50, 20, 100, 80]
    assert amg.uncrop_boxes(boxes, crop).tolist() == [[50, 20, 55, 25], [80, 50, 90, 60]]
    assert amg.uncrop_points(torch.tensor([[1.0, 2.0]]), crop).tolist() == [[51.0, 22.0]]
    # Image 100 x 100: the crop's left edge (x=50) and top edge (y=20) are inside the image, its right
    # edge (x=100) is the image edge. Box 0 touches the crop's left/top -> near; box 1 sits in the middle.
    near = amg.is_box_near_crop_edge(boxes, crop, [0, 0, 100, 100], atol=3)
    assert near.tolist() == [True, False]
    # A box touching only the image edge (right side, x=100) is not "near a crop edge".
    right = torch.tensor([[30.0, 30, 50, 40]])
    assert amg.is_box_near_crop_edge(right, crop, [0, 0, 100, 100], atol=3).tolist() == [False]
    masks = torch.ones((1, 60, 50), dtype=torch.bool)
    full = amg.uncrop_masks(masks, crop, 100, 100)
    assert full.shape == (1, 100, 100)
    assert int(full.sum()) == 3000 and bool(full[0, 20:80, 50:100].all())
