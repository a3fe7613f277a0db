"""`--head-init clusters`: the fine-tune's classifier starts from the checkpoint's classes (training/head_init.py).

Counts against a brute-force loop, the mixed rows against hand-made mappings (a class mapped to one
cluster predicts exactly what the checkpoint predicted for that cluster), Mask2Former's no-object row,
and the CLI: the printed mapping, `--head-init random`, and a checkpoint with the dataset's classes left as is.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from transformers import (
    Mask2FormerForUniversalSegmentation,
    SegformerConfig,
    SegformerForSemanticSegmentation,
    SegformerImageProcessorPil,
)

from alps_hf.cli import main
from alps_hf.training.head_init import class_cluster_counts, mix_head
from alps_hf.training.models import head_modules
from train_helpers import TINY_SEGFORMER, m2f_args, seg_args, tiny_pair, write_dataset

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _segformer(k: int, seed: int) -> SegformerForSemanticSegmentation:
    torch.manual_seed(seed)
    config = SegformerConfig(**TINY_SEGFORMER, num_labels=k)
    return SegformerForSemanticSegmentation(config).eval()


def test_counts_equal_a_brute_force_loop():
    source = _segformer(4, 0)
    processor = SegformerImageProcessorPil(size={"height": 32, "width": 32})
    rng = np.random.default_rng(0)
    rows = [dict(zip(("image", "label"), tiny_pair(rng, 3), strict=True)) for _ in range(3)]
    counts = class_cluster_counts(source, processor, rows, "image", "label", 3)
    want = np.zeros((3, 4), np.int64)
    for row in rows:
        label = np.asarray(row["label"])
        with torch.no_grad():
            logits = source(**processor(images=[row["image"]], return_tensors="pt")).logits
        predicted = F.interpolate(logits, size=label.shape, mode="bilinear", align_corners=False)[0].argmax(0).numpy()
        for y in range(label.shape[0]):
            for x in range(label.shape[1]):
                if label[y, x] != 255:
                    want[label[y, x], predicted[y, x]] += 1
    assert (counts == want).all() and counts.sum() == sum(int((np.asarray(r["label"]) != 255).sum()) for r in rows)
    assert len(class_cluster_counts(source, processor, rows, "image", "label", 3, max_images=1)) == 3


def test_mixed_rows_predict_what_the_checkpoint_predicted():
    source, model = _segformer(4, 0), _segformer(3, 1)
    model.segformer.load_state_dict(source.segformer.state_dict())
    model.decode_head.load_state_dict({k: v for k, v in source.decode_head.state_dict().items()
                                       if not k.startswith("classifier")}, strict=False)
    fresh = head_modules(model)[0].weight[2].clone()
    counts = np.array([[7, 0, 0, 0], [0, 0, 0, 5], [0, 0, 0, 0]])  # class 2 has no labeled pixel
    summary = mix_head(model, source, counts)
    assert summary == [(0, [(0, 1.0)]), (1, [(3, 1.0)])]
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        old, new = source(pixel_values=x).logits, model(pixel_values=x).logits
    assert torch.allclose(new[:, 0], old[:, 0], atol=1e-6) and torch.allclose(new[:, 1], old[:, 3], atol=1e-6)
    assert torch.equal(head_modules(model)[0].weight[2], fresh)  # left as initialised
    # a class seen as two clusters starts from their pixel-weighted mix
    mix_head(model, source, np.array([[3, 1, 0, 0], [0, 0, 0, 1], [0, 0, 0, 0]]))
    (w_new,), (w_old,) = [m.weight for m in head_modules(model)], [m.weight for m in head_modules(source)]
    assert torch.allclose(w_new[0], 0.75 * w_old[0] + 0.25 * w_old[1])


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("headinit")
    return write_dataset(root / "pseudo", k=5, seed=0), write_dataset(root / "labeled", k=3, seed=1)


def test_cli_prints_the_mapping_and_random_skips_it(data, tmp_path, capsys):
    pseudo, labeled = data
    ckpt = tmp_path / "ckpt"
    assert main(["pretrain", *seg_args(pseudo, ckpt, "--max-steps", "2", "--checkpointing-steps", "0")]) == 0
    capsys.readouterr()
    common = ["--dataset", str(labeled), "--crop-size", "32", "--batch-size", "2", "--num-workers", "0",
              "--max-steps", "1", "--train-samples", "3", "--learning-rate", "1e-9", "--backbone-learning-rate", "0"]
    assert main(["finetune", "--init", str(ckpt), "--output", str(tmp_path / "ft"), *common]) == 0
    out = capsys.readouterr().out
    assert "--head-init clusters: the new classifier starts from the checkpoint's classes, cluster_00 <- cluster_" in out
    assert main(["finetune", "--init", str(ckpt), "--output", str(tmp_path / "rand"), "--head-init", "random", *common]) == 0
    assert "--head-init clusters" not in capsys.readouterr().out
    ft = SegformerForSemanticSegmentation.from_pretrained(tmp_path / "ft")
    rand = SegformerForSemanticSegmentation.from_pretrained(tmp_path / "rand")
    source = SegformerForSemanticSegmentation.from_pretrained(ckpt)
    w_ft, w_rand = head_modules(ft)[0].weight, head_modules(rand)[0].weight
    w_src = head_modules(source)[0].weight
    # (lr 1e-9: the saved head is the initial one) each clusters row is a convex mix of the checkpoint's rows
    for c in range(3):
        gram = torch.linalg.lstsq(w_src.flatten(1).T, w_ft[c].flatten()[:, None]).solution.flatten()
        assert gram.min() > -1e-4 and abs(float(gram.sum()) - 1) < 1e-3, c
    assert not torch.allclose(w_ft, w_rand)
    # fine-tuning the fine-tuned model on the same classes keeps its head: no mapping line
    assert main(["finetune", "--init", str(tmp_path / "ft"), "--output", str(tmp_path / "again"), *common]) == 0
    assert "--head-init clusters" not in capsys.readouterr().out


def test_bad_head_init_is_one_line(data, tmp_path, capsys):
    _, labeled = data
    assert main(["finetune", "--init", str(tmp_path), "--dataset", str(labeled), "--output", str(tmp_path / "x"),
                 "--head-init", "kmeans"]) == 2
    assert "--head-init 'kmeans': choose clusters or random" in capsys.readouterr().err


def test_mask2former_keeps_the_no_object_row(data, tmp_path):
    pseudo, labeled = data
    ckpt = tmp_path / "m2f"
    assert main(["pretrain", *m2f_args(pseudo, ckpt, "--max-steps", "1", "--checkpointing-steps", "0")]) == 0
    assert main(["finetune", "--init", str(ckpt), "--dataset", str(labeled), "--output", str(tmp_path / "ft"),
                 "--crop-size", "32", "--batch-size", "2", "--num-workers", "0", "--max-steps", "1",
                 "--learning-rate", "1e-9", "--backbone-learning-rate", "0"]) == 0
    source = Mask2FormerForUniversalSegmentation.from_pretrained(ckpt)
    ft = Mask2FormerForUniversalSegmentation.from_pretrained(tmp_path / "ft")
    (w_src,), (w_ft,) = [m.weight for m in head_modules(source)], [m.weight for m in head_modules(ft)]
    assert w_src.shape[0] == 6 and w_ft.shape[0] == 4
    assert torch.allclose(w_ft[3], w_src[5], atol=1e-6)  # no-object: the checkpoint's
    assert len(json.loads((tmp_path / "ft" / "config.json").read_text())["id2label"]) == 3
