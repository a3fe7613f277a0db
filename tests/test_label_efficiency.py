"""scripts/label_efficiency.py: fractions x initialisations -> CSV, markdown table, PNG."""

import csv
import importlib.util
import json
from pathlib import Path

from alps_hf.cli import main as cli_main
from train_helpers import TINY_SEGFORMER, seg_args, write_dataset

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "label_efficiency.py"


def test_label_efficiency_table(tmp_path):
    spec = importlib.util.spec_from_file_location("label_efficiency", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    pseudo = write_dataset(tmp_path / "pseudo", k=5, seed=0)
    labeled = write_dataset(tmp_path / "labeled", k=3, seed=1)
    assert cli_main(["pretrain", *seg_args(pseudo, tmp_path / "ckpt", "--max-steps", "1", "--eval-split", "none")]) == 0
    out = tmp_path / "le"
    # The ground-truth start (issue 12.18): the same pre-training on the labeled set's own labels.
    assert cli_main(["pretrain", *seg_args(labeled, tmp_path / "gt", "--max-steps", "1", "--eval-split", "none")]) == 0
    rc = module.main(["--dataset", str(labeled), "--model", "segformer-b0", "--pretrained", str(tmp_path / "ckpt"),
                      "--pretrained-gt", str(tmp_path / "gt"), "--model-config-overrides", json.dumps(TINY_SEGFORMER),
                      "--fractions", "0.5", "1.0", "--inits", "scratch", "alps", "--output", str(out), "--",
                      "--max-steps", "1", "--crop-size", "32", "--batch-size", "2", "--num-workers", "0"])
    assert rc == 0
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert [(r["init"], r["fraction"], r["train_examples"]) for r in rows] == [
        ("scratch", "0.5", "3"), ("alps", "0.5", "3"), ("scratch", "1.0", "6"), ("alps", "1.0", "6")]
    # Each cell is the mIoU its run wrote.
    for r in rows:
        metrics = json.loads((Path(r["folder"]) / "metrics.json").read_text())
        assert float(r["mean_iou"]) == metrics["eval"]["mean_iou"]
    table = (out / "results.md").read_text()
    assert "| labels | scratch | alps |" in table and "| 50 % (3) |" in table
    assert (out / "label_efficiency.png").read_bytes()[:4] == b"\x89PNG"
    training = json.loads((out / "runs" / "alps-0.5" / "training_config.json").read_text())
    assert training["init"] == str(tmp_path / "ckpt") and training["train_fraction"] == 0.5
    assert training["model"] is None and training["model_config_overrides"] is None  # the checkpoint defines it
    scratch = json.loads((out / "runs" / "scratch-0.5" / "training_config.json").read_text())
    # One thread per job; the random encoder at the full learning rate (not a tenth).
    assert scratch["num_threads"] == 1 and training["num_threads"] == 1
    assert scratch["backbone_learning_rate"] == scratch["learning_rate"]
    assert training["backbone_learning_rate"] == scratch["learning_rate"] / 10

    rc = module.main(["--dataset", str(labeled), "--model", "segformer-b0", "--pretrained-gt", str(tmp_path / "gt"),
                      "--model-config-overrides", json.dumps(TINY_SEGFORMER), "--fractions", "0.5",
                      "--inits", "scratch", "ground-truth", "--output", str(out), "--",
                      "--max-steps", "1", "--crop-size", "32", "--batch-size", "2", "--num-workers", "0"])
    assert rc == 0
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert [(r["init"], r["fraction"]) for r in rows] == [("scratch", "0.5"), ("ground-truth", "0.5")]
    gt = json.loads((out / "runs" / "ground-truth-0.5" / "training_config.json").read_text())
    assert gt["init"] == str(tmp_path / "gt")
    assert "| labels | scratch | ground-truth |" in (out / "results.md").read_text()
