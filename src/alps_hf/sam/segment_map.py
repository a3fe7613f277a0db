"""Segment maps: which mask is visible at each pixel, and label painting through a lookup table.

Paint order: larger masks first, smaller on top; equal areas: the higher predicted IoU on top;
then the lower index on top. Segment ids are 1-based in paint order and count only masks that
stay visible somewhere; 0 = no mask. A label map is then `lut[segments]` with `lut[0] = 255`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from alps_hf.sam.amg import masks_to_boxes
from alps_hf.sam.masks import MaskSet

IGNORE_LABEL = 255
MAX_SEGMENTS = 65535  # segment maps are uint16

#: What a segment is (the `segment_kind` column): a SAM mask within the area gate, a SAM mask over it
#: (land, water, fields: painted beneath the objects, since paint order is by area), or a fill segment
#: made of pixels no mask covered (sam/fill.py).
OBJECT, STUFF, FILL = "object", "stuff", "fill"
SEGMENT_KINDS = (OBJECT, STUFF, FILL)


def mask_kinds(areas: torch.Tensor, image_area: int, max_area_fraction: float) -> list[str]:
    """`stuff` for masks covering more than `max_area_fraction` of `image_area` pixels, else `object`.

    Args:
        areas: (N,) mask pixel counts.
        image_area: pixels of the image (or window) the masks were made for.
        max_area_fraction: the ALPS area gate.

    Returns:
        One kind per mask, in the masks' order.
    """
    over = (areas.detach().cpu().double() / max(int(image_area), 1)) > max_area_fraction
    return [STUFF if o else OBJECT for o in over.tolist()]


@dataclass
class SegmentMap:
    """One image's resolved masks: which segment is visible at each pixel.

    Attributes:
        segments: (H, W) int32 tensor, 0 = none, k = k-th visible mask in paint order.
        mask_index: (n,) int64, for segment k (1-based) the index of its mask in the MaskSet: mask_index[k-1].
        visible_area: (n,) int64 pixel count of each segment in the map.
    """

    segments: torch.Tensor
    mask_index: torch.Tensor
    visible_area: torch.Tensor


def paint_order(areas: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
    """Mask indices in paint order (first painted first): area descending, score ascending, index descending."""
    areas_np = areas.detach().cpu().numpy().astype(np.int64)
    scores_np = scores.detach().cpu().numpy().astype(np.float64)
    index = np.arange(len(areas_np))
    # np.lexsort sorts by the last key first; everything ascending, so negate what should descend.
    order = np.lexsort((-index, scores_np, -areas_np))
    return torch.as_tensor(order, dtype=torch.int64, device=areas.device)


def paint_segments(masks: MaskSet, valid: torch.Tensor | None = None) -> SegmentMap:
    """Resolve overlapping masks into one segment map (see module docstring for the order).

    Masks are painted one after another in paint order, each over its own box (taken from the mask, not
    from `masks.boxes`), so a later one covers an earlier one: the same map as taking, at every pixel, the
    covering mask latest in paint order, at the cost of each mask's box instead of the whole image.

    Args:
        masks: the image's masks.
        valid: optional (H, W) bool; pixels where it is False get no segment (no-data).

    Returns:
        The SegmentMap; masks hidden everywhere by smaller ones on top get no segment id.
    """
    h, w = masks.image_size
    device = masks.masks.device
    order = paint_order(masks.areas, masks.iou_scores)
    # uint16 ids: beyond 65535 masks (far above what a 32x32 grid yields), the smallest ones are dropped.
    order = order[:MAX_SEGMENTS]
    top = torch.zeros((h, w), dtype=torch.int32, device=device)
    boxes = masks_to_boxes(masks.masks)[order].long().tolist() if len(order) else []
    for rank, (i, (x0, y0, x1, y1)) in enumerate(zip(order.tolist(), boxes, strict=True), start=1):
        top[y0:y1 + 1, x0:x1 + 1].masked_fill_(masks.masks[i, y0:y1 + 1, x0:x1 + 1], rank)
    if valid is not None:
        top = torch.where(valid.to(device), top, torch.zeros_like(top))
    counts = torch.bincount(top.flatten().long(), minlength=len(order) + 1)
    visible = counts[1:] > 0
    remap = torch.zeros(len(order) + 1, dtype=torch.int32, device=device)
    remap[1:] = torch.where(visible, torch.cumsum(visible.int(), 0).int(), torch.zeros_like(remap[1:]))
    return SegmentMap(
        segments=remap[top.long()],
        mask_index=order[visible],
        visible_area=counts[1:][visible].to(torch.int64),
    )


def paint_labels(segments: np.ndarray, segment_class: np.ndarray, hidden: np.ndarray | None = None) -> np.ndarray:
    """uint8 label map `lut[segments]`: segment k gets segment_class[k-1]; 0 (no mask) gets 255.

    Args:
        segments: (H, W) segment map.
        segment_class: cluster id of each segment.
        hidden: optional bool per segment; True paints the segment as 255 (e.g. fill segments of a label
            map made without fill).

    Returns:
        The (H, W) uint8 label map.
    """
    lut = np.full(len(segment_class) + 1, IGNORE_LABEL, dtype=np.uint8)
    lut[1:] = np.asarray(segment_class, dtype=np.uint8)
    if hidden is not None:
        lut[1:][np.asarray(hidden, dtype=bool)] = IGNORE_LABEL
    return lut[segments]
