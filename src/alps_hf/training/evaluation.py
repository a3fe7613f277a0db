"""Evaluation of a segmentation model: during training (`evaluate`) and for a saved model (`alps-hf evaluate`).

Inference is at full resolution: the image is never resized. It is cut into sliding windows of the
training crop size (mmsegmentation's `slide` mode: windows `stride` apart, the last one flush with the
border, overlapping logits averaged); an image no larger than the crop is one window, the whole
image. Each window's logits are upsampled to the window, so predictions have the image's (= the
label's) size. Scores come from one confusion matrix per process, summed over processes
(`alps_hf.metrics.confusion`); each process scores its own rows (rank::world), so no row is counted
twice.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch

from alps_hf.core import atomic_write_text
from alps_hf.errors import DatasetFormatError
from alps_hf.metrics.confusion import ConfusionMatrix
from alps_hf.training.config import EvaluateConfig, apply_num_threads
from alps_hf.training.data import (
    SegmentationDataset,
    eval_collate,
    load_splits,
    read_id2label,
    validate_split,
)
from alps_hf.training.models import architecture_of, load_image_processor, model_class, semantic_logits


def _json_safe(value: Any) -> Any:
    """NaN (a class absent from labels and predictions) becomes null: JSON has no NaN."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


def write_metrics_json(path: str | Path, data: dict[str, Any]) -> None:
    """Write scores as indented JSON, atomically, NaN as null, keys in their order (classes by index).

    Args:
        path: the file to write.
        data: the scores / metrics record.
    """
    atomic_write_text(path, json.dumps(_json_safe(data), indent=2) + "\n")


def sliding_windows(height: int, width: int, crop: int, stride: int) -> list[tuple[int, int, int, int]]:
    """The windows of mmsegmentation's slide inference over an image.

    Args:
        height: the image height.
        width: the image width.
        crop: the window side (clipped to the image when the image is smaller).
        stride: the step between window origins.

    Returns:
        `(y0, y1, x0, x1)` of each window, row by row; together they cover every pixel.
    """
    rows = max(height - crop + stride - 1, 0) // stride + 1
    cols = max(width - crop + stride - 1, 0) // stride + 1
    windows = []
    for r in range(rows):
        y1 = min(r * stride + crop, height)
        for c in range(cols):
            x1 = min(c * stride + crop, width)
            windows.append((max(y1 - crop, 0), y1, max(x1 - crop, 0), x1))
    return windows


def slide_logits(model, image: torch.Tensor, crop: int, stride: int, batch_size: int = 4) -> torch.Tensor:
    """(C, H, W) class scores of one (3, H, W) image from sliding windows, overlaps averaged.

    Args:
        model: a SegFormer / Mask2Former model (eval mode).
        image: the normalised image at full resolution, on the model's device.
        crop: the window side (the training crop size).
        stride: the step between windows.
        batch_size: windows per forward pass.

    Returns:
        Float scores at the image's size (argmax gives the prediction).
    """
    height, width = image.shape[-2:]
    windows = sliding_windows(height, width, crop, stride)
    total, count = None, torch.zeros((1, height, width), device=image.device)
    for start in range(0, len(windows), batch_size):
        chunk = windows[start : start + batch_size]
        # Windows of one image share a size (all crop x crop, or the whole smaller image).
        logits = semantic_logits(model, torch.stack([image[:, y0:y1, x0:x1] for y0, y1, x0, x1 in chunk])).float()
        size = (chunk[0][1] - chunk[0][0], chunk[0][3] - chunk[0][2])
        logits = torch.nn.functional.interpolate(logits, size=size, mode="bilinear", align_corners=False)
        if total is None:
            total = torch.zeros((logits.shape[1], height, width), device=image.device)
        for (y0, y1, x0, x1), window in zip(chunk, logits, strict=True):
            total[:, y0:y1, x0:x1] += window
            count[:, y0:y1, x0:x1] += 1
    return total / count


@torch.no_grad()
def evaluate(model, loader, accelerator, num_labels: int, id2label: dict[int, str], crop: int,
             stride: int | None = None) -> dict[str, Any]:
    """Score `model` on this process' evaluation rows at full resolution, summed over all processes.

    Args:
        model: an unwrapped SegFormer / Mask2Former model (its train/eval mode is restored after).
        loader: batches of `eval_collate` (full-resolution pixel values and labels, as lists).
        accelerator: the run's `Accelerator` (device, autocast, cross-process sum).
        num_labels: the number of classes C.
        id2label: class names for the per-class scores.
        crop: the sliding-window side (the training crop size).
        stride: the step between windows; default 2/3 of `crop` (mmsegmentation's slide setting).

    Returns:
        The scores of `alps_hf.metrics.confusion.scores_from_confusion` (mean_iou, mean_accuracy,
        overall_accuracy, per_class_iou, per_class_accuracy, num_pixels).
    """
    stride = stride or max(1, crop * 2 // 3)
    was_training = model.training
    model.eval()
    cm = ConfusionMatrix(num_labels, device=accelerator.device)
    for batch in loader:
        for image, label in zip(batch["pixel_values"], batch["labels"], strict=True):
            with accelerator.autocast():
                logits = slide_logits(model, image.to(accelerator.device), crop, stride, loader.batch_size or 1)
            cm.update(logits.argmax(dim=0), label.to(accelerator.device))
    cm.reduce(accelerator)
    model.train(was_training)
    return cm.compute(id2label)


def _eval_classes(config: EvaluateConfig, model_config) -> dict[int, str]:
    """The dataset's classes (its id2label.json or --id2label, else the model's), checked against the model."""
    try:
        id2label = read_id2label(config.dataset, config.id2label)
    except Exception:  # noqa: BLE001 - fall back on the model's own classes
        id2label = {int(k): v for k, v in model_config.id2label.items()}
    if len(id2label) != model_config.num_labels:
        raise DatasetFormatError(
            f"--dataset {config.dataset!r} has {len(id2label)} classes but --model {config.model!r} predicts {model_config.num_labels}; "
            "fine-tune it on this dataset first (alps-hf finetune --init ...)"
        )
    return id2label


def _output_file(config: EvaluateConfig) -> Path:
    """--output-file, else eval_<split>.json in the model folder (or here for a Hub id)."""
    if config.output_file:
        return Path(config.output_file)
    if Path(config.model).is_dir():
        return Path(config.model) / f"eval_{config.split}.json"
    return Path(f"eval_{config.split}.json")


def run_evaluate(config: EvaluateConfig) -> int:
    """`alps-hf evaluate`: score a saved model on a labeled split; print and write the metrics.

    Args:
        config: the resolved flags.

    Returns:
        0 (the exit status).

    Raises:
        CheckpointError: --model is not a SegFormer / Mask2Former checkpoint.
        DatasetFormatError, InputError: the dataset, split or classes do not fit the model.
    """
    from accelerate import Accelerator
    from torch.utils.data import DataLoader, Subset
    from transformers import AutoConfig

    apply_num_threads(config.num_threads)
    architecture = architecture_of(config.model, "--model")
    splits = load_splits(config.dataset, config.dataset_config)
    if config.split not in splits:
        raise DatasetFormatError(f"--split {config.split!r} not in {config.dataset!r}; splits found: {list(splits)}")
    id2label = _eval_classes(config, AutoConfig.from_pretrained(config.model))
    ds = splits[config.split]
    validate_split(ds, config.split, config.image_column, config.label_column, len(id2label), 64)
    if config.max_samples:
        ds = ds.select(range(min(config.max_samples, len(ds))))
    accelerator = Accelerator(mixed_precision=config.mixed_precision)
    model = model_class(architecture).from_pretrained(config.model).to(accelerator.device)
    processor = load_image_processor(config.model, architecture)
    # The window is the crop the model was trained on: the size its saved processor resizes to.
    size = processor.size
    crop = config.crop_size or (size["height"] if "height" in size else 512)
    dataset = SegmentationDataset(ds, image_column=config.image_column, label_column=config.label_column,
                                  num_labels=len(id2label), mean=processor.image_mean, std=processor.image_std,
                                  crop_size=crop, train=False, architecture=architecture, split=config.split)
    mine = Subset(dataset, list(range(accelerator.process_index, len(dataset), accelerator.num_processes)))
    loader = DataLoader(mine, batch_size=config.batch_size, collate_fn=eval_collate, num_workers=config.num_workers)
    scores = evaluate(model, loader, accelerator, len(id2label), id2label, crop, config.eval_stride)
    result = {"model": config.model, "dataset": config.dataset, "split": config.split, "num_examples": len(ds), "eval": scores}
    out = _output_file(config)
    if accelerator.is_main_process:
        write_metrics_json(out, result)
        accelerator.print(
            f"{config.split} ({len(ds)} examples): mIoU {scores['mean_iou']:.4f}  mean acc {scores['mean_accuracy']:.4f}  "
            f"overall acc {scores['overall_accuracy']:.4f}"
        )
        for name, iou in scores["per_class_iou"].items():
            accelerator.print(f"  {name}: {'n/a' if iou is None else f'{iou:.4f}'}")
        accelerator.print(f"wrote {out}")
    return 0
