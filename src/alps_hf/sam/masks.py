"""`MaskSet`: the record the mask generator hands to every later stage.

Batched per-mask data with `filter` / `cat`, as segment-anything's `MaskData`, but typed and on
one device. Masks are boolean at the resolution of the image they were generated for.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch


@dataclass
class MaskSet:
    """Masks of one image (or one window of a large image).

    Attributes:
        masks: (N, H, W) bool, full resolution of the image.
        boxes: (N, 4) float, XYXY in pixels of the image; x1, y1 are the last covered column and row
            (segment-anything convention).
        iou_scores: (N,) float, SAM's predicted IoU of each mask.
        stability: (N,) float, stability score of each mask.
        areas: (N,) int64, pixel count of each mask at full resolution.
        points: (N, 2) float, the prompt point (x, y in image pixels) that produced each mask.
    """

    masks: torch.Tensor
    boxes: torch.Tensor
    iou_scores: torch.Tensor
    stability: torch.Tensor
    areas: torch.Tensor
    points: torch.Tensor

    def __len__(self) -> int:
        return int(self.masks.shape[0])

    @property
    def image_size(self) -> tuple[int, int]:
        """(height, width) of the masks."""
        return int(self.masks.shape[1]), int(self.masks.shape[2])

    def filter(self, keep: torch.Tensor) -> MaskSet:
        """Rows selected by a bool mask or an index tensor."""
        return MaskSet(**{f.name: getattr(self, f.name)[keep] for f in fields(self)})

    def to(self, device) -> MaskSet:
        """The same masks with every field moved to device."""
        return MaskSet(**{f.name: getattr(self, f.name).to(device) for f in fields(self)})

    @staticmethod
    def empty(height: int, width: int, device="cpu") -> MaskSet:
        """A MaskSet of no masks for an image of height x width (the fields' dtypes as in a full one)."""
        return MaskSet(
            masks=torch.zeros((0, height, width), dtype=torch.bool, device=device),
            boxes=torch.zeros((0, 4), dtype=torch.float32, device=device),
            iou_scores=torch.zeros((0,), dtype=torch.float32, device=device),
            stability=torch.zeros((0,), dtype=torch.float32, device=device),
            areas=torch.zeros((0,), dtype=torch.int64, device=device),
            points=torch.zeros((0, 2), dtype=torch.float32, device=device),
        )

    @staticmethod
    def cat(sets: list[MaskSet]) -> MaskSet:
        """The masks of every set, one after another, in list order (e.g. the batches of one image).

        Raises:
            ValueError: sets is empty (there is no image size to give an empty result).
        """
        if not sets:
            raise ValueError("MaskSet.cat needs at least one MaskSet")
        if len(sets) == 1:  # nothing to join: the set itself, its masks not copied
            return sets[0]
        return MaskSet(**{f.name: torch.cat([getattr(s, f.name) for s in sets]) for f in fields(sets[0])})

    @staticmethod
    def gather(sets: list[MaskSet], index: torch.Tensor) -> MaskSet:
        """`MaskSet.cat(sets).filter(index)` for an index tensor, with each picked mask copied once.

        Joining full-resolution masks and then selecting copies every mask twice; here only the small fields
        are joined, and the picked masks are copied straight from their sets.

        Raises:
            ValueError: sets is empty.
        """
        if not sets:
            raise ValueError("MaskSet.gather needs at least one MaskSet")
        index = index.to(torch.int64).cpu()
        starts = torch.tensor([0] + [len(s) for s in sets]).cumsum(0)
        which = torch.searchsorted(starts[1:], index, right=True).tolist()
        h, w = sets[0].image_size
        masks = torch.empty((len(index), h, w), dtype=torch.bool, device=sets[0].masks.device)
        for k, (s, i) in enumerate(zip(which, (index - starts[which]).tolist(), strict=True)):
            masks[k] = sets[s].masks[i]
        small = {f.name: torch.cat([getattr(s, f.name) for s in sets])[index.to(getattr(sets[0], f.name).device)]
                 for f in fields(sets[0]) if f.name != "masks"}
        return MaskSet(masks=masks, **small)
