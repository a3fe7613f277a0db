"""A tiny random SAM saved with save_pretrained, and small generated images, for the labeling tests.

Nothing is downloaded: the model is built from a `SamConfig` (input size 128, so the embedding is
8 x 8 and the low-resolution masks 32 x 32: nothing may assume 1024 / 64 x 64).
"""

from __future__ import annotations

from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path

import numpy as np
from PIL import Image

TINY_INPUT = 128
TINY_CHANNELS = 32


def tiny_sam_config():
    from transformers import SamConfig
    from transformers.models.sam.configuration_sam import (
        SamMaskDecoderConfig,
        SamPromptEncoderConfig,
        SamVisionConfig,
    )

    vision = SamVisionConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, image_size=TINY_INPUT,
                             patch_size=16, output_channels=TINY_CHANNELS, mlp_dim=64, window_size=4,
                             global_attn_indexes=[1], num_pos_feats=16)
    prompt = SamPromptEncoderConfig(hidden_size=TINY_CHANNELS, image_size=TINY_INPUT, patch_size=16,
                                    mask_input_channels=4)
    decoder = SamMaskDecoderConfig(hidden_size=TINY_CHANNELS, mlp_dim=64, num_hidden_layers=2,
                                   num_attention_heads=2, iou_head_hidden_dim=32)
    return SamConfig(vision_config=vision.to_dict(), prompt_encoder_config=prompt.to_dict(),
                     mask_decoder_config=decoder.to_dict())


def tiny_sam_processor():
    from transformers import SamImageProcessorPil

    low = TINY_INPUT // 4
    return SamImageProcessorPil(size={"longest_edge": TINY_INPUT}, pad_size={"height": TINY_INPUT, "width": TINY_INPUT},
                                mask_size={"longest_edge": low}, mask_pad_size={"height": low, "width": low})


def tiny_sam_model(seed: int = 0):
    import torch
    from transformers import SamModel

    torch.manual_seed(seed)
    return SamModel(tiny_sam_config()).eval()


def save_tiny_sam(folder: Path) -> Path:
    """Save a tiny random SamModel and its PIL image processor into folder (save_pretrained layout)."""
    tiny_sam_model().save_pretrained(folder)
    tiny_sam_processor().save_pretrained(folder)
    return folder


def brute_force_nms(boxes, scores, thresh: float) -> list[int]:
    """O(n^2) greedy NMS from the definition, the reference for `amg.nms` (kept indices, best first).

    Exact rational IoU (torchvision's area convention: x1 - x0 wide, zero-area boxes overlap nothing), so
    no float rounding decides a tie; equal scores keep the lower index. boxes: (n, 4) x0, y0, x1, y1 as a
    list or tensor; scores: n values; thresh: boxes with IoU above it against a kept box are dropped.
    """
    boxes = boxes.tolist() if hasattr(boxes, "tolist") else boxes
    scores = [float(s) for s in (scores.tolist() if hasattr(scores, "tolist") else scores)]

    def iou(p: Sequence[float], q: Sequence[float]) -> Fraction:
        p, q = [Fraction(v) for v in p], [Fraction(v) for v in q]
        w = max(Fraction(0), min(p[2], q[2]) - max(p[0], q[0]))
        h = max(Fraction(0), min(p[3], q[3]) - max(p[1], q[1]))
        inter = w * h
        union = (p[2] - p[0]) * (p[3] - p[1]) + (q[2] - q[0]) * (q[3] - q[1]) - inter
        return inter / union if union > 0 else Fraction(0)

    limit = Fraction(thresh).limit_denominator(1000)
    order = sorted(range(len(boxes)), key=lambda i: (-scores[i], i))
    keep: list[int] = []
    for i in order:
        if all(iou(boxes[i], boxes[j]) <= limit for j in keep):
            keep.append(i)
    return keep


def blocks_image(seed: int, height: int = 48, width: int = 64) -> np.ndarray:
    """An RGB uint8 image of a few flat-coloured rectangles on a noisy background."""
    rng = np.random.default_rng(seed)
    img = rng.integers(90, 140, (height, width, 3), dtype=np.uint8)
    for _ in range(4):
        y0, x0 = rng.integers(0, height - 8), rng.integers(0, width - 8)
        h, w = rng.integers(6, max(7, height // 2)), rng.integers(6, max(7, width // 2))
        img[y0:y0 + h, x0:x0 + w] = rng.integers(0, 255, 3, dtype=np.uint8)
    return img


def write_png(path: Path, array: np.ndarray, **kwargs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, **kwargs)
    return path


def write_odd_images(folder: Path) -> dict[str, str | None]:
    """Odd but valid images and broken files; returns {relative name: None (valid) or a reason fragment}.

    Valid: grayscale, RGBA, palette, palette with transparency, 16-bit grayscale PNG, EXIF-rotated JPEG
    (stored 40 wide x 24 high, displayed upright as 24 x 40), an 8 x 8 image, CMYK JPEG.
    Broken: a 0-byte file, a truncated JPEG, a text file.
    """
    import io

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(7)
    write_png(folder / "gray.png", rng.integers(0, 255, (30, 41), dtype=np.uint8))
    rgba = rng.integers(0, 255, (33, 29, 4), dtype=np.uint8)
    write_png(folder / "rgba.png", rgba)
    pal = Image.fromarray(blocks_image(1, 36, 44)).convert("P", palette=Image.ADAPTIVE, colors=8)
    pal.save(folder / "palette.png")
    pal.info["transparency"] = 0
    pal.save(folder / "palette_transparent.png", transparency=0)
    write_png(folder / "gray16.png", np.linspace(1000, 3000, 35 * 40).reshape(35, 40).astype(np.uint16))
    upright = np.zeros((24, 40, 3), np.uint8)
    upright[:, :20] = (255, 0, 0)  # left half red
    upright[:, 20:] = (0, 0, 255)  # right half blue
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display": upright is 24 wide x 40 high, red on top
    (folder / "sub").mkdir()
    Image.fromarray(upright).save(folder / "sub" / "exif_rotated.jpg", exif=exif, quality=95)
    write_png(folder / "tiny8.png", rng.integers(0, 255, (8, 8, 3), dtype=np.uint8))
    Image.fromarray(blocks_image(3, 30, 30)).convert("CMYK").save(folder / "cmyk.jpg")
    (folder / "empty.png").write_bytes(b"")
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buf, format="JPEG")
    (folder / "truncated.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    (folder / "notes.txt").write_text("these are not pixels\n")
    return {
        "cmyk.jpg": None, "gray.png": None, "gray16.png": None, "palette.png": None,
        "palette_transparent.png": None, "rgba.png": None, "sub/exif_rotated.jpg": None, "tiny8.png": None,
        "empty.png": "empty file (0 bytes)", "truncated.jpg": "corrupt or truncated", "notes.txt": "not an image",
    }
