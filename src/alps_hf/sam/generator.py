"""Automatic mask generation on any SAM family of transformers (sam/families.py), without torchvision.

segment-anything's automatic mask generator, rebuilt for throughput:
- the image embedding is computed once per image (batched over images) and kept: the mask
  features of `features.py` pool that same embedding, so nothing is encoded twice;
- point prompts run in batches against the stored embedding;
- predicted-IoU, stability and area (ALPS gate) filters run on the low-resolution logits, so only
  the survivors are upsampled, in small chunks (full-resolution logits of a whole prompt batch
  are never held), on CPU each over its own window where the family's resize allows it
  (sam/upsample.py: the same pixels); survivors are then checked again at full resolution with
  the exact definitions, so the result matches upsample-everything-then-filter;
- box NMS within each crop, then across crops (preferring masks from smaller crops).
Nothing here assumes 1024 px or a 64x64 embedding: sizes come from the model config. What differs
between SAM, SAM-HQ, SAM 2, EdgeTAM and the SAM 3 tracker (preprocessing, the encoder's outputs, the
decoder call, the upsampling) is in the family's adapter; this file is the one fast path they share.
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

from alps_hf.config_utils import arg
from alps_hf.errors import ConfigError
from alps_hf.sam import amg
from alps_hf.sam.cleanup import fill_holes_and_sprinkles, postprocess_small_regions
from alps_hf.sam.densify import densify_points, limit_points, round_sides
from alps_hf.sam.families import (
    FAMILIES,
    ImageEncoding,
    adapter_for,
    load_family_model,
    load_family_processor,
    read_family,
)
from alps_hf.sam.masks import MaskSet
from alps_hf.sam.upsample import upsample_window, window, windows_are_exact

# Low-resolution pre-filter slack: a mask is upsampled when its low-res stability / area is within
# this margin of the threshold; the exact full-resolution check decides. Keeps the fast path equal
# to the reference while still discarding the bulk of the prompts before upsampling. Measured on the
# toy SAM (4 scenes, 787 masks passing at full resolution): full-res minus low-res stability has
# median -0.003, 99th percentile 0.054, max 0.104 (small masks, ~400 px); 0.15 covers that.
_STABILITY_SLACK = 0.15
# Masks under this many full-resolution pixels (estimated from the low-res area) skip the stability
# pre-filter: the toy SAM mask it lost at 32x32 (transformers' pipeline keeps it) was 199 px.
_SMALL_MASK_PIXELS = 1024
_AREA_SLACK = 0.02
# Pixels per upsampling chunk on CPU with upsample_chunk = 0 (MaskGenerator._upsample_chunk).
_CPU_CHUNK_PIXELS = 2**19
# Bytes of per-prompt image tokens per decoder call on CPU with points_per_batch = 0 (MaskGenerator.prompt_batch).
_CPU_PROMPT_BYTES = 2 * 2**20


# `--help` headings of the generator flags (alps_hf.cli groups flags by each field's `group`).
GROUP_MASKS = "mask generation"
GROUP_SCALE = "scale"


def _setting(default, help: str, group: str = GROUP_MASKS, pass1: bool = True):
    # pass1=False: the setting changes speed or memory, never the masks, so it is not part of the resume
    # fingerprint (alps_hf.labeling.pass1.pass1_fields).
    return arg(default, help, group=group, metadata={"pass1": pass1})


@dataclass
class MaskGeneratorConfig:
    """Settings of automatic mask generation, declared once with their help text and checks.

    Defaults are segment-anything's `SamAutomaticMaskGenerator` plus the ALPS area gate; the settings whose
    default is None come from the preset (`PRESETS`) or the SAM family (`SamFamily.defaults`). `alps-hf label`'s
    `LabelConfig` inherits these fields, so each is a flag (`--points-per-side`), the card lists them
    (`alps_hf.hub.cards.generator_keys`) and the resume fingerprint includes them, all from here.
    """

    preset: str = _setting(
        "alps-paper",
        "Where the settings left unset come from: 'dense' (stuff kept beneath objects, fill segments, an 8x8 grid "
        "plus 3 densify rounds within 256 prompts; pseudo-labels that cover the scene, README 'Dense pseudo-labels') or 'alps-paper' "
        "(the paper: large masks dropped, no fill, plain 32x32 grid). A flag given explicitly always wins.",
        pass1=False,  # its effect is in the settings it resolves, which are in the fingerprint
    )
    points_per_side: int | None = _setting(
        None, "Point grid per side: N x N point prompts per image (and per crop). Default: the preset's (dense 8, "
        "alps-paper 32).")
    points_per_batch: int = _setting(
        0, "Prompts run through the mask decoder at once (0 = auto: 64 on GPU; on CPU, where the decoder is "
        "memory-bound, as many as keep its per-prompt image tokens within 2 MiB, at least 2: 8 for the toy SAM, "
        "2 for ViT-B/L/H and SAM 2 sizes).", GROUP_SCALE, pass1=False)
    pred_iou_thresh: float | None = _setting(
        None, "Keep masks whose predicted IoU exceeds this (0 disables). Default: the SAM family's own automatic mask "
        "generator's (SAM, SAM-HQ 0.88; SAM 2, EdgeTAM, SAM 3 tracker 0.8).")
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
    max_area_fraction: float = _setting(
        0.3, "ALPS gate: masks covering more than this fraction of the image are 'stuff' (see --large-masks).")
    large_masks: str | None = _setting(
        None, "What happens to masks over --max-area-fraction: 'stuff' keeps them as segments painted beneath the "
        "objects (land, water, fields), 'drop' discards them (the ALPS paper). Default: the preset's (dense stuff, "
        "alps-paper drop).")
    densify_rounds: int | None = _setting(
        None, "Prompt rounds after the first grid, each on a grid twice as fine, with points only in cells the kept "
        "masks leave mostly uncovered (whole image only, not crop layers); 0 = the plain grid. Default: the "
        "preset's (dense 3, alps-paper 0).")
    densify_budget: int | None = _setting(
        None, "Most point prompts per image over the first grid and all densify rounds (the 32x32 grid is 1024). "
        "Default: the preset's (dense 256, the 16x16 grid's count; alps-paper 1024).")
    densify_min_uncovered: float = _setting(
        0.5, "Least uncovered share of a densify cell for its centre to be prompted, in (0, 1].")
    min_mask_region_area: int | None = _setting(
        None, "segment-anything's cleanup: fill holes and remove islands smaller than this many pixels in every "
        "mask, then NMS again (0 = off). SAM 2 and EdgeTAM first also fill holes and remove sprinkles of at most this "
        "many low-resolution pixels in each mask's logits, as SAM 2's own generator does. Default: the preset's (0 "
        "for both).")
    fill: bool | None = _setting(
        None, "Give the pixels no mask covers fill segments with features pooled from the same SAM embedding, so "
        "every pixel gets a pseudo-class (kind 'fill' in segment_kind). Default: the preset's (dense on, "
        "alps-paper off).")
    fill_cell: int = _setting(
        2, "Fill regions are cut into blocks of this many SAM embedding cells per side (1 = one block per cell, "
        "16 px for a 1024-px SAM on a 1024-px image; 0 = whole connected regions).")
    fill_min_area: int = _setting(
        128, "Fill pieces with fewer pixels join their nearest segment instead of becoming segments.")
    min_area: int = _setting(0, "Drop masks smaller than this many pixels of the original image.")
    upsample_chunk: int = _setting(
        0, "Masks upsampled to full resolution at once (memory vs. speed; 0 = auto: on CPU as many as fit "
        "2**19 pixels, e.g. 2 of 512 x 512, since cache-sized chunks are fastest there; 8 on GPU).",
        GROUP_SCALE, pass1=False
    )

    def __post_init__(self) -> None:
        self._apply_preset()
        for name in ("pred_iou_thresh", "stability_score_thresh", "box_nms_thresh", "crop_nms_thresh",
                     "max_area_fraction", "crop_overlap_ratio"):
            value = getattr(self, name)
            if value is not None and not 0.0 <= value <= 1.0:
                raise ConfigError(f"{name}={value} is outside [0, 1]; pass a value between 0 and 1 with {_flag(name)}")
        for name in ("points_per_side", "crop_n_points_downscale_factor"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{_flag(name)} {getattr(self, name)} must be a positive integer")
        for name in ("points_per_batch", "upsample_chunk"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{_flag(name)} {getattr(self, name)} is negative; pass 0 (auto) or a positive integer")
        if self.crop_n_layers < 0 or self.min_area < 0:
            raise ConfigError("--crop-n-layers and --min-area must be >= 0")
        if self.stability_score_offset <= 0:
            raise ConfigError(f"--stability-score-offset {self.stability_score_offset} must be > 0")
        self._check_dense()

    def _apply_preset(self) -> None:
        """Fill the fields left None with the preset's values (explicit values are kept)."""
        if self.preset not in PRESETS:
            raise ConfigError(f"--preset {self.preset!r} is unknown; choose one of {', '.join(PRESETS)}")
        for name, value in PRESETS[self.preset].items():
            if getattr(self, name) is None:
                setattr(self, name, value)

    def _check_dense(self) -> None:
        """Checks of the stuff / densify / cleanup / fill settings (before any model loads)."""
        if self.large_masks not in LARGE_MASKS:
            raise ConfigError(f"--large-masks {self.large_masks!r} is unknown; choose one of {', '.join(LARGE_MASKS)}")
        for name in ("densify_rounds", "min_mask_region_area", "fill_cell", "fill_min_area"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{_flag(name)} {getattr(self, name)} is negative; pass 0 (off) or a positive number")
        if not 0.0 < self.densify_min_uncovered <= 1.0:
            raise ConfigError(f"--densify-min-uncovered {self.densify_min_uncovered} is outside (0, 1]; pass e.g. 0.5")
        first = self.points_per_side ** 2
        if self.densify_rounds > 0 and self.densify_budget <= first:
            raise ConfigError(
                f"--densify-budget {self.densify_budget} leaves no prompt for --densify-rounds {self.densify_rounds}: "
                f"the first grid alone is {first} prompts (--points-per-side {self.points_per_side}); raise "
                f"--densify-budget above {first} or pass --densify-rounds 0"
            )

    @classmethod
    def settings_of(cls, config) -> MaskGeneratorConfig:
        """The generator settings of `config` (e.g. a `LabelConfig`, which inherits them) as this class."""
        return cls(**{f.name: getattr(config, f.name) for f in dataclasses.fields(cls)})


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


#: What happens to masks over the area gate (see MaskGeneratorConfig.large_masks).
LARGE_MASKS = ("stuff", "drop")

#: The values of the preset-managed settings (those whose default is None). `alps-paper` is today's
#: segment-anything + ALPS behaviour; `dense` is the measured best on the synthetic scenes (README,
#: "Dense pseudo-labels").
PRESETS: dict[str, dict[str, object]] = {
    # dense: a coarse 8x8 grid finds the large stuff masks with 64 prompts; the densify rounds (16x16, 32x32,
    # 64x64 cells) then prompt only what is left unexplained, within the 16x16 grid's 256 prompts. Chosen on
    # tuning scenes (seeds 2000-2015, K = 10) over the earlier 16x16 grid + 2 rounds within 512 prompts: 0.95x
    # the time of the paper pipeline at 16x16 instead of 1.87x, for whole-image majority mIoU 0.634 instead of
    # 0.671 (mean of K-means seeds 0-2; per seed .697 .613 .591 vs .648 .674 .692). README, "Dense pseudo-labels".
    "dense": {"points_per_side": 8, "large_masks": "stuff", "densify_rounds": 3, "densify_budget": 256,
              "min_mask_region_area": 0, "fill": True},
    "alps-paper": {"points_per_side": 32, "large_masks": "drop", "densify_rounds": 0, "densify_budget": 1024,
                   "min_mask_region_area": 0, "fill": False},
}


@dataclass
class EmbeddingFrame:
    """Where an image sits inside the SAM input frame (needed to pool the embedding correctly).

    The processor resizes the image (height, width) to `resized` and pads it at the bottom/right to
    `padded` x `padded`; the embedding grid covers the padded square. Two frames occur:
    - SAM, SAM-HQ: `resized` keeps the aspect ratio (longest side = input size), the rest is padding;
    - SAM 2, EdgeTAM, SAM 3 tracker: `resized` = (input size, input size) = the whole square: each axis
      is scaled on its own (a non-uniform scale for a non-square image), no padding.
    Both are the same mapping, per axis: original pixel p covers [p * resized / original, (p + 1) * ...).
    """

    original: tuple[int, int]
    resized: tuple[int, int]
    padded: int


@dataclass
class GeneratedMasks:
    """Output of `MaskGenerator.generate` for one image.

    Attributes:
        masks: the kept masks at the image's resolution.
        embedding: (C, E, E) image embedding of the whole image (float32, on the device): the one the mask
            decoder attends to (for SAM 2-style families the last FPN level; sam/families.py says why).
        frame: geometry of the image inside the embedding.
    """

    masks: MaskSet
    embedding: torch.Tensor
    frame: EmbeddingFrame


class MaskGenerator:
    """Prompt-free mask generation with a model of any SAM family of transformers.

    Args:
        model: a `SamModel`, `SamHQModel`, `Sam2Model`, `EdgeTamModel` or `Sam3TrackerModel` (any size; eval
            mode is set here). The family is told by `model.config.model_type`.
        processor: its preprocessing: a `SamImageProcessorPil` (SAM, SAM-HQ) or a
            `sam.families.SquarePreprocessor` (the others), matching the model's input size.
        config: generation settings; those left None take the family's defaults (`self.config` is resolved).

    Raises:
        ConfigError: the model is of no supported SAM family.
    """

    def __init__(self, model, processor, config: MaskGeneratorConfig | None = None):
        self.model = model.eval()
        self.processor = processor
        self.adapter = adapter_for(self.model, processor)
        self.family = self.adapter.family
        self.config = self.family.resolve(dataclasses.replace(config) if config else MaskGeneratorConfig())
        self.device = next(model.parameters()).device
        self.dtype = next(model.parameters()).dtype
        self.input_size = self.adapter.input_size
        self.timings: dict[str, float] = defaultdict(float)
        self.counts: dict[str, int] = defaultdict(int)
        # Skip upsampling survivors that NMS surely drops (_upsample_in_score_order); False upsamples every
        # survivor, the reference the tests compare with. The masks are the same either way.
        self.presuppress = True
        # On CPU, upsample each survivor only over the window where it can be (sam/upsample.py) when the
        # family's resize allows it; False upsamples whole frames. The masks are the same either way.
        self.windowed = self.device.type == "cpu"

    @classmethod
    def from_pretrained(cls, name_or_path: str, config: MaskGeneratorConfig | None = None, *,
                        revision: str | None = None, device=None, dtype=torch.float32) -> MaskGenerator:
        """Load a SAM-family model and its preprocessing (no torchvision) from a Hub id or folder.

        The family is detected from the checkpoint's `config.json` (`model_type`, see `sam.families.FAMILIES`).

        Raises:
            ConfigError: the checkpoint is of no supported SAM family, or a module it needs is missing.
        """
        family, _ = read_family(name_or_path, revision)
        processor = load_family_processor(family, name_or_path, revision)
        model = load_family_model(family, name_or_path, revision, dtype)
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
        The square-frame families (SAM 2 and after) take every size.
        """
        return self.adapter.image_problem(height, width)

    # ---- encoder -------------------------------------------------------------------------------
    def embed(self, images: list[np.ndarray]) -> tuple[list[ImageEncoding], list[EmbeddingFrame]]:
        """Preprocess and encode RGB uint8 images in one batch: one `ImageEncoding` and frame per image.

        `encodings[i].embedding` is the (C, E, E) embedding the decoder attends to and features pool.
        """
        with self._timed("preprocess"):
            pixel_values, sizes = self.adapter.preprocess(images)
            pixel_values = pixel_values.to(self.device, self.dtype)
        frames = [EmbeddingFrame(o, r, p) for o, r, p in sizes]
        with self._timed("encoder"), torch.inference_mode():
            encodings = self.adapter.encode(pixel_values)
        self.counts["encoder_images"] += len(images)
        return encodings, frames

    # ---- decoder + filters ---------------------------------------------------------------------
    def _decode(self, encoding: ImageEncoding, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Low-res logits (P*M, h, w) and predicted IoUs (P*M,) for points (P, 2) in input-frame pixels."""
        with self._timed("decoder"), torch.inference_mode():
            logits, iou = self.adapter.decode(encoding, points.to(self.dtype))
        self.counts["decoder_prompts"] += int(points.shape[0])
        return logits, iou

    def _process_crop(self, embedding: ImageEncoding, frame: EmbeddingFrame, crop_box: list[int],
                      orig_size: tuple[int, int], points01: np.ndarray) -> MaskSet:
        cfg = self.config
        crop_h, crop_w = frame.original
        new_h, new_w = frame.resized
        scale = torch.tensor([new_w / crop_w, new_h / crop_h], device=self.device)
        crop_points = torch.as_tensor(points01, dtype=torch.float32, device=self.device) * torch.tensor(
            [crop_w, crop_h], dtype=torch.float32, device=self.device)
        survivors = []
        batch = self.prompt_batch(embedding)
        for start in range(0, crop_points.shape[0], batch):
            pts = crop_points[start:start + batch]
            logits, iou = self._decode(embedding, pts * scale)
            if self.family.lowres_cleanup and cfg.min_mask_region_area > 0:
                logits = self._lowres_cleanup(logits, iou)
            n_masks_per_point = logits.shape[0] // pts.shape[0]
            point_of_mask = pts.repeat_interleave(n_masks_per_point, dim=0)
            with self._timed("filter"):
                keep = self._lowres_filter(logits, iou, frame, (crop_h * crop_w) / (orig_size[0] * orig_size[1]))
                self.counts["masks_decoded"] += int(logits.shape[0])
            if keep.any():
                survivors.append((logits[keep], iou[keep], point_of_mask[keep]))
            del logits
        if not survivors:
            return MaskSet.empty(crop_h, crop_w, self.device)
        logits, iou, points = (torch.cat(parts) for parts in zip(*survivors, strict=True))
        return self._upsample_in_score_order(logits, iou, points, frame, crop_box, orig_size)

    def _upsample_in_score_order(self, logits, iou, points, frame: EmbeddingFrame, crop_box, orig_size) -> MaskSet:
        """The crop's low-res survivors upsampled and checked, best score first, with box NMS as it goes.

        This is `amg.nms` (greedy, highest score first, ties by index) run incrementally: a mask is kept when
        no kept mask of higher score overlaps its box by more than the threshold. So a candidate that is
        surely overlapped by an already kept mask is out whatever its full-resolution stats, and is never
        upsampled. Whether it surely is comes from bounds on its box that the low-res logits give
        (`_box_bounds`); the kept set and its order are those of upsampling every survivor, then NMS.
        Duplicates are most of the survivors on scenes with large regions: many prompts, one mask.
        """
        cfg = self.config
        order = torch.sort(iou.float(), descending=True, stable=True).indices  # amg.nms's order
        with self._timed("filter"):
            inner, outer, empty = self._box_bounds(logits, frame)
        kept_boxes = torch.zeros((0, 4), device=self.device)
        parts = []
        step = self._upsample_chunk(frame)
        factors = self._window_factors(frame, tuple(logits.shape[-2:]), logits.dtype)
        if factors is not None:  # one survivor at a time: each kept box can spare the next one its window
            step = 1
            with self._timed("filter"):
                profiles = self._window_profiles(logits)
        for start in range(0, len(order), step):
            idx = order[start:start + step]
            with self._timed("filter"):
                skip = empty[idx] | self._surely_suppressed(kept_boxes, inner[idx], outer[idx])
                skip &= self.presuppress
                self.counts["masks_presuppressed"] += int(skip.sum())
                idx = idx[~skip]
            if not len(idx):
                continue
            self.counts["masks_upsampled"] += len(idx)
            if factors is not None:
                rows = idx.cpu().numpy()
                part = self._upsample_windows_and_check(logits[idx], iou[idx], points[idx], frame, crop_box,
                                                        orig_size, factors, (profiles[0][rows], profiles[1][rows]))
            else:
                part = self._upsample_and_check(logits[idx], iou[idx], points[idx], frame, crop_box, orig_size)
            with self._timed("nms"):
                keep = torch.zeros(len(part), dtype=torch.bool, device=self.device)
                for k in range(len(part)):  # greedy NMS against the kept masks, in score order
                    box = part.boxes[k:k + 1].float()
                    if not len(kept_boxes) or not bool((amg.box_iou(box, kept_boxes) > cfg.box_nms_thresh).any()):
                        keep[k] = True
                        kept_boxes = torch.cat([kept_boxes, box])
            parts.append(part if bool(keep.all()) else part.filter(keep))
        h, w = frame.original
        return MaskSet.cat(parts) if parts else MaskSet.empty(h, w, self.device)

    def _box_bounds(self, logits: torch.Tensor, frame: EmbeddingFrame) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Bounds on the full-resolution boxes of low-res logits (n, h, w), without upsampling them.

        The upsampled logit of a pixel is a convex blend of the low-res logits in its span (the adapter's
        `upsample_spans`). So a pixel can be in the mask only if some logit in its span is above the
        threshold (the outer box), and surely is when all of them are (the inner box). A margin of
        1e-4 * (1 + the largest |logit| of the batch) on both sides absorbs float rounding.

        Returns:
            (inner, outer, empty): (n, 4) float XYXY boxes as `amg.masks_to_boxes` counts them, such that the
            true box contains `inner` and lies inside `outer`; inner is NaN where nothing is sure; empty (n,)
            marks logits whose upsampled mask is surely empty.
        """
        n, low_h, low_w = logits.shape
        (rlo, rhi), (clo, chi) = (tuple(torch.as_tensor(a, device=logits.device) for a in span)
                                  for span in self.adapter.upsample_spans(frame, (low_h, low_w)))
        thr = self.config.mask_threshold
        margin = 1e-4 * (1.0 + max(abs(float(logits.max())), abs(float(logits.min()))))
        maybe, sure = logits > thr - margin, logits > thr + margin

        def possible(profile: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
            counts = torch.cat([profile.new_zeros((n, 1), dtype=torch.int32), profile.int().cumsum(1, dtype=torch.int32)], 1)
            return counts[:, hi + 1] - counts[:, lo] > 0  # (n, full-res length): some maybe-logit in the span

        rows, cols = possible(amg.any_along(maybe, 2), rlo, rhi), possible(amg.any_along(maybe, 1), clo, chi)
        empty = ~(rows.any(1) & cols.any(1))
        outer = torch.stack([_first(cols), _first(rows), _last(cols), _last(rows)], 1).float()
        # Inner: a k x k window of sure logits makes sure every pixel whose spans fit inside it.
        k = int(max((rhi - rlo).max(), (chi - clo).max())) + 1
        inner = torch.full((n, 4), float("nan"), device=logits.device)
        if k > low_h or k > low_w:
            return inner, outer, empty
        window = sure[:, : low_h - k + 1]
        for d in range(1, k):  # all sure in k consecutive rows, then in k consecutive columns
            window = window & sure[:, d: low_h - k + 1 + d]
        cols_window = window[:, :, : low_w - k + 1]
        for d in range(1, k):
            cols_window = cols_window & window[:, :, d: low_w - k + 1 + d]
        window = cols_window  # (n, h-k+1, w-k+1): window starting at (i, j) all sure
        ymin, ymax = _fitting(rlo, rhi, low_h - k + 1, k)
        xmin, xmax = _fitting(clo, chi, low_w - k + 1, k)
        window &= (ymin <= ymax)[None, :, None] & (xmin <= xmax)[None, None, :]
        wr, wc = amg.any_along(window, 2), amg.any_along(window, 1)
        has = wr.any(1)
        ri, rj, ci, cj = _first(wr), _last(wr), _first(wc), _last(wc)
        box = torch.stack([xmin[ci], ymin[ri], xmax[cj], ymax[rj]], 1).float()
        inner[has] = box[has]
        return inner, outer, empty

    def _surely_suppressed(self, kept: torch.Tensor, inner: torch.Tensor, outer: torch.Tensor) -> torch.Tensor:
        """(n,) bool: the candidate's box IoU with some kept box exceeds the NMS threshold whatever its true box.

        For any box B between inner and outer, IoU(K, B) = inter / (area(K) + area of B outside K) with
        inter >= area(K & inner) and the area outside K at most outer's: IoU(K, B) >= area(K & inner) /
        (area(K) + area(outer) - area(K & outer)). A margin of 1e-4 keeps float32 IoU from deciding otherwise.
        """
        if not len(kept) or not len(inner):
            return torch.zeros(len(inner), dtype=torch.bool, device=inner.device)
        inter = amg.box_intersection(inner, kept)  # (n, k); NaN where the inner box is unknown
        union = amg.box_area(kept)[None, :] + amg.box_area(outer)[:, None] - amg.box_intersection(outer, kept)
        bound = torch.where(union > 0, inter / union.clamp_min(1e-12), torch.zeros_like(inter))
        bound = torch.nan_to_num(bound, nan=0.0)
        return (bound > self.config.box_nms_thresh + 1e-4).any(dim=1)

    def _lowres_cleanup(self, logits: torch.Tensor, iou: torch.Tensor) -> torch.Tensor:
        """SAM 2's hole / sprinkle fill of the low-res logits (sam/cleanup.py), on the masks the IoU filter keeps.

        Upstream cleans every mask before its filters; predicted IoU does not depend on the logits, so the
        masks it rejects need no cleaning.
        """
        cfg = self.config
        with self._timed("cleanup"), torch.inference_mode():
            sel = iou > cfg.pred_iou_thresh if cfg.pred_iou_thresh > 0 else torch.ones_like(iou, dtype=torch.bool)
            if sel.any():
                logits = logits.clone()
                logits[sel] = fill_holes_and_sprinkles(logits[sel], cfg.min_mask_region_area, cfg.mask_threshold)
        return logits

    def _lowres_filter(self, logits: torch.Tensor, iou: torch.Tensor, frame: EmbeddingFrame,
                       crop_share: float) -> torch.Tensor:
        """Cheap pre-filter on the low-resolution logits, cropped to the image's valid (unpadded) region.

        `crop_share` is the crop's share of the image area: the area gate is relative to the image.
        """
        cfg = self.config
        low = logits.shape[-1]
        vh = min(low, math.ceil(frame.resized[0] * low / frame.padded))
        vw = min(low, math.ceil(frame.resized[1] * low / frame.padded))
        keep = iou > cfg.pred_iou_thresh if cfg.pred_iou_thresh > 0 else torch.ones_like(iou, dtype=torch.bool)
        # Predicted IoU needs no pixels: the pixel checks run on the masks it keeps only.
        rows = keep.nonzero().squeeze(1)
        if rows.numel() == 0:
            return keep
        valid = logits[rows, :vh, :vw] if rows.numel() < logits.shape[0] else logits[:, :vh, :vw]
        area = amg.count_true(valid > cfg.mask_threshold)
        passes = area > 0
        if cfg.stability_score_thresh > 0:
            # A small mask's low-res stability says little about its full-res one: only the exact check decides.
            small = area.float() * (frame.original[0] * frame.original[1] / float(vh * vw)) < _SMALL_MASK_PIXELS
            stab = amg.stability_score(valid, cfg.mask_threshold, cfg.stability_score_offset)
            passes &= small | (stab >= cfg.stability_score_thresh - _STABILITY_SLACK)
        passes &= area.float() / float(vh * vw) * crop_share <= self._area_gate() + _AREA_SLACK
        keep[rows] = passes
        return keep

    def _area_gate(self) -> float:
        """The largest area fraction a mask may have: the ALPS gate, or none when large masks are kept as stuff."""
        return 1.0 if self.config.large_masks == "stuff" else self.config.max_area_fraction

    def prompt_batch(self, encoding: ImageEncoding) -> int:
        """Prompts per decoder call: `points_per_batch`, or with 0 a size that suits the device.

        On CPU the decoder is memory-bound: its per-prompt image tokens (E x E x C floats, C the decoder's
        width) and their upscaled maps stream through the cache on every layer. Measured with
        scripts/benchmark_sam_decoder.py (alps_hf's decoder, 2 cores), ms per prompt at batch 64 (16) -> the
        batch chosen here: toy SAM (32 x 32 x 64, batch 8) 2.84 -> 2.17 at 1 thread, 1.81 -> 1.29 at 2; a
        ViT-B-sized decoder (64 x 64 x 256, batch 2) 60.4 (16) -> 53.0 at 1 thread, 37.1 (16) -> 31.5 at 2.
        """
        if self.config.points_per_batch > 0:
            return self.config.points_per_batch
        if self.device.type != "cpu":
            return 64
        channels, height, width = encoding.embedding.shape[-3:]
        per_prompt = height * width * channels * 4
        return int(min(64, max(2, 2 ** math.floor(math.log2(max(1, _CPU_PROMPT_BYTES // per_prompt))))))

    def _upsample_chunk(self, frame: EmbeddingFrame) -> int:
        """Masks per upsampling chunk: `upsample_chunk`, or with 0 a size that suits the device.

        On CPU the upsample and the checks after it each stream the chunk's float logits once: a chunk that
        stays in cache is fastest (toy SAM, 512 x 512 masks, 1 and 2 threads: 2 masks per chunk 0.9 / 0.58 ms
        per mask, 8 masks 1.8 / 0.73 ms). On GPU larger chunks amortise the kernel launches (8, not measured).
        """
        if self.config.upsample_chunk > 0:
            return self.config.upsample_chunk
        if self.device.type != "cpu":
            return 8
        return max(1, _CPU_CHUNK_PIXELS // (frame.original[0] * frame.original[1]))

    def _window_factors(self, frame: EmbeddingFrame, low: tuple[int, int], dtype: torch.dtype) -> tuple[int, int] | None:
        """The resize factors when survivors can be upsampled window by window here, else None."""
        if not self.windowed:
            return None
        factors = self.adapter.upsample_factors(frame, low)
        if factors is None or not windows_are_exact(tuple(low), factors, self.device.type, dtype):
            return None
        return factors

    def _exact_keep(self, areas: torch.Tensor, stab: torch.Tensor, orig_size) -> torch.Tensor:
        """The full-resolution filters on (n,) areas and stability scores: nonempty, stable, within the gate."""
        cfg = self.config
        keep = areas > 0
        if cfg.stability_score_thresh > 0:
            keep &= stab >= cfg.stability_score_thresh
        keep &= areas.float() / float(orig_size[0] * orig_size[1]) <= self._area_gate()
        if cfg.min_area > 0:
            keep &= areas >= cfg.min_area
        return keep

    def _window_profiles(self, logits: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """(n, h) and (n, w) bool: the low-res rows / columns of each mask where its window lies.

        A row or column is in when it holds a logit that may exceed the lowest threshold in play (mask
        threshold minus the stability offset; a margin of 1e-4 * (1 + the largest |logit|) absorbs the
        rounding of the bilinear blend); `upsample.window` widens it to the window.
        """
        cfg = self.config
        offset = abs(cfg.stability_score_offset)
        margin = 1e-4 * (1.0 + max(abs(float(logits.max())), abs(float(logits.min())))) if len(logits) else 0.0
        maybe = logits > cfg.mask_threshold - offset - margin
        return amg.any_along(maybe, 2).cpu().numpy(), amg.any_along(maybe, 1).cpu().numpy()

    def _upsample_windows_and_check(self, logits, iou, points, frame: EmbeddingFrame, crop_box, orig_size,
                                    factors: tuple[int, int], profiles: tuple[np.ndarray, np.ndarray]) -> MaskSet:
        """`_upsample_and_check` with each survivor upsampled over its window only (sam/upsample.py).

        The counts, boxes and masks are those of the whole-frame path: outside a window every pixel is below
        the lowest threshold in play in both. `profiles` are the masks' `_window_profiles`.
        """
        cfg = self.config
        h, w = frame.original
        hi_thr, lo_thr = cfg.mask_threshold + cfg.stability_score_offset, cfg.mask_threshold - cfg.stability_score_offset
        counts, boxes, pieces = [], [], []
        for i, (row_any, col_any) in enumerate(zip(*profiles, strict=True)):
            if not row_any.any():  # nothing above the lowest threshold: an empty mask, as in the whole-frame path
                counts.append((0, 0, 0))
                boxes.append((0, 0, 0, 0))
                pieces.append(None)
                continue
            self.counts["masks_windowed"] += 1
            with self._timed("upsample"):
                pixels, y0, x0 = upsample_window(logits[i], window(row_any), window(col_any), factors, (h, w))
            with self._timed("filter"):
                mask = pixels > cfg.mask_threshold
                inter, union, area = amg.count_true(torch.stack([pixels > hi_thr, pixels > lo_thr, mask])).tolist()
                counts.append((inter, union, area))
                if area:  # amg.masks_to_boxes's box: first / last covered column and row
                    ys = np.flatnonzero(amg.any_along(mask, 1).cpu().numpy())
                    xs = np.flatnonzero(amg.any_along(mask, 0).cpu().numpy())
                    boxes.append((x0 + xs[0], y0 + ys[0], x0 + xs[-1], y0 + ys[-1]))
                else:
                    boxes.append((0, 0, 0, 0))
                pieces.append((mask, y0, x0))
        with self._timed("filter"):
            inter, union, areas = torch.tensor(counts, dtype=torch.int64).reshape(-1, 3).unbind(1)
            boxes = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
            stab = amg.stability_from_counts(inter, union)
            keep = self._exact_keep(areas, stab, orig_size)
            if crop_box != [0, 0, orig_size[1], orig_size[0]]:
                keep &= ~amg.is_box_near_crop_edge(boxes, crop_box, [0, 0, orig_size[1], orig_size[0]])
            rows = keep.nonzero().squeeze(1).tolist()
            masks = torch.zeros((len(rows), h, w), dtype=torch.bool, device=logits.device)
            for k, i in enumerate(rows):
                mask, y0, x0 = pieces[i]
                masks[k, y0:y0 + mask.shape[0], x0:x0 + mask.shape[1]] = mask
        keep_d = keep.to(logits.device)
        return MaskSet(masks, boxes[keep].to(logits.device), iou[keep_d], stab[keep].to(logits.device),
                       areas[keep].to(logits.device), points[keep_d])

    def _upsample_and_check(self, logits, iou, points, frame: EmbeddingFrame, crop_box, orig_size) -> MaskSet:
        """Upsample survivors in chunks (as the family's processor does) and apply exact filters."""
        cfg = self.config
        parts = []
        step = self._upsample_chunk(frame)
        for start in range(0, logits.shape[0], step):
            chunk = logits[start:start + step]
            with self._timed("upsample"):
                full = self.adapter.upsample(chunk[:, None], frame)[:, 0]
            with self._timed("filter"):
                stab = amg.stability_score(full, cfg.mask_threshold, cfg.stability_score_offset)
                masks = full > cfg.mask_threshold
                del full
                areas = amg.count_true(masks)
                keep = self._exact_keep(areas, stab, orig_size)
                masks, areas = masks[keep], areas[keep]
                boxes = amg.masks_to_boxes(masks)
                sel_iou, sel_stab, sel_pts = iou[start:start + step][keep], stab[keep], points[start:start + step][keep]
                if crop_box != [0, 0, orig_size[1], orig_size[0]]:
                    near = amg.is_box_near_crop_edge(boxes, crop_box, [0, 0, orig_size[1], orig_size[0]])
                    masks, areas, boxes = masks[~near], areas[~near], boxes[~near]
                    sel_iou, sel_stab, sel_pts = sel_iou[~near], sel_stab[~near], sel_pts[~near]
            parts.append(MaskSet(masks, boxes, sel_iou, sel_stab, areas.to(torch.int64), sel_pts))
        return MaskSet.cat(parts)

    def _densify(self, embedding: ImageEncoding, frame: EmbeddingFrame, masks: MaskSet, prompts: int) -> MaskSet:
        """Further prompt rounds where the kept masks leave the image uncovered (sam/densify.py).

        Each round prompts the cells of a grid twice as fine that are mostly uncovered, adds the new
        masks and runs box NMS over all of them, until the rounds or the prompt budget run out.
        """
        cfg = self.config
        h, w = frame.original
        box = [0, 0, w, h]
        for side in round_sides(cfg.points_per_side, cfg.densify_rounds):
            with self._timed("densify"):
                covered = amg.any_along(masks.masks, 0).cpu().numpy() if len(masks) else np.zeros((h, w), dtype=bool)
                points = limit_points(densify_points(~covered, side, cfg.densify_min_uncovered),
                                      cfg.densify_budget - prompts)
            if len(points) == 0:
                break
            prompts += len(points)
            new = self._process_crop(embedding, frame, box, (h, w), points)
            if len(new):
                with self._timed("nms"):
                    keep = amg.nms(torch.cat([masks.boxes, new.boxes]), torch.cat([masks.iou_scores, new.iou_scores]),
                                   cfg.box_nms_thresh)
                    masks = MaskSet.gather([masks, new], keep)
        return masks

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
                if layer == 0 and cfg.densify_rounds > 0:
                    data = self._densify(embedding, frame, data, len(grids[0]))
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
            if cfg.min_mask_region_area > 0:  # after crops are merged, as segment-anything does
                with self._timed("cleanup"):
                    masks = postprocess_small_regions(masks, cfg.min_mask_region_area, cfg.box_nms_thresh)
            results.append(GeneratedMasks(masks, embedding.embedding.float(), frame))
        return results


def _first(flags: torch.Tensor) -> torch.Tensor:
    """(n,) index of the first True in each row of flags (n, m); 0 for a row with none."""
    return flags.int().argmax(dim=1)


def _last(flags: torch.Tensor) -> torch.Tensor:
    """(n,) index of the last True in each row of flags (n, m); m - 1 for a row with none."""
    return flags.shape[1] - 1 - flags.flip(1).int().argmax(dim=1)


def _fitting(lo: torch.Tensor, hi: torch.Tensor, starts: int, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """For each window start i of k low-res indices, the first and last output index whose span fits in it.

    An output index fits window [i, i + k - 1] when i <= lo and hi <= i + k - 1; lo and hi are nondecreasing,
    so those indices are a range, empty where first > last.
    """
    i = torch.arange(starts, device=lo.device)
    first = torch.searchsorted(lo, i, right=False)
    last = torch.searchsorted(hi, i + k - 1, right=True) - 1
    return first, last


def load_sam_image_processor(name_or_path: str, revision: str | None = None):
    """The preprocessing of a checkpoint of any SAM family, without torchvision.

    SAM and SAM-HQ: `SamImageProcessorPil`; SAM 2, EdgeTAM, SAM 3 tracker: `SquarePreprocessor`, from the
    checkpoint's processor config. The family is read from its config.json; a folder without one is SAM.
    """
    try:
        family, _ = read_family(name_or_path, revision)
    except OSError:
        family = FAMILIES["sam"]
    return load_family_processor(family, name_or_path, revision)
