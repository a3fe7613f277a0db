"""`alps-hf make-dataset`: images/labels folders -> a labeled Hub-layout dataset that training reads as is."""

from __future__ import annotations

import json

import datasets
import numpy as np
import pytest
from huggingface_hub import metadata_load
from PIL import Image

from alps_hf.cli import main
from alps_hf.errors import ConfigError, DatasetFormatError, InputError
from alps_hf.labeled.make_dataset import MakeDatasetConfig, make_dataset
from alps_hf.training.data import load_splits, read_id2label, validate_split
from train_helpers import seg_args, tiny_pair

COLOURS = {0: (60, 16, 152), 1: (132, 41, 246), 2: (110, 193, 228), 3: (254, 221, 58)}
PALETTE = json.dumps({"#{:02X}{:02X}{:02X}".format(*c): k for k, c in COLOURS.items()} | {"#000000": 255})
NAMES = '{"0": "building", "1": "land", "2": "road", "3": "water"}'


def pair_folder(root, n=4, seed=0, colour=False, size=40):
    """images/*.jpg + labels/*.png of tiny scenes; labels as class indices or as colour masks."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir(parents=True)
    truth = {}
    for i in range(n):
        image, label = tiny_pair(rng, 4, size)
        image.save(root / "images" / f"s{seed}_{i}.jpg", quality=95)
        array = np.asarray(label)
        truth[f"s{seed}_{i}.jpg"] = array
        if colour:
            rgb = np.zeros((*array.shape, 3), np.uint8)
            for k, c in COLOURS.items():
                rgb[array == k] = c
            Image.fromarray(rgb).save(root / "labels" / f"s{seed}_{i}.png")
        else:
            label.save(root / "labels" / f"s{seed}_{i}.png")
    return root, truth


def test_colour_masks_become_a_dataset_that_load_dataset_and_training_read(tmp_path):
    src, truth = pair_folder(tmp_path / "src", colour=True)
    out = tmp_path / "ds"
    assert main(["make-dataset", str(src / "images"), str(src / "labels"), "--output", str(out),
                 "--palette", PALETTE, "--id2label", NAMES]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "data", "id2label.json", "labeled_dataset.json"]
    assert [p.name for p in (out / "data").iterdir()] == ["train-00000-of-00001.parquet"]
    assert json.loads((out / "id2label.json").read_text()) == json.loads(NAMES)
    ds = datasets.load_dataset(str(out))["train"]
    assert ds.column_names == ["image", "label", "source"] and len(ds) == 4
    for row in ds:
        np.testing.assert_array_equal(np.asarray(row["label"]), truth[row["source"]])
        assert row["label"].mode == "L"
        assert row["image"].size == (40, 40)
    # the image keeps its original bytes
    raw = ds.cast_column("image", datasets.Image(decode=False))[0]["image"]["bytes"]
    assert raw == (src / "images" / ds[0]["source"]).read_bytes()
    # what finetune / evaluate do before training
    splits = load_splits(str(out))
    id2label = read_id2label(str(out))
    assert id2label == {0: "building", 1: "land", 2: "road", 3: "water"}
    validate_split(splits["train"], "train", "image", "label", len(id2label), None)
    card = metadata_load(out / "README.md")
    assert card["configs"] == [{"config_name": "default", "data_files": [{"split": "train", "path": "data/train-*"}]}]
    assert [f["name"] for f in card["dataset_info"]["features"]] == ["image", "label", "source"]
    text = (out / "README.md").read_text()
    assert "| `train` | 4 | `images` + `labels` (colour masks, mapped by a 5-colour table) |" in text
    assert str(tmp_path) not in text  # no local paths in the card


def test_added_validation_split_and_finetune_on_it(tmp_path, capsys):
    src, _ = pair_folder(tmp_path / "train", n=4, seed=0)
    val, _ = pair_folder(tmp_path / "val", n=2, seed=1)
    out = tmp_path / "ds"
    assert main(["make-dataset", str(src), "--output", str(out), "--id2label", NAMES]) == 0
    assert main(["make-dataset", str(val), "--output", str(out), "--split", "validation", "--add-split"]) == 0
    loaded = datasets.load_dataset(str(out))
    assert {k: len(v) for k, v in loaded.items()} == {"train": 4, "validation": 2}
    info = json.loads((out / "labeled_dataset.json").read_text())
    assert info["splits"]["validation"]["num_rows"] == 2 and info["id2label"]["3"] == "water"
    assert main(["finetune", *seg_args(out, tmp_path / "model", "--max-steps", "2", "--eval-steps", "0")]) == 0
    metrics = json.loads((tmp_path / "model" / "metrics.json").read_text())
    assert metrics["train"]["examples"] == 4
    assert set(metrics["eval"]["per_class_iou"]) == {"building", "land", "road", "water"}


def test_default_class_names_follow_the_largest_value(tmp_path):
    src, _ = pair_folder(tmp_path / "src", n=2)
    info = make_dataset(MakeDatasetConfig(folders=[str(src)], output=str(tmp_path / "ds")))
    assert info["id2label"] == {"0": "class_0", "1": "class_1", "2": "class_2", "3": "class_3"}
    pixels = info["splits"]["train"]["class_pixels"]
    assert pixels[255] == 2 * 2 * 40  # tiny_pair's two ignore rows
    assert sum(pixels) == 2 * 40 * 40


def test_existing_output_is_refused_then_overwritten(tmp_path, capsys):
    src, _ = pair_folder(tmp_path / "src", n=1)
    out = tmp_path / "ds"
    assert main(["make-dataset", str(src), "--output", str(out)]) == 0
    assert main(["make-dataset", str(src), "--output", str(out)]) == 2
    assert "exists; pass --overwrite to replace it or --add-split" in capsys.readouterr().err
    assert main(["make-dataset", str(src), "--output", str(out), "--split", "train", "--add-split"]) == 2
    assert "has a split 'train' already" in capsys.readouterr().err
    assert main(["make-dataset", str(src), "--output", str(out), "--overwrite", "--split", "test"]) == 0
    assert [p.name for p in (out / "data").iterdir()] == ["test-00000-of-00001.parquet"]


def test_a_bad_label_leaves_no_folder_behind(tmp_path, capsys):
    src, _ = pair_folder(tmp_path / "src", n=3)
    Image.fromarray(np.full((40, 40), 9, np.uint8)).save(src / "labels" / "s0_2.png")
    out = tmp_path / "ds"
    assert main(["make-dataset", str(src), "--output", str(out), "--id2label", NAMES]) == 2
    err = capsys.readouterr().err
    assert "s0_2.png: label values [9] outside the 4 classes of --id2label (0..3, 255 = ignore)" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]  # neither output nor staging folder


def test_errors_before_anything_is_read(tmp_path):
    with pytest.raises(ConfigError, match="give the folders"):
        MakeDatasetConfig(output="x")
    with pytest.raises(ConfigError, match="--split 'my split'"):
        MakeDatasetConfig(folders=["a"], output="x", split="my split")
    with pytest.raises(ConfigError, match="--palette"):
        MakeDatasetConfig(folders=["a"], output="x", palette="{oops")
    src, _ = pair_folder(tmp_path / "src", n=1)
    with pytest.raises(ConfigError, match=r"--id2label .*class indices 0..K-1"):
        make_dataset(MakeDatasetConfig(folders=[str(src)], output=str(tmp_path / "o"), id2label='{"1": "a", "2": "b"}'))
    with pytest.raises(InputError, match="does not exist; make it first"):
        make_dataset(MakeDatasetConfig(folders=[str(src)], output=str(tmp_path / "o"), add_split=True))


def test_a_single_class_is_not_a_segmentation_dataset(tmp_path):
    (tmp_path / "src" / "images").mkdir(parents=True)
    (tmp_path / "src" / "labels").mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "src" / "images" / "a.png")
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "src" / "labels" / "a.png")
    with pytest.raises(DatasetFormatError, match=r"hold 1 class value\(s\) \[0\]; .* needs at least 2 classes"):
        make_dataset(MakeDatasetConfig(folders=[str(tmp_path / "src")], output=str(tmp_path / "o")))


def test_real_dubai_tiles(dubai_dir, tmp_path):
    names = json.dumps({"0": "building", "1": "land", "2": "road", "3": "vegetation", "4": "water", "5": "unlabeled"})
    sub = tmp_path / "dubai"
    for part in ("images", "labels"):
        (sub / part).mkdir(parents=True)
        for f in sorted((dubai_dir / part).glob("tile2_part_00[12].*")):
            (sub / part / f.name).symlink_to(f)
    info = make_dataset(MakeDatasetConfig(folders=[str(sub)], output=str(tmp_path / "ds"), id2label=names))
    assert info["splits"]["train"]["num_rows"] == 2
    row = datasets.load_dataset(str(tmp_path / "ds"))["train"][0]
    assert row["source"] == "tile2_part_001.jpg"
    np.testing.assert_array_equal(np.asarray(row["label"]), np.asarray(Image.open(dubai_dir / "labels" / "tile2_part_001.png")))
