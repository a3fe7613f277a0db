"""Small-region cleanup of masks: segment-anything's `min_mask_region_area` post-processing.

segment-anything (`SamAutomaticMaskGenerator.postprocess_small_regions` with
`utils/amg.py: remove_small_regions`) fills holes and removes islands smaller than N pixels in
every mask, one mask at a time with OpenCV, then runs box NMS in which an unchanged mask (score 1)
wins over a changed one (score 0). Here the same rules run on all masks at once with
`scipy.ndimage.label` (no OpenCV): the stack (N, H, W) is labeled in 3-D with a structuring element
that connects pixels only within one mask plane (8-connectivity, as upstream), so one call finds
the components of every mask.

SAM 2's generator adds a cleanup of its own before that one, on each mask's low-resolution logits
(`fill_holes_and_sprinkles`); the SAM 2-type families run both (`SamFamily.lowres_cleanup`).

Upstream rules kept exactly:
- holes: a connected component of the mask's complement with fewer than N pixels is filled (a
  small outside region touching the border counts too);
- islands: a component of the (hole-filled) mask with fewer than N pixels is removed; when every
  component is small, the largest (first on ties) is kept;
- a mask counts as changed when it had any small hole or island.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage

from alps_hf.sam import amg
from alps_hf.sam.masks import MaskSet

# 8-connectivity inside each plane, none across planes: masks never merge with each other.
_PLANE_8 = np.zeros((3, 3, 3), dtype=bool)
_PLANE_8[1] = True


def _components(stack: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Label components of every plane of a bool stack (N, H, W).

    Returns:
        (labels, sizes, plane): labels (N, H, W) int32 with 0 = background; sizes[c] and plane[c]
        the pixel count and mask index of component c (index 0 unused).
    """
    labels, count = ndimage.label(stack, structure=_PLANE_8)
    flat = labels.ravel()
    sizes = np.bincount(flat, minlength=count + 1)
    plane = np.zeros(count + 1, dtype=np.int64)
    # Components never cross planes, so every pixel of component c writes the same plane index.
    plane[flat] = np.repeat(np.arange(stack.shape[0]), stack.shape[1] * stack.shape[2])
    return labels, sizes, plane


def remove_small_regions(masks: np.ndarray, min_area: int) -> tuple[np.ndarray, np.ndarray]:
    """Fill holes, then remove islands, smaller than `min_area` pixels in every mask.

    Args:
        masks: (N, H, W) bool.
        min_area: region size in pixels; regions with fewer pixels are changed. 0 changes nothing.

    Returns:
        (cleaned, changed): the cleaned (N, H, W) bool masks and an (N,) bool that is True for every
        mask that had a small hole or island (segment-anything's `changed`).
    """
    masks = np.asarray(masks, dtype=bool)
    n = masks.shape[0]
    if n == 0 or min_area <= 0:
        return masks.copy(), np.zeros(n, dtype=bool)
    # Holes: small components of the complement join the mask.
    labels, sizes, plane = _components(~masks)
    small = sizes < min_area
    small[0] = False
    changed = np.bincount(plane[small], minlength=n) > 0
    filled = masks | small[labels]
    # Islands: small components of the filled mask leave it, unless all of a mask's are small.
    labels, sizes, plane = _components(filled)
    ids = np.arange(len(sizes))
    small = sizes < min_area
    small[0] = False
    changed |= np.bincount(plane[small], minlength=n) > 0
    big_per_plane = np.bincount(plane[~small & (ids > 0)], minlength=n)
    keep = ~small
    keep[0] = False
    # Planes whose components are all small keep their largest one (first label on ties, as argmax).
    all_small = np.flatnonzero((big_per_plane == 0) & (np.bincount(plane[1:], minlength=n) > 0))
    if len(all_small):
        order = np.lexsort((ids[1:], -sizes[1:], plane[1:]))  # by plane, then size descending, then label
        first = np.ones(len(order), dtype=bool)
        first[1:] = plane[1:][order][1:] != plane[1:][order][:-1]
        largest = ids[1:][order][first]
        largest = largest[np.isin(plane[largest], all_small)]
        keep[largest] = True
    return keep[labels], changed


def fill_holes_and_sprinkles(logits: torch.Tensor, max_area: int, mask_threshold: float) -> torch.Tensor:
    """SAM 2's per-mask cleanup of low-resolution logits, before they are upsampled.

    facebookresearch/sam2, sam2/utils/transforms.py, `SAM2Transforms.postprocess_masks` (which
    `SAM2AutomaticMaskGenerator` enables with max_hole_area = max_sprinkle_area = min_mask_region_area,
    sam2/automatic_mask_generator.py): in each mask's logits (8-connected components, as sam2's
    `get_connected_components`),
    - holes: a component of the background (logit <= threshold) of at most `max_area` pixels becomes
      foreground (logit set to threshold + 10);
    - sprinkles: a component of the foreground (logit > threshold) of at most `max_area` pixels becomes
      background (threshold - 10).
    Both are found on the logits as they came (upstream labels the sprinkles on the same thresholded map
    as the holes), areas count low-resolution pixels and `<=` is upstream's. Logits elsewhere are kept, so
    stability is computed on the cleaned logits as upstream does.

    Args:
        logits: (N, h, w) low-resolution mask logits.
        max_area: largest component changed, in low-resolution pixels; 0 returns `logits` unchanged.
        mask_threshold: the logit that binarises masks.

    Returns:
        (N, h, w) logits of the same dtype and device.
    """
    if max_area <= 0 or logits.shape[0] == 0:
        return logits
    values = logits.float().cpu().numpy()
    out = values.copy()
    foreground = values > mask_threshold
    labels, sizes, _ = _components(~foreground)
    hole = (sizes <= max_area)[labels] & (labels > 0)
    out[hole] = mask_threshold + 10.0
    labels, sizes, _ = _components(foreground)
    sprinkle = (sizes <= max_area)[labels] & (labels > 0)
    out[sprinkle] = mask_threshold - 10.0
    return torch.as_tensor(out, device=logits.device).to(logits.dtype)


def postprocess_small_regions(masks: MaskSet, min_area: int, nms_thresh: float) -> MaskSet:
    """segment-anything's `postprocess_small_regions` on a MaskSet.

    Cleans every mask with `remove_small_regions`, recomputes boxes and areas, then keeps the result of
    box NMS scored 1 for unchanged and 0 for changed masks (so NMS prefers masks that needed no
    cleanup). Predicted IoU, stability and prompt points stay those of the original mask, as upstream.

    Args:
        masks: the masks of one image.
        min_area: see `remove_small_regions`; 0 returns `masks` unchanged.
        nms_thresh: box IoU above which the lower-scoring mask is dropped.

    Returns:
        The cleaned MaskSet, in NMS order (unchanged masks first), on the device of `masks`.
    """
    if min_area <= 0 or len(masks) == 0:
        return masks
    device = masks.masks.device
    cleaned, changed = remove_small_regions(masks.masks.cpu().numpy(), min_area)
    new = torch.as_tensor(cleaned, device=device)
    boxes = amg.masks_to_boxes(new).to(masks.boxes.dtype)
    areas = new.sum(dim=(-1, -2)).to(torch.int64)
    out = MaskSet(new, boxes, masks.iou_scores, masks.stability, areas, masks.points)
    scores = torch.as_tensor(~changed, dtype=torch.float32, device=device)
    keep = amg.nms(boxes, scores, nms_thresh)
    out = out.filter(keep)
    # A mask emptied by cleanup cannot happen (the largest island stays), but never hand on an empty one.
    return out.filter(out.areas > 0)
