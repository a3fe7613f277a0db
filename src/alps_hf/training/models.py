"""Segmentation models for ALPS pre-training and fine-tuning: SegFormer and Mask2Former.

A model comes from one of three sources, resolved by `resolve_model` before anything heavy loads:

* a **named variant** (`segformer-b0` .. `segformer-b5`, `mask2former-swin-tiny` / `-small` / `-base`)
  built from a config matching the published checkpoints (`nvidia/mit-b*`; the Swin backbones of
  `facebook/mask2former-swin-*`). Its encoder weights come from `--backbone` (an ImageNet id or
  folder loaded with `from_pretrained`; each variant has a default) unless `--from-scratch` says
  random initialisation on purpose;
* a **checkpoint** (`--init`, or a path / Hub id given as `--model`): any
  `SegformerForSemanticSegmentation` / `Mask2FormerForUniversalSegmentation` (an alps_hf output
  folder included), or a bare SegFormer encoder such as `nvidia/mit-b2`. The head is re-initialised
  for the target classes (`ignore_mismatched_sizes`, and explicitly when the class names differ);
  the rest is kept.

Class names always come from the dataset (`id2label.json` or `--id2label`); label 255 is ignored.
`--model-config-overrides` (JSON) changes config fields of a named variant: tests use it for tiny
models, e.g. `{"hidden_sizes": [8, 16, 24, 32], "depths": [1, 1, 1, 1]}`; for Mask2Former a nested
`"backbone_config": {...}` changes the Swin config. With `--init` the checkpoint's config is used and
overrides are refused (never ignored); a named `--model` given with `--init` must match the
checkpoint's family and size.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from alps_hf.core import IGNORE_INDEX
from alps_hf.errors import CheckpointError, ConfigError

logger = logging.getLogger(__name__)

_MIT_COMMON = {
    "num_encoder_blocks": 4,
    "sr_ratios": [8, 4, 2, 1],
    "patch_sizes": [7, 3, 3, 3],
    "strides": [4, 2, 2, 2],
    "num_attention_heads": [1, 2, 5, 8],
    "mlp_ratios": [4, 4, 4, 4],
}
# Hidden sizes, depths and decoder widths of nvidia/mit-b0 .. b5 (SegFormer paper, table 6).
SEGFORMER_VARIANTS: dict[str, dict[str, Any]] = {
    "segformer-b0": {**_MIT_COMMON, "hidden_sizes": [32, 64, 160, 256], "depths": [2, 2, 2, 2], "decoder_hidden_size": 256},
    "segformer-b1": {**_MIT_COMMON, "hidden_sizes": [64, 128, 320, 512], "depths": [2, 2, 2, 2], "decoder_hidden_size": 256},
    "segformer-b2": {**_MIT_COMMON, "hidden_sizes": [64, 128, 320, 512], "depths": [3, 4, 6, 3], "decoder_hidden_size": 768},
    "segformer-b3": {**_MIT_COMMON, "hidden_sizes": [64, 128, 320, 512], "depths": [3, 4, 18, 3], "decoder_hidden_size": 768},
    "segformer-b4": {**_MIT_COMMON, "hidden_sizes": [64, 128, 320, 512], "depths": [3, 8, 27, 3], "decoder_hidden_size": 768},
    "segformer-b5": {**_MIT_COMMON, "hidden_sizes": [64, 128, 320, 512], "depths": [3, 6, 40, 3], "decoder_hidden_size": 768},
}
_SWIN_OUT = {"out_features": ["stage1", "stage2", "stage3", "stage4"], "drop_path_rate": 0.3}
# Swin backbones of facebook/mask2former-swin-{tiny,small,base}-*.
MASK2FORMER_VARIANTS: dict[str, dict[str, Any]] = {
    "mask2former-swin-tiny": {**_SWIN_OUT, "embed_dim": 96, "depths": [2, 2, 6, 2], "num_heads": [3, 6, 12, 24], "window_size": 7, "image_size": 224},
    "mask2former-swin-small": {**_SWIN_OUT, "embed_dim": 96, "depths": [2, 2, 18, 2], "num_heads": [3, 6, 12, 24], "window_size": 7, "image_size": 224},
    "mask2former-swin-base": {**_SWIN_OUT, "embed_dim": 128, "depths": [2, 2, 18, 2], "num_heads": [4, 8, 16, 32], "window_size": 12, "image_size": 384},
}
# ImageNet encoders loaded when neither --backbone nor --from-scratch is given.
DEFAULT_BACKBONES: dict[str, str] = {
    **{f"segformer-b{i}": f"nvidia/mit-b{i}" for i in range(6)},
    "mask2former-swin-tiny": "microsoft/swin-tiny-patch4-window7-224",
    "mask2former-swin-small": "microsoft/swin-small-patch4-window7-224",
    "mask2former-swin-base": "microsoft/swin-base-patch4-window12-384-in22k",
}
KNOWN_MODELS = [*SEGFORMER_VARIANTS, *MASK2FORMER_VARIANTS]
ARCHITECTURES = ("segformer", "mask2former")


@dataclass
class ModelSpec:
    """Where the model comes from, resolved (and checked) before any weights load.

    Attributes:
        architecture: "segformer" or "mask2former".
        name: the named variant, or None for a checkpoint.
        checkpoint: id / path of the full checkpoint to start from (`--init`, or `--model` as a path).
        backbone: id / path of the encoder weights for a named variant; None = random (from scratch).
        overrides: config overrides for a named variant.
        default_backbone: True when `backbone` is the variant's default (no --backbone given).
    """

    architecture: str
    name: str | None = None
    checkpoint: str | None = None
    backbone: str | None = None
    overrides: dict[str, Any] | None = None
    default_backbone: bool = False

    @property
    def base(self) -> str | None:
        """What the weights were initialised from (for the training config and the card)."""
        return self.checkpoint or self.backbone


def read_checkpoint_config(source: str, flag: str):
    """Read the config of a checkpoint (cheap, no weights) and check it is SegFormer or Mask2Former.

    Args:
        source: a checkpoint folder or Hub id.
        flag: the flag it came from, for the message.

    Returns:
        The transformers config (`model_type` "segformer" or "mask2former").

    Raises:
        CheckpointError: no readable config there, or another architecture.
    """
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(source)
    except Exception as err:  # noqa: BLE001 - many failure types (missing, offline, malformed)
        from alps_hf.hub.references import unloadable_reason

        # Folder not found, offline and not cached, not on the Hub: each has its own fix (issue 12 point 9).
        reason = unloadable_reason(flag, source, err, example="nvidia/segformer-b0-finetuned-ade-512-512")
        raise CheckpointError(
            f"{reason}. It must be an alps_hf output folder, a SegFormer / Mask2Former checkpoint, or a named "
            f"model: {', '.join(KNOWN_MODELS)}"
        ) from None
    model_type = getattr(config, "model_type", None)
    if model_type not in ARCHITECTURES:
        hint = " (a Swin encoder goes to --backbone with --model mask2former-swin-*)" if model_type == "swin" else ""
        raise CheckpointError(
            f"{flag} {source!r} is a {model_type!r} model; alps_hf trains SegFormer or Mask2Former{hint}"
        )
    return config


def architecture_of(source: str, flag: str) -> str:
    """The architecture of a checkpoint, from its config alone.

    Args:
        source: a checkpoint folder or Hub id.
        flag: the flag it came from, for the message.

    Returns:
        "segformer" or "mask2former".

    Raises:
        CheckpointError: no readable config there, or another architecture.
    """
    return read_checkpoint_config(source, flag).model_type


# The config fields that fix a variant's size (and so the shapes of its weights).
_SIZE_FIELDS = {"segformer": ("hidden_sizes", "depths", "decoder_hidden_size"), "mask2former": ("embed_dim", "depths", "num_heads")}


def model_size(config) -> dict[str, Any]:
    """The size-defining fields of a SegFormer / Mask2Former config (Mask2Former: of its Swin backbone).

    Args:
        config: a `SegformerConfig` or `Mask2FormerConfig`.

    Returns:
        e.g. `{"hidden_sizes": [32, 64, 160, 256], "depths": [2, 2, 2, 2], "decoder_hidden_size": 256}`.
    """
    source = config if config.model_type == "segformer" else config.backbone_config
    return {name: getattr(source, name, None) for name in _SIZE_FIELDS[config.model_type]}


def _variant_size(name: str) -> dict[str, Any]:
    """The size-defining fields of a named variant."""
    variant = SEGFORMER_VARIANTS.get(name) or MASK2FORMER_VARIANTS[name]
    architecture = "segformer" if name in SEGFORMER_VARIANTS else "mask2former"
    return {field: variant.get(field) for field in _SIZE_FIELDS[architecture]}


def _looks_like_checkpoint(value: str) -> bool:
    return Path(value).exists() or "/" in value


def resolve_model(
    model: str | None,
    init: str | None = None,
    backbone: str | None = None,
    from_scratch: bool = False,
    overrides: str | dict | None = None,
) -> ModelSpec:
    """Check the model flags and say where the weights will come from (no weights are loaded).

    Args:
        model: a named variant (`KNOWN_MODELS`) or a checkpoint id / path; None with `init`.
        init: a checkpoint to start from (fine-tuning); its architecture must match `model`'s.
        backbone: encoder weights for a named variant (ImageNet id or folder).
        from_scratch: random initialisation of a named variant, on purpose.
        overrides: JSON text or dict of config changes for a named variant.

    Raises:
        ConfigError: unknown model name, conflicting flags, malformed overrides.
        CheckpointError: `init` / checkpoint unreadable or of another architecture.
    """
    if isinstance(overrides, str):
        try:
            overrides = json.loads(overrides)
        except json.JSONDecodeError as err:
            raise ConfigError(f"--model-config-overrides is not valid JSON ({err}): {overrides!r}") from None
        if not isinstance(overrides, dict):
            raise ConfigError(f"--model-config-overrides must be a JSON object, got {overrides!r}")
    if model is None and init is None:
        raise ConfigError(f"no model given: pass --model (one of {', '.join(KNOWN_MODELS)}, or a checkpoint) or --init")
    expected, expected_size = None, None
    if model is not None:
        if model in KNOWN_MODELS:
            expected = "segformer" if model in SEGFORMER_VARIANTS else "mask2former"
            expected_size = _variant_size(model)
        elif _looks_like_checkpoint(model):
            if init is None:
                init, model = model, None
            else:
                model_config = read_checkpoint_config(model, "--model")
                expected, expected_size = model_config.model_type, model_size(model_config)
        else:
            raise ConfigError(f"unknown --model {model!r}; known names: {', '.join(KNOWN_MODELS)}, or a checkpoint id / folder")
    if init is not None:
        return _resolve_init(init, model, expected, expected_size, backbone, from_scratch, overrides)
    if backbone and from_scratch:
        raise ConfigError(f"--backbone {backbone!r} and --from-scratch contradict each other; keep one")
    default = not from_scratch and not backbone
    if not from_scratch:
        backbone = backbone or DEFAULT_BACKBONES[model]
    return ModelSpec(architecture=expected, name=model, backbone=backbone, overrides=overrides or None, default_backbone=default)


def _resolve_init(init: str, model: str | None, expected: str | None, expected_size: dict[str, Any] | None,
                  backbone: str | None, from_scratch: bool, overrides: dict | None) -> ModelSpec:
    """The --init branch of `resolve_model`: the checkpoint gives config and weights; --model must fit it."""
    if backbone or from_scratch:
        raise ConfigError("--init gives all the weights; drop --backbone / --from-scratch, or drop --init")
    if overrides:
        # Applying them to a loaded checkpoint could change weight shapes and silently re-initialise
        # layers; ignoring them would train another model than the one asked for.
        raise ConfigError(
            f"--model-config-overrides {json.dumps(overrides)} cannot apply with --init {init!r}: the checkpoint's own "
            "config (and weights) is used; drop --model-config-overrides, or drop --init to build a named --model"
        )
    config = read_checkpoint_config(init, "--init")
    architecture = config.model_type
    if expected is not None and architecture != expected:
        raise CheckpointError(
            f"--init {init!r} is a {architecture} checkpoint but --model {model!r} is {expected}; "
            f"give a {expected} checkpoint or drop --model"
        )
    if expected_size is not None and model_size(config) != expected_size:
        raise CheckpointError(
            f"--init {init!r} is a {architecture} of another size than --model {model!r}: "
            f"{model_size(config)} vs {expected_size}; drop --model (the checkpoint defines the model) or give the matching one"
        )
    return ModelSpec(architecture=architecture, checkpoint=init)


def label_maps(id2label: dict[int, str]) -> dict[str, Any]:
    """The config keyword arguments that set the classes."""
    id2label = {int(k): str(v) for k, v in id2label.items()}
    return {"id2label": id2label, "label2id": {v: k for k, v in id2label.items()}}


def build_config(spec: ModelSpec, id2label: dict[int, str]):
    """The transformers config of a named variant with the dataset's classes and overrides."""
    from transformers import Mask2FormerConfig, SegformerConfig, SwinConfig

    overrides = dict(spec.overrides or {})
    if spec.architecture == "segformer":
        kwargs = {**SEGFORMER_VARIANTS[spec.name], "semantic_loss_ignore_index": IGNORE_INDEX, **overrides}
        return SegformerConfig(**kwargs, **label_maps(id2label))
    swin = {**MASK2FORMER_VARIANTS[spec.name], **overrides.pop("backbone_config", {})}
    return Mask2FormerConfig(backbone_config=SwinConfig(**swin), ignore_value=IGNORE_INDEX, **overrides, **label_maps(id2label))


def model_class(architecture: str):
    """The transformers class trained for an architecture."""
    from transformers import Mask2FormerForUniversalSegmentation, SegformerForSemanticSegmentation

    return SegformerForSemanticSegmentation if architecture == "segformer" else Mask2FormerForUniversalSegmentation


def head_modules(model) -> list[torch.nn.Module]:
    """The class-specific layers re-initialised for new classes."""
    if model.config.model_type == "segformer":
        return [model.decode_head.classifier]
    return [model.class_predictor]


def backbone_prefix(model) -> str:
    """Parameter-name prefix of the encoder (lower learning rate; kept when the head is swapped)."""
    return "segformer." if model.config.model_type == "segformer" else "model.pixel_level_module.encoder."


def _load_backbone(model, spec: ModelSpec) -> None:
    """Copy ImageNet (or any compatible) encoder weights into a freshly built named variant."""
    from transformers import SegformerModel, SwinBackbone

    try:
        if spec.architecture == "segformer":
            encoder = SegformerModel.from_pretrained(spec.backbone)
            model.segformer.load_state_dict(encoder.state_dict())
        else:
            out_features = model.config.backbone_config.out_features
            encoder = SwinBackbone.from_pretrained(spec.backbone, out_features=out_features)
            model.model.pixel_level_module.encoder.load_state_dict(encoder.state_dict())
    except OSError as err:
        raise CheckpointError(_backbone_unloadable(spec, err)) from None
    except (RuntimeError, ValueError) as err:
        raise CheckpointError(
            f"--backbone {spec.backbone!r} cannot be loaded into {spec.name}: {str(err).splitlines()[0][:300]}. "
            f"Give an encoder of the same size, or --from-scratch (offline: a local folder)"
        ) from None


def _backbone_unloadable(spec: ModelSpec, err: OSError) -> str:
    """Why the encoder weights cannot be loaded, naming a default the user never typed, and the two fixes."""
    from alps_hf.hub.references import unloadable_reason

    reason = unloadable_reason("--backbone", spec.backbone, err, example=DEFAULT_BACKBONES[spec.name])
    if spec.default_backbone:
        reason = reason.replace(f"--backbone {spec.backbone!r}",
                                f"the default encoder of --model {spec.name}, {spec.backbone!r} (no --backbone given),", 1)
    return (f"{reason}. Either train from random weights with --from-scratch, or give the encoder as "
            f"--backbone FOLDER (a local save_pretrained copy of {spec.backbone})")


@contextmanager
def quiet_transformers() -> Iterator[None]:
    """Within the block, transformers logs errors only and shows no progress bars; restored after."""
    from transformers.utils import logging as hf_logging

    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def _labels_preview(id2label: dict[int, str], shown: int = 3) -> str:
    names = [id2label[k] for k in sorted(id2label)]
    return ", ".join(names[:shown]) + (", ..." if len(names) > shown else "")


def build_model(spec: ModelSpec, id2label: dict[int, str]):
    """Instantiate the model of `spec` for the classes `id2label` (ignore index 255).

    Returns:
        A `SegformerForSemanticSegmentation` or `Mask2FormerForUniversalSegmentation` in train mode.

    Raises:
        CheckpointError: the checkpoint or backbone cannot be loaded.
    """
    cls = model_class(spec.architecture)
    if spec.checkpoint is None:
        model = cls(build_config(spec, id2label))
        if spec.backbone:
            _load_backbone(model, spec)
        return model.train()
    extra = {"semantic_loss_ignore_index": IGNORE_INDEX} if spec.architecture == "segformer" else {"ignore_value": IGNORE_INDEX}
    try:
        # The head re-initialisation is what finetune asked for: transformers' LOAD REPORT (a MISMATCH
        # table with raw ANSI codes) and its progress bar would only alarm; one line below says what changed.
        with quiet_transformers():
            model, info = cls.from_pretrained(
                spec.checkpoint, **label_maps(id2label), **extra, ignore_mismatched_sizes=True, output_loading_info=True
            )
    except (OSError, RuntimeError, ValueError) as err:
        raise CheckpointError(f"--init {spec.checkpoint!r} cannot be loaded: {str(err).splitlines()[0][:300]}") from None
    from transformers import AutoConfig

    source_labels = {int(k): str(v) for k, v in (AutoConfig.from_pretrained(spec.checkpoint).id2label or {}).items()}
    reinit = source_labels != label_maps(id2label)["id2label"]
    if reinit or info.get("mismatched_keys"):
        print(f"--init {spec.checkpoint}: the {spec.architecture} head was re-initialised for the {len(id2label)} "
              f"classes of the dataset (the checkpoint has {len(source_labels)}: {_labels_preview(source_labels)})")
    if reinit:
        # Same number of classes but other classes (e.g. 6 pseudo-classes -> 6 land-cover classes):
        # ignore_mismatched_sizes would keep the old head, so reset it explicitly, with the values
        # transformers' own initialisation gives a model built from this config (public API only).
        fresh = cls(model.config)
        for module, new in zip(head_modules(model), head_modules(fresh), strict=True):
            module.load_state_dict(new.state_dict())
        del fresh
    missing = [k for k in info.get("missing_keys", []) if k.startswith(backbone_prefix(model))]
    if missing:
        logger.warning("--init %s has no weights for %d encoder tensors (e.g. %s): they start random", spec.checkpoint, len(missing), missing[0])
    return model.train()


def build_image_processor(architecture: str, crop_size: int, source: str | None = None):
    """The Pil image processor saved with the model: ImageNet normalisation, resize to the crop size.

    Takes mean / std from `source` (a checkpoint or backbone with a preprocessor config) when it has one.
    """
    from transformers import Mask2FormerImageProcessorPil, SegformerImageProcessorPil

    kwargs: dict[str, Any] = {"size": {"height": crop_size, "width": crop_size}, "do_reduce_labels": False}
    if architecture == "segformer":
        cls = SegformerImageProcessorPil
    else:
        cls = Mask2FormerImageProcessorPil
        kwargs["ignore_index"] = IGNORE_INDEX
    if source:
        try:
            loaded = cls.from_pretrained(source)
            kwargs.update(image_mean=list(loaded.image_mean), image_std=list(loaded.image_std))
        except (OSError, ValueError):
            pass  # no preprocessor_config.json there: ImageNet defaults
    return cls(**kwargs)


def load_image_processor(folder: str, architecture: str):
    """The Pil image processor saved in a model folder (defaults when there is none)."""
    from transformers import Mask2FormerImageProcessorPil, SegformerImageProcessorPil

    cls = SegformerImageProcessorPil if architecture == "segformer" else Mask2FormerImageProcessorPil
    try:
        return cls.from_pretrained(folder)
    except (OSError, ValueError):
        return cls(do_reduce_labels=False)


def semantic_logits(model, pixel_values: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) per-class scores of either architecture, for argmax after resizing.

    For Mask2Former this is the semantic inference of the paper (and of the image processor's
    `post_process_semantic_segmentation`): softmax class scores (no-object dropped) times sigmoid
    mask probabilities, summed over queries.
    """
    outputs = model(pixel_values=pixel_values)
    if model.config.model_type == "segformer":
        return outputs.logits
    classes = outputs.class_queries_logits.float().softmax(dim=-1)[..., :-1]
    masks = outputs.masks_queries_logits.float().sigmoid()
    return torch.einsum("bqc,bqhw->bchw", classes, masks)
