"""Metrics against independent computations (scikit-learn, plain loops) on hand-made cases."""

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import confusion_matrix as sk_confusion
from sklearn.metrics import jaccard_score

from alps_hf.metrics.confusion import (
    ConfusionMatrix,
    PseudoLabelScorer,
    cluster_class_confusion,
    hungarian_mapping,
    logits_to_predictions,
    majority_mapping,
    pseudo_label_quality,
    scores_from_confusion,
)


def _reference_scores(preds: np.ndarray, labels: np.ndarray, num_classes: int, ignore=255):
    """Per-class IoU / accuracy with explicit loops over classes (NaN where undefined)."""
    keep = labels != ignore
    p, t = preds[keep], labels[keep]
    ious, accs = [], []
    for c in range(num_classes):
        inter = np.sum((p == c) & (t == c))
        union = np.sum((p == c) | (t == c))
        ious.append(inter / union if union else math.nan)
        accs.append(inter / np.sum(t == c) if np.sum(t == c) else math.nan)
    return np.array(ious), np.array(accs), float(np.mean(p == t))


def test_confusion_scores_match_sklearn_with_ignore_and_absent_classes():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, size=(2, 7, 9))  # classes 3 and 4 never labelled
    labels[0, :2] = 255  # ignored strip
    preds = rng.integers(0, 4, size=(2, 7, 9))  # class 3 predicted but absent in labels -> IoU 0
    preds[labels == 255] = 3  # predictions on ignored pixels must not count
    cm = ConfusionMatrix(num_classes=5)
    cm.update(torch.from_numpy(preds[0]), torch.from_numpy(labels[0]))
    cm.update(torch.from_numpy(preds[1]), torch.from_numpy(labels[1]))
    scores = cm.compute({i: f"c{i}" for i in range(5)})

    keep = labels != 255
    sk = sk_confusion(labels[keep], preds[keep], labels=list(range(5)))
    np.testing.assert_array_equal(cm.matrix.numpy(), sk)
    sk_iou = jaccard_score(labels[keep], preds[keep], labels=[0, 1, 2, 3], average=None)
    ref_iou, ref_acc, ref_overall = _reference_scores(preds, labels, 5)
    np.testing.assert_allclose(ref_iou[:4], sk_iou)
    assert scores["per_class_iou"]["c3"] == 0.0
    assert scores["per_class_iou"]["c4"] is None and scores["per_class_accuracy"]["c4"] is None
    assert scores["per_class_accuracy"]["c3"] is None  # never labelled: accuracy undefined
    assert scores["mean_iou"] == pytest.approx(np.nanmean(ref_iou))
    assert scores["mean_accuracy"] == pytest.approx(np.nanmean(ref_acc))
    assert scores["overall_accuracy"] == pytest.approx(ref_overall)
    assert scores["num_pixels"] == int(keep.sum())


def test_hand_made_two_by_two():
    labels = torch.tensor([[0, 0], [1, 255]])
    preds = torch.tensor([[0, 1], [1, 0]])
    cm = ConfusionMatrix(2)
    cm.update(preds, labels)
    s = cm.compute()
    # class 0: tp 1, union {0,1} = 2 -> 0.5 ; class 1: tp 1, union 2 -> 0.5
    assert s["per_class_iou"] == {"0": 0.5, "1": 0.5}
    assert s["overall_accuracy"] == pytest.approx(2 / 3)
    assert s["mean_accuracy"] == pytest.approx((0.5 + 1.0) / 2)


def test_out_of_range_label_is_an_error():
    cm = ConfusionMatrix(3)
    with pytest.raises(ValueError, match=r"label values \[7\] outside 0..2"):
        cm.update(torch.zeros(2, 2, dtype=torch.long), torch.tensor([[0, 7], [1, 255]]))


def test_logits_are_resized_to_label_size_before_argmax():
    logits = torch.zeros(1, 2, 2, 2)
    logits[0, 0, :, 0] = 5.0  # left half is class 0
    logits[0, 1, :, 1] = 5.0  # right half is class 1
    preds = logits_to_predictions(logits, (4, 6))
    assert preds.shape == (1, 4, 6)
    assert preds[0, :, :3].eq(0).all() and preds[0, :, 3:].eq(1).all()
    cm = ConfusionMatrix(2)
    cm.update_from_logits(logits, [torch.tensor([[0, 0, 0, 1, 1, 1]] * 4)])
    assert cm.compute()["mean_iou"] == 1.0


def test_scores_of_empty_matrix_are_nan():
    s = scores_from_confusion(np.zeros((3, 3)))
    assert math.isnan(s["mean_iou"]) and s["num_pixels"] == 0


def test_majority_and_hungarian_mappings_on_constructed_case():
    # 4 clusters x 3 classes. Clusters 0 and 1 both mostly cover class 0; cluster 2 class 1;
    # cluster 3 covers class 2 slightly more than class 0.
    conf = np.array(
        [
            [50, 5, 0],
            [30, 0, 10],
            [0, 40, 0],
            [12, 0, 14],
        ]
    )
    np.testing.assert_array_equal(majority_mapping(conf), [0, 0, 1, 2])
    # One-to-one: best total is 50 (0->0) + 40 (2->1) + 14 (3->2) = 104 vs 50+40+10 = 100.
    np.testing.assert_array_equal(hungarian_mapping(conf), [0, -1, 1, 2])

    q = pseudo_label_quality(conf, class_names=["a", "b", "c"])
    # many-to-one: class a predicted by clusters 0,1 -> tp 80, pred 95, gt 92 -> 80 / 107
    m = q["many_to_one"]
    assert m["mapping"] == {0: 0, 1: 0, 2: 1, 3: 2}
    assert m["per_class_iou"]["a"] == pytest.approx(80 / (92 + 95 - 80))
    assert m["per_class_iou"]["b"] == pytest.approx(40 / (45 + 40 - 40))
    assert m["per_class_iou"]["c"] == pytest.approx(14 / (24 + 26 - 14))
    # one-to-one: cluster 1 unassigned, its 40 pixels count as misses.
    o = q["one_to_one"]
    assert o["mapping"] == {0: 0, 2: 1, 3: 2}
    assert o["per_class_iou"]["a"] == pytest.approx(50 / (92 + 55 - 50))
    assert o["per_class_iou"]["c"] == pytest.approx(14 / (24 + 26 - 14))
    assert o["mean_iou"] < m["mean_iou"]
    assert q["coverage"] == 1.0 and q["clusters_used"] == 4


def test_pseudo_label_scorer_counts_unlabeled_pixels_as_misses():
    pseudo = np.array([[0, 0, 1], [1, 255, 255]])
    gt = np.array([[2, 2, 0], [0, 0, 255]])
    conf, unl = cluster_class_confusion(pseudo, gt, num_clusters=2, num_classes=3)
    np.testing.assert_array_equal(conf, [[0, 0, 2], [2, 0, 0]])
    np.testing.assert_array_equal(unl, [1, 0, 0])
    scorer = PseudoLabelScorer(2, 3)
    scorer.update(pseudo, gt)
    q = scorer.compute({0: "x", 1: "y", 2: "z"})
    assert q["one_to_one"]["mapping"] == {0: 2, 1: 0}
    assert q["one_to_one"]["per_class_iou"] == {"x": pytest.approx(2 / 3), "y": None, "z": 1.0}
    assert q["coverage"] == pytest.approx(4 / 5)
    with pytest.raises(ValueError, match="pseudo-label values"):
        scorer.update(np.array([[5]]), np.array([[0]]))


def test_evaluate_module_agrees_with_torch_path():
    import evaluate

    from alps_hf.metrics.evaluate_module import METRIC_PATH

    rng = np.random.default_rng(3)
    refs = [rng.integers(0, 4, size=(5, 6)) for _ in range(3)]
    refs[0][0] = 255
    preds = [rng.integers(0, 5, size=(5, 6)) for _ in range(3)]  # class 4 predicted, never labelled
    metric = evaluate.load(METRIC_PATH)
    got = metric.compute(predictions=preds, references=refs, num_labels=6)
    cm = ConfusionMatrix(6)
    for p, r in zip(preds, refs, strict=True):
        cm.update(torch.from_numpy(p), torch.from_numpy(r))
    want = cm.compute()
    for key in ("mean_iou", "mean_accuracy", "overall_accuracy"):
        assert got[key] == pytest.approx(want[key])
    want_iou = [math.nan if v is None else v for v in want["per_class_iou"].values()]
    np.testing.assert_allclose(got["per_category_iou"], want_iou)
    assert got["per_category_iou"][4] == 0.0 and math.isnan(got["per_category_iou"][5])
