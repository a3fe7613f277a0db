"""`alps-hf score` against hand-made confusion cases: ignore pixels, absent classes, K > classes."""

from __future__ import annotations

import json

import datasets
import numpy as np
import pytest
from PIL import Image

from alps_hf.cli import main
from alps_hf.errors import DatasetFormatError, InputError
from alps_hf.labeled.make_dataset import MakeDatasetConfig, make_dataset
from alps_hf.labeling.score import ScoreConfig, markdown, score, score_report

U = 255  # no pseudo-label / ignore

# Image "a": ground truth with one ignore pixel, pseudo-labels with one uncovered annotated pixel.
GT_A = np.array([[0, 0, 1, 1], [0, U, 1, 1]], np.uint8)
PS_A = np.array([[0, 0, 2, 2], [1, 1, U, 2]], np.uint8)
# By hand, over the 7 annotated pixels: cluster 0 -> [2, 0], cluster 1 -> [1, 0], cluster 2 -> [0, 3];
# one class-1 pixel uncovered. Majority 0->0, 1->0, 2->1; Hungarian 0->0, 2->1, cluster 1 unmatched.
CONFUSION = [[2, 0], [1, 0], [0, 3]]


def write_pseudo(folder, items, k):
    """A minimal alps_hf output folder: data/train-*.parquet with label + source, id2label.json."""
    (folder / "data").mkdir(parents=True)
    features = datasets.Features({"label": datasets.Image(), "source": datasets.Value("string")})
    ds = datasets.Dataset.from_dict({"label": [Image.fromarray(a) for _, a in items],
                                     "source": [s for s, _ in items]}, features=features)
    ds.to_parquet(str(folder / "data" / "train-00000-of-00001.parquet"))
    (folder / "id2label.json").write_text(json.dumps({str(i): f"cluster_{i}" for i in range(k)}))
    return folder


def write_gt(root, items):
    """images/ + labels/ of the named ground-truth maps."""
    for sub in ("images", "labels"):
        (root / sub).mkdir(parents=True)
    for name, gt in items:
        Image.fromarray(np.zeros((*gt.shape, 3), np.uint8)).save(root / "images" / f"{name}.jpg")
        Image.fromarray(gt).save(root / "labels" / f"{name}.png")
    return root


@pytest.fixture
def case(tmp_path):
    pseudo = write_pseudo(tmp_path / "pseudo", [("scenes/images/a.png", PS_A)], k=3)
    gt = write_gt(tmp_path / "gt", [("a", GT_A)])
    return pseudo, gt


def test_hand_made_case_ignore_pixels_and_k_above_classes(case):
    pseudo, gt = case
    report = score(ScoreConfig(pseudo=str(pseudo), ground_truth=[str(gt)]))
    assert report["images"] == 1 and report["num_clusters"] == 3 and report["num_classes"] == 2
    assert report["confusion"] == CONFUSION and report["unlabeled"] == [0, 1]
    assert report["coverage"] == pytest.approx(6 / 7)
    assert report["num_pixels"] == 7  # the ignore pixel is not counted; its pseudo-label neither
    whole, cov = report["whole_image"], report["covered_pixels"]
    # majority: class 0 IoU 3/3, class 1 IoU 3/4 (the uncovered pixel is a miss)
    assert whole["majority"]["per_class_iou"] == {"class_0": 1.0, "class_1": 0.75}
    assert whole["majority"]["mean_iou"] == pytest.approx(0.875)
    assert whole["majority"]["pixel_accuracy"] == pytest.approx(6 / 7)
    assert cov["majority"]["mean_iou"] == pytest.approx(1.0)
    # Hungarian: cluster 1 gets no class, so its pixel is wrong: class 0 IoU 2/3
    assert whole["hungarian"]["per_class_iou"]["class_0"] == pytest.approx(2 / 3)
    assert whole["hungarian"]["mean_iou"] == pytest.approx((2 / 3 + 0.75) / 2)
    assert cov["hungarian"]["mean_iou"] == pytest.approx((2 / 3 + 1.0) / 2)
    clusters = {r["cluster"]: r for r in report["clusters"]}
    assert clusters[1] == {"cluster": 1, "pixels": 1, "share": pytest.approx(1 / 6), "majority_class": "class_0",
                           "purity": 1.0, "hungarian_class": None, "class_pixels": {"class_0": 1}}
    assert clusters[2]["majority_class"] == clusters[2]["hungarian_class"] == "class_1"


def test_absent_class_is_none_and_left_out_of_the_mean(case):
    pseudo, gt = case
    names = '{"0": "land", "1": "road", "2": "water"}'
    report = score(ScoreConfig(pseudo=str(pseudo), ground_truth=[str(gt)], id2label=names))
    assert report["class_names"] == ["land", "road", "water"]
    assert report["whole_image"]["majority"]["per_class_iou"] == {"land": 1.0, "road": 0.75, "water": None}
    assert report["whole_image"]["majority"]["mean_iou"] == pytest.approx(0.875)
    # Hungarian may give the spare cluster 1 to the absent class: its pixel is then a false positive
    # of water (IoU 0 counts) and no longer a hit of land.
    hung = report["whole_image"]["hungarian"]["per_class_iou"]
    assert hung == {"land": pytest.approx(2 / 3), "road": 0.75, "water": 0.0}


def test_score_report_of_an_empty_cluster_and_all_uncovered():
    report = score_report(np.array([[0, 0], [4, 0]]), np.array([0, 5]), ["a", "b"])
    assert report["coverage"] == pytest.approx(4 / 9)
    assert report["clusters"][0]["purity"] is None and report["clusters"][0]["majority_class"] is None
    assert report["whole_image"]["majority"]["per_class_iou"] == {"a": 1.0, "b": 0.0}
    assert report["covered_pixels"]["majority"]["per_class_iou"] == {"a": 1.0, "b": None}


def test_labeled_dataset_and_folder_pair_give_the_same_report(case, tmp_path):
    pseudo, gt = case
    make_dataset(MakeDatasetConfig(folders=[str(gt)], output=str(tmp_path / "gtds"), id2label='{"0": "x", "1": "y"}'))
    from_pair = score(ScoreConfig(pseudo=str(pseudo), ground_truth=[str(gt / "images"), str(gt / "labels")],
                                  id2label='{"0": "x", "1": "y"}'))
    from_ds = score(ScoreConfig(pseudo=str(pseudo), ground_truth=[str(tmp_path / "gtds")]))
    assert from_ds["class_names"] == ["x", "y"]  # from the dataset's id2label.json
    for key in ("confusion", "unlabeled", "whole_image", "covered_pixels", "clusters", "coverage"):
        assert from_ds[key] == from_pair[key]


def test_unpaired_names_are_listed_per_side_and_only_matched_scores_the_rest(tmp_path):
    pseudo = write_pseudo(tmp_path / "pseudo", [("a.png", PS_A), ("extra.png", PS_A)], k=3)
    gt = write_gt(tmp_path / "gt", [("a", GT_A), ("lonely", GT_A)])
    with pytest.raises(InputError) as err:
        score(ScoreConfig(pseudo=str(pseudo), ground_truth=[str(gt)]))
    msg = str(err.value)
    assert "1 pseudo-labels in" in msg and "without a partner: extra" in msg
    assert "1 ground-truth labels in" in msg and "without a partner: lonely" in msg and "--only-matched" in msg
    report = score(ScoreConfig(pseudo=str(pseudo), ground_truth=[str(gt)], only_matched=True))
    assert report["images"] == 1 and report["confusion"] == CONFUSION


def test_nothing_in_common_is_refused_even_with_only_matched(tmp_path):
    pseudo = write_pseudo(tmp_path / "pseudo", [("b.png", PS_A)], k=3)
    gt = write_gt(tmp_path / "gt", [("a", GT_A)])
    with pytest.raises(InputError, match="no pseudo-label pairs up"):
        score(ScoreConfig(pseudo=str(pseudo), ground_truth=[str(gt)], only_matched=True))


def test_size_mismatch_names_the_file_and_both_sizes(tmp_path):
    pseudo = write_pseudo(tmp_path / "pseudo", [("a.png", PS_A[:, :3])], k=3)
    gt = write_gt(tmp_path / "gt", [("a", GT_A)])
    with pytest.raises(DatasetFormatError) as err:
        score(ScoreConfig(pseudo=str(pseudo), ground_truth=[str(gt)]))
    assert "a: pseudo-label 'a.png' is 3x2 but ground truth" in str(err.value)
    assert "a.png' is 4x2 (W x H)" in str(err.value)


def test_values_beyond_k_or_the_class_names_are_errors(tmp_path):
    pseudo = write_pseudo(tmp_path / "pseudo", [("a.png", PS_A)], k=2)
    gt = write_gt(tmp_path / "gt", [("a", GT_A)])
    with pytest.raises(DatasetFormatError, match=r"pseudo-label values \[2\] outside 0..1 .*K = 2"):
        score(ScoreConfig(pseudo=str(pseudo), ground_truth=[str(gt)]))
    pseudo3 = write_pseudo(tmp_path / "pseudo3", [("a.png", PS_A)], k=3)
    gt3 = write_gt(tmp_path / "gt3", [("a", np.where(GT_A == 1, 2, GT_A).astype(np.uint8))])
    with pytest.raises(DatasetFormatError, match=r"class values up to 2, beyond its 2 class names \(0..1\)"):
        score(ScoreConfig(pseudo=str(pseudo3), ground_truth=[str(gt3)], id2label='{"0": "a", "1": "b"}'))


def test_cli_writes_json_and_markdown(case, tmp_path, capsys):
    pseudo, gt = case
    out = tmp_path / "report" / "score.json"
    assert main(["score", str(pseudo), "--ground-truth", str(gt), "--output", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["whole_image"]["majority"]["mean_iou"] == pytest.approx(0.875)
    md = out.with_suffix(".md").read_text()
    assert "| whole image (uncovered = wrong) | 87.5 | 70.8 | 85.7 | 71.4 |" in md
    assert "| 1 | 16.7 | class_0 | 100.0 | - |" in md
    assert md == markdown(report)
    printed = capsys.readouterr().out
    assert "coverage 85.7 %" in printed
    assert "(no class names: the ground truth has no id2label.json; pass --id2label" in printed
    assert main(["score", str(pseudo), "--ground-truth", str(gt), "--id2label", '{"0": "land", "1": "water"}']) == 0
    printed = capsys.readouterr().out
    assert "no class names" not in printed and "| land |" in printed


def test_cli_bad_input_is_one_line_exit_2(tmp_path, capsys):
    assert main(["score", str(tmp_path), "--ground-truth", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "expected a folder written by `alps-hf label`" in err and "Traceback" not in err
    assert main(["score", str(tmp_path)]) == 2
    assert "--ground-truth is required" in capsys.readouterr().err


def test_tiled_scene_scores_each_pixel_once_as_the_whole_scene(tmp_path):
    """Windows of a tiled scene pair with the scene's ground truth; overlaps are counted once (by cores)."""
    from alps_hf.geo.windows import plan_windows, window_source

    rng = np.random.default_rng(3)
    width, height, tile, overlap = 150, 100, 64, 16
    truth = rng.integers(0, 3, (height, width), dtype=np.uint8)
    truth[rng.random((height, width)) < 0.05] = U
    whole = np.where(rng.random((height, width)) < 0.8, (truth.astype(int) + rng.integers(0, 2, truth.shape)) % 4, U)
    whole = whole.astype(np.uint8)
    windows = plan_windows(width, height, tile, overlap)
    assert len(windows) == 6  # 3 x 2 windows, overlapping
    # each window's own pixels: the scene's, except outside its core, where a neighbour's value would differ
    parts = []
    for w in windows:
        crop = whole[w.y0:w.y1, w.x0:w.x1].copy()
        cx0, cy0, cx1, cy1 = w.core_local()
        outside = np.ones(crop.shape, bool)
        outside[cy0:cy1, cx0:cx1] = False
        crop[outside] = 3  # not this window's pixels: must not be scored
        parts.append((window_source("scenes/big.tif", w), crop,
                      json.dumps({"scene": "scenes/big.tif", "window": list(w.bounds), "scene_size": [width, height]})))
    tiled = tmp_path / "tiled"
    (tiled / "data").mkdir(parents=True)
    features = datasets.Features({"label": datasets.Image(), "source": datasets.Value("string"),
                                  "meta": datasets.Value("string")})
    datasets.Dataset.from_dict({"label": [Image.fromarray(c) for _, c, _ in parts], "source": [s for s, _, _ in parts],
                                "meta": [m for _, _, m in parts]}, features=features).to_parquet(
        str(tiled / "data" / "train-00000-of-00001.parquet"))
    (tiled / "id2label.json").write_text(json.dumps({str(i): f"cluster_{i}" for i in range(4)}))
    (tiled / "alps_dataset.json").write_text(json.dumps({"tiling": {"window_size": tile, "tile_overlap": overlap}}))
    plain = write_pseudo(tmp_path / "plain", [("big.png", whole)], k=4)
    gt = write_gt(tmp_path / "gt", [("big", truth)])
    got = score(ScoreConfig(pseudo=str(tiled), ground_truth=[str(gt)]))
    want = score(ScoreConfig(pseudo=str(plain), ground_truth=[str(gt)]))
    assert got["confusion"] == want["confusion"] and got["unlabeled"] == want["unlabeled"]
    assert got["num_pixels"] == int((truth != U).sum()) and got["images"] == 1
    assert got["whole_image"] == want["whole_image"]
    # a ground truth of another size than the windows' scene is named with both sizes
    small = write_gt(tmp_path / "gt-small", [("big", truth[:90])])
    with pytest.raises(DatasetFormatError, match=r"scene 'scenes/big.tif' .* is 150x100 but ground truth .* is 150x90"):
        score(ScoreConfig(pseudo=str(tiled), ground_truth=[str(small)]))
