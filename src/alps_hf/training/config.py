"""Config dataclasses of `alps-hf pretrain`, `alps-hf finetune` and `alps-hf evaluate`.

Every field is a dashed flag (`--crop-size`; booleans as `--flips` / `--no-flips`), listed by `--help`
under its `group`; values are checked in `__post_init__`, before any model or dataset loads.
"""

from __future__ import annotations

from dataclasses import dataclass

from alps_hf.config_utils import arg
from alps_hf.errors import ConfigError

SCHEDULES = ("poly", "cosine", "linear", "constant")
MIXED_PRECISION = ("no", "fp16", "bf16", "fp8")
# The headings `--help` lists the flags under (cli.py reads each field's `group`).
_DATA = "data"
_MODEL = "model"
_AUGMENTATION = "augmentation"
_OPTIMISATION = "optimisation"
_OUTPUT_AND_CHECKPOINTS = "output and checkpoints"
_EVALUATION_AND_LOGGING = "evaluation and logging"
_SCALE = "scale"
_STRIDE_HELP = ("Evaluation infers on each full-resolution image in sliding windows of the crop size (mmsegmentation's "
                "slide mode), this many pixels apart; default 2/3 of the crop. An image no larger than the crop is one window.")
_THREADS_HELP = ("CPU threads of this process (torch.set_num_threads); default: $OMP_NUM_THREADS when set, else all cores. "
                 "Give 1 when several runs share a small machine.")


def check_num_threads(value: int | None) -> None:
    """Raise `ConfigError` unless --num-threads is None or >= 1.

    Args:
        value: the flag's value.

    Raises:
        ConfigError: naming the value.
    """
    if value is not None and value < 1:
        raise ConfigError(f"--num-threads {value} must be >= 1 (or leave it out: $OMP_NUM_THREADS, else all cores)")


def apply_num_threads(value: int | None) -> int:
    """Set torch's intra-op threads from --num-threads, else from $OMP_NUM_THREADS (when set).

    Args:
        value: the flag's value, or None.

    Returns:
        The thread count torch uses now.
    """
    import os

    import torch

    env = os.environ.get("OMP_NUM_THREADS", "")
    count = value if value is not None else (int(env) if env.isdigit() and int(env) > 0 else None)
    if count is not None and torch.get_num_threads() != count:
        torch.set_num_threads(count)
    return torch.get_num_threads()


@dataclass
class TrainConfig:
    """Pre-training on pseudo-labels (`pretrain`) or fine-tuning on labeled data (`finetune`)."""

    dataset: str = arg(help="Dataset: a folder written by `alps-hf label` (Hub layout), a save_to_disk folder, or a Hub id.", group=_DATA)
    output: str = arg(help="Output folder: the final model, metrics, curve and card; checkpoints under <output>/checkpoints/.", group=_OUTPUT_AND_CHECKPOINTS)
    model: str | None = arg(None, help="Named variant (segformer-b0..b5, mask2former-swin-tiny/small/base) or a checkpoint id/folder.", group=_MODEL)
    init: str | None = arg(None, help="Checkpoint to start from (an alps_hf output folder or any compatible checkpoint); the head is re-initialised for the dataset's classes.", group=_MODEL)
    head_init: str = arg(
        "clusters",
        help="With --init of a checkpoint whose classes are not the dataset's (e.g. pseudo-classes): 'clusters' "
        "starts each new class's classifier from the checkpoint's classes it is predicted as on the training rows "
        "(P(cluster | class)-weighted), 'random' re-initialises it.", group=_MODEL)
    backbone: str | None = arg(None, help="Encoder weights for a named --model (ImageNet id or folder); default: the variant's ImageNet encoder.", group=_MODEL)
    from_scratch: bool = arg(False, help="Random initialisation of a named --model (no --backbone weights).", group=_MODEL)
    model_config_overrides: str | None = arg(None, help='JSON object of config fields to change for a named variant, e.g. \'{"drop_path_rate": 0.2}\'.', group=_MODEL)
    id2label: str | None = arg(None, help="Class names: a JSON file or inline JSON object; default: id2label.json of the dataset.", group=_DATA)
    dataset_config: str | None = arg(None, help="Config name of a Hub dataset with several configs.", group=_DATA)
    train_split: str = arg("train", help="Split to train on.", group=_DATA)
    eval_split: str | None = arg(None, help="Split to evaluate on; default 'validation' if the dataset has one; 'none' disables evaluation.", group=_DATA)
    image_column: str = arg("image", help="Image column.", group=_DATA)
    label_column: str = arg("label", help="Label column (class indices 0..K-1, 255 = ignore).", group=_DATA)
    train_fraction: float | None = arg(None, help="Train on a seeded random fraction (0, 1] of the training split.", group=_DATA)
    train_samples: int | None = arg(None, help="Train on this many seeded random examples of the training split.", group=_DATA)
    crop_size: int = arg(512, help="Training crop size (square); also the size the saved image processor resizes to.", group=_AUGMENTATION)
    scale_min: float = arg(0.5, help="Smallest random rescale factor before cropping.", group=_AUGMENTATION)
    scale_max: float = arg(2.0, help="Largest random rescale factor before cropping.", group=_AUGMENTATION)
    flips: bool = arg(True, help="Random horizontal and vertical flips.", group=_AUGMENTATION)
    rotations: bool = arg(True, help="Random 90-degree rotations.", group=_AUGMENTATION)
    color_jitter: float = arg(0.1, help="Brightness / contrast / saturation jitter amplitude (0 disables).", group=_AUGMENTATION)
    batch_size: int = arg(8, help="Training batch size per device.", group=_OPTIMISATION)
    eval_batch_size: int = arg(4, help="Evaluation batch size per device.", group=_EVALUATION_AND_LOGGING)
    learning_rate: float = arg(1e-4, help="Peak learning rate of the decode head / transformer decoder.", group=_OPTIMISATION)
    backbone_learning_rate: float | None = arg(None, help="Peak learning rate of the encoder; default --learning-rate / 10 for pre-trained encoder weights (--backbone, --init), the full --learning-rate with --from-scratch.", group=_OPTIMISATION)
    weight_decay: float = arg(0.01, help="AdamW weight decay (not applied to norms and biases).", group=_OPTIMISATION)
    lr_scheduler: str = arg("poly", help=f"Schedule after warmup: {', '.join(SCHEDULES)}.", group=_OPTIMISATION)
    poly_power: float = arg(1.0, help="Power of the poly schedule.", group=_OPTIMISATION)
    warmup_steps: int | None = arg(None, help="Linear warmup steps; default --warmup-ratio x total steps.", group=_OPTIMISATION)
    warmup_ratio: float = arg(0.05, help="Warmup as a fraction of the total steps (when --warmup-steps is not given).", group=_OPTIMISATION)
    gradient_accumulation_steps: int = arg(1, help="Micro-batches per optimizer step.", group=_OPTIMISATION)
    max_grad_norm: float = arg(1.0, help="Gradient clipping norm (0 disables).", group=_OPTIMISATION)
    max_steps: int | None = arg(None, help="Optimizer steps to train (wins over --epochs).", group=_OPTIMISATION)
    epochs: int = arg(10, help="Epochs to train when --max-steps is not given.", group=_OPTIMISATION)
    seed: int = arg(42, help="Seed of initialisation, shuffling, augmentation and --train-fraction subsets.", group=_OPTIMISATION)
    checkpointing_steps: int = arg(500, help="Save a resumable checkpoint every N optimizer steps (0: none).", group=_OUTPUT_AND_CHECKPOINTS)
    checkpoints_total_limit: int = arg(2, help="Keep the last M checkpoints.", group=_OUTPUT_AND_CHECKPOINTS)
    resume: str | None = arg(None, help="Resume from 'latest' (in <output>/checkpoints) or a checkpoint folder.", group=_OUTPUT_AND_CHECKPOINTS)
    overwrite: bool = arg(False, help="Allow writing into an existing --output folder.", group=_OUTPUT_AND_CHECKPOINTS)
    push_to_hub: str | None = arg(None, help="After training, publish --output to this Hub model repo id.", group=_OUTPUT_AND_CHECKPOINTS)
    private: bool = arg(False, help="With --push-to-hub: create the repo private.", group=_OUTPUT_AND_CHECKPOINTS)
    eval_steps: int = arg(500, help="Evaluate every N optimizer steps (0: only at the end).", group=_EVALUATION_AND_LOGGING)
    eval_stride: int | None = arg(None, help=_STRIDE_HELP, group=_EVALUATION_AND_LOGGING)
    max_eval_samples: int | None = arg(None, help="Evaluate on at most this many examples.", group=_EVALUATION_AND_LOGGING)
    logging_steps: int = arg(10, help="Log loss / lr to the trackers every N optimizer steps.", group=_EVALUATION_AND_LOGGING)
    num_workers: int = arg(2, help="DataLoader workers (decoding and augmentation run there).", group=_SCALE)
    mixed_precision: str | None = arg(None, help="no / fp16 / bf16 / fp8; default: what `accelerate config` chose.", group=_SCALE)
    num_threads: int | None = arg(None, help=_THREADS_HELP, group=_SCALE)
    report_to: str = arg("none", help="Tracker: none or tensorboard (or any tracker name accelerate knows).", group=_EVALUATION_AND_LOGGING)
    validate_samples: int | None = arg(256, help="Check labels and sizes of this many examples per split before training (all are checked as they load).", group=_DATA)

    def __post_init__(self) -> None:
        if self.train_fraction is not None and not 0 < self.train_fraction <= 1:
            raise ConfigError(f"--train-fraction {self.train_fraction} must be in (0, 1] (e.g. 0.05 for 5 %)")
        if self.train_samples is not None and self.train_samples < 1:
            raise ConfigError(f"--train-samples {self.train_samples} must be >= 1")
        if self.train_fraction is not None and self.train_samples is not None:
            raise ConfigError("give --train-fraction or --train-samples, not both")
        if self.head_init not in ("clusters", "random"):
            raise ConfigError(f"--head-init {self.head_init!r}: choose clusters or random")
        if self.lr_scheduler not in SCHEDULES:
            raise ConfigError(f"--lr-scheduler {self.lr_scheduler!r}: choose one of {', '.join(SCHEDULES)}")
        if self.mixed_precision is not None and self.mixed_precision not in MIXED_PRECISION:
            raise ConfigError(f"--mixed-precision {self.mixed_precision!r}: choose one of {', '.join(MIXED_PRECISION)}")
        for name in ("crop_size", "batch_size", "eval_batch_size", "gradient_accumulation_steps", "epochs"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} {getattr(self, name)} must be >= 1")
        if self.max_steps is not None and self.max_steps < 1:
            raise ConfigError(f"--max-steps {self.max_steps} must be >= 1")
        if self.max_steps is not None and self.warmup_steps is not None and self.warmup_steps >= self.max_steps:
            raise ConfigError(f"--warmup-steps {self.warmup_steps} must be below --max-steps {self.max_steps}")
        if not 0 < self.scale_min <= self.scale_max:
            raise ConfigError(f"--scale-min {self.scale_min} / --scale-max {self.scale_max}: need 0 < min <= max")
        if not 0 <= self.color_jitter < 1:
            raise ConfigError(f"--color-jitter {self.color_jitter} must be in [0, 1)")
        if self.checkpoints_total_limit < 1:
            raise ConfigError(f"--checkpoints-total-limit {self.checkpoints_total_limit} must be >= 1")
        if self.eval_stride is not None and not 1 <= self.eval_stride <= self.crop_size:
            raise ConfigError(f"--eval-stride {self.eval_stride} must be in 1..--crop-size ({self.crop_size})")
        for name in ("checkpointing_steps", "eval_steps", "logging_steps", "num_workers", "warmup_steps"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ConfigError(f"--{name.replace('_', '-')} {value} must be >= 0")
        if self.learning_rate <= 0 or (self.backbone_learning_rate is not None and self.backbone_learning_rate < 0):
            raise ConfigError("--learning-rate must be > 0 and --backbone-learning-rate >= 0")
        check_num_threads(self.num_threads)
        if self.backbone_learning_rate is None:
            # A random encoder has nothing to protect: a tenth of the rate would only slow it down.
            self.backbone_learning_rate = self.learning_rate if self.from_scratch else self.learning_rate / 10


@dataclass
class EvaluateConfig:
    """Score a trained model on a labeled split: mIoU, mean / overall accuracy, per-class IoU."""

    model: str = arg(help="A model folder written by pretrain / finetune, or a checkpoint id.")
    dataset: str = arg(help="Dataset (folder, save_to_disk folder or Hub id) with image and label columns.")
    split: str = arg("validation", help="Split to score.")
    dataset_config: str | None = arg(None, help="Config name of a Hub dataset with several configs.")
    image_column: str = arg("image", help="Image column.")
    label_column: str = arg("label", help="Label column.")
    id2label: str | None = arg(None, help="Class names of the dataset (JSON file or inline); default: its id2label.json, else the model's.")
    batch_size: int = arg(4, help="Batch size per device.")
    num_workers: int = arg(2, help="DataLoader workers.")
    max_samples: int | None = arg(None, help="Score at most this many examples.")
    output_file: str | None = arg(None, help="Where to write the metrics JSON; default <model>/eval_<split>.json for a local model, else ./eval_<split>.json.")
    mixed_precision: str | None = arg(None, help="no / fp16 / bf16; default: what `accelerate config` chose.")
    num_threads: int | None = arg(None, help=_THREADS_HELP)
    crop_size: int | None = arg(None, help="Sliding-window side for inference; default: the size the model's saved image processor resizes to (its training crop).")
    eval_stride: int | None = arg(None, help=_STRIDE_HELP)

    def __post_init__(self) -> None:
        check_num_threads(self.num_threads)
        for name in ("crop_size", "eval_stride"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} {getattr(self, name)} must be >= 1")
        if self.batch_size < 1:
            raise ConfigError(f"--batch-size {self.batch_size} must be >= 1")
        if self.mixed_precision is not None and self.mixed_precision not in MIXED_PRECISION:
            raise ConfigError(f"--mixed-precision {self.mixed_precision!r}: choose one of {', '.join(MIXED_PRECISION)}")
