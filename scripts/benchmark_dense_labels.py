#!/usr/bin/env python
"""Cost and reach of dense labeling (issue 10): prompts, time, coverage and the 32x32 grid's masks found.

Three labeling variants run pass 1 (masks, features, segment map, fill) on the same held-out synthetic
scenes with the same loaded SAM, in one process, interleaved image by image (the order rotates per
image, so a slow moment of a shared machine does not fall on one variant):

- `paper-16`: the ALPS paper settings (large masks dropped, no fill, no densify) at a 16x16 grid
  (256 prompts, the dense preset's budget): the issue's "today's labeling at the same grid";
- `paper-8`: the same at the dense preset's first grid (8x8, 64 prompts), for the other reading of
  "the same grid";
- `dense`: the default preset (8x8 grid, 3 densify rounds within a 256-prompt budget, stuff, fill);
- `dense-16`: the first dense preset (16x16 grid, 2 densify rounds within 512 prompts), what the
  default replaced;
- `paper-32`: the ALPS paper preset (plain 32x32 grid, 1024 prompts);
- `then-16` (with `--then REV`, default the commit issue 10 measured, d331c74): pass 1 of alps_hf as it was
  at that commit (its own package, imported from `git archive REV` under another name, on the same loaded
  SAM), with the issue's settings: 16x16 grid, ALPS area gate 0.3, no stuff or fill. This is the issue's
  "today's labeling time at the same grid" read literally; `paper-16` is the same settings on today's code.

Per variant: seconds per image (all of pass 1 for one image), prompts decoded per image, the share of
pixels under a kept mask and under a segment (fill included). Paired per image: time of `dense` over
`paper-16`, `paper-8` and `dense-16`, prompts of `dense` over `paper-32`, and the share of `paper-32`'s kept masks that `dense`
recovers (a mask of `dense` with IoU >= 0.9; `paper-16` for reference); with `--then`, time of `dense` and
`paper-16` over `then-16`. Per variant also the seconds per image of each stage (generator and pass 1).

    python scripts/benchmark_dense_labels.py --num-images 12 --threads 2
    python scripts/benchmark_dense_labels.py --num-images 1 --size 128 --then '' --json /tmp/d.json   # seconds
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from alps_hf.labeling.config import LabelConfig
from alps_hf.labeling.inputs import ImageItem, LoadedImage
from alps_hf.labeling.pass1 import Pass1Runner
from alps_hf.labeling.writer import decode_png
from alps_hf.sam.generator import MaskGenerator, MaskGeneratorConfig

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
MAKE_SCENES = SHARED / "data" / "synthetic_scenes" / "make_scenes.py"
TOY_SAM = SHARED / "models" / "toy-sam"
VARIANTS = {
    "paper-16": {"preset": "alps-paper", "points_per_side": 16},
    "paper-8": {"preset": "alps-paper", "points_per_side": 8},
    "dense": {"preset": "dense"},
    "dense-16": {"preset": "dense", "points_per_side": 16, "densify_rounds": 2, "densify_budget": 512},
    "paper-32": {"preset": "alps-paper"},
}
#: Paired ratios per image: (key, numerator variant, denominator variant, what is divided).
RATIOS = (
    ("time_dense_over_paper16", "dense", "paper-16", "seconds"),
    ("time_dense_over_paper8", "dense", "paper-8", "seconds"),
    ("time_dense_over_dense16", "dense", "dense-16", "seconds"),
    ("prompts_dense_over_paper32", "dense", "paper-32", "prompts"),
)
THEN_RATIOS = (
    ("time_dense_over_then16", "dense", "then-16", "seconds"),
    ("time_paper16_over_then16", "paper-16", "then-16", "seconds"),
)
RECOVERY_IOU = 0.9
#: The commit issue 10 measured labeling at ("today's labeling time at the same grid").
ISSUE_10_BASE = "d331c74"
#: The settings issue 10 measured with: 16x16 grid, ALPS gate 0.3 (large masks dropped), no stuff or fill.
THEN_SETTINGS = {"points_per_side": 16, "max_area_fraction": 0.3}


def scenes(folder: Path, n: int, size: int, seed0: int) -> list[Path]:
    """Make `n` synthetic scenes (held-out seeds) with the shared generator; their image files in order."""
    subprocess.run([sys.executable, str(MAKE_SCENES), str(folder), "--n", str(n), "--size", str(size),
                    "--seed0", str(seed0)], check=True, stdout=subprocess.DEVNULL)
    return sorted((folder / "images").glob("*.png"))


def runners(sam: str, args) -> dict[str, Pass1Runner]:
    """One Pass1Runner per variant, all on the same loaded model (pred IoU / stability as the benchmarks use)."""
    from transformers import SamModel

    from alps_hf.sam.generator import load_sam_image_processor

    model, processor = SamModel.from_pretrained(sam), load_sam_image_processor(sam)
    out = {}
    for name, settings in VARIANTS.items():
        cfg = LabelConfig(inputs=["-"], output="-", sam=sam, num_clusters=2, pred_iou_thresh=args.pred_iou_thresh,
                          stability_score_thresh=args.stability_score_thresh, **settings)
        out[name] = Pass1Runner(MaskGenerator(model, processor, MaskGeneratorConfig.settings_of(cfg)), cfg)
    return out


class ThenRunner:
    """Pass 1 of alps_hf at an earlier commit, on the same loaded SAM: its package imported under another name.

    `git archive REV src/alps_hf` is unpacked into `folder` as the package `alps_hf_then` (its modules import
    each other relatively) and its `pipeline.Pass1Runner` (the flat layout before the restructure of
    issue 9) labels with the issue's settings. Records there are dicts; only time and the error are read.
    """

    def __init__(self, rev: str, folder: Path, model, processor, args):
        try:
            blob = subprocess.run(["git", "-C", str(REPO), "archive", rev, "src/alps_hf"], check=True,
                                  capture_output=True).stdout
        except (OSError, subprocess.CalledProcessError) as err:
            detail = getattr(err, "stderr", b"") or str(err).encode()
            raise SystemExit(f"--then {rev!r}: cannot read that commit from the git checkout at {REPO} "
                             f"({detail.decode(errors='replace').strip()}); pass a commit of this repository or "
                             f"--then '' to skip the then-16 variant") from None
        archive = folder / "then.tar"
        archive.write_bytes(blob)
        with tarfile.open(archive) as tar:
            tar.extractall(folder, filter="data")
        shutil.move(str(folder / "src" / "alps_hf"), str(folder / "alps_hf_then"))
        sys.path.insert(0, str(folder))
        try:
            config = importlib.import_module("alps_hf_then.config")
            pipeline = importlib.import_module("alps_hf_then.pipeline")
            generator = importlib.import_module("alps_hf_then.mask_generator")
            self.sources = importlib.import_module("alps_hf_then.sources")
        except ImportError as err:
            raise SystemExit(f"--then {rev!r}: that commit has no flat alps_hf.pipeline / mask_generator / sources "
                             f"({err}); this variant reads the layout of {ISSUE_10_BASE} and its neighbours") from None
        finally:
            sys.path.remove(str(folder))
        cfg = config.LabelConfig(inputs=["-"], output="-", sam=args.sam, num_clusters=2,
                                 pred_iou_thresh=args.pred_iou_thresh,
                                 stability_score_thresh=args.stability_score_thresh, **THEN_SETTINGS)
        self.runner = pipeline.Pass1Runner(
            generator.MaskGenerator(model, processor, pipeline.generator_config(cfg)), cfg)

    def label(self, index: int, path: Path) -> dict:
        rgb = np.asarray(Image.open(path).convert("RGB"))
        loaded = self.sources.LoadedImage(rgb=rgb, image_bytes=path.read_bytes())
        before = self.runner.generator.counts["decoder_prompts"]
        start = time.perf_counter()
        (record,) = self.runner.label_batch([(index, self.sources.ImageItem(path.name, lambda: loaded), loaded)])
        seconds = time.perf_counter() - start
        if record["error"]:
            raise SystemExit(f"then-16, {path.name}: {record['error']}")
        return {"seconds": seconds, "prompts": self.runner.generator.counts["decoder_prompts"] - before,
                "segments": decode_png(record["segments_png"])}

    def timings(self) -> dict[str, float]:
        return stage_seconds(self.runner)  # the old runner keeps its stages under the same names


def stage_seconds(runner: Pass1Runner) -> dict[str, float]:
    """Cumulative seconds per stage of a runner: its generator's stages and pass 1's own."""
    return {**runner.generator.timings, **{f"pass1.{k}": v for k, v in runner.timings.items()}}


def label_one(runner: Pass1Runner, index: int, path: Path) -> dict:
    """Pass 1 on one image: seconds, prompts, kept masks (bool, H x W each), coverage by masks and by segments."""
    captured = {}
    generate = runner.generator.generate

    def spy(images):
        captured["out"] = generate(images)
        return captured["out"]

    runner.generator.generate = spy
    rgb = np.asarray(Image.open(path).convert("RGB"))
    loaded = LoadedImage(rgb=rgb, image_bytes=path.read_bytes())
    before = runner.generator.counts["decoder_prompts"]
    start = time.perf_counter()
    (record,) = runner.label_batch([(index, ImageItem(path.name, lambda: loaded), loaded)])
    seconds = time.perf_counter() - start
    runner.generator.generate = generate
    if record.error:
        raise SystemExit(f"{path.name}: {record.error}")
    masks = captured["out"][0].masks.masks.cpu()
    segments = decode_png(record.segments_png)
    return {"seconds": seconds, "prompts": runner.generator.counts["decoder_prompts"] - before,
            "masks": masks, "segments": segments, "mask_coverage": float(masks.any(dim=0).float().mean()) if len(masks) else 0.0,
            "segment_coverage": float((segments > 0).mean()), "kept_masks": int(len(masks))}


def recovered(reference: torch.Tensor, found: torch.Tensor, threshold: float = RECOVERY_IOU) -> float | None:
    """Share of `reference` masks (N, H, W) that some mask of `found` (M, H, W) matches with IoU >= threshold."""
    if not len(reference):
        return None
    if not len(found):
        return 0.0
    a, b = reference.flatten(1).float(), found.flatten(1).float()
    inter = a @ b.T
    union = a.sum(1)[:, None] + b.sum(1)[None, :] - inter
    iou = inter / union.clamp_min(1)
    return float((iou.max(dim=1).values >= threshold).float().mean())


def _stats(values: list[float]) -> dict:
    arr = np.asarray([v for v in values if v is not None], dtype=np.float64)
    if not len(arr):
        return {"mean": None, "min": None, "max": None, "n": 0}
    return {"mean": float(arr.mean()), "min": float(arr.min()), "max": float(arr.max()), "n": int(len(arr))}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    p.add_argument("--sam", default=str(TOY_SAM), help="SAM folder (default: the toy SAM).")
    p.add_argument("--num-images", type=int, default=12)
    p.add_argument("--size", type=int, default=512, help="Scene size in pixels.")
    p.add_argument("--seed0", type=int, default=900_400,
                   help="First scene seed (held out: >= 900000 and not the pseudo-label benchmark's 900000-900167).")
    p.add_argument("--pred-iou-thresh", type=float, default=0.5)
    p.add_argument("--stability-score-thresh", type=float, default=0.8)
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice).")
    p.add_argument("--then", default=ISSUE_10_BASE,
                   help="Also time pass 1 of alps_hf at this commit with the issue's settings (then-16); '' skips it.")
    p.add_argument("--json", default="benchmark_dense_labels.json")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        paths = scenes(Path(tmp), args.num_images, args.size, args.seed0)
        runs = runners(args.sam, args)
        names = list(VARIANTS)
        labelers = {name: (lambda i, path, r=runs[name]: label_one(r, i, path)) for name in names}
        clocks = {name: (lambda r=runs[name]: stage_seconds(r)) for name in names}
        ratios = RATIOS
        if args.then:
            base = runs["paper-16"].generator
            then = ThenRunner(args.then, Path(tmp), base.model, base.processor, args)
            names.append("then-16")
            labelers["then-16"], clocks["then-16"] = then.label, then.timings
            ratios = RATIOS + THEN_RATIOS
        for name in names:  # warm-up: first-call allocations fall on no variant
            labelers[name](-1, paths[0])
        started = {name: dict(clocks[name]()) for name in names}
        per_image = []
        for i, path in enumerate(paths):
            order = names[i % len(names):] + names[:i % len(names)]
            got = {name: labelers[name](i, path) for name in order}
            row = {name: {k: v for k, v in r.items() if k not in ("masks", "segments")} for name, r in got.items()}
            if args.then:  # the same settings on both codes: how far today's paper pipeline is from then's
                row["then16_pixels_equal_paper16"] = float(
                    (got["then-16"]["segments"] == got["paper-16"]["segments"]).mean())
            for key, top, bottom, what in ratios:
                row[key] = got[top][what] / got[bottom][what]
            row["recovered_by_dense"] = recovered(got["paper-32"]["masks"], got["dense"]["masks"])
            row["recovered_by_paper16"] = recovered(got["paper-32"]["masks"], got["paper-16"]["masks"])
            row["recovered_by_dense16"] = recovered(got["paper-32"]["masks"], got["dense-16"]["masks"])
            row["image"] = path.name
            per_image.append(row)
            print(f"[{i + 1}/{len(paths)}] {path.name}: " + ", ".join(
                f"{n} {row[n]['seconds']:.1f} s / {row[n]['prompts']} prompts" for n in names), flush=True)
    stages = {name: {k: (v - started[name].get(k, 0.0)) / len(paths) for k, v in clocks[name]().items()}
              for name in names}
    keys = ("seconds", "prompts", "kept_masks", "mask_coverage", "segment_coverage")
    summary = {name: {key: _stats([r[name].get(key) for r in per_image]) for key in keys} for name in names}
    paired = {key: _stats([r[key] for r in per_image])
              for key in (*(r[0] for r in ratios), "recovered_by_dense", "recovered_by_paper16",
                          "recovered_by_dense16", *(("then16_pixels_equal_paper16",) if args.then else ()))}
    machine = (f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
               f"{torch.get_num_threads()} threads, Python {platform.python_version()}")
    result = {"settings": {**{k: v for k, v in vars(args).items() if k != "json"}, "variants": VARIANTS,
                           "then_settings": THEN_SETTINGS if args.then else None,
                           "recovery_iou": RECOVERY_IOU, "machine": machine},
              "summary": summary, "paired": paired, "stage_seconds_per_image": stages, "per_image": per_image}
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    print(f"benchmark_dense_labels: {len(paths)} scenes of {args.size} px (seeds from {args.seed0}), "
          f"{Path(args.sam).name}, pred IoU {args.pred_iou_thresh}, stability {args.stability_score_thresh}"
          f"{f', then-16 = alps_hf at {args.then}' if args.then else ''}; {machine}")
    print(f"{'variant':<10} {'s/img':>7} {'prompts':>8} {'masks':>6} {'mask cov':>9} {'segment cov':>12}")

    def cell(stat: dict, fmt: str, scale: float = 1.0, width: int = 6) -> str:
        return f"{scale * stat['mean']:{fmt}}" if stat["n"] else "-".rjust(width)

    for name in names:
        s = summary[name]
        print(f"{name:<10} {cell(s['seconds'], '7.2f', width=7)} {cell(s['prompts'], '8.1f', width=8)} "
              f"{cell(s['kept_masks'], '6.1f')} {cell(s['mask_coverage'], '8.1f', 100, 8)}% "
              f"{cell(s['segment_coverage'], '11.1f', 100, 11)}%")
    for key, label in (*((k, f"{what} {top} / {bottom} (paired per image)") for k, top, bottom, what in ratios),
                       ("recovered_by_dense", f"paper-32 masks recovered by dense (IoU >= {RECOVERY_IOU})"),
                       ("recovered_by_paper16", "paper-32 masks recovered by paper-16"),
                       ("recovered_by_dense16", "paper-32 masks recovered by dense-16"),
                       ("then16_pixels_equal_paper16", "share of pixels with the same segment id in then-16 and paper-16")):
        s = paired[key]
        if s["n"]:
            print(f"{label}: mean {s['mean']:.3f} (min {s['min']:.3f}, max {s['max']:.3f}, {s['n']} images)")
    print("stage seconds per image:")
    for name in names:
        parts = ", ".join(f"{k} {v:.3f}" for k, v in stages[name].items() if v >= 0.0005)
        print(f"  {name:<10} {parts}")
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
