"""preview.png's legend and cluster_gallery.png (issue 12, point 12): which segments the gallery picks
(against a brute-force search), what it draws where, the crops, and the card that shows both and says
how to rename the pseudo-classes."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from alps_hf.labeling.figures import (
    GALLERY_FILE,
    gallery_choice,
    legend,
    palette,
    segment_crop,
    write_cluster_gallery,
    write_preview,
)


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def _shard(path: Path, rows: list[dict]) -> Path:
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def _row(seed: int, k: int, n_segments: int, size: int = 40) -> dict:
    """An image with `n_segments` horizontal bands as segments, random classes in 0..k-1 and the band areas."""
    rng = np.random.default_rng(seed)
    rgb = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    cuts = np.sort(rng.choice(np.arange(1, size), n_segments - 1, replace=False)) if n_segments > 1 else []
    segments = np.zeros((size, size), np.uint8)
    for s, (a, b) in enumerate(zip([0, *cuts], [*cuts, size], strict=True)):
        segments[a:b] = s + 1
    classes = rng.integers(0, k, n_segments).tolist()
    areas = [int((segments == s + 1).sum()) for s in range(n_segments)]
    label = np.asarray([255, *classes], np.uint8)[segments]
    return {"image": {"bytes": _png(rgb), "path": None}, "label": {"bytes": _png(label), "path": None},
            "segments": {"bytes": _png(segments), "path": None}, "segment_class": classes, "segment_area": areas}


@pytest.fixture
def shards(tmp_path) -> tuple[list[Path], list[list[dict]]]:
    k = 4
    tables = [[_row(10 * f + r, k, 1 + (f + r) % 5) for r in range(6)] for f in range(3)]
    return [_shard(tmp_path / f"train-{f:05d}-of-00003.parquet", rows) for f, rows in enumerate(tables)], tables


def brute_force(tables, k, per_class, scan_rows):
    """Every (area, file, row, segment) of a class, the largest of each image only, sorted largest first."""
    found = [[] for _ in range(k)]
    flat = [(f, r, row) for f, rows in enumerate(tables) for r, row in enumerate(rows)][:scan_rows]
    for f, r, row in flat:
        for c in range(k):
            mine = [(a, s) for s, (cc, a) in enumerate(zip(row["segment_class"], row["segment_area"], strict=True))
                    if cc == c]
            if mine:
                a, s = max(mine, key=lambda t: (t[0], -t[1]))
                found[c].append((a, f, r, s))
    return [sorted(v, key=lambda t: (-t[0], t[1], t[2]))[:per_class] for v in found]


@pytest.mark.parametrize(("per_class", "scan_rows"), [(3, 100), (8, 100), (2, 7), (1, 1)])
def test_gallery_choice_equals_brute_force(shards, per_class, scan_rows):
    files, tables = shards
    got = gallery_choice(files, 4, per_class, scan_rows)
    assert got == brute_force(tables, 4, per_class, scan_rows)
    for picks in got:  # at most one crop per image
        assert len({(f, r) for _, f, r, _ in picks}) == len(picks)


def test_segment_crop_keeps_the_segment_and_dims_the_rest():
    rgb = np.full((20, 20, 3), 200, np.uint8)
    segments = np.zeros((20, 20), np.uint8)
    segments[5:10, 5:10] = 3
    crop = np.asarray(segment_crop(rgb, segments, 3, side=72))
    assert crop.shape == (72, 72, 3)
    # a 5 px segment in a square of 1.2 x 5 + 4 = 10 px, scaled up to fill the cell: the centre is the
    # segment, the border dimmed to 0.3
    assert (crop[36, 36] == 200).all()
    assert (crop[2, 36] == 60).all() and (crop[36, 2] == 60).all()
    # a segment painted over entirely gets a grey cell, not an error
    assert (np.asarray(segment_crop(rgb, segments, 7, side=16)) == 90).all()


def test_gallery_rows_swatches_and_crops(shards, tmp_path):
    files, tables = shards
    k, per_class = 5, 3  # class 4 holds no segment
    share = [0.4, 0.3, 0.2, 0.1, 0.0]
    path = write_cluster_gallery(tmp_path, files, k, share, per_class=per_class, side=32)
    image = np.asarray(Image.open(path).convert("RGB"))
    assert path.name == GALLERY_FILE
    assert image.shape == (26 + k * 36, 150 + per_class * 36, 3)
    colors = palette(k)
    choice = gallery_choice(files, k, per_class, 500)
    for c in range(k):
        y = 26 + c * 36
        assert (image[y + 12, 12] == colors[c]).all(), c  # the class colour swatch
        for slot in range(per_class):
            cell = image[y:y + 32, 150 + slot * 36:150 + slot * 36 + 32]
            if slot < len(choice[c]):
                _, f, r, s = choice[c][slot]
                row = tables[f][r]
                want = np.asarray(segment_crop(np.asarray(Image.open(io.BytesIO(row["image"]["bytes"]))),
                                               np.asarray(Image.open(io.BytesIO(row["segments"]["bytes"]))), s + 1, 32))
                assert (cell == want).all(), (c, slot)
            elif choice[c]:
                assert (cell == 255).all(), (c, slot)  # nothing drawn where there is no segment
    assert not choice[4]
    row4 = image[26 + 4 * 36:26 + 4 * 36 + 32, 150:]
    assert (row4 < 200).any()  # its row says that no segment was found


def test_preview_has_a_legend_with_every_class(shards, tmp_path):
    files, _ = shards
    k = 4
    path = write_preview(tmp_path, files, k, count=2, height=50)
    image = np.asarray(Image.open(path).convert("RGB"))
    key = np.asarray(legend(k, image.shape[1]))
    assert image.shape[0] == 2 * (50 + 4) + key.shape[0]
    assert (image[-key.shape[0]:] == key).all()
    colors = palette(k)
    for c in range(k):  # swatch c sits at x = 4 + 64 c, first row
        assert (key[20 + 8, 4 + 64 * c + 6] == colors[c]).all()
    assert (key[20 + 18 + 8, 4 + 6] == 0).all()  # black = no label, in a row of its own


def test_labeled_folder_card_shows_figures_and_renamed_classes(tmp_path, tiny_sam_dir, one_torch_thread):
    from alps_hf.hub.cards import write_dataset_card
    from alps_hf.training.data import read_id2label
    from label_helpers import TINY, label
    from sam_fixtures import blocks_image, write_png

    images = tmp_path / "in"
    images.mkdir()
    for i in range(3):
        write_png(images / f"img_{i}.png", blocks_image(i, 48, 64))
    out = tmp_path / "pseudo"
    assert label(images, out, tiny_sam_dir, "--num-clusters", "2", *TINY) == 0
    info = json.loads((out / "alps_dataset.json").read_text())
    assert info["figures"] == {"preview": "preview.png", "cluster_gallery": "cluster_gallery.png"}
    assert Image.open(out / "cluster_gallery.png").size == (150 + 8 * 76, 26 + 2 * 76)
    card = (out / "README.md").read_text()
    assert "![largest segments of each pseudo-class](cluster_gallery.png)" in card
    assert "![images and their label maps](preview.png)" in card
    assert "### Name the pseudo-classes" in card and "id2label.json" in card
    # renaming: the card shows the names, training reads them
    (out / "id2label.json").write_text(json.dumps({"0": "roof", "1": "bare soil"}))
    write_dataset_card(out)
    card = (out / "README.md").read_text()
    assert "| roof |" in card and "| bare soil |" in card
    assert read_id2label(str(out)) == {0: "roof", 1: "bare soil"}
    # no preview asked for: no preview file, and the card does not show one
    again = tmp_path / "again"
    shutil.copytree(out, again)
    assert label(images, again, tiny_sam_dir, "--num-clusters", "2", *TINY, "--preview-images", "0", "--overwrite") == 0
    assert not (again / "preview.png").exists()
    assert "preview.png" not in (again / "README.md").read_text()
