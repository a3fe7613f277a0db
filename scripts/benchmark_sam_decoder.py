#!/usr/bin/env python
"""SAM's mask decoder for point prompts: transformers' `SamModel` forward against alps_hf's `decode_points`.

Same weights, same image embedding, same prompts, interleaved in one process: milliseconds per prompt
(best of --repeats) at each prompt batch and thread count, their ratio, and the max abs difference of the
logits and IoUs. Decoders: the toy SAM (`../shared/models/toy-sam`, a 32 x 32 x 64 embedding) and a
ViT-B-sized decoder (transformers' default mask decoder, a 64 x 64 x 256 embedding; random weights,
a one-layer stand-in encoder that is never run). Runs in the project's own environment.

    python scripts/benchmark_sam_decoder.py
    python scripts/benchmark_sam_decoder.py --decoders toy --batches 8 --prompts 16 --json /tmp/d.json  # seconds
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from alps_hf.sam.sam_decoder import decode_points, transformers_decode  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


def load_decoder(name: str):
    """(model, embedding shape) of one decoder to compare."""
    from transformers import SamConfig, SamModel

    if name == "toy":
        model = SamModel.from_pretrained(SHARED / "models" / "toy-sam").eval()
        c = model.config.mask_decoder_config.hidden_size
        side = model.config.prompt_encoder_config.image_embedding_size
        return model, (c, side, side)
    vision = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "image_size": 1024,
              "patch_size": 16, "output_channels": 256, "mlp_dim": 64, "window_size": 4, "global_attn_indexes": [0],
              "num_pos_feats": 128}
    torch.manual_seed(0)
    return SamModel(SamConfig(vision_config=vision)).eval(), (256, 64, 64)


def time_per_prompt(fn, model, embedding: torch.Tensor, points: torch.Tensor, batch: int) -> float:
    start = time.perf_counter()
    for s in range(0, points.shape[0], batch):
        fn(model, embedding, points[s:s + batch])
    return (time.perf_counter() - start) / points.shape[0] * 1000


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--decoders", nargs="+", default=["toy", "vit-b"], choices=["toy", "vit-b"])
    p.add_argument("--batches", nargs="+", type=int, default=[2, 8, 16, 64])
    p.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    p.add_argument("--prompts", type=int, default=128, help="Prompts timed per batch size (ViT-B-sized: a quarter).")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--json", default="benchmark_sam_decoder.json")
    args = p.parse_args(argv)

    settings = {"machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}", **vars(args)}
    print(f"settings: {settings['machine']}; best of {args.repeats} interleaved repeats; ms per prompt")
    rows = []
    for name in args.decoders:
        model, shape = load_decoder(name)
        torch.manual_seed(1)
        embedding = torch.randn(shape)
        n = args.prompts if name == "toy" else max(1, args.prompts // 4)
        points = torch.rand(n, 2) * float(model.config.prompt_encoder_config.image_size)
        ref_logits, ref_iou = transformers_decode(model, embedding, points[:8])
        logits, iou = decode_points(model, embedding, points[:8])
        diff = float((logits - ref_logits).abs().max())
        scale = float(ref_logits.abs().max())
        iou_diff = float((iou - ref_iou).abs().max())
        print(f"{name:6s} embedding {tuple(shape)}: max |logit diff| {diff:.2e} (max |logit| {scale:.2e}), "
              f"max |IoU diff| {iou_diff:.2e}")
        for threads in args.threads:
            torch.set_num_threads(threads)
            for batch in args.batches:
                if batch > n:
                    continue
                times = {"transformers": [], "alps_hf": []}
                transformers_decode(model, embedding, points[:batch]), decode_points(model, embedding, points[:batch])
                for _ in range(args.repeats):
                    times["transformers"].append(time_per_prompt(transformers_decode, model, embedding, points, batch))
                    times["alps_hf"].append(time_per_prompt(decode_points, model, embedding, points, batch))
                ours, theirs = min(times["alps_hf"]), min(times["transformers"])
                rows.append({"decoder": name, "embedding": list(shape), "threads": threads, "batch": batch,
                             "ms_per_prompt_transformers": theirs, "ms_per_prompt_alps": ours,
                             "speedup": theirs / ours, "max_abs_logit_diff": diff, "max_abs_logit": scale,
                             "max_abs_iou_diff": iou_diff})
                print(f"{name:6s} {threads} thread(s) batch {batch:3d}: transformers {theirs:7.2f}  alps_hf {ours:7.2f}"
                      f"  = {theirs / ours:.2f}x", flush=True)
    Path(args.json).write_text(json.dumps({"settings": settings, "rows": rows}, indent=2) + "\n")
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
