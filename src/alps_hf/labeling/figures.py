"""The figures of a labeled folder, both shown in the dataset card.

`preview.png` shows images beside their label maps, with a legend; `cluster_gallery.png` shows what
each pseudo-class holds.

Both read the finished output shards only, so `label` and `recluster` draw them the same way. The
gallery has one row per pseudo-class: its id, colour and share of the labeled pixels, then crops of
its largest segments, at most one per image, from the first `scan_rows` rows of the dataset (the
segment's own pixels at full brightness, its surroundings dimmed). A class none of those rows holds
says so in its row.
"""

from __future__ import annotations

import colorsys
import heapq
import os
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from PIL import Image, ImageDraw, ImageFont

from alps_hf.images import decode_image_bytes
from alps_hf.labeling.writer import decode_png
from alps_hf.sam.segment_map import IGNORE_LABEL

PREVIEW_FILE = "preview.png"
GALLERY_FILE = "cluster_gallery.png"
_WHITE = (255, 255, 255)
_INK = (20, 20, 20)
_DIM = 0.3  # brightness of the pixels around a gallery segment


def palette(k: int) -> np.ndarray:
    """A fixed (256, 3) uint8 palette: distinct hues for 0..k-1 (golden-ratio steps), black for 255."""
    colors = np.zeros((256, 3), dtype=np.uint8)
    for i in range(min(k, 255)):
        h = (i * 0.618033988749895) % 1.0
        s = 0.55 + 0.45 * ((i // 7) % 2)
        v = 0.95 - 0.35 * ((i // 3) % 2)
        colors[i] = [round(255 * c) for c in colorsys.hsv_to_rgb(h, s, v)]
    colors[IGNORE_LABEL] = 0
    return colors


def _font(size: int = 12) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except (OSError, TypeError, ValueError):  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def _save(image: Image.Image, path: Path) -> Path:
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}"  # pid: never the temporary of another process
    image.save(tmp, format="PNG")
    os.replace(tmp, path)
    return path


def legend(k: int, width: int, colors: np.ndarray | None = None, entry: int = 64) -> Image.Image:
    """A legend strip `width` px wide: a swatch and the id of every class 0..k-1, and black = no label (255)."""
    colors = palette(k) if colors is None else colors
    font = _font(11)
    entries = [(str(i), tuple(int(c) for c in colors[i])) for i in range(k)] + [("255 no label", (0, 0, 0))]
    per_row = max(1, (width - 8) // entry)
    rows = -(-(len(entries) - 1) // per_row) + 1  # the "no label" entry gets a row of its own
    strip = Image.new("RGB", (width, 22 + 18 * rows), _WHITE)
    draw = ImageDraw.Draw(strip)
    draw.text((4, 3), "label colours: pseudo-class id", fill=_INK, font=font)
    for n, (text, color) in enumerate(entries):
        row, col = (n // per_row, n % per_row) if n < k else (rows - 1, 0)
        x, y = 4 + col * entry, 20 + 18 * row
        draw.rectangle((x, y + 2, x + 12, y + 14), fill=color, outline=(120, 120, 120))
        draw.text((x + 16, y + 2), text, fill=_INK, font=font)
    return strip


def write_preview(folder: Path, data_files: list[Path], k: int, count: int, height: int = 192) -> Path | None:
    """preview.png: the first `count` images (left) beside their label maps in the fixed palette (right), and a legend."""
    if count <= 0:
        return None
    rows = []
    colors = palette(k)
    for f in data_files:
        table = pq.read_table(f, columns=["image", "label"])
        for img, lab in zip(table.column("image").to_pylist(), table.column("label").to_pylist(), strict=True):
            if len(rows) >= count:
                break
            rgb = decode_image_bytes(img["bytes"])
            label = decode_png(lab["bytes"])
            width = max(1, round(rgb.shape[1] * height / rgb.shape[0]))
            left = Image.fromarray(rgb).resize((width, height), Image.BILINEAR)
            right = Image.fromarray(colors[label]).resize((width, height), Image.NEAREST)
            row = Image.new("RGB", (2 * width + 4, height), _WHITE)
            row.paste(left, (0, 0))
            row.paste(right, (width + 4, 0))
            rows.append(row)
        if len(rows) >= count:
            break
    if not rows:
        return None
    width = max(max(r.width for r in rows), 320)
    key = legend(k, width, colors)
    canvas = Image.new("RGB", (width, sum(r.height + 4 for r in rows) + key.height), _WHITE)
    y = 0
    for r in rows:
        canvas.paste(r, (0, y))
        y += r.height + 4
    canvas.paste(key, (0, y))
    return _save(canvas, folder / PREVIEW_FILE)


def gallery_choice(data_files: list[Path], k: int, per_class: int,
                   scan_rows: int) -> list[list[tuple[int, int, int, int]]]:
    """Per class, its largest segments, at most one per image: [(area, file, row, segment index)], largest first.

    Args:
        data_files: the output shards, in order.
        k: the number of classes.
        per_class: crops per class.
        scan_rows: how many rows (from the first) are searched.

    Returns:
        k lists of up to `per_class` (segment_area, shard index, row in the shard, segment index).
    """
    best: list[list[tuple[int, int, int, int]]] = [[] for _ in range(k)]  # min-heaps
    seen = 0
    for f, path in enumerate(data_files):
        table = pq.read_table(path, columns=["segment_class", "segment_area"])
        for r, (classes, areas) in enumerate(zip(table.column("segment_class").to_pylist(),
                                                 table.column("segment_area").to_pylist(), strict=True)):
            if seen >= scan_rows:
                break
            seen += 1
            largest: dict[int, tuple[int, int]] = {}  # class -> (area, segment), this image's largest
            for s, (c, a) in enumerate(zip(classes, areas, strict=True)):
                if 0 <= c < k and (c not in largest or a > largest[c][0]):
                    largest[c] = (int(a), s)
            for c, (a, s) in largest.items():
                item = (a, -f, -r, s)  # ties: the earlier image wins
                if len(best[c]) < per_class:
                    heapq.heappush(best[c], item)
                elif item > best[c][0]:
                    heapq.heapreplace(best[c], item)
        if seen >= scan_rows:
            break
    return [[(a, -nf, -nr, s) for a, nf, nr, s in sorted(h, reverse=True)] for h in best]


def segment_crop(rgb: np.ndarray, segments: np.ndarray, segment: int, side: int) -> Image.Image:
    """A `side` x `side` crop around segment id `segment` (1-based, as painted): its pixels bright, the rest dimmed."""
    ys, xs = np.nonzero(segments == segment)
    if not len(ys):  # painted over entirely by smaller segments
        return Image.new("RGB", (side, side), (90, 90, 90))
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    half = max(y1 - y0, x1 - x0) * 0.6 + 2  # a square 1.2x the box, clipped to the image
    cy, cx = (y0 + y1) / 2, (x0 + x1) / 2
    h, w = segments.shape
    top, left = int(max(0, cy - half)), int(max(0, cx - half))
    bottom, right = int(min(h, cy + half)), int(min(w, cx + half))
    inside = segments[top:bottom, left:right] == segment
    crop = rgb[top:bottom, left:right].astype(np.float32)
    crop[~inside] *= _DIM
    image = Image.fromarray(crop.astype(np.uint8))
    scale = side / max(image.width, image.height)  # up or down: the longer side fills the cell
    image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                         Image.NEAREST if scale > 1 else Image.BILINEAR)
    cell = Image.new("RGB", (side, side), (0, 0, 0))
    cell.paste(image, ((side - image.width) // 2, (side - image.height) // 2))
    return cell


def write_cluster_gallery(folder: Path, data_files: list[Path], k: int, pixel_share: list[float],
                          per_class: int = 8, scan_rows: int = 500, side: int = 72) -> Path | None:
    """cluster_gallery.png: per pseudo-class, its id, colour and pixel share, then crops of its largest segments.

    Args:
        folder: the output folder.
        data_files: its shards.
        k: the number of classes.
        pixel_share: each class's share of the labeled pixels (0..1).
        per_class: crops per class, each from another image.
        scan_rows: rows searched for segments, from the first.
        side: crop size in pixels.

    Returns:
        The path written, or None when there are no rows.
    """
    if not data_files or k < 1:
        return None
    choice = gallery_choice(data_files, k, per_class, scan_rows)
    wanted: dict[tuple[int, int], list[tuple[int, int, int]]] = {}  # (file, row) -> [(class, slot, segment)]
    for c, picks in enumerate(choice):
        for slot, (_area, f, r, s) in enumerate(picks):
            wanted.setdefault((f, r), []).append((c, slot, s))
    crops: dict[tuple[int, int], Image.Image] = {}
    for f in sorted({f for f, _ in wanted}):
        table = pq.read_table(data_files[f], columns=["image", "segments"])
        for r in sorted(r for ff, r in wanted if ff == f):
            rgb = decode_image_bytes(table.column("image")[r].as_py()["bytes"])
            segments = decode_png(table.column("segments")[r].as_py()["bytes"])
            for c, slot, s in wanted[(f, r)]:
                crops[(c, slot)] = segment_crop(rgb, segments, s + 1, side)
    colors = palette(k)
    font, small = _font(13), _font(11)
    header, gap, title = 150, 4, 26
    canvas = Image.new("RGB", (header + per_class * (side + gap), title + k * (side + gap)), _WHITE)
    draw = ImageDraw.Draw(canvas)
    draw.text((4, 6), f"pseudo-classes: largest segments, one per image (first {scan_rows} images searched)",
              fill=_INK, font=small)
    for c in range(k):
        y = title + c * (side + gap)
        draw.rectangle((4, y + 4, 22, y + 22), fill=tuple(int(v) for v in colors[c]), outline=(120, 120, 120))
        draw.text((28, y + 5), f"cluster_{c:02d}", fill=_INK, font=font)
        share = pixel_share[c] if c < len(pixel_share) else 0.0
        draw.text((28, y + 26), f"{100 * share:.1f} % of labeled px", fill=_INK, font=small)
        if not choice[c]:
            draw.text((header, y + side // 2 - 6), "no segment in the images searched", fill=(120, 120, 120), font=small)
        for slot in range(len(choice[c])):
            canvas.paste(crops[(c, slot)], (header + slot * (side + gap), y))
    return _save(canvas, folder / GALLERY_FILE)
