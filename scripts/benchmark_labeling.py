#!/usr/bin/env python
"""Benchmark of the labeling pass: per-stage seconds, images/s, peak RSS, and the ratio to the floor.

The floor is what no implementation can avoid for one image: the encoder pass plus the mask decoder
over all prompts at low resolution. It is measured in the same run on the same images, and the
report gives total / floor. Where torchvision is importable, transformers' `mask-generation`
pipeline plus a second encoder pass (what features would cost it) is timed too.

    python scripts/benchmark_labeling.py --model tiny --image-size 512 --num-images 2
    python scripts/benchmark_labeling.py --model vit-b --image-size 1024 --num-images 1 --points-per-side 32
"""

from __future__ import annotations

import argparse
import io
import json
import platform
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from alps_hf.sam import amg
from alps_hf.sam.features import mask_features
from alps_hf.sam.generator import MaskGenerator, MaskGeneratorConfig
from alps_hf.sam.segment_map import paint_segments

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


def build_model(name: str, image_size: int):
    from transformers import SamConfig, SamImageProcessorPil, SamModel

    if name == "toy":
        path = SHARED / "models" / "toy-sam"
        return SamModel.from_pretrained(path), SamImageProcessorPil.from_pretrained(path)
    if name == "vit-b":
        config = SamConfig()  # defaults are SAM ViT-B: hidden 768, 12 layers, 1024 px input
    elif name == "tiny":
        config = SamConfig(
            vision_config={"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2, "mlp_dim": 128,
                           "output_channels": 32, "global_attn_indexes": [1], "image_size": 256, "window_size": 8,
                           "num_pos_feats": 16},
            prompt_encoder_config={"hidden_size": 32, "image_size": 256, "image_embedding_size": 16},
            mask_decoder_config={"hidden_size": 32, "mlp_dim": 64, "num_attention_heads": 2, "iou_head_hidden_dim": 32},
        )
    else:
        raise SystemExit(f"unknown --model {name}; choose tiny, toy or vit-b")
    torch.manual_seed(0)
    model = SamModel(config)
    size = config.vision_config.image_size
    processor = SamImageProcessorPil(size={"longest_edge": size}, pad_size={"height": size, "width": size},
                                     mask_size={"longest_edge": size // 4},
                                     mask_pad_size={"height": size // 4, "width": size // 4})
    return model, processor


def load_images(n: int, size: int) -> list[np.ndarray]:
    tiles = sorted((SHARED / "data" / "dubai_aerial" / "images").glob("*.jpg"))
    images = []
    for i in range(n):
        if tiles:
            img = Image.open(tiles[i % len(tiles)]).convert("RGB").resize((size, size), Image.BILINEAR)
            images.append(np.asarray(img))
        else:
            images.append(np.random.default_rng(i).integers(0, 255, (size, size, 3), dtype=np.uint8))
    return images


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def floor_seconds(gen: MaskGenerator, image: np.ndarray) -> float:
    """Encoder + decoder over every prompt at low resolution, nothing else."""
    cfg = gen.config
    h, w = image.shape[:2]
    sync(gen.device)
    t0 = time.perf_counter()
    embeddings, frames = gen.embed([image])
    scale = torch.tensor([frames[0].resized[1] / w, frames[0].resized[0] / h], device=gen.device)
    points = torch.as_tensor(amg.build_point_grid(cfg.points_per_side), dtype=torch.float32, device=gen.device)
    points = points * torch.tensor([w, h], device=gen.device)
    for start in range(0, len(points), cfg.points_per_batch):
        gen._decode(embeddings[0], points[start:start + cfg.points_per_batch] * scale)
    sync(gen.device)
    return time.perf_counter() - t0


def full_seconds(gen: MaskGenerator, image: np.ndarray, stages: dict) -> tuple[float, int]:
    sync(gen.device)
    t0 = time.perf_counter()
    out = gen.generate([image])[0]
    sync(gen.device)
    t1 = time.perf_counter()
    feats = mask_features(out.masks.masks, out.embedding, out.frame)
    sync(gen.device)
    t2 = time.perf_counter()
    seg = paint_segments(out.masks)
    segments = seg.segments.cpu().numpy().astype(np.uint16)
    t3 = time.perf_counter()
    buf = io.BytesIO()
    Image.fromarray(segments).save(buf, format="PNG")
    feats[seg.mask_index].cpu().numpy().astype(np.float16).tobytes()
    t4 = time.perf_counter()
    stages["features"] += t2 - t1
    stages["painting"] += t3 - t2
    stages["writing"] += t4 - t3
    return t4 - t0, len(out.masks)


def pipeline_comparison(model, processor, images, points_per_side, device) -> dict | None:
    try:
        import torchvision  # noqa: F401
        from transformers import pipeline
    except Exception:  # noqa: BLE001
        return None
    generator = pipeline("mask-generation", model=model, image_processor=processor, device=device)
    t0 = time.perf_counter()
    for img in images:
        generator(Image.fromarray(img), points_per_batch=64, points_per_crop=points_per_side)
        px = processor(images=[img], return_tensors="pt")["pixel_values"].to(device, model.dtype)
        with torch.inference_mode():
            model.get_image_embeddings(px)
    sync(torch.device(device))
    return {"seconds_per_image": (time.perf_counter() - t0) / len(images)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
    p.add_argument("--model", default="tiny", help="tiny | toy (../shared/models/toy-sam) | vit-b (random weights)")
    p.add_argument("--image-size", type=int, default=512)
    p.add_argument("--num-images", type=int, default=2)
    p.add_argument("--points-per-side", type=int, default=32)
    p.add_argument("--points-per-batch", type=int, default=64)
    p.add_argument("--pred-iou-thresh", type=float, default=0.0,
                   help="0 by default: random weights predict low IoUs; 0 keeps the post-processing busy")
    p.add_argument("--stability-score-thresh", type=float, default=0.0)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--repeats", type=int, default=1, help="Passes over the images (floor and full interleaved).")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice).")
    p.add_argument("--json", default="benchmark_labeling.json")
    args = p.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    model, processor = build_model(args.model, args.image_size)
    model = model.to(device, getattr(torch, args.dtype)).eval()
    cfg = MaskGeneratorConfig(points_per_side=args.points_per_side, points_per_batch=args.points_per_batch,
                              pred_iou_thresh=args.pred_iou_thresh, stability_score_thresh=args.stability_score_thresh)
    gen = MaskGenerator(model, processor, cfg)
    images = load_images(args.num_images, args.image_size)
    # Warm-up (allocator, kernels) on a 4x4 grid: a full 32x32 warm-up at ViT-B size costs minutes on CPU.
    cfg.points_per_side = 4
    full_seconds(gen, images[0], {"features": 0.0, "painting": 0.0, "writing": 0.0})
    floor_seconds(gen, images[0])
    cfg.points_per_side = args.points_per_side
    gen.timings.clear()
    gen.counts.clear()

    # Floor and full pass interleaved image by image (and repeat by repeat), so that a change in machine
    # load hits both sides of the ratio alike; each side's stage times are kept apart.
    floor, total, masks = 0.0, 0.0, 0
    floor_timings: dict[str, float] = {}
    full_timings: dict[str, float] = {}
    stages = {"features": 0.0, "painting": 0.0, "writing": 0.0}
    runs = [img for _ in range(args.repeats) for img in images]
    for img in runs:
        gen.timings.clear()
        floor += floor_seconds(gen, img)
        for k, v in gen.timings.items():
            floor_timings[k] = floor_timings.get(k, 0.0) + v
        gen.timings.clear()
        seconds, n = full_seconds(gen, img, stages)
        for k, v in gen.timings.items():
            full_timings[k] = full_timings.get(k, 0.0) + v
        total += seconds
        masks += n
    images = runs
    stage_seconds = {**full_timings, **stages}
    result = {
        "model": args.model, "image_size": args.image_size, "num_images": args.num_images, "repeats": args.repeats,
        "points_per_side": args.points_per_side, "points_per_batch": args.points_per_batch,
        "pred_iou_thresh": args.pred_iou_thresh, "stability_score_thresh": args.stability_score_thresh,
        "device": str(device), "dtype": args.dtype, "torch_threads": torch.get_num_threads(),
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip()
        + (f", {torch.cuda.get_device_name(device)}" if device.type == "cuda" else ""),
        "masks_per_image": masks / len(images),
        "masks_decoded_per_image": gen.counts.get("masks_decoded", 0) / len(images),
        "masks_upsampled_per_image": gen.counts.get("masks_upsampled", 0) / len(images),
        "stage_seconds_per_image": {k: v / len(images) for k, v in sorted(stage_seconds.items())},
        "floor_seconds_per_image": floor / len(images),
        "floor_stage_seconds_per_image": {k: v / len(images) for k, v in floor_timings.items()},
        "total_seconds_per_image": total / len(images),
        "images_per_second": len(images) / total,
        "ratio_total_to_floor": total / floor,
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2,
    }
    if device.type == "cuda":
        result["peak_cuda_gb"] = torch.cuda.max_memory_allocated(device) / 1024**3
    comparison = pipeline_comparison(model, processor, images, args.points_per_side, args.device)
    if comparison:
        comparison["speedup_of_alps_hf"] = comparison["seconds_per_image"] / result["total_seconds_per_image"]
    result["transformers_mask_generation_pipeline"] = comparison or "not run: torchvision is not importable"
    for key, value in result.items():
        print(f"{key}: {json.dumps(value) if isinstance(value, (dict, list)) else value}")
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
