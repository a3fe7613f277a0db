#!/usr/bin/env python
"""Every SAM family on alps_hf's fast path against transformers' `mask-generation` pipeline.

For each family, on the same weights and images:
(a) preprocessing: alps_hf's pixel values against the family's torchvision image processor
    (`SamImageProcessor`, `Sam2ImageProcessor`, `Sam3ImageProcessor`), max abs difference;
(b) masks: the share of the pipeline's masks that alps_hf also finds (IoU >= 0.9), and the reverse,
    at the same thresholds (no area gate, no densify, no crops, no cleanup: what the pipeline does);
(c) seconds per image: alps_hf (masks + features from the same embedding) against the pipeline plus
    a second `get_image_embeddings` pass (what features would cost it), interleaved in one process.

Needs torchvision (the torchvision processors and the pipeline): run it in a separate environment, never
in the project's own (its CPU torch and torchvision's wheels do not load together):

    python3 -m venv ../compare-venv && ../compare-venv/bin/pip install torch==2.13.0 torchvision==0.28.0 timm pytest
    ../compare-venv/bin/pip install -e .
    ../compare-venv/bin/python scripts/benchmark_sam_families.py --threads 1 --points-per-side 32

Weights: SAM is the toy SAM (`../shared/models/toy-sam`, trained, 512 px); the other families are tiny
random models (tests/sam_family_fixtures.py, 128 px) whose mask-decoder output layer is scaled so their
logits are O(1) (random ones are ~1e-5, which no threshold can tell apart). Random predicted IoUs are
meaningless, so those rows use --random-pred-iou-thresh (default 0), and their masks are large overlapping
blobs that box NMS at 0.7 collapses to one, so they use --random-box-nms-thresh (default 1.0, no NMS): the
comparison then covers every mask that passes the stability filter (--random-stability-score-thresh,
default 0.5). Images are the synthetic scenes,
made square: transformers' SAM 2 / SAM 3 pipeline scales point prompts by the longest side (its
`_normalize_coordinates`), which puts them off for a non-square image of a square-resize family.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from alps_hf.sam.families import FAMILIES
from alps_hf.sam.features import mask_features
from alps_hf.sam.generator import MaskGenerator, MaskGeneratorConfig

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


def scale_decoder_output(model, target: float, image: np.ndarray, processor) -> float:
    """Scale the mask decoder's hypernetwork output layers so the median |logit| is about `target`."""
    gen = MaskGenerator(model, processor, MaskGeneratorConfig(points_per_side=4))
    encodings, frames = gen.embed([image])
    points = torch.tensor([[frames[0].resized[1] / 2, frames[0].resized[0] / 2]])
    with torch.inference_mode():
        logits, _ = gen.adapter.decode(encodings[0], points)
    factor = target / max(float(logits.abs().median()), 1e-12)
    mlps = list(model.mask_decoder.output_hypernetworks_mlps)
    if hasattr(model.mask_decoder, "hq_mask_mlp"):
        mlps.append(model.mask_decoder.hq_mask_mlp)
    layers = [mlp.proj_out for mlp in mlps]
    with torch.no_grad():
        for layer in layers:
            layer.weight.mul_(factor)
            if layer.bias is not None:
                layer.bias.mul_(factor)
    return factor


def load_family(family: str, folder: Path, image: np.ndarray):
    """(model folder, model, our processor, note) for one family."""
    if family == "sam":
        path = SHARED / "models" / "toy-sam"
        gen = MaskGenerator.from_pretrained(str(path))
        return path, gen.model, gen.processor, "toy SAM (trained), 512 px"
    sys.path.insert(0, str(REPO / "tests"))
    from sam_family_fixtures import save_tiny_family, tiny_model, tiny_processor

    model = tiny_model(family)
    factor = scale_decoder_output(model, 2.0, image, tiny_processor(family))
    path = save_tiny_family(family, folder / family)
    model.save_pretrained(path)  # the scaled weights, for the pipeline
    gen = MaskGenerator.from_pretrained(str(path))
    return path, gen.model, gen.processor, f"tiny random, decoder output x{factor:.3g}"


def preprocessing_diff(path: Path, ours, images: list[np.ndarray], family: str) -> float:
    from transformers import AutoImageProcessor

    theirs = AutoImageProcessor.from_pretrained(path, backend="torchvision") if family in ("sam", "sam_hq") \
        else AutoImageProcessor.from_pretrained(path)
    worst = 0.0
    for image in images:
        want = theirs(images=[image], return_tensors="pt")["pixel_values"].float()
        if FAMILIES[family].frame == "padded":
            got = ours(images=[image], return_tensors="pt", input_data_format="channels_last")["pixel_values"]
        else:
            got = ours([image])
        worst = max(worst, float((got.float() - want).abs().max()))
    return worst


def match_share(a: torch.Tensor, b: torch.Tensor, thresh: float = 0.9) -> float:
    """Share of masks in a with a mask in b at IoU >= thresh (1.0 when a is empty)."""
    if len(a) == 0:
        return 1.0
    if len(b) == 0:
        return 0.0
    af, bf = a.flatten(1).float(), b.flatten(1).float()
    inter = af @ bf.T
    union = af.sum(1)[:, None] + bf.sum(1)[None, :] - inter
    return float(((inter / union.clamp_min(1)).amax(dim=1) >= thresh).float().mean())


def run_family(family: str, folder: Path, images: list[np.ndarray], args) -> dict:
    from transformers import pipeline

    path, model, processor, note = load_family(family, folder, images[0])
    pred_iou = args.pred_iou_thresh if family == "sam" else args.random_pred_iou_thresh
    nms = args.box_nms_thresh if family == "sam" else args.random_box_nms_thresh
    stability = args.stability_score_thresh if family == "sam" else args.random_stability_score_thresh
    alps_batch = args.points_per_batch if args.alps_points_per_batch is None else args.alps_points_per_batch
    cfg = MaskGeneratorConfig(points_per_side=args.points_per_side, points_per_batch=alps_batch,
                              pred_iou_thresh=pred_iou, stability_score_thresh=stability,
                              box_nms_thresh=nms, max_area_fraction=1.0, large_masks="drop", densify_rounds=0,
                              min_mask_region_area=0, fill=False)
    gen = MaskGenerator(model, processor, cfg)
    pipe = pipeline("mask-generation", model=str(path), device="cpu")
    pipe_kwargs = {"points_per_batch": args.points_per_batch, "points_per_crop": args.points_per_side,
                   "pred_iou_thresh": pred_iou, "stability_score_thresh": stability, "crops_nms_thresh": nms}
    pipe_model, pipe_proc = pipe.model, pipe.image_processor

    def ours(image):
        out = gen.generate([image])[0]
        mask_features(out.masks.masks, out.embedding, out.frame)
        return out.masks.masks

    def theirs(image):
        result = pipe(Image.fromarray(image), **pipe_kwargs)
        px = pipe_proc(images=[image], return_tensors="pt")["pixel_values"]
        with torch.inference_mode():
            pipe_model.get_image_embeddings(px)  # the second encoder pass features would need
        return torch.stack([torch.as_tensor(np.asarray(m), dtype=torch.bool) for m in result["masks"]]) \
            if result["masks"] else torch.zeros((0, *image.shape[:2]), dtype=torch.bool)

    ours(images[0]), theirs(images[0])  # warm-up
    gen.timings.clear()
    t_ours, t_theirs, forward, backward, counts = [], [], [], [], []
    for _ in range(args.repeats):
        for image in images:
            t0 = time.perf_counter()
            a = ours(image)
            t1 = time.perf_counter()
            b = theirs(image)
            t2 = time.perf_counter()
            t_ours.append(t1 - t0)
            t_theirs.append(t2 - t1)
            forward.append(match_share(b, a))
            backward.append(match_share(a, b))
            counts.append((len(a), len(b)))
    return {
        "family": family, "weights": note, "model_class": type(model).__name__, "input_size": gen.input_size,
        "pred_iou_thresh": pred_iou, "box_nms_thresh": nms, "stability_score_thresh": stability,
        "preprocessing_max_abs_diff": preprocessing_diff(path, processor, images, family),
        "pipeline_masks_matched": min(forward), "alps_masks_matched": min(backward),
        "masks_alps_pipeline": counts[: len(images)],
        "seconds_alps": statistics.median(t_ours), "seconds_pipeline_plus_encoder": statistics.median(t_theirs),
        "speedup": statistics.median(t_theirs) / statistics.median(t_ours),
        # alps_hf's own stages, seconds per image: encoder + decoder is the floor no implementation avoids
        "alps_stage_seconds": {k: v / len(t_ours) for k, v in gen.timings.items()},
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--families", nargs="+", default=list(FAMILIES), choices=list(FAMILIES))
    p.add_argument("--num-images", type=int, default=2)
    p.add_argument("--image-size", type=int, default=512, help="Images are centre-cropped square, then resized.")
    p.add_argument("--points-per-side", type=int, default=32)
    p.add_argument("--points-per-batch", type=int, default=64, help="Prompts per decoder call, both sides.")
    p.add_argument("--alps-points-per-batch", type=int, default=None,
                   help="alps_hf's own, when it should differ (0: its automatic choice; the pipeline's default is 64).")
    p.add_argument("--pred-iou-thresh", type=float, default=0.5, help="For the toy SAM (trained).")
    p.add_argument("--random-pred-iou-thresh", type=float, default=0.0, help="For the random-weight families.")
    p.add_argument("--box-nms-thresh", type=float, default=0.7, help="For the toy SAM.")
    p.add_argument("--random-box-nms-thresh", type=float, default=1.0, help="For the random-weight families.")
    p.add_argument("--stability-score-thresh", type=float, default=0.8, help="For the toy SAM.")
    p.add_argument("--random-stability-score-thresh", type=float, default=0.5, help="For the random-weight families.")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", default="benchmark_sam_families.json")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    paths = sorted((SHARED / "data" / "synthetic_scenes" / "images").glob("*.png"))[: args.num_images]
    images = []
    for path in paths:
        im = Image.open(path).convert("RGB")
        side = min(im.size)
        im = im.crop(((im.width - side) // 2, (im.height - side) // 2, (im.width + side) // 2, (im.height + side) // 2))
        images.append(np.asarray(im.resize((args.image_size, args.image_size), Image.BILINEAR)))
    settings = {"machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}, "
                           f"{args.threads} thread(s)", "images": [p.name for p in paths], **vars(args)}
    print(f"settings: {settings['machine']}; {len(images)} synthetic scenes at {args.image_size}x{args.image_size}; "
          f"{args.points_per_side}x{args.points_per_side} grid, {args.points_per_batch} prompts per batch"
          + ("" if args.alps_points_per_batch is None else f" (alps_hf: {args.alps_points_per_batch or 'auto'})") + "; "
          f"toy SAM: pred IoU > {args.pred_iou_thresh}, stability >= {args.stability_score_thresh}, NMS "
          f"{args.box_nms_thresh}; random-weight families: pred IoU > {args.random_pred_iou_thresh}, stability >= "
          f"{args.random_stability_score_thresh}, NMS {args.random_box_nms_thresh}; {args.repeats} interleaved repeats, medians")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for family in args.families:
            row = run_family(family, Path(tmp), images, args)
            rows.append(row)
            print(f"{family:13s} {row['weights']:38s} preprocess max|diff| {row['preprocessing_max_abs_diff']:.2e}  "
                  f"pipeline masks matched {100 * row['pipeline_masks_matched']:5.1f} % "
                  f"(ours matched {100 * row['alps_masks_matched']:5.1f} %, masks {row['masks_alps_pipeline']})  "
                  f"s/img alps {row['seconds_alps']:.3f} vs pipeline+encoder {row['seconds_pipeline_plus_encoder']:.3f}"
                  f" = {row['speedup']:.1f}x", flush=True)
            stages = row["alps_stage_seconds"]
            floor = stages.get("encoder", 0.0) + stages.get("decoder", 0.0)
            print(f"{'':13s} alps stages s/img: " + ", ".join(f"{k} {v:.3f}" for k, v in stages.items())
                  + f"; total / (encoder + decoder) = {row['seconds_alps'] / max(floor, 1e-9):.2f}", flush=True)
    Path(args.json).write_text(json.dumps({"settings": settings, "families": rows}, indent=2) + "\n")
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
