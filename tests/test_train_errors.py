"""Bad input fails before training with a one-line message naming the value and the fix (exit 2)."""

import json

import datasets
import numpy as np
import pytest
from PIL import Image

from alps_hf.cli import main
from train_helpers import TINY_MASK2FORMER, seg_args, tiny_pair, write_dataset


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("good"), k=4, n=4)


def _fails(argv, capsys, *fragments):
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    for fragment in fragments:
        assert fragment in err, err
    return err


def test_missing_column_lists_columns_found(good, tmp_path, capsys):
    _fails(["pretrain", *seg_args(good, tmp_path / "o", "--label-column", "mask")], capsys,
           "no column 'mask'", "columns found: ['image', 'label']", "--label-column")


def test_label_values_out_of_range_name_example_and_values(tmp_path, capsys):
    rng = np.random.default_rng(0)
    pairs = [tiny_pair(rng, 4) for _ in range(3)]
    bad = np.array(pairs[1][1])
    bad[5, 5], bad[6, 6] = 9, 17
    pairs[1] = (pairs[1][0], Image.fromarray(bad))
    folder = write_dataset(tmp_path / "ds", k=4, pairs={"train": pairs, "validation": pairs[:1]})
    _fails(["pretrain", *seg_args(folder, tmp_path / "o")], capsys, "train example 1", "label values [9, 17]", "outside 0..3 and 255")


def test_image_and_label_sizes_differ(tmp_path, capsys):
    rng = np.random.default_rng(0)
    image, label = tiny_pair(rng, 4)
    folder = write_dataset(tmp_path / "ds", k=4, splits=("train",), pairs={"train": [(image.resize((30, 40)), label)]})
    _fails(["pretrain", *seg_args(folder, tmp_path / "o")], capsys, "train example 0", "image is 30x40 but label is 40x40")


def test_empty_split(good, tmp_path, capsys):
    from alps_hf.errors import DatasetFormatError
    from alps_hf.training.data import validate_split

    features = datasets.Features({"image": datasets.Image(), "label": datasets.Image()})
    empty = datasets.Dataset.from_dict({"image": [], "label": []}, features=features)
    with pytest.raises(DatasetFormatError, match=r"split 'train' is empty \(0 examples\)"):
        validate_split(empty, "train", "image", "label", 4, 10)
    # Through the CLI, `datasets` itself refuses a zero-row parquet split; the message says which dataset.
    folder = tmp_path / "ds"
    (folder / "data").mkdir(parents=True)
    for f in (good / "data").glob("validation*"):
        (folder / "data" / f.name).write_bytes(f.read_bytes())
    (folder / "id2label.json").write_text((good / "id2label.json").read_text())
    empty.to_parquet(str(folder / "data" / "train-00000-of-00001.parquet"))
    _fails(["pretrain", *seg_args(folder, tmp_path / "o")], capsys, f"--dataset {str(folder)!r} cannot be loaded", "no data")


@pytest.mark.parametrize("fraction", ["0", "1.5"])
def test_train_fraction_out_of_range(good, tmp_path, capsys, fraction):
    _fails(["finetune", *seg_args(good, tmp_path / "o", "--train-fraction", fraction)], capsys,
           f"--train-fraction {float(fraction)} must be in (0, 1]")


def test_unknown_model_lists_known_names(good, tmp_path, capsys):
    _fails(["pretrain", "--dataset", str(good), "--output", str(tmp_path / "o"), "--model", "segformer-b7"], capsys,
           "unknown --model 'segformer-b7'", "segformer-b0", "mask2former-swin-tiny")


def test_resume_without_checkpoint(good, tmp_path, capsys):
    _fails(["pretrain", *seg_args(good, tmp_path / "o", "--resume", "latest")], capsys,
           "--resume latest: no checkpoint in", "checkpoints")
    _fails(["pretrain", *seg_args(good, tmp_path / "o", "--resume", str(tmp_path))], capsys, "is not a complete checkpoint folder")


def test_existing_output_needs_overwrite_or_resume(good, tmp_path, capsys):
    out = tmp_path / "o"
    out.mkdir()
    (out / "something.txt").write_text("x")
    _fails(["pretrain", *seg_args(good, out)], capsys, "exists and is not empty", "--overwrite", "--resume latest")


def test_init_of_another_architecture(good, tmp_path, capsys):
    from transformers import Mask2FormerConfig, SwinConfig

    swin = SwinConfig(**{**TINY_MASK2FORMER["backbone_config"], "out_features": ["stage1", "stage2", "stage3", "stage4"]})
    Mask2FormerConfig(backbone_config=swin).save_pretrained(tmp_path / "m2f")
    _fails(["finetune", "--init", str(tmp_path / "m2f"), "--model", "segformer-b0", "--dataset", str(good),
            "--output", str(tmp_path / "o")], capsys, "is a mask2former checkpoint but --model 'segformer-b0' is segformer")
    (tmp_path / "bert").mkdir()
    (tmp_path / "bert" / "config.json").write_text(json.dumps({"model_type": "bert"}))
    _fails(["finetune", "--init", str(tmp_path / "bert"), "--dataset", str(good), "--output", str(tmp_path / "o")],
           capsys, "is a 'bert' model; alps_hf trains SegFormer or Mask2Former")


def test_missing_id2label_and_unknown_eval_split(good, tmp_path, capsys):
    (tmp_path / "ds" / "data").mkdir(parents=True)
    for f in (good / "data").iterdir():
        (tmp_path / "ds" / "data" / f.name).write_bytes(f.read_bytes())
    _fails(["pretrain", *seg_args(tmp_path / "ds", tmp_path / "o")], capsys, "has no id2label.json", "--id2label")
    _fails(["pretrain", *seg_args(good, tmp_path / "o", "--eval-split", "test")], capsys,
           "--eval-split 'test' not in the dataset", "['train', 'validation']")
