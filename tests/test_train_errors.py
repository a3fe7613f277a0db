"""Bad input fails before training with a one-line message naming the value and the fix (exit 2)."""

import json

import datasets
import numpy as np
import pytest
from PIL import Image

from alps_hf.cli import main
from train_helpers import TINY_MASK2FORMER, TINY_SEGFORMER, seg_args, tiny_pair, write_dataset


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


def test_init_with_a_named_model_of_another_size_or_with_overrides(good, tmp_path, capsys):
    """Issue 12.19: --model is checked for size too, and --model-config-overrides with --init is refused, never ignored."""
    from alps_hf.training.models import build_model, resolve_model

    tiny = build_model(resolve_model("segformer-b0", from_scratch=True, overrides=TINY_SEGFORMER), {0: "a", 1: "b"})
    tiny.save_pretrained(tmp_path / "tiny")
    base = ["finetune", "--init", str(tmp_path / "tiny"), "--dataset", str(good), "--output", str(tmp_path / "o")]
    _fails([*base, "--model", "segformer-b0"], capsys, "is a segformer of another size than --model 'segformer-b0'",
           "'hidden_sizes': [8, 16, 24, 32]", "[32, 64, 160, 256]", "drop --model")
    _fails([*base, "--model-config-overrides", '{"drop_path_rate": 0.2}'], capsys,
           "--model-config-overrides {\"drop_path_rate\": 0.2} cannot apply with --init", "drop --model-config-overrides")
    assert not (tmp_path / "o").exists()


def test_offline_default_backbone_names_it_the_cause_and_both_fixes(good, tmp_path, capsys):
    """Issue 12.10: no --backbone, offline -> the default encoder, why, --from-scratch / --backbone FOLDER; no empty --output."""
    out = tmp_path / "o"
    err = _fails(["pretrain", "--dataset", str(good), "--output", str(out), "--model", "segformer-b0", "--crop-size", "32",
                  "--num-workers", "0"], capsys,
                 "the default encoder of --model segformer-b0, 'nvidia/mit-b0' (no --backbone given)",
                 "HF_HUB_OFFLINE is set", "not in the local cache", "--from-scratch", "--backbone FOLDER")
    assert "same size" not in err
    assert not out.exists()  # a failed start leaves nothing that would block the retry
    # A --backbone the user typed is named as such.
    _fails(["pretrain", "--dataset", str(good), "--output", str(out), "--model", "segformer-b0", "--backbone",
            "nvidia/mit-b1", "--num-workers", "0"], capsys, "--backbone 'nvidia/mit-b1'", "--from-scratch")
    assert not out.exists()


def test_backbone_learning_rate_default_depends_on_the_encoder():
    """Issue 12.18: a random encoder trains at the full rate unless told; pre-trained encoders at a tenth."""
    from alps_hf.training.config import TrainConfig

    assert TrainConfig(dataset="d", output="o", learning_rate=1e-3, from_scratch=True).backbone_learning_rate == 1e-3
    assert TrainConfig(dataset="d", output="o", learning_rate=1e-3).backbone_learning_rate == pytest.approx(1e-4)
    assert TrainConfig(dataset="d", output="o", learning_rate=1e-3, init="ckpt").backbone_learning_rate == pytest.approx(1e-4)
    given = TrainConfig(dataset="d", output="o", learning_rate=1e-3, from_scratch=True, backbone_learning_rate=5e-5)
    assert given.backbone_learning_rate == 5e-5


def test_num_threads_flag_and_omp_num_threads(good, tmp_path, capsys, monkeypatch):
    """Issue 12.22: --num-threads sets torch's threads; without it $OMP_NUM_THREADS is honoured; recorded."""
    import torch

    from alps_hf.training.config import apply_num_threads

    before = torch.get_num_threads()
    try:
        monkeypatch.setenv("OMP_NUM_THREADS", "2")
        assert apply_num_threads(None) == 2
        assert apply_num_threads(1) == 1  # the flag wins over the environment
        monkeypatch.delenv("OMP_NUM_THREADS")
        assert main(["pretrain", *seg_args(good, tmp_path / "o", "--max-steps", "1", "--eval-split", "none",
                                           "--checkpointing-steps", "0", "--num-threads", "1")]) == 0
        assert torch.get_num_threads() == 1
        assert json.loads((tmp_path / "o" / "training_config.json").read_text())["num_threads"] == 1
    finally:
        torch.set_num_threads(before)
    for command in ("pretrain", "evaluate"):
        extra = ["--model", "m", "--dataset", str(good)] if command == "evaluate" else seg_args(good, tmp_path / "p")
        _fails([command, *extra, "--num-threads", "0"], capsys, "--num-threads 0 must be >= 1")
