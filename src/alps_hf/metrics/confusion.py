"""Segmentation metrics from a streaming confusion matrix, and pseudo-label quality.

Two uses:

* Model evaluation: `ConfusionMatrix` accumulates a C x C matrix in torch on the device
  (`update(preds, labels)`), is summed across processes (`reduce(accelerator)`) and turned into
  mIoU, mean accuracy, overall accuracy and per-class IoU by `scores_from_confusion`. Predictions
  are scored at the label's size: `logits_to_predictions` resizes logits before the argmax.
* Pseudo-label quality: K pseudo-classes (clusters) have no names, so they are mapped onto the C
  ground-truth classes before scoring. `pseudo_label_quality(confusion)` takes the K x C
  cluster-vs-class pixel counts and reports mIoU under a many-to-one mapping (each cluster to the
  class it overlaps most) and a one-to-one Hungarian mapping (`scipy.optimize.linear_sum_assignment`,
  clusters left without a class count as wrong). `PseudoLabelScorer` builds that matrix image by image.

Conventions (the same as the Hub `evaluate` metric `mean_iou`): label pixels equal to `ignore_index`
are dropped; a class with no pixel in the labels and none in the predictions has IoU NaN and is left
out of the means (reported as `None` in JSON); a class predicted but absent from the labels has IoU 0.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from alps_hf.core import IGNORE_INDEX


def confusion_matrix(
    preds: torch.Tensor, labels: torch.Tensor, num_classes: int, ignore_index: int = IGNORE_INDEX
) -> torch.Tensor:
    """C x C int64 matrix, rows = label class, columns = predicted class, ignore pixels dropped.

    Args:
        preds: integer predictions, any shape.
        labels: integer labels, the same shape as `preds`.
        num_classes: C. Label values other than 0..C-1 and `ignore_index` are an error.
        ignore_index: label value to leave out.

    Raises:
        ValueError: shapes differ, or a label / prediction is outside 0..C-1 (and not ignore_index).
    """
    if preds.shape != labels.shape:
        raise ValueError(f"predictions {tuple(preds.shape)} and labels {tuple(labels.shape)} differ in shape")
    labels = labels.reshape(-1).long()
    preds = preds.reshape(-1).long().to(labels.device)
    keep = labels != ignore_index
    labels, preds = labels[keep], preds[keep]
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        bad = sorted({int(v) for v in labels[(labels < 0) | (labels >= num_classes)].unique()[:10]})
        raise ValueError(f"label values {bad} outside 0..{num_classes - 1} (and ignore {ignore_index})")
    if preds.numel() and (int(preds.min()) < 0 or int(preds.max()) >= num_classes):
        raise ValueError(f"prediction values outside 0..{num_classes - 1}")
    counts = torch.bincount(labels * num_classes + preds, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes)


def logits_to_predictions(logits: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Resize (C, h, w) or (B, C, h, w) class scores bilinearly to `size` (H, W), then argmax over C."""
    squeeze = logits.ndim == 3
    if squeeze:
        logits = logits[None]
    if tuple(logits.shape[-2:]) != tuple(size):
        logits = F.interpolate(logits.float(), size=tuple(int(s) for s in size), mode="bilinear", align_corners=False)
    preds = logits.argmax(dim=1)
    return preds[0] if squeeze else preds


def _nan_to_none(values: Sequence[float]) -> list[float | None]:
    return [None if math.isnan(v) else float(v) for v in values]


def scores_from_confusion(
    confusion: torch.Tensor | np.ndarray, id2label: Mapping[int, str] | None = None
) -> dict[str, Any]:
    """mIoU, mean accuracy, overall accuracy and per-class IoU / accuracy from a C x C confusion.

    Args:
        confusion: rows = label class, columns = predicted class (as `confusion_matrix` builds it).
        id2label: class names for the per-class dicts; defaults to the class index as a string.

    Returns:
        `mean_iou`, `mean_accuracy`, `overall_accuracy` (floats, NaN when nothing was labelled),
        `per_class_iou`, `per_class_accuracy` ({name: float or None for a class absent from both
        labels and predictions / from the labels}), `num_pixels` (labelled pixels scored).
    """
    conf = confusion.detach().cpu().double().numpy() if isinstance(confusion, torch.Tensor) else np.asarray(confusion, np.float64)
    num_classes = conf.shape[0]
    tp = np.diag(conf)
    label_area = conf.sum(axis=1)
    pred_area = conf.sum(axis=0)
    union = label_area + pred_area - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, tp / union, np.nan)
        acc = np.where(label_area > 0, tp / label_area, np.nan)
    total = label_area.sum()
    names = [str(id2label[i]) if id2label and i in id2label else str(i) for i in range(num_classes)]
    return {
        "mean_iou": float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan"),
        "mean_accuracy": float(np.nanmean(acc)) if np.isfinite(acc).any() else float("nan"),
        "overall_accuracy": float(tp.sum() / total) if total > 0 else float("nan"),
        "per_class_iou": dict(zip(names, _nan_to_none(iou), strict=True)),
        "per_class_accuracy": dict(zip(names, _nan_to_none(acc), strict=True)),
        "num_pixels": int(total),
    }


class ConfusionMatrix:
    """A streaming C x C confusion matrix kept in torch, on the device of the predictions.

    >>> cm = ConfusionMatrix(num_classes=3)
    >>> cm.update(preds, labels)          # any number of times, any shapes that match
    >>> cm.reduce(accelerator)            # sum over processes (optional)
    >>> cm.compute(id2label)["mean_iou"]
    """

    def __init__(self, num_classes: int, ignore_index: int = IGNORE_INDEX, device: torch.device | str | None = None):
        self.num_classes = int(num_classes)
        self.ignore_index = int(ignore_index)
        self.matrix = torch.zeros(self.num_classes, self.num_classes, dtype=torch.int64, device=device)

    def update(self, preds: torch.Tensor, labels: torch.Tensor) -> None:
        """Add the pixels of one batch (predictions and labels of the same shape)."""
        counts = confusion_matrix(preds, labels.to(preds.device), self.num_classes, self.ignore_index)
        self.matrix = self.matrix.to(counts.device) + counts

    def update_from_logits(self, logits: torch.Tensor, labels: Sequence[torch.Tensor] | torch.Tensor) -> None:
        """Score (B, C, h, w) logits against B labels, resizing each to its label's size first."""
        for item_logits, label in zip(logits, labels, strict=True):
            self.update(logits_to_predictions(item_logits, label.shape[-2:]), label)

    def reduce(self, accelerator=None) -> ConfusionMatrix:
        """Sum the matrix over all processes (no-op with one process or no accelerator)."""
        if accelerator is not None and accelerator.num_processes > 1:
            self.matrix = accelerator.reduce(self.matrix.to(accelerator.device), reduction="sum")
        return self

    def compute(self, id2label: Mapping[int, str] | None = None) -> dict[str, Any]:
        """The scores of `scores_from_confusion` for the pixels seen so far."""
        return scores_from_confusion(self.matrix, id2label)


# ---------------------------------------------------------------------------------------------------
# Pseudo-label quality: clusters have no names, so map them onto classes first.


def cluster_class_confusion(
    pseudo: np.ndarray,
    gt: np.ndarray,
    num_clusters: int,
    num_classes: int,
    ignore_index: int = IGNORE_INDEX,
) -> tuple[np.ndarray, np.ndarray]:
    """Pixel counts of one pseudo-label map against its ground truth.

    Args:
        pseudo: (H, W) pseudo-classes 0..K-1, `ignore_index` where no mask covered the pixel.
        gt: (H, W) ground-truth classes 0..C-1, `ignore_index` where not annotated.
        num_clusters: K.
        num_classes: C.
        ignore_index: the "no label" value of both maps.

    Returns:
        `(confusion, unlabeled)`: the K x C int64 matrix (rows = cluster, columns = class) over pixels
        labelled in both maps, and the length-C count of annotated pixels that have no pseudo-label.

    Raises:
        ValueError: shapes differ or values are out of range.
    """
    pseudo = np.asarray(pseudo).astype(np.int64).ravel()
    gt = np.asarray(gt).astype(np.int64).ravel()
    if pseudo.shape != gt.shape:
        raise ValueError(f"pseudo-label and ground truth differ in size: {pseudo.size} vs {gt.size} pixels")
    annotated = gt != ignore_index
    bad_gt = annotated & ((gt < 0) | (gt >= num_classes))
    if bad_gt.any():
        raise ValueError(f"ground-truth values {sorted(set(gt[bad_gt].tolist()))[:10]} outside 0..{num_classes - 1}")
    covered = pseudo != ignore_index
    bad = covered & ((pseudo < 0) | (pseudo >= num_clusters))
    if bad.any():
        raise ValueError(f"pseudo-label values {sorted(set(pseudo[bad].tolist()))[:10]} outside 0..{num_clusters - 1}")
    both = annotated & covered
    confusion = np.bincount(pseudo[both] * num_classes + gt[both], minlength=num_clusters * num_classes)
    unlabeled = np.bincount(gt[annotated & ~covered], minlength=num_classes)
    return confusion.reshape(num_clusters, num_classes).astype(np.int64), unlabeled.astype(np.int64)


def _mapped_scores(
    confusion: np.ndarray, mapping: np.ndarray, unlabeled: np.ndarray, class_names: list[str]
) -> dict[str, Any]:
    """IoU per class when cluster k is predicted as class mapping[k] (-1: counts as no prediction)."""
    num_classes = confusion.shape[1]
    # C x C confusion (rows = ground truth, columns = mapped prediction) of the pixels with a mapped cluster.
    mapped = np.zeros((num_classes, num_classes), np.float64)
    for k, c in enumerate(mapping):
        if c >= 0:
            mapped[:, c] += confusion[k]
    tp = np.diag(mapped)
    # Every annotated pixel belongs to its class' area, also those without (mapped) pseudo-label.
    gt_area = confusion.sum(axis=0) + unlabeled
    pred_area = mapped.sum(axis=0)
    union = gt_area + pred_area - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, tp / union, np.nan)
    total = gt_area.sum()
    return {
        "mapping": {int(k): int(c) for k, c in enumerate(mapping) if c >= 0},
        "mean_iou": float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan"),
        "pixel_accuracy": float(tp.sum() / total) if total > 0 else float("nan"),
        "per_class_iou": dict(zip(class_names, _nan_to_none(iou), strict=True)),
    }


def majority_mapping(confusion: np.ndarray) -> np.ndarray:
    """Many-to-one: each cluster goes to the class it overlaps most (-1 for a cluster with no pixels).

    Ties go to the lower class index.
    """
    confusion = np.asarray(confusion)
    mapping = confusion.argmax(axis=1).astype(np.int64)
    mapping[confusion.sum(axis=1) == 0] = -1
    return mapping


def hungarian_mapping(confusion: np.ndarray) -> np.ndarray:
    """One-to-one: the cluster->class assignment with the largest total overlap (Hungarian method).

    At most min(K, C) clusters get a class; the others are -1 (their pixels count as wrong).
    """
    from scipy.optimize import linear_sum_assignment

    confusion = np.asarray(confusion, np.float64)
    rows, cols = linear_sum_assignment(confusion, maximize=True)
    mapping = np.full(confusion.shape[0], -1, np.int64)
    mapping[rows] = cols
    return mapping


def pseudo_label_quality(
    confusion: np.ndarray,
    unlabeled: np.ndarray | None = None,
    class_names: Sequence[str] | Mapping[int, str] | None = None,
) -> dict[str, Any]:
    """Score pseudo-labels against ground truth under many-to-one and one-to-one cluster mappings.

    Args:
        confusion: K x C pixel counts, rows = cluster, columns = ground-truth class, over pixels
            labelled in both (`cluster_class_confusion` or `PseudoLabelScorer` build it).
        unlabeled: length-C count of annotated pixels without a pseudo-label (no SAM mask). They
            count as missed pixels of their class in both mappings; `None` means zero.
        class_names: names of the C classes (a list, or a dict index -> name); defaults to indices.

    Returns:
        A dict with `many_to_one` and `one_to_one`, each `{"mapping": {cluster: class}, "mean_iou",
        "pixel_accuracy", "per_class_iou": {name: IoU or None}}`; plus `coverage` (share of
        annotated pixels that have a pseudo-label), `num_clusters`, `num_classes`, `num_pixels`
        (annotated pixels) and `clusters_used` (clusters with at least one annotated pixel).
    """
    confusion = np.asarray(confusion, np.int64)
    if confusion.ndim != 2:
        raise ValueError(f"confusion must be a K x C matrix, got shape {confusion.shape}")
    num_clusters, num_classes = confusion.shape
    unlabeled = np.zeros(num_classes, np.int64) if unlabeled is None else np.asarray(unlabeled, np.int64)
    if unlabeled.shape != (num_classes,):
        raise ValueError(f"unlabeled must have one count per class ({num_classes}), got shape {unlabeled.shape}")
    if isinstance(class_names, Mapping):
        names = [str(class_names.get(i, class_names.get(str(i), i))) for i in range(num_classes)]
    elif class_names is not None:
        names = [str(n) for n in class_names]
        if len(names) != num_classes:
            raise ValueError(f"{len(names)} class names for {num_classes} classes")
    else:
        names = [str(i) for i in range(num_classes)]
    covered = int(confusion.sum())
    total = covered + int(unlabeled.sum())
    return {
        "many_to_one": _mapped_scores(confusion, majority_mapping(confusion), unlabeled, names),
        "one_to_one": _mapped_scores(confusion, hungarian_mapping(confusion), unlabeled, names),
        "coverage": covered / total if total else float("nan"),
        "num_clusters": int(num_clusters),
        "num_classes": int(num_classes),
        "num_pixels": int(total),
        "clusters_used": int((confusion.sum(axis=1) > 0).sum()),
    }


class PseudoLabelScorer:
    """Accumulates cluster-vs-class counts image by image, then `compute()` = `pseudo_label_quality`.

    >>> scorer = PseudoLabelScorer(num_clusters=46, num_classes=6)
    >>> for pseudo, gt in pairs: scorer.update(pseudo, gt)
    >>> scorer.compute(class_names)["one_to_one"]["mean_iou"]
    """

    def __init__(self, num_clusters: int, num_classes: int, ignore_index: int = IGNORE_INDEX):
        self.num_clusters, self.num_classes, self.ignore_index = int(num_clusters), int(num_classes), int(ignore_index)
        self.confusion = np.zeros((self.num_clusters, self.num_classes), np.int64)
        self.unlabeled = np.zeros(self.num_classes, np.int64)

    def update(self, pseudo: np.ndarray, gt: np.ndarray) -> None:
        """Add one image: pseudo-label map and ground truth of the same size."""
        conf, unl = cluster_class_confusion(pseudo, gt, self.num_clusters, self.num_classes, self.ignore_index)
        self.confusion += conf
        self.unlabeled += unl

    def compute(self, class_names: Sequence[str] | Mapping[int, str] | None = None) -> dict[str, Any]:
        """Quality of everything added so far (see `pseudo_label_quality`)."""
        return pseudo_label_quality(self.confusion, self.unlabeled, class_names)
