"""Pre-train -> fine-tune -> evaluate through `alps_hf.cli.main` in-process, resume, multi-process, real tiles."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from alps_hf.cli import main
from train_helpers import TINY_SEGFORMER, m2f_args, seg_args, write_dataset


@pytest.fixture(scope="module")
def pseudo(tmp_path_factory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("pseudo"), k=5, seed=0)


@pytest.fixture(scope="module")
def labeled(tmp_path_factory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("labeled"), k=3, seed=1)


def _assert_model_folder(folder: Path, task: str, dataset: Path, num_labels: int) -> dict:
    for name in ("config.json", "model.safetensors", "preprocessor_config.json", "id2label.json",
                 "training_config.json", "metrics.json", "training_curve.png", "README.md"):
        assert (folder / name).is_file(), name
    assert (folder / "training_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    training = json.loads((folder / "training_config.json").read_text())
    assert training["task"] == task and training["dataset"] == str(dataset) and training["alps_hf_version"]
    assert len(json.loads((folder / "id2label.json").read_text())) == num_labels
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["split"] == "validation"
    assert 0.0 <= metrics["eval"]["mean_iou"] <= 1.0 and len(metrics["eval"]["per_class_iou"]) == num_labels
    assert all(np.isfinite(h["loss"]) for h in metrics["history"])
    assert "model-index" in (folder / "README.md").read_text()
    return metrics


def test_segformer_pretrain_finetune_evaluate(pseudo, labeled, tmp_path, capsys):
    ckpt, ft = tmp_path / "ckpt", tmp_path / "ft"
    rc = main(["pretrain", *seg_args(pseudo, ckpt, "--max-steps", "4", "--checkpointing-steps", "2",
                                     "--checkpoints-total-limit", "1", "--eval-steps", "2", "--num-workers", "1")])
    assert rc == 0
    metrics = _assert_model_folder(ckpt, "pretrain", pseudo, 5)
    assert [e["step"] for e in metrics["evals"]] == [2, 4] and [h["step"] for h in metrics["history"]] == [1, 2, 3, 4]
    # Only the last checkpoint is kept, complete with the accelerate state.
    assert sorted(p.name for p in (ckpt / "checkpoints").iterdir()) == ["checkpoint-4"]
    for name in ("model.safetensors", "optimizer.bin", "scheduler.bin", "random_states_0.pkl", "trainer_state.json"):
        assert (ckpt / "checkpoints" / "checkpoint-4" / name).is_file(), name

    # from_pretrained alone loads and runs it, with its saved (Pil) image processor.
    from PIL import Image
    from transformers import SegformerForSemanticSegmentation, SegformerImageProcessorPil

    model = SegformerForSemanticSegmentation.from_pretrained(ckpt).eval()
    processor = SegformerImageProcessorPil.from_pretrained(ckpt)
    assert processor.size["height"] == 32
    inputs = processor(images=Image.new("RGB", (50, 40)), return_tensors="pt")
    with torch.no_grad():
        assert model(**inputs).logits.shape == (1, 5, 8, 8)

    rc = main(["finetune", "--init", str(ckpt), "--dataset", str(labeled), "--output", str(ft), "--crop-size", "32",
               "--batch-size", "2", "--num-workers", "0", "--max-steps", "2", "--train-samples", "3"])
    assert rc == 0
    ft_metrics = _assert_model_folder(ft, "finetune", labeled, 3)
    training = json.loads((ft / "training_config.json").read_text())
    assert training["base_model"] == str(ckpt) and training["train_examples"] == 3
    assert "fine-tuned" in (ft / "README.md").read_text()

    capsys.readouterr()
    out_file = tmp_path / "eval.json"
    rc = main(["evaluate", "--model", str(ft), "--dataset", str(labeled), "--split", "validation",
               "--num-workers", "0", "--output-file", str(out_file)])
    assert rc == 0
    printed = capsys.readouterr().out
    result = json.loads(out_file.read_text())
    # Same model, same split, same procedure: evaluate reproduces the end-of-training scores.
    assert result["eval"]["mean_iou"] == pytest.approx(ft_metrics["eval"]["mean_iou"], abs=1e-6)
    assert f"mIoU {result['eval']['mean_iou']:.4f}" in printed


def test_mask2former_pretrain_finetune_evaluate(pseudo, labeled, tmp_path):
    ckpt, ft = tmp_path / "m2f", tmp_path / "m2f-ft"
    assert main(["pretrain", *m2f_args(pseudo, ckpt, "--max-steps", "2", "--checkpointing-steps", "2")]) == 0
    _assert_model_folder(ckpt, "pretrain", pseudo, 5)
    assert (ckpt / "checkpoints" / "checkpoint-2" / "trainer_state.json").is_file()
    from transformers import Mask2FormerForUniversalSegmentation, Mask2FormerImageProcessorPil

    model = Mask2FormerForUniversalSegmentation.from_pretrained(ckpt).eval()
    processor = Mask2FormerImageProcessorPil.from_pretrained(ckpt)
    with torch.no_grad():
        # Two images: with the tiny config the coarsest map is 1 x 1, and GroupNorm needs > 1 value.
        out = model(**processor(images=[np.zeros((40, 36, 3), np.uint8)] * 2, return_tensors="pt"))
    assert out.class_queries_logits.shape[-1] == 6  # 5 classes + no-object

    # No --model: the tiny checkpoint is not the size of mask2former-swin-tiny, which is now refused.
    assert main(["finetune", "--init", str(ckpt), "--dataset", str(labeled),
                 "--output", str(ft), "--crop-size", "32", "--batch-size", "2", "--num-workers", "0", "--max-steps", "2"]) == 0
    ft_metrics = _assert_model_folder(ft, "finetune", labeled, 3)
    out_file = tmp_path / "m2f-eval.json"
    assert main(["evaluate", "--model", str(ft), "--dataset", str(labeled), "--num-workers", "0", "--output-file", str(out_file)]) == 0
    assert json.loads(out_file.read_text())["eval"]["mean_iou"] == pytest.approx(ft_metrics["eval"]["mean_iou"], abs=1e-6)


def test_resumed_run_ends_with_the_same_weights(pseudo, tmp_path):
    """Interrupted after step 3 (mid-epoch, mid-accumulation cycle boundary), resumed, equals uninterrupted."""
    # 6 examples / batch 2 = 3 micro-batches per epoch, accumulation 2 -> 2 optimizer steps per epoch.
    # Dropout and drop-path are on (SegFormer defaults), so the RNG state matters too.
    flags = ["--max-steps", "5", "--gradient-accumulation-steps", "2", "--checkpointing-steps", "1",
             "--checkpoints-total-limit", "10", "--eval-steps", "2", "--warmup-steps", "1", "--learning-rate", "1e-3"]
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    assert main(["pretrain", *seg_args(pseudo, full, *flags)]) == 0
    # The "interrupted" run: what a run killed after step 3 leaves behind.
    shutil.copytree(full / "checkpoints" / "checkpoint-3", resumed / "checkpoints" / "checkpoint-3")
    assert main(["pretrain", *seg_args(pseudo, resumed, *flags, "--resume", "latest")]) == 0

    a, b = load_file(full / "model.safetensors"), load_file(resumed / "model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6, msg=key)
    # Training really moved the weights after the checkpoint (so the comparison means something).
    c = load_file(full / "checkpoints" / "checkpoint-3" / "model.safetensors")
    assert any(not torch.allclose(a[k], c[k]) for k in a if a[k].is_floating_point())
    ha = json.loads((full / "metrics.json").read_text())["history"]
    hb = json.loads((resumed / "metrics.json").read_text())["history"]
    assert [h["step"] for h in hb] == [1, 2, 3, 4, 5]
    np.testing.assert_allclose([h["loss"] for h in ha], [h["loss"] for h in hb], rtol=1e-5)


@pytest.mark.slow
def test_two_process_cpu_run_through_accelerate_launch(pseudo, tmp_path):
    out = tmp_path / "dist"
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "29533",
           "-m", "alps_hf.cli", "pretrain", *seg_args(pseudo, out, "--max-steps", "2", "--checkpointing-steps", "2")]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((out / "training_config.json").read_text())["num_processes"] == 2
    state = out / "checkpoints" / "checkpoint-2"
    assert (state / "random_states_0.pkl").is_file() and (state / "random_states_1.pkl").is_file()
    metrics = json.loads((out / "metrics.json").read_text())
    # Evaluation rows are split between the processes and the confusion matrices summed: every
    # labelled pixel of the 6 validation images (40 x 40, top 2 rows ignored) is counted once.
    assert metrics["eval"]["num_pixels"] == 6 * 38 * 40


def test_loss_falls_on_real_dubai_tiles(dubai_dir, tmp_path):
    import datasets

    names = sorted(p.stem for p in (dubai_dir / "images").glob("tile2_part_00*.jpg"))[:4]
    if len(names) < 2:
        pytest.skip("dubai_aerial tiles not found")
    features = datasets.Features({"image": datasets.Image(), "label": datasets.Image()})
    ds = datasets.Dataset.from_dict(
        {"image": [str(dubai_dir / "images" / f"{n}.jpg") for n in names],
         "label": [str(dubai_dir / "labels" / f"{n}.png") for n in names]},
        features=features,
    )
    folder = tmp_path / "dubai"
    (folder / "data").mkdir(parents=True)
    ds.to_parquet(str(folder / "data" / "train-00000-of-00001.parquet"))
    classes = ["building", "land", "road", "vegetation", "water", "unlabeled"]
    (folder / "id2label.json").write_text(json.dumps(dict(enumerate(classes))))
    out = tmp_path / "out"
    overrides = {**TINY_SEGFORMER, "classifier_dropout_prob": 0.0, "drop_path_rate": 0.0}
    args = ["pretrain", "--dataset", str(folder), "--output", str(out), "--model", "segformer-b0", "--from-scratch",
            "--model-config-overrides", json.dumps(overrides), "--crop-size", "64", "--batch-size", "4",
            "--num-workers", "0", "--logging-steps", "1", "--max-steps", "24", "--learning-rate", "3e-3",
            "--backbone-learning-rate", "3e-3", "--warmup-steps", "0", "--lr-scheduler", "constant",
            "--scale-min", "0.25", "--scale-max", "0.5", "--checkpointing-steps", "0"]
    assert main(args) == 0
    losses = [h["loss"] for h in json.loads((out / "metrics.json").read_text())["history"]]
    assert len(losses) == 24
    assert np.mean(losses[-4:]) < 0.85 * np.mean(losses[:4]), losses


def test_pretrain_push_to_hub_publishes_the_finished_folder(pseudo, tmp_path, monkeypatch):
    import alps_hf.hub.publish

    calls = []
    monkeypatch.setattr(alps_hf.hub.publish, "push_to_hub",
                        lambda folder, repo_id, **kw: calls.append((str(folder), repo_id, kw)))
    ckpt = tmp_path / "ckpt"
    assert main(["pretrain", *seg_args(pseudo, ckpt, "--max-steps", "1", "--checkpointing-steps", "0",
                                       "--eval-steps", "0", "--push-to-hub", "alps/tiny-test", "--private")]) == 0
    assert calls == [(str(ckpt), "alps/tiny-test", {"private": True})]
    assert (ckpt / "model.safetensors").is_file()  # pushed after the folder was complete


def test_tensorboard_tracker_logs_loss_lr_and_eval(pseudo, tmp_path):
    """`--report-to tensorboard` goes through accelerate's tracker: the event file holds the logged scalars."""
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "tb"
    assert main(["pretrain", *seg_args(pseudo, out, "--max-steps", "3", "--eval-steps", "3",
                                       "--report-to", "tensorboard")]) == 0
    # the run's scalars under <output>/alps_hf (the hparams summary of the config sits in a subfolder)
    events = sorted((out / "alps_hf").glob("events.out.tfevents.*"))
    assert len(events) == 1, sorted(out.rglob("events.out.tfevents.*"))
    acc = EventAccumulator(str(events[0].parent))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"train/loss", "train/lr", "eval/mean_iou"} <= tags, tags
    assert [e.step for e in acc.Scalars("train/loss")] == [1, 2, 3]
    history = json.loads((out / "metrics.json").read_text())
    assert acc.Scalars("eval/mean_iou")[-1].value == pytest.approx(history["eval"]["mean_iou"], abs=1e-6)


def test_bf16_mixed_precision_on_cpu(pseudo, tmp_path):
    """`--mixed-precision bf16` runs the forward pass under autocast on CPU too; the saved weights stay
    float32 and finite, and the run differs from a float32 run (autocast was really on)."""
    from accelerate.state import AcceleratorState

    runs = {}
    try:
        for precision in ("no", "bf16"):
            # One process, one precision: the Accelerator state is process-wide, so reset it between runs.
            AcceleratorState._reset_state(reset_partial_state=True)
            out = tmp_path / precision
            assert main(["pretrain", *seg_args(pseudo, out, "--max-steps", "2", "--eval-split", "none",
                                               "--mixed-precision", precision, "--seed", "3")]) == 0
            runs[precision] = load_file(str(out / "model.safetensors"))
            metrics = json.loads((out / "metrics.json").read_text())
            assert all(np.isfinite(h["loss"]) for h in metrics["history"]), metrics["history"]
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
    for name, tensor in runs["bf16"].items():
        assert tensor.dtype == runs["no"][name].dtype, name
        assert torch.isfinite(tensor).all(), name
    assert any(not torch.equal(runs["bf16"][n], runs["no"][n]) for n in runs["no"]), "bf16 changed nothing"
