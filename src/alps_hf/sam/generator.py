"""Automatic mask generation on transformers' `SamModel`, without torchvision.

segment-anything's automatic mask generator, rebuilt for throughput:
- the image embedding is computed once per image (batched over images) and kept: the mask
  features of `features.py` pool that same embedding, so nothing is encoded twice;
- point prompts run in batches against the stored embedding;
- predicted-IoU, stability and area (ALPS gate) filters run on the low-resolution logits, so only
  the survivors are upsampled, in small chunks (full-resolution logits of a whole prompt batch
  are never held); survivors are then checked again at full resolution with the exact
  definitions, so the result matches upsample-everything-then-filter;
- box NMS within each crop, then across crops (preferring masks from smaller crops).
Nothing here assumes 1024 px or a 64x64 embedding: sizes come from the model config.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from alps_hf.config_utils import arg
from alps_hf.errors import ConfigError
from alps_hf.sam import amg
from alps_hf.sam.masks import MaskSet

# Low-resolution pre-filter slack: a mask is upsampled when its low-res stability / area is within
# this margin of the threshold; the exact full-resolution check decides. Keeps the fast path equal
# to the reference while still discarding the bulk of the prompts before upsampling. Measured on the
# toy SAM (4 scenes, 787 masks passing at full resolution): full-res minus low-res stability has
# median -0.003, 99th percentile 0.054, max 0.104 (small masks, ~400 px); 0.15 covers that.
_STABILITY_SLACK = 0.15
_AREA_SLACK = 0.02


# `--help` headings of the generator flags (alps_hf.cli groups flags by each field's `group`).
GROUP_MASKS = "mask generation"
GROUP_SCALE = "scale"


def _setting(default, help: str, group: str = GROUP_MASKS, pass1: bool = True):
    # pass1=False: the setting changes speed or memory, never the masks, so it is not part of the resume
    # fingerprint (alps_hf.labeling.pipeline.pass1_fields).
    return arg(default, help, group=group, metadata={"pass1": pass1})


@dataclass
class MaskGeneratorConfig:
    """Settings of automatic mask generation, declared once with their help text and checks.

    Defaults are segment-anything's `SamAutomaticMaskGenerator` plus the ALPS area gate. `alps-hf label`'s
    `LabelConfig` inherits these fields, so each is a flag (`--points-per-side`), the card lists them
    (`alps_hf.hub.cards.generator_keys`) and the resume fingerprint includes them, all from here.
    """

    points_per_side: int = _setting(32, "Point grid per side: N x N point prompts per image (and per crop).")
    points_per_batch: int = _setting(64, "Prompts run through the mask decoder at once.", GROUP_SCALE, pass1=False)
    pred_iou_thresh: float = _setting(0.88, "Keep masks whose predicted IoU exceeds this (0 disables).")
    stability_score_thresh: float = _setting(0.95, "Keep masks whose stability score is at least this.")
    stability_score_offset: float = _setting(1.0, "Logit offset used to compute the stability score.")
    mask_threshold: float = _setting(0.0, "Logit threshold that binarises masks.")
    box_nms_thresh: float = _setting(0.7, "Box IoU above which the lower-scoring of two masks is dropped.")
    crop_n_layers: int = _setting(0, "Extra crop layers (layer i runs on 2**i x 2**i crops); 0 = whole image only.")
    crop_nms_thresh: float = _setting(0.7, "Box IoU for NMS between masks of different crops.")
    crop_overlap_ratio: float = _setting(
        512 / 1500, "Overlap of neighbouring crops as a fraction of the short side (segment-anything's 512 / 1500)."
    )
    crop_n_points_downscale_factor: int = _setting(1, "Points per side divided by this on each crop layer.")
    max_area_fraction: float = _setting(0.3, "ALPS gate: drop masks covering more than this fraction of the image.")
    min_area: int = _setting(0, "Drop masks smaller than this many pixels of the original image.")
    upsample_chunk: int = _setting(
        8, "Masks upsampled to full resolution at once (memory vs. speed).", GROUP_SCALE, pass1=False
    )

    def __post_init__(self) -> None:
        for name in ("pred_iou_thresh", "stability_score_thresh", "box_nms_thresh", "crop_nms_thresh",
                     "max_area_fraction", "crop_overlap_ratio"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"{name}={value} is outside [0, 1]; pass a value between 0 and 1 with {_flag(name)}")
        for name in ("points_per_side", "points_per_batch", "crop_n_points_downscale_factor", "upsample_chunk"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{_flag(name)} {getattr(self, name)} must be a positive integer")
        if self.crop_n_layers < 0 or self.min_area < 0:
            raise ConfigError("--crop-n-layers and --min-area must be >= 0")
        if self.stability_score_offset <= 0:
            raise ConfigError(f"--stability-score-offset {self.stability_score_offset} must be > 0")

    @classmethod
    def settings_of(cls, config) -> MaskGeneratorConfig:
        """The generator settings of `config` (e.g. a `LabelConfig`, which inherits them) as this class."""
        return cls(**{f.name: getattr(config, f.name) for f in dataclasses.fields(cls)})


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


@dataclass
class EmbeddingFrame:
    """Where an image sits inside the SAM input frame (needed to pool the embedding correctly).

    The processor resizes the image (height, width) to `resized` (longest side = input size) and pads
    it at the bottom/right to `padded` x `padded`; the embedding grid covers the padded square.
    """

    original: tuple[int, int]
    resized: tuple[int, int]
    padded: int


@dataclass
class GeneratedMasks:
    """Output of `MaskGenerator.generate` for one image.

    Attributes:
        masks: the kept masks at the image's resolution.
        embedding: (C, E, E) SAM image embedding of the whole image (float32, on the device).
        frame: geometry of the image inside the embedding.
    """

    masks: MaskSet
    embedding: torch.Tensor
    frame: EmbeddingFrame


class MaskGenerator:
    """Prompt-free mask generation with a `transformers.SamModel`.

    Args:
        model: a `SamModel` (any size; eval mode is set here).
        processor: a `SamImageProcessorPil` (or compatible) matching the model's input size.
        config: generation settings.
    """

    def __init__(self, model, processor, config: MaskGeneratorConfig | None = None):
        self.model = model.eval()
        self.processor = processor
        self.config = config or MaskGeneratorConfig()
        self.device = next(model.parameters()).device
        self.dtype = next(model.parameters()).dtype
        self.input_size = int(model.config.vision_config.image_size)
        self.timings: dict[str, float] = defaultdict(float)
        self.counts: dict[str, int] = defaultdict(int)

    @classmethod
    def from_pretrained(cls, name_or_path: str, config: MaskGeneratorConfig | None = None, *,
                        revision: str | None = None, device=None, dtype=torch.float32) -> MaskGenerator:
        """Load `SamModel` and its image processor (PIL backend, no torchvision) from a Hub id or folder."""
        from transformers import SamModel

        processor = load_sam_image_processor(name_or_path, revision=revision)
        model = SamModel.from_pretrained(name_or_path, revision=revision, dtype=dtype)
        if device is not None:
            model = model.to(device)
        return cls(model, processor, config)

    @contextlib.contextmanager
    def _timed(self, stage: str):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        start = time.perf_counter()
        yield
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.timings[stage] += time.perf_counter() - start

    def image_problem(self, height: int, width: int) -> str | None:
        """Why an image of this size cannot go through SAM, or None when it can.

        SAM's processor resizes the long side to the encoder's input size; an image so thin that its short
        side would round to 0 pixels there (aspect ratio above 2 * input size : 1) has nothing to encode.
        """
        scale = self.input_size / max(height, width)
        short = int(min(height, width) * scale + 0.5)
        if short >= 1:
            return None
        return (f"image is {width}x{height} px, too thin for SAM: its short side would be resized to 0 px at the "
                f"model's {self.input_size} px input (aspect ratios up to {2 * self.input_size}:1 work); crop or pad it")

    # ---- encoder -------------------------------------------------------------------------------
    def embed(self, images: list[np.ndarray]) -> tuple[torch.Tensor, list[EmbeddingFrame]]:
        """Preprocess and encode RGB uint8 images in one batch: (B, C, E, E) embeddings and frames."""
        with self._timed("preprocess"):
            # Explicit channels-last: otherwise the processor guesses, and takes an image 1 or 3 pixels high
            # (e.g. 3 x 8 x 3) for channels-first, encoding it transposed with the wrong original size.
            inputs = self.processor(images=list(images), return_tensors="pt", input_data_format="channels_last")
            pixel_values = inputs["pixel_values"].to(self.device, self.dtype)
        padded = int(pixel_values.shape[-1])
        frames = [
            EmbeddingFrame(tuple(int(v) for v in o), tuple(int(v) for v in r), padded)
            for o, r in zip(inputs["original_sizes"], inputs["reshaped_input_sizes"], strict=True)
        ]
        with self._timed("encoder"), torch.inference_mode():
            embeddings = self.model.get_image_embeddings(pixel_values)
        self.counts["encoder_images"] += len(images)
        return embeddings, frames

    # ---- decoder + filters ---------------------------------------------------------------------
    def _decode(self, embedding: torch.Tensor, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Low-res logits (P*M, h, w) and predicted IoUs (P*M,) for points (P, 2) in input-frame pixels."""
        with self._timed("decoder"), torch.inference_mode():
            out = self.model(
                image_embeddings=embedding[None],
                input_points=points[None, :, None, :].to(self.dtype),
                input_labels=torch.ones((1, points.shape[0], 1), dtype=torch.int64, device=self.device),
                multimask_output=True,
            )
        self.counts["decoder_prompts"] += int(points.shape[0])
        logits = out.pred_masks[0].flatten(0, 1).float()
        return logits, out.iou_scores[0].flatten().float()

    def _process_crop(self, embedding: torch.Tensor, frame: EmbeddingFrame, crop_box: list[int],
                      orig_size: tuple[int, int], points01: np.ndarray) -> MaskSet:
        cfg = self.config
        crop_h, crop_w = frame.original
        new_h, new_w = frame.resized
        scale = torch.tensor([new_w / crop_w, new_h / crop_h], device=self.device)
        crop_points = torch.as_tensor(points01, dtype=torch.float32, device=self.device) * torch.tensor(
            [crop_w, crop_h], dtype=torch.float32, device=self.device)
        kept: list[MaskSet] = []
        for start in range(0, crop_points.shape[0], cfg.points_per_batch):
            pts = crop_points[start:start + cfg.points_per_batch]
            logits, iou = self._decode(embedding, pts * scale)
            n_masks_per_point = logits.shape[0] // pts.shape[0]
            point_of_mask = pts.repeat_interleave(n_masks_per_point, dim=0)
            with self._timed("filter"):
                keep = self._lowres_filter(logits, iou, frame, (crop_h * crop_w) / (orig_size[0] * orig_size[1]))
                self.counts["masks_decoded"] += int(logits.shape[0])
                self.counts["masks_upsampled"] += int(keep.sum())
            if keep.any():
                kept.append(self._upsample_and_check(logits[keep], iou[keep], point_of_mask[keep], frame, crop_box,
                                                     orig_size))
            del logits
        if not kept:
            return MaskSet.empty(crop_h, crop_w, self.device)
        data = MaskSet.cat(kept)
        with self._timed("nms"):
            order = amg.nms(data.boxes, data.iou_scores, cfg.box_nms_thresh)
            data = data.filter(order)
        return data

    def _lowres_filter(self, logits: torch.Tensor, iou: torch.Tensor, frame: EmbeddingFrame,
                       crop_share: float) -> torch.Tensor:
        """Cheap pre-filter on the low-resolution logits, cropped to the image's valid (unpadded) region.

        `crop_share` is the crop's share of the image area: the area gate is relative to the image.
        """
        cfg = self.config
        low = logits.shape[-1]
        vh = min(low, math.ceil(frame.resized[0] * low / frame.padded))
        vw = min(low, math.ceil(frame.resized[1] * low / frame.padded))
        valid = logits[:, :vh, :vw]
        keep = torch.ones(logits.shape[0], dtype=torch.bool, device=logits.device)
        if cfg.pred_iou_thresh > 0:
            keep &= iou > cfg.pred_iou_thresh
        if cfg.stability_score_thresh > 0:
            stab = amg.stability_score(valid, cfg.mask_threshold, cfg.stability_score_offset)
            keep &= stab >= cfg.stability_score_thresh - _STABILITY_SLACK
        area = (valid > cfg.mask_threshold).sum(dim=(-1, -2))
        keep &= area > 0
        keep &= area.float() / float(vh * vw) * crop_share <= cfg.max_area_fraction + _AREA_SLACK
        return keep

    def _upsample_and_check(self, logits, iou, points, frame: EmbeddingFrame, crop_box, orig_size) -> MaskSet:
        """Upsample survivors in chunks (as SamProcessor.post_process_masks) and apply exact filters."""
        cfg = self.config
        crop_h, crop_w = frame.original
        parts = []
        for start in range(0, logits.shape[0], cfg.upsample_chunk):
            chunk = logits[start:start + cfg.upsample_chunk]
            with self._timed("upsample"):
                full = F.interpolate(chunk[:, None], (frame.padded, frame.padded), mode="bilinear", align_corners=False)
                full = full[..., : frame.resized[0], : frame.resized[1]]
                if (crop_h, crop_w) != frame.resized:  # a same-size bilinear resize is the identity: skip it
                    full = F.interpolate(full, (crop_h, crop_w), mode="bilinear", align_corners=False)
                full = full[:, 0]
            with self._timed("filter"):
                stab = amg.stability_score(full, cfg.mask_threshold, cfg.stability_score_offset)
                masks = full > cfg.mask_threshold
                del full
                areas = masks.sum(dim=(-1, -2))
                keep = areas > 0
                if cfg.stability_score_thresh > 0:
                    keep &= stab >= cfg.stability_score_thresh
                keep &= areas.float() / float(orig_size[0] * orig_size[1]) <= cfg.max_area_fraction
                if cfg.min_area > 0:
                    keep &= areas >= cfg.min_area
                masks, areas = masks[keep], areas[keep]
                boxes = amg.masks_to_boxes(masks)
                sel_iou, sel_stab, sel_pts = iou[start:start + cfg.upsample_chunk][keep], stab[keep], points[
                    start:start + cfg.upsample_chunk][keep]
                if crop_box != [0, 0, orig_size[1], orig_size[0]]:
                    near = amg.is_box_near_crop_edge(boxes, crop_box, [0, 0, orig_size[1], orig_size[0]])
                    masks, areas, boxes = masks[~near], areas[~near], boxes[~near]
                    sel_iou, sel_stab, sel_pts = sel_iou[~near], sel_stab[~near], sel_pts[~near]
            parts.append(MaskSet(masks, boxes, sel_iou, sel_stab, areas.to(torch.int64), sel_pts))
        return MaskSet.cat(parts)

    # ---- whole images --------------------------------------------------------------------------
    def generate(self, images: list[np.ndarray]) -> list[GeneratedMasks]:
        """Masks for a batch of RGB uint8 images (H, W, 3), any size and aspect ratio.

        Returns one `GeneratedMasks` per image, holding the masks and the whole-image embedding
        the masks' features are pooled from.
        """
        cfg = self.config
        embeddings, frames = self.embed(images)
        grids = amg.build_layer_point_grids(cfg.points_per_side, cfg.crop_n_layers, cfg.crop_n_points_downscale_factor)
        results = []
        for image, embedding, frame in zip(images, embeddings, frames, strict=True):
            h, w = frame.original
            crop_boxes, layers = amg.generate_crop_boxes((h, w), cfg.crop_n_layers, cfg.crop_overlap_ratio)
            per_crop = []
            for crop_box, layer in zip(crop_boxes, layers, strict=True):
                if layer == 0:
                    crop_embedding, crop_frame = embedding, frame
                else:
                    x0, y0, x1, y1 = crop_box
                    crop_emb, crop_frames = self.embed([np.ascontiguousarray(image[y0:y1, x0:x1])])
                    crop_embedding, crop_frame = crop_emb[0], crop_frames[0]
                data = self._process_crop(crop_embedding, crop_frame, crop_box, (h, w), grids[layer])
                if layer > 0:
                    data = MaskSet(
                        masks=amg.uncrop_masks(data.masks, crop_box, h, w),
                        boxes=amg.uncrop_boxes(data.boxes, crop_box),
                        iou_scores=data.iou_scores, stability=data.stability, areas=data.areas,
                        points=amg.uncrop_points(data.points, crop_box),
                    )
                per_crop.append((data, crop_box))
            masks = MaskSet.cat([d for d, _ in per_crop]) if per_crop else MaskSet.empty(h, w, self.device)
            if len(crop_boxes) > 1 and len(masks):
                with self._timed("nms"):
                    crop_area = torch.cat([
                        torch.full((len(d),), float((b[2] - b[0]) * (b[3] - b[1])), device=self.device)
                        for d, b in per_crop
                    ])
                    masks = masks.filter(amg.nms(masks.boxes, 1.0 / crop_area, cfg.crop_nms_thresh))
            results.append(GeneratedMasks(masks, embedding.float(), frame))
        return results


def load_sam_image_processor(name_or_path: str, revision: str | None = None):
    """The SAM image processor with the PIL backend (torchvision is not needed)."""
    from transformers import SamImageProcessorPil

    return SamImageProcessorPil.from_pretrained(name_or_path, revision=revision)
