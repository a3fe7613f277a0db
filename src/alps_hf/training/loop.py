"""Pre-training and fine-tuning with Accelerate: one loop in the shape of transformers'
`run_semantic_segmentation_no_trainer.py`, plus `evaluate` for a saved model.

`train(config, task)` reads as: check flags and folders -> load and check data -> build the model ->
AdamW (encoder and head learning rates) + warmup/poly-or-cosine schedule -> `accelerator.prepare` ->
resume -> the loop (accumulate, clip, step, log, evaluate, checkpoint) -> save the final model folder.

Works the same in one process (`alps-hf pretrain ...`) and under `accelerate launch` (DDP, FSDP,
mixed precision from `accelerate config` or `--mixed-precision`).

Output folder (`--output`), the names `alps_hf.hub.cards` and `alps_hf.hub.publish` rely on:
`config.json` + `model.safetensors` + `preprocessor_config.json` (`save_pretrained`), `id2label.json`,
`training_config.json`, `metrics.json`, `training_curve.png`, `README.md` (model card), and
`checkpoints/checkpoint-<step>/` (accelerate `save_state` + `trainer_state.json`, the last M kept).
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from pathlib import Path
from typing import Any

import torch

from alps_hf import __version__
from alps_hf.config_utils import atomic_write_text, config_to_dict, save_config
from alps_hf.errors import CheckpointError, ConfigError, DatasetFormatError
from alps_hf.metrics.confusion import ConfusionMatrix
from alps_hf.training.config import EvaluateConfig, TrainConfig
from alps_hf.training.data import (
    EpochSampler,
    SegmentationDataset,
    collate,
    eval_collate,
    load_splits,
    read_id2label,
    select_subset,
    validate_split,
)
from alps_hf.training.models import (
    backbone_prefix,
    build_image_processor,
    build_model,
    load_image_processor,
    model_class,
    resolve_model,
    semantic_logits,
)

logger = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"
STATE_FILE = "trainer_state.json"  # written last: its presence marks a complete checkpoint


# ---------------------------------------------------------------------------------------------------
# Entry points of the CLI


def _push(config: TrainConfig) -> None:
    """--push-to-hub: publish the finished output folder from the main process only."""
    from accelerate import PartialState

    if config.push_to_hub and PartialState().is_main_process:
        from alps_hf.hub.publish import push_to_hub

        push_to_hub(config.output, config.push_to_hub, private=config.private)


def run_pretrain(config: TrainConfig) -> int:
    """`alps-hf pretrain`: train on pseudo-labels (the K pseudo-classes of `alps-hf label`)."""
    train(config, task="pretrain")
    _push(config)
    return 0


def run_finetune(config: TrainConfig) -> int:
    """`alps-hf finetune`: train on labeled data, usually from an ALPS checkpoint (`--init`)."""
    train(config, task="finetune")
    _push(config)
    return 0


# ---------------------------------------------------------------------------------------------------
# Checks done before anything heavy


def list_checkpoints(output: Path) -> list[Path]:
    """Complete checkpoints under `<output>/checkpoints`, oldest first (by step)."""
    folder = output / CHECKPOINTS
    if not folder.is_dir():
        return []
    found = [p for p in folder.glob("checkpoint-*") if p.name.split("-")[-1].isdigit() and (p / STATE_FILE).is_file()]
    return sorted(found, key=lambda p: int(p.name.split("-")[-1]))


def resolve_resume(config: TrainConfig) -> Path | None:
    """The checkpoint to resume from, and the output-folder rule (exists -> --overwrite or --resume).

    Raises:
        ConfigError: the output folder exists and is not empty, without --overwrite / --resume.
        CheckpointError: --resume names no complete checkpoint.
    """
    output = Path(config.output)
    if config.resume is None:
        if output.exists() and any(output.iterdir()) and not config.overwrite:
            raise ConfigError(f"--output {str(output)!r} exists and is not empty; pass --overwrite to write into it or --resume latest to continue")
        return None
    if config.resume == "latest":
        found = list_checkpoints(output)
        if not found:
            raise CheckpointError(f"--resume latest: no checkpoint in {str(output / CHECKPOINTS)!r}; start without --resume")
        return found[-1]
    path = Path(config.resume)
    if not (path / STATE_FILE).is_file():
        raise CheckpointError(f"--resume {config.resume!r} is not a complete checkpoint folder (no {STATE_FILE}); give 'latest' or a {CHECKPOINTS}/checkpoint-<step> folder")
    return path


def _pick_eval_split(splits, requested: str | None) -> str | None:
    if requested is not None and requested.lower() == "none":
        return None
    if requested is None:
        return "validation" if "validation" in splits else None
    if requested not in splits:
        raise DatasetFormatError(f"--eval-split {requested!r} not in the dataset; splits found: {list(splits)} (or --eval-split none)")
    return requested


# ---------------------------------------------------------------------------------------------------
# Pieces of the loop


def get_dataloaders(train_ds, eval_ds, config: TrainConfig, architecture: str, processor, num_labels: int,
                    process_index: int = 0, num_processes: int = 1):
    """The training DataLoader (seeded `EpochSampler`) and this process' share of the evaluation rows.

    Evaluation rows are split by process here (rank::world) rather than by `accelerator.prepare`,
    so no row is duplicated to even out batches; confusion matrices are summed afterwards.
    """
    from torch.utils.data import DataLoader, Subset

    common = {
        "image_column": config.image_column, "label_column": config.label_column, "num_labels": num_labels,
        "mean": processor.image_mean, "std": processor.image_std, "crop_size": config.crop_size,
        "architecture": architecture,
    }
    train_set = SegmentationDataset(train_ds, train=True, seed=config.seed, scale=(config.scale_min, config.scale_max),
                                    flips=config.flips, rotate=config.rotations, jitter=config.color_jitter,
                                    split=config.train_split, **common)
    sampler = EpochSampler(len(train_set), seed=config.seed)
    # Own generators: creating loader iterators must not consume the global RNG (dropout, point
    # sampling), or a resumed run would drift from an uninterrupted one.
    train_loader = DataLoader(train_set, batch_size=config.batch_size, sampler=sampler, collate_fn=collate,
                              num_workers=config.num_workers, pin_memory=torch.cuda.is_available(),
                              generator=torch.Generator().manual_seed(config.seed))
    eval_loader = None
    if eval_ds is not None:
        eval_set = SegmentationDataset(eval_ds, train=False, split=config.eval_split or "validation", **common)
        mine = Subset(eval_set, list(range(process_index, len(eval_set), num_processes)))
        eval_loader = DataLoader(mine, batch_size=config.eval_batch_size, collate_fn=eval_collate,
                                 num_workers=config.num_workers, generator=torch.Generator().manual_seed(0))
    return train_loader, sampler, eval_loader


def param_groups(model, lr: float, backbone_lr: float, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: encoder vs the rest (head / decoder), each with and without weight decay."""
    prefix = backbone_prefix(model)
    groups: dict[tuple[bool, bool], list] = {(b, d): [] for b in (True, False) for d in (True, False)}
    for name, param in model.named_parameters():
        if param.requires_grad:
            # Biases and norm scales are 1-D: decaying them only hurts.
            groups[(name.startswith(prefix), param.ndim > 1)].append(param)
    return [
        {"params": params, "lr": backbone_lr if is_backbone else lr, "weight_decay": weight_decay if decay else 0.0}
        for (is_backbone, decay), params in groups.items()
        if params
    ]


def lr_lambda(schedule: str, warmup: int, total: int, power: float = 1.0):
    """Multiplier of the peak learning rate at each optimizer step: linear warmup, then the schedule."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        if schedule == "constant":
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        if schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        if schedule == "linear":
            return 1.0 - progress
        return (1.0 - progress) ** power  # poly

    return factor


def training_loss(model, batch: dict[str, Any], architecture: str) -> torch.Tensor:
    """The loss of one batch for either architecture."""
    if architecture == "segformer":
        labels = batch["labels"]
        outputs = model(pixel_values=batch["pixel_values"], labels=labels)
        if not bool((labels != 255).any()):
            # All pixels ignored (e.g. a crop where SAM found no mask): the mean loss is NaN;
            # a zero that still touches the graph keeps DDP's gradient hooks in step.
            return outputs.logits.sum() * 0.0
        return outputs.loss
    return model(pixel_values=batch["pixel_values"], mask_labels=batch["mask_labels"], class_labels=batch["class_labels"]).loss


@torch.no_grad()
def evaluate_model(model, loader, accelerator, num_labels: int, id2label: dict[int, str]) -> dict[str, Any]:
    """Scores of `model` on this process' eval rows, summed over processes (predictions at label size)."""
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


def _json_safe(value):
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


def write_json(path: Path, data: dict[str, Any]) -> None:
    atomic_write_text(path, json.dumps(_json_safe(data), indent=2) + "\n")


def plot_training_curve(history: list[dict[str, Any]], evals: list[dict[str, Any]], path: Path) -> None:
    """Training loss and validation mIoU by step, as a PNG (drawn by the card stage, which shows it)."""
    from alps_hf.hub.cards import render_training_curve

    render_training_curve(history, evals, path)


def _save_checkpoint(accelerator, output: Path, step: int, state: dict[str, Any], keep: int) -> None:
    """`save_state` into checkpoints/checkpoint-<step>, mark it complete, drop the oldest beyond `keep`."""
    folder = output / CHECKPOINTS / f"checkpoint-{step}"
    accelerator.save_state(str(folder))
    if accelerator.is_main_process:
        write_json(folder / STATE_FILE, state)
        for old in list_checkpoints(output)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()


def _write_card(output: Path) -> None:
    """Model card README.md, rendered by the publishing stage's template (alps_hf.hub.cards)."""
    from alps_hf.hub.cards import write_model_card

    write_model_card(output)


# ---------------------------------------------------------------------------------------------------
# The loop


def train(config: TrainConfig, task: str = "pretrain") -> dict[str, Any]:
    """Train a segmentation model on a `datasets` dataset and save it to `config.output`.

    Args:
        config: the resolved flags.
        task: "pretrain" (pseudo-labels) or "finetune" (labeled data); recorded for the card.

    Returns:
        The content of `metrics.json`.

    Raises:
        ConfigError, CheckpointError, InputError, DatasetFormatError: bad flags or data, before training.
    """
    from accelerate import Accelerator, DistributedDataParallelKwargs
    from accelerate.utils import set_seed
    from tqdm.auto import tqdm

    # 1. Flags, folders and data are checked before any model is built.
    output = Path(config.output)
    resume_from = resolve_resume(config)
    spec = resolve_model(config.model, config.init, config.backbone, config.from_scratch, config.model_config_overrides)
    splits = load_splits(config.dataset, config.dataset_config)
    if config.train_split not in splits:
        raise DatasetFormatError(f"--train-split {config.train_split!r} not in {config.dataset!r}; splits found: {list(splits)}")
    eval_split = _pick_eval_split(splits, config.eval_split)
    config.eval_split = eval_split or "none"
    id2label = read_id2label(config.dataset, config.id2label)
    num_labels = len(id2label)
    validate_split(splits[config.train_split], config.train_split, config.image_column, config.label_column, num_labels, config.validate_samples)
    train_ds = select_subset(splits[config.train_split], config.train_fraction, config.train_samples, config.seed)
    eval_ds = None
    if eval_split:
        validate_split(splits[eval_split], eval_split, config.image_column, config.label_column, num_labels, config.validate_samples)
        eval_ds = splits[eval_split]
        if config.max_eval_samples:
            eval_ds = eval_ds.select(range(min(config.max_eval_samples, len(eval_ds))))

    # 2. Accelerator, model, processor. The scheduler is stepped by hand once per optimizer step
    # (not once per process per micro-batch, accelerate's default), so its counts are optimizer steps.
    kwargs = [DistributedDataParallelKwargs(find_unused_parameters=True)] if spec.architecture == "mask2former" else []
    accelerator = Accelerator(
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        mixed_precision=config.mixed_precision,
        log_with=None if config.report_to == "none" else config.report_to,
        project_dir=str(output),
        step_scheduler_with_optimizer=False,
        kwargs_handlers=kwargs,
    )
    if accelerator.is_main_process:
        output.mkdir(parents=True, exist_ok=True)
    set_seed(config.seed)
    model = build_model(spec, id2label)
    processor = build_image_processor(spec.architecture, config.crop_size, source=spec.checkpoint or spec.backbone)
    train_loader, sampler, eval_loader = get_dataloaders(
        train_ds, eval_ds, config, spec.architecture, processor, num_labels, accelerator.process_index, accelerator.num_processes
    )

    optimizer = torch.optim.AdamW(param_groups(model, config.learning_rate, config.backbone_learning_rate, config.weight_decay))
    model, optimizer, train_loader = accelerator.prepare(model, optimizer, train_loader)
    steps_per_epoch = math.ceil(len(train_loader) / config.gradient_accumulation_steps)
    max_steps = config.max_steps or config.epochs * steps_per_epoch
    warmup = config.warmup_steps if config.warmup_steps is not None else round(config.warmup_ratio * max_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(config.lr_scheduler, warmup, max_steps, config.poly_power))
    scheduler = accelerator.prepare(scheduler)
    if config.report_to != "none":
        accelerator.init_trackers("alps_hf", config={k: v for k, v in config_to_dict(config).items() if isinstance(v, (int, float, str, bool))})

    # 3. Resume: weights, optimizer, scheduler and RNG from save_state; the data position from the step.
    completed, history, evals = 0, [], []
    if resume_from is not None:
        accelerator.load_state(str(resume_from))
        state = json.loads((resume_from / STATE_FILE).read_text())
        completed, history, evals = int(state["step"]), state.get("history", []), state.get("evals", [])
        if state.get("total_batch_size") != config.batch_size * accelerator.num_processes * config.gradient_accumulation_steps:
            logger.warning("resuming with another total batch size than %s: the run will not match an uninterrupted one", resume_from)
        accelerator.print(f"resumed from {resume_from} at step {completed}")
    total_batch = config.batch_size * accelerator.num_processes * config.gradient_accumulation_steps
    accelerator.print(
        f"{task}: {spec.architecture} ({spec.name or spec.checkpoint}), {num_labels} classes, {len(train_ds)} training examples, "
        f"{max_steps} steps of {total_batch} images on {accelerator.num_processes} process(es)"
    )

    def run_eval(step: int) -> dict[str, Any]:
        scores = evaluate_model(accelerator.unwrap_model(model), eval_loader, accelerator, num_labels, id2label)
        evals.append({"step": step, "mean_iou": scores["mean_iou"], "mean_accuracy": scores["mean_accuracy"],
                      "overall_accuracy": scores["overall_accuracy"]})
        accelerator.log({f"eval/{k}": v for k, v in evals[-1].items() if k != "step"}, step=step)
        return scores

    # 4. The loop. An epoch's order depends on (seed, epoch) only, so skipping the batches already
    # done puts a resumed run exactly where the interrupted one stopped.
    bar = tqdm(total=max_steps, initial=completed, disable=not accelerator.is_local_main_process, desc=task)
    epoch, skip = divmod(completed, steps_per_epoch)
    skip *= config.gradient_accumulation_steps
    window_loss, window_micro = torch.zeros((), device=accelerator.device), 0
    window_start, window_images, start_time, images_seen = time.perf_counter(), 0, time.perf_counter(), 0
    scores: dict[str, Any] = {}
    model.train()
    while completed < max_steps:
        # Through the prepared loader: accelerate re-applies its own epoch counter to the sampler.
        train_loader.set_epoch(epoch)
        if skip:
            sampler.skip_next(skip * config.batch_size * accelerator.num_processes)
            skip = 0
        for batch in train_loader:
            with accelerator.accumulate(model):
                loss = training_loss(model, batch, spec.architecture)
                accelerator.backward(loss)
                if accelerator.sync_gradients and config.max_grad_norm > 0:
                    accelerator.clip_grad_norm_(model.parameters(), config.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad()
            window_loss += loss.detach().float()
            window_micro += 1
            window_images += batch["pixel_values"].shape[0] * accelerator.num_processes
            if not accelerator.sync_gradients:
                continue
            scheduler.step()
            completed += 1
            bar.update(1)
            if completed % max(1, config.logging_steps) == 0 or completed == max_steps:
                mean_loss = accelerator.reduce(window_loss, reduction="mean").item() / window_micro
                lr = scheduler.get_last_lr()[-1]
                now = time.perf_counter()
                speed = window_images / max(now - window_start, 1e-9)
                history.append({"step": completed, "loss": mean_loss, "lr": lr, "time": now - start_time})
                accelerator.log({"train/loss": mean_loss, "train/lr": lr, "train/images_per_second": speed}, step=completed)
                bar.set_postfix(loss=f"{mean_loss:.4f}", lr=f"{lr:.2e}", img_s=f"{speed:.1f}")
                images_seen += window_images
                window_loss.zero_()
                window_micro, window_images, window_start = 0, 0, now
            if eval_loader is not None and config.eval_steps and completed % config.eval_steps == 0 and completed < max_steps:
                run_eval(completed)
            if config.checkpointing_steps and completed % config.checkpointing_steps == 0:
                _save_checkpoint(accelerator, output, completed, {
                    "step": completed, "epoch": epoch, "history": history, "evals": evals, "total_batch_size": total_batch,
                    "alps_hf_version": __version__,
                }, config.checkpoints_total_limit)
            if completed >= max_steps:
                break
        epoch += 1
    bar.close()
    runtime = time.perf_counter() - start_time

    # 5. Final evaluation and the model folder.
    if eval_loader is not None:
        scores = run_eval(completed)
    accelerator.wait_for_everyone()
    metrics = {
        "task": task,
        "dataset": config.dataset,
        "split": eval_split,
        "step": completed,
        "eval": scores,
        "train": {"final_loss": history[-1]["loss"] if history else None, "steps": completed,
                  "examples": len(train_ds), "images_per_second": images_seen / runtime if runtime > 0 else None},
        "history": history,
        "evals": evals,
    }
    if accelerator.is_main_process:
        unwrapped = accelerator.unwrap_model(model)
        unwrapped.save_pretrained(str(output), save_function=accelerator.save)
        processor.save_pretrained(str(output))
        write_json(output / "id2label.json", {str(k): v for k, v in id2label.items()})
        save_config(config, output / "training_config.json", task=task, alps_hf_version=__version__,
                    architecture=spec.architecture, base_model=spec.checkpoint, backbone=spec.backbone,
                    num_labels=num_labels, train_examples=len(train_ds), total_steps=max_steps,
                    total_batch_size=total_batch, num_processes=accelerator.num_processes,
                    mixed_precision=accelerator.mixed_precision)
        write_json(output / "metrics.json", metrics)
        plot_training_curve(history, evals, output / "training_curve.png")
        _write_card(output)
        if scores:
            accelerator.print(f"{eval_split}: mIoU {scores['mean_iou']:.4f}, mean acc {scores['mean_accuracy']:.4f}, overall acc {scores['overall_accuracy']:.4f}")
        accelerator.print(f"saved {output}")
    accelerator.end_training()
    return metrics


# ---------------------------------------------------------------------------------------------------
# alps-hf evaluate


def run_evaluate(config: EvaluateConfig) -> int:
    """`alps-hf evaluate`: score a saved model on a labeled split; print and write the metrics."""
    from accelerate import Accelerator
    from transformers import AutoConfig

    from alps_hf.training.models import _architecture_of

    architecture = _architecture_of(config.model, "--model")
    splits = load_splits(config.dataset, config.dataset_config)
    if config.split not in splits:
        raise DatasetFormatError(f"--split {config.split!r} not in {config.dataset!r}; splits found: {list(splits)}")
    model_config = AutoConfig.from_pretrained(config.model)
    try:
        id2label = read_id2label(config.dataset, config.id2label)
    except Exception:  # noqa: BLE001 - fall back on the model's own classes
        id2label = {int(k): v for k, v in model_config.id2label.items()}
    if len(id2label) != model_config.num_labels:
        raise DatasetFormatError(
            f"--dataset {config.dataset!r} has {len(id2label)} classes but --model {config.model!r} predicts {model_config.num_labels}; "
            "fine-tune it on this dataset first (alps-hf finetune --init ...)"
        )
    ds = splits[config.split]
    validate_split(ds, config.split, config.image_column, config.label_column, len(id2label), 64)
    if config.max_samples:
        ds = ds.select(range(min(config.max_samples, len(ds))))
    accelerator = Accelerator(mixed_precision=config.mixed_precision)
    model = model_class(architecture).from_pretrained(config.model).to(accelerator.device)
    processor = load_image_processor(config.model, architecture)
    size = processor.size
    eval_size = (size["height"], size["width"]) if getattr(size, "height", None) or "height" in size else (512, 512)
    from torch.utils.data import DataLoader, Subset

    dataset = SegmentationDataset(ds, image_column=config.image_column, label_column=config.label_column,
                                  num_labels=len(id2label), mean=processor.image_mean, std=processor.image_std,
                                  crop_size=eval_size[0], train=False, architecture=architecture,
                                  eval_size=eval_size, split=config.split)
    mine = Subset(dataset, list(range(accelerator.process_index, len(dataset), accelerator.num_processes)))
    loader = DataLoader(mine, batch_size=config.batch_size, collate_fn=eval_collate, num_workers=config.num_workers)
    scores = evaluate_model(model, loader, accelerator, len(id2label), id2label)
    result = {"model": config.model, "dataset": config.dataset, "split": config.split, "num_examples": len(ds), "eval": scores}
    if config.output_file:
        out = Path(config.output_file)
    elif Path(config.model).is_dir():
        out = Path(config.model) / f"eval_{config.split}.json"
    else:
        out = Path(f"eval_{config.split}.json")
    if accelerator.is_main_process:
        write_json(out, result)
        accelerator.print(
            f"{config.split} ({len(ds)} examples): mIoU {scores['mean_iou']:.4f}  mean acc {scores['mean_accuracy']:.4f}  "
            f"overall acc {scores['overall_accuracy']:.4f}"
        )
        for name, iou in scores["per_class_iou"].items():
            accelerator.print(f"  {name}: {'n/a' if iou is None else f'{iou:.4f}'}")
        accelerator.print(f"wrote {out}")
    return 0
