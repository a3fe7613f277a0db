"""Pre-training and fine-tuning with Accelerate, in the shape of transformers' `run_semantic_segmentation_no_trainer.py`.

`train(config, task)` is a sequence of named steps, each a function a test or a notebook can call:

    load_data           flags, folders, splits, classes and labels checked (nothing heavy yet)
    build_accelerator   DDP / FSDP / mixed precision from `accelerate config` or the flags
    build_model         the SegFormer / Mask2Former of `alps_hf.training.models`, its image processor
    build_dataloaders   seeded training loader, this process' share of the evaluation rows
    build_optimizer     AdamW, encoder and head learning rates, no decay on norms and biases
    build_scheduler     warmup + poly / cosine / linear / constant (`transformers.get_scheduler`)
    maybe_resume        weights, optimizer, scheduler, RNG and data position of a checkpoint
    train_loop          accumulate, clip, step, log, evaluate, checkpoint
    save_outputs        the model folder: weights, processor, id2label, config, metrics, curve, card

Works the same in one process (`alps-hf pretrain ...`) and under `accelerate launch` (DDP, FSDP,
mixed precision from `accelerate config` or `--mixed-precision`). Evaluation lives in
`alps_hf.training.evaluation`.

Output folder (`--output`), the names `alps_hf.hub.cards` and `alps_hf.hub.publish` rely on:
`config.json` + `model.safetensors` + `preprocessor_config.json` (`save_pretrained`), `id2label.json`,
`training_config.json`, `metrics.json`, `training_curve.png`, `README.md` (model card), and
`checkpoints/checkpoint-<step>/` (accelerate `save_state` + `trainer_state.json`, the last M kept).
"""

from __future__ import annotations

import logging
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from alps_hf import __version__
from alps_hf.config_utils import config_to_dict, save_config
from alps_hf.core import IGNORE_INDEX, read_json
from alps_hf.errors import CheckpointError, ConfigError, DatasetFormatError
from alps_hf.training import models
from alps_hf.training.config import TrainConfig, apply_num_threads
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
from alps_hf.training.evaluation import (
    evaluate,
    run_evaluate,  # noqa: F401 - `alps-hf evaluate` is registered under this module
    write_metrics_json,
)
from alps_hf.training.models import ModelSpec, backbone_prefix, build_image_processor, resolve_model

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
    """`alps-hf pretrain`: train on pseudo-labels (the K pseudo-classes of `alps-hf label`); exit status 0."""
    train(config, task="pretrain")
    _push(config)
    return 0


def run_finetune(config: TrainConfig) -> int:
    """`alps-hf finetune`: train on labeled data, usually from an ALPS checkpoint (`--init`); exit status 0."""
    train(config, task="finetune")
    _push(config)
    return 0


# ---------------------------------------------------------------------------------------------------
# Checks done before anything heavy


def list_checkpoints(output: Path) -> list[Path]:
    """Complete checkpoints under `<output>/checkpoints`, oldest first (by step).

    Args:
        output: the run's output folder.

    Returns:
        The `checkpoint-<step>` folders that hold a `trainer_state.json`, sorted by step.
    """
    folder = output / CHECKPOINTS
    if not folder.is_dir():
        return []
    found = [p for p in folder.glob("checkpoint-*") if p.name.split("-")[-1].isdigit() and (p / STATE_FILE).is_file()]
    return sorted(found, key=lambda p: int(p.name.split("-")[-1]))


def resolve_resume(config: TrainConfig) -> Path | None:
    """The checkpoint to resume from, and the output-folder rule (exists -> --overwrite or --resume).

    Args:
        config: the resolved flags (`output`, `resume`, `overwrite`).

    Returns:
        The checkpoint folder, or None for a fresh run.

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
    """--eval-split resolved: 'none' -> None, default 'validation' when the dataset has one."""
    if requested is not None and requested.lower() == "none":
        return None
    if requested is None:
        return "validation" if "validation" in splits else None
    if requested not in splits:
        raise DatasetFormatError(f"--eval-split {requested!r} not in the dataset; splits found: {list(splits)} (or --eval-split none)")
    return requested


@dataclass
class RunData:
    """The checked data of a run.

    Attributes:
        train_ds: the training rows (after --train-fraction / --train-samples).
        eval_ds: the evaluation rows (after --max-eval-samples), or None without evaluation.
        eval_split: the name of the evaluation split, or None.
        id2label: the dataset's classes.
    """

    train_ds: Any
    eval_ds: Any | None
    eval_split: str | None
    id2label: dict[int, str]

    @property
    def num_labels(self) -> int:
        """K, the number of classes."""
        return len(self.id2label)


def load_data(config: TrainConfig) -> RunData:
    """Load the splits and check columns, classes, label values and sizes before any model is built.

    Args:
        config: the resolved flags; `config.eval_split` is set to the split chosen ("none" for none).

    Returns:
        The checked `RunData`.

    Raises:
        InputError, DatasetFormatError: the dataset, a split, its columns or labels are unusable.
    """
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
    return RunData(train_ds=train_ds, eval_ds=eval_ds, eval_split=eval_split, id2label=id2label)


# ---------------------------------------------------------------------------------------------------
# Building the pieces


def build_accelerator(config: TrainConfig, architecture: str):
    """The run's `Accelerator`.

    The scheduler is stepped by hand once per optimizer step (not once per process per micro-batch,
    accelerate's default), so its counts are optimizer steps. Mask2Former leaves some parameters
    unused in a step (queries that match nothing), which DDP must be told.

    Args:
        config: the resolved flags.
        architecture: "segformer" or "mask2former".

    Returns:
        An `accelerate.Accelerator`.
    """
    from accelerate import Accelerator, DistributedDataParallelKwargs

    kwargs = [DistributedDataParallelKwargs(find_unused_parameters=True)] if architecture == "mask2former" else []
    return Accelerator(
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        mixed_precision=config.mixed_precision,
        log_with=None if config.report_to == "none" else config.report_to,
        project_dir=str(config.output),
        step_scheduler_with_optimizer=False,
        kwargs_handlers=kwargs,
    )


def build_model(spec: ModelSpec, id2label: dict[int, str], crop_size: int):
    """The model of `spec` for the classes `id2label`, and the image processor saved with it.

    Args:
        spec: the resolved model flags (`resolve_model`).
        id2label: the dataset's classes.
        crop_size: the training crop size, the size the saved processor resizes to.

    Returns:
        `(model, processor)`.

    Raises:
        CheckpointError: the checkpoint or backbone cannot be loaded.
    """
    model = models.build_model(spec, id2label)
    processor = build_image_processor(spec.architecture, crop_size, source=spec.checkpoint or spec.backbone)
    return model, processor


def init_head_from_checkpoint(model, processor, spec: ModelSpec, data: RunData, config: TrainConfig) -> None:
    """`--head-init clusters`: start a re-initialised classifier from the checkpoint's classes (head_init.py).

    Nothing happens when the checkpoint has the dataset's classes (its head is kept as it is).
    """
    from transformers import AutoConfig

    from alps_hf.training import head_init

    source_labels = {int(k): str(v) for k, v in (AutoConfig.from_pretrained(spec.checkpoint).id2label or {}).items()}
    if source_labels == models.label_maps(data.id2label)["id2label"]:
        return
    with models.quiet_transformers():
        source = models.model_class(spec.architecture).from_pretrained(spec.checkpoint)
    counts = head_init.class_cluster_counts(source, processor, data.train_ds, config.image_column, config.label_column,
                                            data.num_labels)
    summary = head_init.mix_head(model, source, counts)
    del source
    print(f"--head-init clusters: the new classifier starts from the checkpoint's classes, "
          f"{head_init.describe(summary, data.id2label, source_labels)}")


def build_dataloaders(train_ds, eval_ds, config: TrainConfig, architecture: str, processor, num_labels: int,
                      process_index: int = 0, num_processes: int = 1):
    """The training DataLoader (seeded `EpochSampler`) and this process' share of the evaluation rows.

    Evaluation rows are split by process here (rank::world) rather than by `accelerator.prepare`,
    so no row is duplicated to even out batches; confusion matrices are summed afterwards.

    Args:
        train_ds: the training rows.
        eval_ds: the evaluation rows, or None.
        config: the resolved flags (augmentation, batch sizes, workers, seed).
        architecture: "segformer" or "mask2former" (Mask2Former needs mask / class targets).
        processor: the image processor (mean / std).
        num_labels: K.
        process_index: this process' rank.
        num_processes: the world size.

    Returns:
        `(train_loader, sampler, eval_loader)`; `eval_loader` is None without evaluation rows.
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
    """AdamW groups: encoder vs the rest (head / decoder), each with and without weight decay.

    Args:
        model: the model.
        lr: peak learning rate of the head / decoder.
        backbone_lr: peak learning rate of the encoder.
        weight_decay: decay of the matrices (not of biases and norm scales).

    Returns:
        Up to four parameter groups, each with its `lr` and `weight_decay`.
    """
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


def build_optimizer(model, config: TrainConfig) -> torch.optim.Optimizer:
    """AdamW over `param_groups` with --learning-rate, --backbone-learning-rate and --weight-decay.

    Args:
        model: the model (before `accelerator.prepare`).
        config: the resolved flags.

    Returns:
        The optimizer.
    """
    return torch.optim.AdamW(param_groups(model, config.learning_rate, config.backbone_learning_rate, config.weight_decay))


# --lr-scheduler names -> transformers' `SchedulerType` names.
HF_SCHEDULES = {"poly": "polynomial", "cosine": "cosine", "linear": "linear", "constant": "constant_with_warmup"}


def warmup_steps(config: TrainConfig, max_steps: int) -> int:
    """--warmup-steps, else round(--warmup-ratio x total steps); always below the total.

    Args:
        config: the resolved flags.
        max_steps: the optimizer steps of the run.

    Returns:
        The number of warmup steps.

    Raises:
        ConfigError: --warmup-steps is not below the run's optimizer steps (no step after warmup).
    """
    if config.warmup_steps is None:
        return round(config.warmup_ratio * max_steps)
    if config.warmup_steps >= max_steps:
        raise ConfigError(f"--warmup-steps {config.warmup_steps} is not below the run's {max_steps} optimizer steps; "
                          "give fewer --warmup-steps or more --max-steps / --epochs")
    return config.warmup_steps


def build_scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig, max_steps: int):
    """Linear warmup, then --lr-scheduler, by `transformers.get_scheduler`, counted in optimizer steps.

    transformers' schedules give their step 0 a learning rate of 0, so a run's first update would
    change nothing. Here updates count from 1: the scheduler is built for one more warmup and one
    more total step and advanced once before training, so update n (1-based) gets factor
    n / (warmup + 1) during warmup, 1 at the end of it, then poly (1 - progress) ** power (`lr_end`
    0), cosine, linear or constant down to the last update, with progress = (n - 1 - warmup) /
    (total - warmup). That is the schedule alps_hf had before it used `get_scheduler`
    (tests/test_train_models.py compares the two step by step).

    Args:
        optimizer: the optimizer (each group's `lr` is its peak).
        config: the resolved flags (schedule, power, warmup steps or ratio).
        max_steps: the optimizer steps of the run.

    Returns:
        A `torch.optim.lr_scheduler.LambdaLR` whose current lr is the one of the first update.

    Raises:
        ConfigError: --warmup-steps is not below the run's optimizer steps.
    """
    import warnings

    from transformers import get_scheduler

    warmup = warmup_steps(config, max_steps)
    extra = {"power": config.poly_power, "lr_end": 0.0} if config.lr_scheduler == "poly" else None
    scheduler = get_scheduler(HF_SCHEDULES[config.lr_scheduler], optimizer, num_warmup_steps=warmup + 1,
                              num_training_steps=max_steps + 1, scheduler_specific_kwargs=extra)
    with warnings.catch_warnings():
        # The advance past step 0 is on purpose, before any optimizer step.
        warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step")
        scheduler.step()
    return scheduler


def training_loss(model, batch: dict[str, Any], architecture: str) -> torch.Tensor:
    """The loss of one batch for either architecture.

    Args:
        model: the (prepared) model.
        batch: a `collate` batch.
        architecture: "segformer" or "mask2former".

    Returns:
        The scalar loss (0 that still touches the graph when every label pixel is ignored).
    """
    if architecture == "segformer":
        labels = batch["labels"]
        outputs = model(pixel_values=batch["pixel_values"], labels=labels)
        if not bool((labels != IGNORE_INDEX).any()):
            # All pixels ignored (e.g. a crop where SAM found no mask): the mean loss is NaN;
            # a zero that still touches the graph keeps DDP's gradient hooks in step.
            return outputs.logits.sum() * 0.0
        return outputs.loss
    return model(pixel_values=batch["pixel_values"], mask_labels=batch["mask_labels"], class_labels=batch["class_labels"]).loss


# ---------------------------------------------------------------------------------------------------
# The run's state, resume, the loop


@dataclass
class TrainRun:
    """Everything the loop steps share: the prepared pieces and the progress so far.

    Attributes:
        config, task, spec, data: the flags, "pretrain" / "finetune", the model source, the checked data.
        accelerator, model, processor, optimizer, scheduler: the prepared training objects.
        train_loader, sampler, eval_loader: the data loaders and the resumable sampler.
        max_steps, steps_per_epoch: optimizer steps in the run and per epoch.
        completed, epoch: optimizer steps done; the epoch being trained.
        history, evals: logged training records and evaluation records (metrics.json).
        images_seen, runtime: throughput bookkeeping of this process' session.
    """

    config: TrainConfig
    task: str
    spec: ModelSpec
    data: RunData
    accelerator: Any
    model: Any
    processor: Any
    optimizer: Any
    scheduler: Any
    train_loader: Any
    sampler: EpochSampler
    eval_loader: Any
    max_steps: int
    steps_per_epoch: int
    completed: int = 0
    epoch: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    evals: list[dict[str, Any]] = field(default_factory=list)
    images_seen: int = 0
    runtime: float = 0.0

    @property
    def total_batch(self) -> int:
        """Images per optimizer step over all processes."""
        return self.config.batch_size * self.accelerator.num_processes * self.config.gradient_accumulation_steps

    @property
    def output(self) -> Path:
        """The output folder."""
        return Path(self.config.output)


def setup(config: TrainConfig, task: str, spec: ModelSpec, data: RunData) -> TrainRun:
    """Build and prepare accelerator, model, loaders, optimizer and scheduler (the order fixes the RNG use).

    Args:
        config: the resolved flags.
        task: "pretrain" or "finetune".
        spec: the resolved model flags.
        data: the checked data.

    Returns:
        A `TrainRun` at step 0.

    Raises:
        CheckpointError: the checkpoint or backbone cannot be loaded.
    """
    from accelerate.utils import set_seed

    accelerator = build_accelerator(config, spec.architecture)
    set_seed(config.seed)
    model, processor = build_model(spec, data.id2label, config.crop_size)
    if spec.checkpoint and config.head_init == "clusters":
        init_head_from_checkpoint(model, processor, spec, data, config)
    # Only now: a start that fails (e.g. an encoder that cannot be loaded) leaves no empty --output
    # folder behind, which would block the retry.
    if accelerator.is_main_process:
        Path(config.output).mkdir(parents=True, exist_ok=True)
    train_loader, sampler, eval_loader = build_dataloaders(
        data.train_ds, data.eval_ds, config, spec.architecture, processor, data.num_labels,
        accelerator.process_index, accelerator.num_processes,
    )
    optimizer = build_optimizer(model, config)
    model, optimizer, train_loader = accelerator.prepare(model, optimizer, train_loader)
    steps_per_epoch = math.ceil(len(train_loader) / config.gradient_accumulation_steps)
    max_steps = config.max_steps or config.epochs * steps_per_epoch
    scheduler = accelerator.prepare(build_scheduler(optimizer, config, max_steps))
    if config.report_to != "none":
        accelerator.init_trackers("alps_hf", config={k: v for k, v in config_to_dict(config).items() if isinstance(v, (int, float, str, bool))})
    return TrainRun(config=config, task=task, spec=spec, data=data, accelerator=accelerator, model=model,
                    processor=processor, optimizer=optimizer, scheduler=scheduler, train_loader=train_loader,
                    sampler=sampler, eval_loader=eval_loader, max_steps=max_steps, steps_per_epoch=steps_per_epoch)


def maybe_resume(run: TrainRun, resume_from: Path | None) -> None:
    """Restore weights, optimizer, scheduler and RNG (`load_state`) and the progress of a checkpoint.

    The data position follows from the step (see `train_loop`). Does nothing for a fresh run.

    Args:
        run: the run, at step 0.
        resume_from: the checkpoint folder (`resolve_resume`), or None.
    """
    if resume_from is None:
        return
    run.accelerator.load_state(str(resume_from))
    state = read_json(resume_from / STATE_FILE)
    run.completed, run.history, run.evals = int(state["step"]), state.get("history", []), state.get("evals", [])
    if state.get("total_batch_size") != run.total_batch:
        logger.warning("resuming with another total batch size than %s: the run will not match an uninterrupted one", resume_from)
    run.accelerator.print(f"resumed from {resume_from} at step {run.completed}")


def run_evaluation(run: TrainRun) -> dict[str, Any]:
    """Evaluate at the current step, record it in `run.evals` and the trackers.

    Args:
        run: the run (with an evaluation loader).

    Returns:
        The full scores (`alps_hf.training.evaluation.evaluate`).
    """
    accelerator = run.accelerator
    scores = evaluate(accelerator.unwrap_model(run.model), run.eval_loader, accelerator, run.data.num_labels,
                      run.data.id2label, run.config.crop_size, run.config.eval_stride)
    record = {"step": run.completed, "mean_iou": scores["mean_iou"], "mean_accuracy": scores["mean_accuracy"],
              "overall_accuracy": scores["overall_accuracy"]}
    run.evals.append(record)
    accelerator.log({f"eval/{k}": v for k, v in record.items() if k != "step"}, step=run.completed)
    return scores


def save_checkpoint(run: TrainRun) -> None:
    """`save_state` into checkpoints/checkpoint-<step>, mark it complete, drop the oldest beyond the limit.

    Args:
        run: the run at the step to save.
    """
    accelerator, output = run.accelerator, run.output
    folder = output / CHECKPOINTS / f"checkpoint-{run.completed}"
    accelerator.save_state(str(folder))
    if accelerator.is_main_process:
        write_metrics_json(folder / STATE_FILE, {
            "step": run.completed, "epoch": run.epoch, "history": run.history, "evals": run.evals,
            "total_batch_size": run.total_batch, "alps_hf_version": __version__,
        })
        for old in list_checkpoints(output)[:-run.config.checkpoints_total_limit]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()


class _LossWindow:
    """Loss and images since the last log line: the logged loss is their mean, the speed their rate."""

    def __init__(self, device) -> None:
        self.loss, self.micro_batches, self.images = torch.zeros((), device=device), 0, 0
        self.session_start = self.start = time.perf_counter()

    def add(self, loss: torch.Tensor, images: int) -> None:
        """Count one micro-batch."""
        self.loss += loss.detach().float()
        self.micro_batches += 1
        self.images += images

    def flush(self, run: TrainRun, bar) -> None:
        """Append a history record, log it, and start a new window."""
        mean_loss = run.accelerator.reduce(self.loss, reduction="mean").item() / self.micro_batches
        lr = run.scheduler.get_last_lr()[-1]
        now = time.perf_counter()
        speed = self.images / max(now - self.start, 1e-9)
        run.history.append({"step": run.completed, "loss": mean_loss, "lr": lr, "time": now - self.session_start})
        run.accelerator.log({"train/loss": mean_loss, "train/lr": lr, "train/images_per_second": speed}, step=run.completed)
        bar.set_postfix(loss=f"{mean_loss:.4f}", lr=f"{lr:.2e}", img_s=f"{speed:.1f}")
        run.images_seen += self.images
        self.loss.zero_()
        self.micro_batches, self.images, self.start = 0, 0, now


def _after_optimizer_step(run: TrainRun, window: _LossWindow, bar) -> None:
    """Schedule, count, and log / evaluate / checkpoint when their step comes."""
    config = run.config
    run.scheduler.step()
    run.completed += 1
    bar.update(1)
    if run.completed % max(1, config.logging_steps) == 0 or run.completed == run.max_steps:
        window.flush(run, bar)
    if run.eval_loader is not None and config.eval_steps and run.completed % config.eval_steps == 0 and run.completed < run.max_steps:
        run_evaluation(run)
    if config.checkpointing_steps and run.completed % config.checkpointing_steps == 0:
        save_checkpoint(run)


def train_loop(run: TrainRun) -> None:
    """Train from `run.completed` to `run.max_steps` optimizer steps.

    An epoch's order depends on (seed, epoch) only, so skipping the batches already done puts a
    resumed run exactly where the interrupted one stopped.

    Args:
        run: the prepared (and possibly resumed) run; its progress fields are updated in place.
    """
    from tqdm.auto import tqdm

    config, accelerator, model = run.config, run.accelerator, run.model
    bar = tqdm(total=run.max_steps, initial=run.completed, disable=not accelerator.is_local_main_process, desc=run.task)
    run.epoch, skip = divmod(run.completed, run.steps_per_epoch)
    skip *= config.gradient_accumulation_steps
    window = _LossWindow(accelerator.device)
    model.train()
    while run.completed < run.max_steps:
        # Through the prepared loader: accelerate re-applies its own epoch counter to the sampler.
        run.train_loader.set_epoch(run.epoch)
        if skip:
            run.sampler.skip_next(skip * config.batch_size * accelerator.num_processes)
            skip = 0
        for batch in run.train_loader:
            with accelerator.accumulate(model):
                loss = training_loss(model, batch, run.spec.architecture)
                accelerator.backward(loss)
                if accelerator.sync_gradients and config.max_grad_norm > 0:
                    accelerator.clip_grad_norm_(model.parameters(), config.max_grad_norm)
                run.optimizer.step()
                run.optimizer.zero_grad()
            window.add(loss, batch["pixel_values"].shape[0] * accelerator.num_processes)
            if accelerator.sync_gradients:
                _after_optimizer_step(run, window, bar)
            if run.completed >= run.max_steps:
                break
        run.epoch += 1
    bar.close()
    run.runtime += time.perf_counter() - window.session_start


def save_outputs(run: TrainRun, scores: dict[str, Any], **recorded: Any) -> dict[str, Any]:
    """Write the model folder on the main process: weights, processor, id2label, config, metrics, curve, card.

    Args:
        run: the finished run.
        scores: the final evaluation scores ({} without evaluation).
        recorded: more facts of the run for training_config.json (e.g. num_threads).

    Returns:
        The content of `metrics.json`.
    """
    from alps_hf.hub.cards import render_training_curve, write_model_card

    accelerator, config, output, data = run.accelerator, run.config, run.output, run.data
    metrics = {
        "task": run.task,
        "dataset": config.dataset,
        "split": data.eval_split,
        "step": run.completed,
        "eval": scores,
        "train": {"final_loss": run.history[-1]["loss"] if run.history else None, "steps": run.completed,
                  "examples": len(data.train_ds),
                  "images_per_second": run.images_seen / run.runtime if run.runtime > 0 else None},
        "history": run.history,
        "evals": run.evals,
    }
    if accelerator.is_main_process:
        accelerator.unwrap_model(run.model).save_pretrained(str(output), save_function=accelerator.save)
        run.processor.save_pretrained(str(output))
        write_metrics_json(output / "id2label.json", {str(k): v for k, v in data.id2label.items()})
        save_config(config, output / "training_config.json", task=run.task, alps_hf_version=__version__,
                    architecture=run.spec.architecture, base_model=run.spec.checkpoint, backbone=run.spec.backbone,
                    num_labels=data.num_labels, train_examples=len(data.train_ds), total_steps=run.max_steps,
                    total_batch_size=run.total_batch, num_processes=accelerator.num_processes,
                    mixed_precision=accelerator.mixed_precision, **recorded)
        write_metrics_json(output / "metrics.json", metrics)
        render_training_curve(run.history, run.evals, output / "training_curve.png")
        write_model_card(output)
        if scores:
            accelerator.print(f"{data.eval_split}: mIoU {scores['mean_iou']:.4f}, mean acc {scores['mean_accuracy']:.4f}, "
                              f"overall acc {scores['overall_accuracy']:.4f}")
        accelerator.print(f"saved {output}")
    return metrics


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
    num_threads = apply_num_threads(config.num_threads)
    resume_from = resolve_resume(config)
    spec = resolve_model(config.model, config.init, config.backbone, config.from_scratch, config.model_config_overrides)
    data = load_data(config)
    run = setup(config, task, spec, data)
    maybe_resume(run, resume_from)
    run.accelerator.print(
        f"{task}: {spec.architecture} ({spec.name or spec.checkpoint}), {data.num_labels} classes, {len(data.train_ds)} training examples, "
        f"{run.max_steps} steps of {run.total_batch} images on {run.accelerator.num_processes} process(es)"
    )
    train_loop(run)
    scores = run_evaluation(run) if run.eval_loader is not None else {}
    run.accelerator.wait_for_everyone()
    metrics = save_outputs(run, scores, num_threads=num_threads)
    run.accelerator.end_training()
    return metrics
