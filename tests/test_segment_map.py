"""Segment maps (which mask is visible where) and label painting through the lookup table."""

import numpy as np
import pytest
import torch

from alps_hf.sam.masks import MaskSet
from alps_hf.sam.segment_map import IGNORE_LABEL, paint_labels, paint_order, paint_segments


def make_set(masks: np.ndarray, scores) -> MaskSet:
    m = torch.as_tensor(masks, dtype=torch.bool)
    n = m.shape[0]
    return MaskSet(masks=m, boxes=torch.zeros((n, 4)), iou_scores=torch.as_tensor(scores, dtype=torch.float32),
                   stability=torch.ones(n), areas=m.sum(dim=(1, 2)).to(torch.int64), points=torch.zeros((n, 2)))


def naive_segments(masks: np.ndarray, scores, valid=None) -> tuple[np.ndarray, list[int]]:
    """From the rule: at each pixel the covering mask with the smallest area wins, then the higher score,
    then the lower index; ids 1.. follow paint order (area desc, score asc, index desc) over visible masks."""
    n, h, w = masks.shape
    areas = masks.sum(axis=(1, 2))
    winner = np.full((h, w), -1)
    for y in range(h):
        for x in range(w):
            if valid is not None and not valid[y, x]:
                continue
            cover = [k for k in range(n) if masks[k, y, x]]
            if cover:
                winner[y, x] = min(cover, key=lambda k: (areas[k], -scores[k], k))
    order = sorted(range(n), key=lambda k: (-areas[k], scores[k], -k))
    visible = [k for k in order if (winner == k).any()]
    ids = {k: i + 1 for i, k in enumerate(visible)}
    seg = np.zeros((h, w), dtype=np.int64)
    for k, i in ids.items():
        seg[winner == k] = i
    return seg, visible


def hand_masks() -> tuple[np.ndarray, list[float]]:
    m = np.zeros((6, 10, 10), dtype=bool)
    m[0, :, 0:5] = True  # area 50
    m[1, 0:4, :] = True  # area 40: on top of 0 in rows 0..3
    m[2, 5:7, 3:8] = True  # area 10, score 0.8
    m[3, 6:8, 5:10] = True  # area 10, score 0.6: under 2 where they overlap (row 6, cols 5..7)
    m[4, 8:10, 6:8] = True  # area 4, score 0.7
    m[5, 8:10, 6:8] = True  # identical to 4, same score: the lower index (4) is on top, 5 is hidden
    return m, [0.9, 0.5, 0.8, 0.6, 0.7, 0.7]


def test_paint_order_hand_made():
    masks, scores = hand_masks()
    seg = paint_segments(make_set(masks, scores))
    # paint order: 0 (50), 1 (40), 3 (10, 0.6), 2 (10, 0.8), 5 (4, index 5), 4 (4, index 4); 5 is invisible.
    assert seg.mask_index.tolist() == [0, 1, 3, 2, 4]
    s = seg.segments.numpy()
    assert s[0, 0] == 2  # mask 1 over mask 0
    assert s[5, 0] == 1  # mask 0 alone
    assert s[0, 9] == 2
    assert s[6, 5] == 4 and s[6, 7] == 4  # mask 2 (higher score) over mask 3, equal areas
    assert s[7, 5] == 3  # mask 3 alone
    assert s[8, 6] == 5 and s[9, 7] == 5  # mask 4 over its twin 5
    assert s[9, 9] == 0 and s[4, 9] == 0  # no mask
    assert seg.visible_area.tolist() == [int((s == k).sum()) for k in range(1, 6)]
    assert seg.visible_area.tolist() == [26, 40, 7, 10, 4]
    assert seg.segments.shape == (10, 10)


def test_valid_region_zeroes_pixels_and_drops_masks_left_invisible():
    masks, scores = hand_masks()
    valid = np.ones((10, 10), dtype=bool)
    valid[8:, :] = False  # mask 4 (and its twin) lie only there
    seg = paint_segments(make_set(masks, scores), torch.as_tensor(valid))
    s = seg.segments.numpy()
    assert (s[8:] == 0).all()
    assert seg.mask_index.tolist() == [0, 1, 3, 2]
    assert s.max() == 4
    expected, visible = naive_segments(masks, scores, valid)
    assert np.array_equal(s, expected) and visible == [0, 1, 3, 2]


def test_no_masks_gives_empty_map():
    seg = paint_segments(MaskSet.empty(7, 9))
    assert seg.segments.shape == (7, 9) and int(seg.segments.max()) == 0
    assert seg.mask_index.tolist() == [] and seg.visible_area.tolist() == []


@pytest.mark.parametrize("seed", range(12))
def test_random_masks_against_naive_rule(seed):
    rng = np.random.default_rng(seed)
    n, h, w = int(rng.integers(1, 25)), 12, 15
    masks = np.zeros((n, h, w), dtype=bool)
    for k in range(n):
        y0, x0 = rng.integers(0, h - 1), rng.integers(0, w - 1)
        masks[k, y0:y0 + rng.integers(1, 6), x0:x0 + rng.integers(1, 6)] = True  # many equal areas
    scores = (rng.integers(0, 3, n) / 2).tolist()  # many equal scores
    valid = rng.random((h, w)) > 0.1 if seed % 2 else None
    seg = paint_segments(make_set(masks, scores), None if valid is None else torch.as_tensor(valid))
    expected, visible = naive_segments(masks, scores, valid)
    assert np.array_equal(seg.segments.numpy(), expected)
    assert seg.mask_index.tolist() == visible
    assert seg.visible_area.tolist() == [int((expected == i + 1).sum()) for i in range(len(visible))]


def test_paint_order_function():
    order = paint_order(torch.tensor([5, 9, 5, 5]), torch.tensor([0.5, 0.1, 0.2, 0.5]))
    assert order.tolist() == [1, 2, 3, 0]


def test_paint_labels_lut():
    segments = np.array([[0, 1, 2], [3, 0, 2]], dtype=np.uint16)
    labels = paint_labels(segments, np.array([3, 0, 7]))
    assert labels.dtype == np.uint8
    assert labels.tolist() == [[IGNORE_LABEL, 3, 0], [7, IGNORE_LABEL, 0]]
    # cluster 0 is a class, never the "no mask" value
    assert IGNORE_LABEL == 255 and (labels == 0).sum() == 2
    assert paint_labels(np.zeros((2, 2), np.uint16), np.zeros(0, np.int64)).tolist() == [[255, 255], [255, 255]]


def test_mask_set_gather_equals_cat_then_filter():
    rng = np.random.default_rng(3)
    sets = [make_set(rng.random((n, 6, 7)) > 0.5, rng.random(n).tolist()) for n in (4, 0, 3)]
    index = torch.tensor([5, 0, 6, 2, 3])
    got, want = MaskSet.gather(sets, index), MaskSet.cat(sets).filter(index)
    for field in ("masks", "boxes", "iou_scores", "stability", "areas", "points"):
        assert torch.equal(getattr(got, field), getattr(want, field)), field
    assert len(MaskSet.gather(sets, torch.zeros(0, dtype=torch.int64))) == 0
    assert MaskSet.cat(sets[:1]) is sets[0]  # one set: returned as it is, its masks not copied
    with pytest.raises(ValueError, match="at least one"):
        MaskSet.gather([], index)
