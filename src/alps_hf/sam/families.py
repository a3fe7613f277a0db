"""The SAM families of transformers that alps_hf labels with: one adapter per family, one fast path.

Every family has the same prompt-decoding interface (point prompts against a stored image embedding,
low-resolution mask logits plus predicted IoUs), so `MaskGenerator` runs them all the same way: one
encoder pass per image, prompts in batches, filters on the low-resolution logits, survivors upsampled.
An adapter holds what differs:

| family | transformers class | input frame | pooled embedding | decoder also needs |
|---|---|---|---|---|
| `sam` | `SamModel` | longest side resized to S, padded bottom/right | (256, S/16, S/16) | nothing |
| `sam_hq` | `SamHQModel` | as SAM | (256, S/16, S/16), as SAM | the first global ViT block's output |
| `sam2` | `Sam2Model` | resized to S x S (aspect not kept, no padding) | level 3 of the FPN (256, S/16, S/16) | levels 1, 2 |
| `edgetam` | `EdgeTamModel` | as SAM 2 | as SAM 2 | as SAM 2 |
| `sam3_tracker` | `Sam3TrackerModel` | as SAM 2, S = 1008 | level 3 (256, S/14, S/14) | levels 1, 2 |

Why SAM 2's last level: it is the embedding the mask decoder's two-way transformer attends to (with
the no-memory embedding added, as for a single image), 256-d like SAM's, at stride 16. The two finer
levels are 32- and 64-channel projections (`conv_s0` / `conv_s1`) added only while the decoder
upsamples masks: edge detail, not content. Pooling the same embedding for every family also keeps the
feature size (256) the same across families.

The square families' image processors (`Sam2ImageProcessor`, `Sam3ImageProcessor`) exist in transformers
only as torchvision-backed classes; `SquarePreprocessor` does the same resize (bilinear, antialiased, on
uint8), rescale and normalisation with torch alone, reading sizes, mean and std from the checkpoint's
processor config.
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from alps_hf.errors import ConfigError
from alps_hf.sam import sam_decoder
from alps_hf.sam.upsample import bilinear


@dataclass(frozen=True)
class SamFamily:
    """One SAM family: how to recognise, load and drive it, and its automatic mask generator's defaults.

    Attributes:
        name: alps_hf's name of the family (recorded in label_config.json, the cluster model, the card).
        title: the name in prose (cards, README).
        model_types: the checkpoint `config.json` `model_type` values of this family.
        model_class: the transformers class that loads it for point prompts.
        frame: "padded" (longest side resized to the input size, padded to a square) or "square"
            (resized to the input square, aspect ratio not kept).
        defaults: values of the generator settings left unset (None), from the family's own automatic
            mask generator (see `FAMILIES` for the upstream files).
        example: a Hub id of a checkpoint of this family.
        requires: a Python module the model needs beyond transformers, and the pip extra that brings it.
        lowres_cleanup: with `--min-mask-region-area N`, also run SAM 2's hole / sprinkle fill of each mask's
            low-resolution logits (N low-resolution pixels) before upsampling (`cleanup.fill_holes_and_sprinkles`).
    """

    name: str
    title: str
    model_types: tuple[str, ...]
    model_class: str
    frame: str
    defaults: dict[str, Any]
    example: str
    requires: tuple[str, str] | None = None
    lowres_cleanup: bool = False

    def resolve(self, config):
        """`config` (a MaskGeneratorConfig or a LabelConfig) with the settings left None set to this family's."""
        for key, value in self.defaults.items():
            if getattr(config, key, None) is None:
                setattr(config, key, value)
        return config

    def check_requirements(self) -> None:
        """Raise ConfigError when a module this family's model needs is missing (before any weights load)."""
        if self.requires and importlib.util.find_spec(self.requires[0]) is None:
            module, extra = self.requires
            raise ConfigError(
                f"{self.title} checkpoints need `{module}` (transformers builds the image encoder with it), which is "
                f"not installed: pip install 'alps_hf[{extra}]' ({module} needs a torchvision build that matches "
                "your torch)"
            )


# Defaults of each family's own automatic mask generator, read in the upstream sources:
# - SAM: facebookresearch/segment-anything, segment_anything/automatic_mask_generator.py
#   (SamAutomaticMaskGenerator.__init__: points_per_side 32, pred_iou_thresh 0.88, stability_score_thresh 0.95,
#   stability_score_offset 1.0, box_nms_thresh 0.7, crop_n_layers 0, min_mask_region_area 0; _process_batch
#   predicts with multimask_output=True). These are MaskGeneratorConfig's own defaults.
# - SAM-HQ: SysCV/sam-hq, segment_anything/automatic_mask_generator.py: the same values; its _process_batch
#   calls predictor.predict_torch(..., multimask_output=True) without hq_token_only, i.e. False: SAM's three
#   masks each plus the HQ mask (transformers' SamHQModel(hq_token_only=False) computes the same sum).
# - SAM 2 / 2.1: facebookresearch/sam2, sam2/automatic_mask_generator.py (SAM2AutomaticMaskGenerator.__init__:
#   points_per_side 32, pred_iou_thresh 0.8, stability_score_thresh 0.95, stability_score_offset 1.0,
#   mask_threshold 0.0, box_nms_thresh 0.7, crop_n_layers 0, min_mask_region_area 0, use_m2m False,
#   multimask_output True). Its masks are upsampled straight from the low-resolution logits to the image
#   (sam2/utils/transforms.py, SAM2Transforms.postprocess_masks), as `_upsample_square` does.
# - EdgeTAM: facebookresearch/EdgeTAM is a fork of the sam2 package (same module layout, a RepViT encoder
#   through timm): SAM 2's generator and values.
# - SAM 3 tracker: facebookresearch/sam3 ships no automatic mask generator (sam3/model/ has the interactive
#   sam1_task_predictor.py, no automatic_mask_generator.py); its tracker is SAM 2's decoder, so SAM 2's values.
# min_mask_region_area (0 for all) is applied for every family by sam/cleanup.py, segment-anything's way
# (after NMS). SAM 2's generator also passes it to SAM2ImagePredictor as max_hole_area / max_sprinkle_area,
# a hole / sprinkle fill of each mask's low-resolution logits (transformers' Sam2ImageProcessor accepts
# these arguments and skips them): `lowres_cleanup` below, for SAM 2 and its fork EdgeTAM. Not for the SAM 3
# tracker: sam3 has no automatic generator whose post-processing we could follow.
_SAM_DEFAULTS = {"pred_iou_thresh": 0.88}
_SAM2_DEFAULTS = {"pred_iou_thresh": 0.8}

FAMILIES: dict[str, SamFamily] = {
    f.name: f for f in (
        SamFamily("sam", "SAM", ("sam",), "SamModel", "padded", _SAM_DEFAULTS, "facebook/sam-vit-base"),
        SamFamily("sam_hq", "SAM-HQ", ("sam_hq",), "SamHQModel", "padded", _SAM_DEFAULTS,
                  "syscv-community/sam-hq-vit-base"),
        SamFamily("sam2", "SAM 2 / SAM 2.1", ("sam2", "sam2_video"), "Sam2Model", "square", _SAM2_DEFAULTS,
                  "facebook/sam2.1-hiera-large", lowres_cleanup=True),
        SamFamily("edgetam", "EdgeTAM", ("edgetam", "edgetam_video"), "EdgeTamModel", "square", _SAM2_DEFAULTS,
                  "yonigozlan/EdgeTAM-hf", requires=("timm", "edgetam"), lowres_cleanup=True),
        SamFamily("sam3_tracker", "SAM 3 tracker", ("sam3_tracker", "sam3_video"), "Sam3TrackerModel", "square",
                  _SAM2_DEFAULTS, "facebook/sam3"),
    )
}
_BY_MODEL_TYPE = {t: f for f in FAMILIES.values() for t in f.model_types}
# SAM 3 checkpoints of the detector alone: concept (text / exemplar) prompts, no point-prompt tracker head.
_SAM3_WITHOUT_TRACKER = ("sam3", "sam3_lite_text")


def supported_families_text() -> str:
    """One line naming every supported family with its model_type values and an example id."""
    return "; ".join(f"{f.title} ({', '.join(f.model_types)}; e.g. {f.example})" for f in FAMILIES.values())


def family_of_model_type(model_type: str | None, name: str) -> SamFamily:
    """The family of a checkpoint whose config has this `model_type`.

    Args:
        model_type: `config.json`'s model_type.
        name: the `--sam` value, for the messages.

    Raises:
        ConfigError: not a SAM family alps_hf supports (a SAM 3 detector without its tracker says so).
    """
    if model_type in _BY_MODEL_TYPE:
        return _BY_MODEL_TYPE[model_type]
    if model_type in _SAM3_WITHOUT_TRACKER:
        raise ConfigError(
            f"--sam {name!r} is a SAM 3 detector checkpoint (model_type {model_type!r}, Sam3Model: text and exemplar "
            "prompts) without the tracker head that point prompts need; alps_hf needs Sam3TrackerModel weights: a "
            "checkpoint with model_type 'sam3_tracker' or 'sam3_video' (e.g. facebook/sam3, which holds both)"
        )
    raise ConfigError(
        f"--sam {name!r} is a {model_type!r} model, not SAM; alps_hf labels with these SAM families: "
        f"{supported_families_text()}"
    )


def _tracker_config(config):
    """The part of a checkpoint config that the family's model class reads (a sam3_video config nests it)."""
    tracker = getattr(config, "tracker_config", None)
    if tracker is None:
        return config
    if isinstance(tracker, dict):
        from transformers import Sam3TrackerConfig

        return Sam3TrackerConfig(**tracker)
    return tracker


def feature_dim(family: SamFamily, config) -> int:
    """Length of one mask feature (channels of the pooled embedding) for a checkpoint config of `family`."""
    vision = _tracker_config(config).vision_config
    if family.frame == "padded":
        return int(vision.output_channels)
    return int(vision.fpn_hidden_size)


def read_family(name: str, revision: str | None = None):
    """(family, config) of a checkpoint, from its config.json alone (no weights are read).

    Raises:
        ConfigError: the checkpoint is not of a supported SAM family.
        OSError, ValueError: the config cannot be read (missing, offline and not cached, malformed).
    """
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(name, revision=revision)
    return family_of_model_type(getattr(config, "model_type", None), name), config


# ---- preprocessing -------------------------------------------------------------------------------
def read_processor_config(name: str, revision: str | None = None) -> dict[str, Any]:
    """The image processor settings saved with a checkpoint, as a dict.

    `preprocessor_config.json` (transformers 4), or the `image_processor` entry of `processor_config.json`
    (what transformers 5's `save_pretrained` of a processor writes).

    Raises:
        ConfigError: neither file is there, or neither holds image processor settings.
    """
    from transformers.utils import cached_file

    for filename, key in (("preprocessor_config.json", None), ("processor_config.json", "image_processor")):
        path = cached_file(name, filename, revision=revision, _raise_exceptions_for_missing_entries=False,
                           _raise_exceptions_for_connection_errors=False)
        if path is None:
            continue
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        data = data.get(key) if key else data
        if isinstance(data, dict) and data:
            return data
    raise ConfigError(
        f"--sam {name!r} has no image processor config (neither preprocessor_config.json nor an image_processor "
        "entry in processor_config.json); save the checkpoint's processor beside the model (processor.save_pretrained)"
    )


# transformers' class defaults (Sam2ImageProcessor, Sam3ImageProcessor) for keys a saved config leaves out.
_SQUARE_DEFAULTS = {
    "sam2": {"size": 1024, "image_mean": (0.485, 0.456, 0.406), "image_std": (0.229, 0.224, 0.225)},
    "edgetam": {"size": 1024, "image_mean": (0.485, 0.456, 0.406), "image_std": (0.229, 0.224, 0.225)},
    "sam3_tracker": {"size": 1008, "image_mean": (0.5, 0.5, 0.5), "image_std": (0.5, 0.5, 0.5)},
}
_RESAMPLE = {2: "bilinear", 3: "bicubic"}  # PIL codes: the modes antialiased torch interpolation has


@dataclass
class SquarePreprocessor:
    """SAM 2-style preprocessing without torchvision: resize to size x size, rescale, normalise.

    Equal to transformers' torchvision `Sam2ImageProcessor` / `Sam3ImageProcessor` on CPU: the uint8 image
    is resized with torch's antialiased interpolation (the kernel torchvision's `resize` calls for uint8),
    then `(x - mean / rescale_factor) / (std / rescale_factor)` in float32 (its fused rescale + normalise).
    """

    size: tuple[int, int]
    image_mean: tuple[float, ...]
    image_std: tuple[float, ...]
    rescale_factor: float = 1 / 255
    do_resize: bool = True
    do_rescale: bool = True
    do_normalize: bool = True
    resample: str = "bilinear"
    source: dict = field(default_factory=dict, repr=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any], family: str = "sam2") -> SquarePreprocessor:
        """Build from a processor config dict; keys it lacks take the transformers class defaults."""
        defaults = _SQUARE_DEFAULTS.get(family, _SQUARE_DEFAULTS["sam2"])
        size = data.get("size") or defaults["size"]
        if isinstance(size, dict):
            if "height" in size and "width" in size:
                size = (int(size["height"]), int(size["width"]))
            elif "longest_edge" in size:
                size = (int(size["longest_edge"]),) * 2
            else:
                raise ConfigError(f"image processor size {size} has neither height/width nor longest_edge")
        elif isinstance(size, int):
            size = (size, size)
        resample = data.get("resample", 2)
        if resample not in _RESAMPLE:
            raise ConfigError(f"image processor resample {resample} is not supported; alps_hf resizes bilinear (2) "
                              "or bicubic (3)")
        return cls(size=tuple(size), image_mean=tuple(data.get("image_mean") or defaults["image_mean"]),
                   image_std=tuple(data.get("image_std") or defaults["image_std"]),
                   rescale_factor=float(data.get("rescale_factor", 1 / 255)),
                   do_resize=bool(data.get("do_resize", True)), do_rescale=bool(data.get("do_rescale", True)),
                   do_normalize=bool(data.get("do_normalize", True)), resample=_RESAMPLE[resample], source=data)

    @classmethod
    def from_pretrained(cls, name: str, family: str = "sam2", revision: str | None = None) -> SquarePreprocessor:
        """Read the checkpoint's processor config (see `read_processor_config`)."""
        return cls.from_dict(read_processor_config(name, revision), family)

    def __call__(self, images: list[np.ndarray]) -> torch.Tensor:
        """(B, 3, H, W) float32 pixel values of RGB uint8 images (h, w, 3) of any sizes."""
        out = []
        mean = torch.tensor(self.image_mean, dtype=torch.float32)
        std = torch.tensor(self.image_std, dtype=torch.float32)
        for image in images:
            image = np.ascontiguousarray(image)
            if not image.flags.writeable:  # torch warns on read-only arrays (decoded images often are)
                image = image.copy()
            x = torch.from_numpy(image).permute(2, 0, 1)[None]  # (1, 3, h, w) uint8
            if self.do_resize:
                x = F.interpolate(x, self.size, mode=self.resample, antialias=True, align_corners=False)
            x = x[0]
            if self.do_normalize:
                scale = 1.0 / self.rescale_factor if self.do_rescale else 1.0
                x = (x.to(torch.float32) - (mean * scale)[:, None, None]) / (std * scale)[:, None, None]
            elif self.do_rescale:
                x = x.to(torch.float32) * self.rescale_factor
            out.append(x.to(torch.float32))
        return torch.stack(out)


# ---- adapters ------------------------------------------------------------------------------------
@dataclass
class ImageEncoding:
    """What the encoder made of one image (or crop).

    Attributes:
        embedding: (C, E, E) the embedding the mask decoder attends to; mask features are pooled from it.
        extras: the other per-image inputs of the decoder (SAM-HQ: the ViT features (E, E, D); SAM 2 family:
            the two finer FPN levels, finest first).
    """

    embedding: torch.Tensor
    extras: tuple[torch.Tensor, ...] = ()


def bilinear_span(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray]:
    """Input indices each output index of a bilinear resize (align_corners=False) can depend on.

    torch computes the source position max((o + 0.5) * n_in / n_out - 0.5, 0) (in float32) and blends its
    floor with the next index. Where the position lies within 1e-3 of an integer, float rounding could move
    the floor: the span then takes both candidates, so no real dependency is ever outside it.

    Returns:
        (lo, hi): int64 arrays of length n_out, inclusive, nondecreasing.
    """
    src = np.maximum((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, 0.0)
    lo = np.floor(np.maximum(src - 1e-3, 0.0)).astype(np.int64)
    hi = np.floor(src + 1e-3).astype(np.int64) + 1
    return np.clip(lo, 0, n_in - 1), np.clip(hi, 0, n_in - 1)


def integer_factors(low: tuple[int, int], out: tuple[int, int]) -> tuple[int, int] | None:
    """(out_h // low_h, out_w // low_w) when both divide exactly, else None."""
    if any(o % n for n, o in zip(low, out, strict=True)):
        return None
    return out[0] // low[0], out[1] // low[1]


class SamAdapter:
    """SAM: SamImageProcessorPil (longest side resized, padded), one embedding, 3 masks per prompt.

    Args:
        model: the transformers model of the family.
        processor: its preprocessing (SamImageProcessorPil for SAM / SAM-HQ, SquarePreprocessor otherwise).
    """

    family = FAMILIES["sam"]
    #: decode with `sam_decoder.decode_points` (same maths, per-image work shared) instead of the model's forward
    own_decoder = False

    def __init__(self, model, processor):
        self.model = model
        self.processor = processor
        self.input_size = int(model.config.vision_config.image_size)
        self.own_decoder = sam_decoder.supports(model)

    def preprocess(self, images: list[np.ndarray]):
        """(pixel_values, [(original, resized, padded)]) for RGB uint8 images."""
        # Explicit channels-last: otherwise the processor guesses, and takes an image 1 or 3 pixels high
        # (e.g. 3 x 8 x 3) for channels-first, encoding it transposed with the wrong original size.
        inputs = self.processor(images=list(images), return_tensors="pt", input_data_format="channels_last")
        pixel_values = inputs["pixel_values"]
        padded = int(pixel_values.shape[-1])
        sizes = [(tuple(int(v) for v in o), tuple(int(v) for v in r), padded)
                 for o, r in zip(inputs["original_sizes"], inputs["reshaped_input_sizes"], strict=True)]
        return pixel_values, sizes

    def encode(self, pixel_values: torch.Tensor) -> list[ImageEncoding]:
        """One encoder pass over a batch: an `ImageEncoding` per image."""
        embeddings = self.model.get_image_embeddings(pixel_values)
        return [ImageEncoding(e) for e in embeddings]

    def _forward(self, encoding: ImageEncoding, points: torch.Tensor, labels: torch.Tensor):
        return self.model(image_embeddings=encoding.embedding[None], input_points=points, input_labels=labels,
                          multimask_output=True)

    def decode(self, encoding: ImageEncoding, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Low-res logits (P*M, h, w) and predicted IoUs (P*M,) for points (P, 2) in input-frame pixels."""
        if self.own_decoder:
            logits, iou = sam_decoder.decode_points(self.model, encoding.embedding, points)
            return logits.flatten(0, 1).float(), iou.flatten().float()
        labels = torch.ones((1, points.shape[0], 1), dtype=torch.int64, device=points.device)
        out = self._forward(encoding, points[None, :, None, :], labels)
        return out.pred_masks[0].flatten(0, 1).float(), out.iou_scores[0].flatten().float()

    def upsample(self, logits: torch.Tensor, frame) -> torch.Tensor:
        """(n, 1, h, w) low-res logits to the frame's original size, as SamProcessor.post_process_masks."""
        full = bilinear(logits, (frame.padded, frame.padded))
        full = full[..., : frame.resized[0], : frame.resized[1]]
        if tuple(frame.original) != tuple(frame.resized):  # a same-size bilinear resize is the identity: skip it
            full = bilinear(full, tuple(frame.original))
        return full

    def upsample_factors(self, frame, low: tuple[int, int]) -> tuple[int, int] | None:
        """(sy, sx) when `upsample` is one bilinear resize by integer factors followed by a crop, else None.

        Then a window of the low-res logits upsamples to the same pixels as the whole (sam/upsample.py); a
        second resize (an image labeled at another size than SAM's input) has no such windows. Here: padded
        square / low-res size on each axis, with the original size equal to the resized one.
        """
        if tuple(frame.original) != tuple(frame.resized):
            return None
        return integer_factors(low, (frame.padded, frame.padded))

    def upsample_spans(self, frame, low: tuple[int, int]) -> tuple[tuple[np.ndarray, np.ndarray], ...]:
        """For each row and column of `upsample`'s output, the low-res rows / columns it can depend on.

        Returns ((row_lo, row_hi), (col_lo, col_hi)): int arrays of the original height / width, inclusive
        and nondecreasing, a superset of the bilinear support (see `bilinear_span`); the generator's box
        bounds (MaskGenerator._box_bounds) rely on it. Here: to the padded square, crop, then to the original.
        """
        resized_again = tuple(frame.original) != tuple(frame.resized)  # as `upsample` decides
        spans = []
        for n_low, n_resized, n_orig in zip(low, frame.resized, frame.original, strict=True):
            lo, hi = bilinear_span(n_low, frame.padded)
            if resized_again:
                a, b = bilinear_span(n_resized, n_orig)
                spans.append((lo[a], hi[b]))
            else:
                spans.append((lo[:n_orig], hi[:n_orig]))
        return tuple(spans)

    def image_problem(self, height: int, width: int) -> str | None:
        """Why an image of this size cannot be encoded, or None (see MaskGenerator.image_problem)."""
        scale = self.input_size / max(height, width)
        short = int(min(height, width) * scale + 0.5)
        if short >= 1:
            return None
        return (f"image is {width}x{height} px, too thin for SAM: its short side would be resized to 0 px at the "
                f"model's {self.input_size} px input (aspect ratios up to {2 * self.input_size}:1 work); crop or pad it")


class SamHQAdapter(SamAdapter):
    """SAM-HQ: SAM's frame; the decoder also takes the first global ViT block's output (HQ features)."""

    family = FAMILIES["sam_hq"]

    def encode(self, pixel_values: torch.Tensor) -> list[ImageEncoding]:
        """One encoder pass: the image embedding, plus the ViT features the HQ decoder fuses in."""
        embeddings, intermediate = self.model.get_image_embeddings(pixel_values)
        return [ImageEncoding(e, (v,)) for e, v in zip(embeddings, intermediate[0], strict=True)]

    def _forward(self, encoding: ImageEncoding, points: torch.Tensor, labels: torch.Tensor):
        return self.model(image_embeddings=encoding.embedding[None], intermediate_embeddings=[encoding.extras[0][None]],
                          input_points=points, input_labels=labels, multimask_output=True, hq_token_only=False)


class Sam2Adapter(SamAdapter):
    """SAM 2 / EdgeTAM / SAM 3 tracker: square frame, three FPN levels, the last one pooled."""

    family = FAMILIES["sam2"]

    def __init__(self, model, processor, family: SamFamily | None = None):
        self.model = model
        self.processor = processor
        if family is not None:
            self.family = family
        size = model.config.prompt_encoder_config.image_size
        self.input_size = int(size if isinstance(size, int) else size[0])
        if tuple(processor.size) != (self.input_size, self.input_size):
            raise ConfigError(f"the image processor resizes to {processor.size} but the model takes "
                              f"{self.input_size} x {self.input_size} images; save the checkpoint's own processor")

    def preprocess(self, images: list[np.ndarray]):
        """(pixel_values, [(original, (S, S), S)]): every image resized to the S x S input square."""
        pixel_values = self.processor(images)
        side = self.input_size
        return pixel_values, [(tuple(int(v) for v in image.shape[:2]), (side, side), side) for image in images]

    def encode(self, pixel_values: torch.Tensor) -> list[ImageEncoding]:
        """One encoder pass: the last FPN level as the embedding, the two finer levels as extras."""
        levels = self.model.get_image_embeddings(pixel_values)
        return [ImageEncoding(levels[-1][i], tuple(level[i] for level in levels[:-1]))
                for i in range(pixel_values.shape[0])]

    def _forward(self, encoding: ImageEncoding, points: torch.Tensor, labels: torch.Tensor):
        levels = [e[None] for e in (*encoding.extras, encoding.embedding)]
        return self.model(image_embeddings=levels, input_points=points, input_labels=labels, multimask_output=True)

    def upsample(self, logits: torch.Tensor, frame) -> torch.Tensor:
        """Straight from low resolution to the original size (SAM2Transforms / Sam2ImageProcessor do the same)."""
        return bilinear(logits, tuple(frame.original))

    def upsample_factors(self, frame, low: tuple[int, int]) -> tuple[int, int] | None:
        """As SamAdapter.upsample_factors, for the one resize straight to the original size."""
        return integer_factors(low, tuple(frame.original))

    def upsample_spans(self, frame, low: tuple[int, int]) -> tuple[tuple[np.ndarray, np.ndarray], ...]:
        """As SamAdapter.upsample_spans, for the one resize straight to the original size."""
        return tuple(bilinear_span(n_low, n_orig) for n_low, n_orig in zip(low, frame.original, strict=True))

    def image_problem(self, height: int, width: int) -> str | None:
        """None: every image becomes input_size x input_size, so none is too thin."""
        return None  # every image becomes input_size x input_size: none is too thin


def adapter_for(model, processor) -> SamAdapter:
    """The adapter of a loaded model, chosen by its config's model_type.

    Raises:
        ConfigError: the model is not of a supported SAM family.
    """
    family = family_of_model_type(getattr(model.config, "model_type", None), type(model).__name__)
    if family.name == "sam":
        return SamAdapter(model, processor)
    if family.name == "sam_hq":
        return SamHQAdapter(model, processor)
    return Sam2Adapter(model, processor, family)


def load_family_processor(family: SamFamily, name: str, revision: str | None = None):
    """The preprocessing of a checkpoint: SamImageProcessorPil (SAM, SAM-HQ) or SquarePreprocessor."""
    if family.frame == "padded":
        from transformers import SamImageProcessorPil

        return SamImageProcessorPil.from_pretrained(name, revision=revision)
    return SquarePreprocessor.from_pretrained(name, family.name, revision)


def load_family_model(family: SamFamily, name: str, revision: str | None = None, dtype=torch.float32):
    """The family's transformers model, loaded from a Hub id or save_pretrained folder."""
    import transformers

    family.check_requirements()
    return getattr(transformers, family.model_class).from_pretrained(name, revision=revision, dtype=dtype)

