"""Evaluation of a segmentation model: during training (`evaluate`) and for a saved model (`alps-hf evaluate`).

Scores are computed at label resolution from one confusion matrix per process, summed over
processes (`alps_hf.metrics.confusion`); each process scores its own rows (rank::world), so no row
is counted twice.
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


@torch.no_grad()
def evaluate(model, loader, accelerator, num_labels: int, id2label: dict[int, str]) -> dict[str, Any]:
    """Score `model` on this process' evaluation rows, summed over all processes.

    Args:
        model: an unwrapped SegFormer / Mask2Former model (its train/eval mode is restored after).
        loader: batches of `eval_collate` (pixel values, labels at their own size).
        accelerator: the run's `Accelerator` (device, autocast, cross-process sum).
        num_labels: the number of classes C.
        id2label: class names for the per-class scores.

    Returns:
        The scores of `alps_hf.metrics.confusion.scores_from_confusion` (mean_iou, mean_accuracy,
        overall_accuracy, per_class_iou, per_class_accuracy, num_pixels).
    """
    was_training = model.training
    model.eval()
    cm = ConfusionMatrix(num_labels, device=accelerator.device)
    for batch in loader:
        with accelerator.autocast():
            logits = semantic_logits(model, batch["pixel_values"].to(accelerator.device))
        cm.update_from_logits(logits.float(), [label.to(accelerator.device) for label in batch["labels"]])
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
    size = processor.size
    eval_size = (size["height"], size["width"]) if getattr(size, "height", None) or "height" in size else (512, 512)
    dataset = SegmentationDataset(ds, image_column=config.image_column, label_column=config.label_column,
                                  num_labels=len(id2label), mean=processor.image_mean, std=processor.image_std,
                                  crop_size=eval_size[0], train=False, architecture=architecture,
                                  eval_size=eval_size, split=config.split)
    mine = Subset(dataset, list(range(accelerator.process_index, len(dataset), accelerator.num_processes)))
    loader = DataLoader(mine, batch_size=config.batch_size, collate_fn=eval_collate, num_workers=config.num_workers)
    scores = evaluate(model, loader, accelerator, len(id2label), id2label)
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
