"""The new classifier of a fine-tune, started from the pre-trained checkpoint's own classes.

A model pre-trained on pseudo-labels already segments the scene; only the names of its segments are
wrong: its classes are clusters, the fine-tune's are land-cover classes. `--head-init clusters` (the
default when `--init` comes with other classes than the dataset's) runs the checkpoint once over
(up to `max_images` of) the fine-tune's training rows, counts for every class c the pixels predicted as
each checkpoint class k, and starts the new classifier with class c's weights and bias the mix of the
old ones, weighted by P(k | c). A class that maps to one cluster starts as that cluster's exact copy;
the fine-tune then trains it like any head. Classes without a labeled pixel keep the fresh random
initialisation; Mask2Former's no-object row keeps the checkpoint's. `--head-init random` is the plain
re-initialisation.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from alps_hf.core import IGNORE_INDEX
from alps_hf.training.models import head_modules, semantic_logits

HEAD_INITS = ("clusters", "random")


def class_cluster_counts(source, processor, rows, image_column: str, label_column: str, num_classes: int,
                         max_images: int = 32, batch_size: int = 4) -> np.ndarray:
    """(C, K) labeled pixels of each dataset class c predicted as checkpoint class k by `source`.

    Args:
        source: the pre-trained model with its own K-class head (eval mode is set here).
        processor: the image processor the model is trained with (resizes to the crop size).
        rows: the fine-tune's training rows (PIL images and labels, as `datasets` decodes them).
        image_column: their image column.
        label_column: their label column.
        num_classes: C.
        max_images: rows used, from the first.
        batch_size: images run through the model at once.

    Returns:
        int64 counts; pixels labeled 255 are not counted.
    """
    source.eval()
    counts = None
    n = min(max_images, len(rows))
    with torch.inference_mode():
        for start in range(0, n, batch_size):
            batch = [rows[i] for i in range(start, min(n, start + batch_size))]
            images = [row[image_column].convert("RGB") for row in batch]
            # Two at least: a tiny Mask2Former's coarsest map is 1 x 1 and its GroupNorm needs > 1 value.
            padded = images + images[:1] if len(images) == 1 else images
            pixel_values = processor(images=padded, return_tensors="pt")["pixel_values"]
            logits = semantic_logits(source, pixel_values.to(next(source.parameters()).dtype)).float()
            for row, scores in zip(batch, logits, strict=False):
                label = np.asarray(row[label_column], dtype=np.int64)
                scores = F.interpolate(scores[None], size=label.shape, mode="bilinear", align_corners=False)[0]
                predicted = scores.argmax(dim=0).numpy()
                if counts is None:
                    counts = np.zeros((num_classes, scores.shape[0]), np.int64)
                keep = (label != IGNORE_INDEX) & (label < num_classes)
                np.add.at(counts, (label[keep], predicted[keep]), 1)
    return counts if counts is not None else np.zeros((num_classes, 0), np.int64)


def mix_head(model, source, counts: np.ndarray) -> list[tuple[int, list[tuple[int, float]]]]:
    """Set `model`'s classifier rows to P(k | c)-weighted mixes of `source`'s (see the module docstring).

    Args:
        model: the fine-tune model (C classes), its head freshly initialised.
        source: the checkpoint model (K classes).
        counts: `class_cluster_counts` (C, K).

    Returns:
        Per class with labeled pixels: (class, [(checkpoint class, share)] largest first, shares >= 5 %).
    """
    (new,), (old,) = head_modules(model), head_modules(source)
    num_classes, k = counts.shape
    summary = []
    with torch.no_grad():
        for c in range(num_classes):
            total = counts[c].sum()
            if total == 0:
                continue
            weights = torch.as_tensor(counts[c] / total, dtype=old.weight.dtype)
            new.weight[c] = torch.einsum("k,k...->...", weights, old.weight[:k])
            if new.bias is not None and old.bias is not None:
                new.bias[c] = (weights * old.bias[:k]).sum()
            order = np.argsort(-counts[c])
            summary.append((c, [(int(j), float(counts[c, j] / total)) for j in order if counts[c, j] / total >= 0.05]))
        if model.config.model_type != "segformer":  # Mask2Former: the last row is "no object"
            new.weight[num_classes] = old.weight[k]
            new.bias[num_classes] = old.bias[k]
    return summary


def describe(summary, id2label: dict[int, str], source_labels: dict[int, str]) -> str:
    """One line: each class and the checkpoint classes it starts from."""
    parts = [f"{id2label.get(c, c)} <- " + " + ".join(f"{source_labels.get(j, j)} {100 * share:.0f} %" for j, share in mix[:3])
             for c, mix in summary]
    return "; ".join(parts)
