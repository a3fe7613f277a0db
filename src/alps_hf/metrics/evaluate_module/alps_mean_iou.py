"""`alps_mean_iou`: the alps_hf segmentation metric as an `evaluate` module.

Load it offline from the installed package:

    import evaluate
    from alps_hf.metrics.evaluate_module import METRIC_PATH
    metric = evaluate.load(METRIC_PATH)
    metric.compute(predictions=[pred_map, ...], references=[label_map, ...], num_labels=6)

It gives the same numbers as `alps_hf.metrics.confusion` (the torch path used during training): label pixels
equal to `ignore_index` are dropped, classes absent from both labels and predictions have IoU NaN
and are left out of the means, a class predicted but never labelled has IoU 0. The module is
self-contained (numpy only) so it can also be copied to a Hub space.
"""

import datasets
import evaluate
import numpy as np

_DESCRIPTION = """Mean IoU, mean accuracy, overall accuracy and per-class IoU / accuracy of semantic
segmentation maps, from one confusion matrix over all pixels of all images."""

_KWARGS_DESCRIPTION = """
Args:
    predictions: list of (H, W) integer maps of predicted classes.
    references: list of (H, W) integer maps of true classes, the same sizes as the predictions.
    num_labels: number of classes C (values 0..C-1).
    ignore_index: label value to leave out (default 255).
Returns:
    mean_iou, mean_accuracy, overall_accuracy (floats), per_category_iou, per_category_accuracy
    (numpy arrays of length C, NaN where undefined).
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class AlpsMeanIoU(evaluate.Metric):
    """Mean IoU and accuracies from one confusion matrix over all pixels (see the module docstring)."""

    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "predictions": datasets.Sequence(datasets.Sequence(datasets.Value("int64"))),
                    "references": datasets.Sequence(datasets.Sequence(datasets.Value("int64"))),
                }
            ),
        )

    # 255 spelled out, not alps_hf.core.IGNORE_INDEX: this file must load without alps_hf (a Hub space).
    def _compute(self, predictions, references, num_labels, ignore_index=255):
        num_labels = int(num_labels)
        confusion = np.zeros((num_labels, num_labels), np.int64)
        for pred, ref in zip(predictions, references, strict=True):
            pred, ref = np.asarray(pred, np.int64), np.asarray(ref, np.int64)
            if pred.shape != ref.shape:
                raise ValueError(f"prediction {pred.shape} and reference {ref.shape} differ in shape")
            keep = ref != ignore_index
            p, r = pred[keep], ref[keep]
            if r.size and (r.min() < 0 or r.max() >= num_labels):
                raise ValueError(f"reference values outside 0..{num_labels - 1} (and ignore {ignore_index})")
            confusion += np.bincount(r * num_labels + p, minlength=num_labels * num_labels).reshape(num_labels, num_labels)
        tp = np.diag(confusion).astype(np.float64)
        label_area = confusion.sum(axis=1)
        union = label_area + confusion.sum(axis=0) - tp
        with np.errstate(invalid="ignore", divide="ignore"):
            iou = np.where(union > 0, tp / union, np.nan)
            acc = np.where(label_area > 0, tp / label_area, np.nan)
        total = label_area.sum()
        return {
            "mean_iou": float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan"),
            "mean_accuracy": float(np.nanmean(acc)) if np.isfinite(acc).any() else float("nan"),
            "overall_accuracy": float(tp.sum() / total) if total else float("nan"),
            "per_category_iou": iou,
            "per_category_accuracy": acc,
        }
