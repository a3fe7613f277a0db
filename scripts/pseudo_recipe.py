"""Shared steps of the flagship recipes: source images -> patches -> `alps-hf label` -> card -> Hub.

Used by build_isaid_pseudo.py and build_potsdam_pseudo.py (run them, not this file).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"}


def iter_source_images(
    source: str, split: str = "train", image_column: str = "image", limit: int | None = None
) -> Iterator[tuple[str, np.ndarray]]:
    """(stem, RGB uint8 array) of every source image, in sorted order.

    `source` is a local folder (searched recursively) or a Hub dataset id (streamed, so the
    whole dataset is never held on disk twice).
    """
    from alps_hf.images import to_rgb_array

    Image.MAX_IMAGE_PIXELS = None  # iSAID / Potsdam scenes are legitimately huge (up to ~13000 px a side)
    path = Path(source)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        for count, file in enumerate(files):
            if limit is not None and count >= limit:
                return
            with Image.open(file) as image:
                yield file.stem, to_rgb_array(image)
        return
    from datasets import load_dataset

    stream = load_dataset(source, split=split, streaming=True)
    for index, row in enumerate(stream):
        if limit is not None and index >= limit:
            return
        stem = Path(str(row.get("file_name") or row.get("name") or f"{split}_{index:06d}")).stem
        yield stem, to_rgb_array(row[image_column])


def write_patches(images: Iterator[tuple[str, np.ndarray]], out_dir: Path, patch: int, overlap: int) -> int:
    """Cut every image into patches saved as `<stem>_<y0>_<y1>_<x0>_<x1>.png`; returns the count.

    Existing patch files are kept, so an interrupted run continues where it stopped.
    """
    from alps_hf.geo.patches import cut_patches

    out_dir.mkdir(parents=True, exist_ok=True)
    count = 0
    for stem, array in images:
        for window, tile in cut_patches(array, patch=patch, overlap=overlap):
            target = out_dir / window.name(stem)
            if not target.exists():
                tmp = target.with_name(f".{target.name}.tmp.png")
                Image.fromarray(np.ascontiguousarray(tile)).save(tmp)
                tmp.replace(target)
            count += 1
    return count


def parser(description: str, repo_id: str, patch: int, overlap: int) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description, allow_abbrev=False)
    p.add_argument(
        "--source", required=True, help="Folder of source images, or a Hub dataset id with an image column."
    )
    p.add_argument("--split", default="train", help="Split of a Hub dataset source.")
    p.add_argument("--image-column", default="image", help="Image column of a Hub dataset source.")
    p.add_argument(
        "--workdir", default=None, help="Where the patches are written (default: <output>-patches)."
    )
    p.add_argument("--output", required=True, help="Output dataset folder of `alps-hf label`.")
    p.add_argument("--repo-id", default=repo_id, help=f"Hub dataset repo (default {repo_id}).")
    p.add_argument("--push", action="store_true", help="Publish the folder to --repo-id at the end.")
    p.add_argument("--private", action="store_true", help="With --push: create the repo private.")
    p.add_argument("--sam", default="facebook/sam-vit-huge", help="SAM checkpoint (ALPS uses ViT-H).")
    p.add_argument("--num-clusters", type=int, default=46, help="K pseudo-classes (ALPS: 46).")
    p.add_argument("--patch", type=int, default=patch, help=f"Patch side in pixels (default {patch}).")
    p.add_argument(
        "--overlap", type=int, default=overlap, help=f"Overlap of neighbouring patches (default {overlap})."
    )
    p.add_argument(
        "--limit", type=int, default=None, help="Use only the first N source images (smoke tests)."
    )
    p.add_argument(
        "--license", default=None, help="License of the source imagery for the card (check its terms)."
    )
    p.add_argument("label_args", nargs=argparse.REMAINDER, help="After `--`: more `alps-hf label` flags.")
    return p


def run(args: argparse.Namespace, *, pretty_name: str, source_text: str, source_citation: str) -> Path:
    """Patches -> label -> card with the source citation -> optional push. Returns the dataset folder."""
    from alps_hf.cli import main as alps_main
    from alps_hf.hub.cards import write_dataset_card

    output = Path(args.output)
    patches = Path(args.workdir) if args.workdir else output.with_name(output.name + "-patches")
    images = iter_source_images(args.source, args.split, args.image_column, args.limit)
    count = write_patches(images, patches, args.patch, args.overlap)
    print(f"{count} patches of {args.patch}x{args.patch} (overlap {args.overlap}) in {patches}")
    extra = [a for a in args.label_args if a != "--"]
    label = [
        "label",
        str(patches),
        "--output",
        str(output),
        "--sam",
        args.sam,
        "--num-clusters",
        str(args.num_clusters),
        "--pretty-name",
        pretty_name,
        *extra,
    ]
    if args.license:
        label += ["--license", args.license]
    code = alps_main(label)
    if code:
        raise SystemExit(code)
    # Name the imagery and how it was cut, with its citation, in the machine-readable info the
    # card is rendered from (publishing re-renders the card from it).
    info_path = output / "alps_dataset.json"
    info = json.loads(info_path.read_text())
    info["source"] = (
        f"{source_text} ({count} patches of {args.patch}x{args.patch} px, overlap {args.overlap})"
    )
    info["source_citation"] = source_citation
    tmp = info_path.with_name(".alps_dataset.json.tmp")
    tmp.write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
    tmp.replace(info_path)
    write_dataset_card(output, repo_id=args.repo_id)
    if args.push:
        from alps_hf.hub.publish import push_to_hub

        result = push_to_hub(output, args.repo_id, private=args.private)
        print(result.url)
    return output
