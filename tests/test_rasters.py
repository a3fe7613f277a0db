"""Window planning, the seam rule and stitching on synthetic scenes (no SAM, no rasterio needed)."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from alps_hf.errors import ConfigError, ImageError, InputError
from alps_hf.geo.readers import raster_size, scene_windows, wants_windows
from alps_hf.geo.seams import resolve_seams
from alps_hf.geo.stitch import Stitcher, label_raster_suffix, stitch_dataset, stitch_rows
from alps_hf.geo.windows import MIN_TILE_SIZE, num_windows, plan_windows, window_from_meta
from alps_hf.sam.masks import MaskSet

# -- window planning ---------------------------------------------------------------------------


def test_plan_windows_values():
    windows = plan_windows(1000, 600, 256, 32)
    # stride 224: x starts 0, 224, 448, 672, then the last one flush with the edge at 1000 - 256.
    xs = sorted({(w.x0, w.x1) for w in windows})
    ys = sorted({(w.y0, w.y1) for w in windows})
    assert xs == [(0, 256), (224, 480), (448, 704), (672, 928), (744, 1000)]
    assert ys == [(0, 256), (224, 480), (344, 600)]
    assert len(windows) == 15 == num_windows(1000, 600, 256, 32)
    # Row-major order, indexed.
    assert [(w.y0, w.x0) for w in windows] == sorted((w.y0, w.x0) for w in windows)
    assert [w.index for w in windows] == list(range(15))
    # Core borders in the middle of each overlap.
    first_row = windows[:5]
    assert [(w.core[0], w.core[2]) for w in first_row] == [(0, 240), (240, 464), (464, 688), (688, 836), (836, 1000)]
    assert [(w.core[1], w.core[3]) for w in windows[::5]] == [(0, 240), (240, 412), (412, 600)]
    assert windows[0].internal_edges == (False, False, True, True)
    assert windows[-1].internal_edges == (True, True, False, False)
    assert windows[6].internal_edges == (True, True, True, True)


@pytest.mark.parametrize(
    "size,tile,overlap",
    [((1000, 600), 256, 32), ((480, 256), 256, 32), ((777, 1313), 300, 251), ((64, 64), 64, 0), ((5000, 97), 512, 128)],
)
def test_cores_partition_the_scene(size, tile, overlap):
    width, height = size
    windows = plan_windows(width, height, tile, overlap)
    assert len(windows) == num_windows(width, height, tile, overlap)
    owners = np.zeros((height, width), np.int32)
    covered = np.zeros((height, width), np.int32)
    for w in windows:
        assert 0 <= w.x0 < w.x1 <= width and 0 <= w.y0 < w.y1 <= height
        assert w.width == min(tile, width) and w.height == min(tile, height)
        cx0, cy0, cx1, cy1 = w.core
        assert w.x0 <= cx0 < cx1 <= w.x1 and w.y0 <= cy0 < cy1 <= w.y1
        owners[cy0:cy1, cx0:cx1] += 1
        covered[w.y0 : w.y1, w.x0 : w.x1] += 1
    assert (owners == 1).all()
    assert (covered >= 1).all()
    assert plan_windows(width, height, tile, overlap) == windows  # deterministic


def test_small_scene_is_one_window():
    (w,) = plan_windows(200, 100, 256, 32)
    assert w.bounds == [0, 0, 200, 100] and w.core == (0, 0, 200, 100)
    assert w.internal_edges == (False, False, False, False)


@pytest.mark.parametrize(
    "tile,overlap,fragment",
    [
        (MIN_TILE_SIZE - 1, 0, f">= {MIN_TILE_SIZE}"),
        (32, 8, "--tile-size"),
        (256, 256, "must be smaller than the tile size 256"),
        (256, 300, "--tile-overlap"),
        (256, -1, "--tile-overlap must be an integer >= 0"),
    ],
)
def test_bad_tiling_is_refused(tile, overlap, fragment):
    with pytest.raises(ConfigError, match=fragment.replace("-", r"\-").replace("(", r"\(")):
        plan_windows(1000, 1000, tile, overlap)


def test_empty_scene_is_refused():
    with pytest.raises(ConfigError, match="0x10"):
        plan_windows(0, 10, 256, 32)


# -- seams ---------------------------------------------------------------------------------------

SCENE_W, SCENE_H, TILE, OVERLAP = 900, 700, 256, 64


def _synthetic_objects(seed: int = 0) -> np.ndarray:
    """Instance map (0 = background) of disjoint ellipses and rectangles of 8..58 px, a dozen of
    them placed exactly on window edges and core borders, the rest at random."""
    rng = np.random.default_rng(seed)
    inst = np.zeros((SCENE_H, SCENE_W), np.int32)
    yy, xx = np.mgrid[0:SCENE_H, 0:SCENE_W]
    windows = plan_windows(SCENE_W, SCENE_H, TILE, OVERLAP)
    # Centres on seams: window starts / ends and core borders, so objects straddle them.
    seam_xs = sorted({w.x0 for w in windows if w.x0} | {w.x1 for w in windows if w.x1 < SCENE_W}
                     | {w.core[0] for w in windows if w.core[0]})
    seam_ys = sorted({w.y0 for w in windows if w.y0} | {w.y1 for w in windows if w.y1 < SCENE_H}
                     | {w.core[1] for w in windows if w.core[1]})
    centres = [(x, int(rng.integers(40, SCENE_H - 40))) for x in seam_xs]
    centres += [(int(rng.integers(40, SCENE_W - 40)), y) for y in seam_ys]
    centres += [(x, y) for x in seam_xs[::2] for y in seam_ys[::2]]  # on window corners
    centres += [(int(rng.integers(0, SCENE_W)), int(rng.integers(0, SCENE_H))) for _ in range(80)]
    n = 0
    for cx, cy in centres:
        half_w, half_h = (int(v) for v in rng.integers(4, 30, size=2))  # extent <= 59 < OVERLAP - 3
        if rng.random() < 0.5:
            shape = ((xx - cx) / half_w) ** 2 + ((yy - cy) / half_h) ** 2 <= 1
        else:
            shape = (abs(xx - cx) <= half_w) & (abs(yy - cy) <= half_h)
        grown = np.zeros_like(shape)  # keep a 1-px gap so objects stay distinct
        ys, xs = np.nonzero(shape)
        grown[np.clip(ys[:, None] + [-1, 0, 1], 0, SCENE_H - 1), np.clip(xs[:, None] + [-1, 0, 1], 0, SCENE_W - 1)] = True
        if shape.any() and not (inst[grown] > 0).any():
            n += 1
            inst[shape] = n
    return inst


def _window_masks(inst: np.ndarray, window) -> tuple[MaskSet, list[int]]:
    """Ground-truth objects clipped to the window, as a hand-built MaskSet (what SAM would see)."""
    crop = inst[window.y0 : window.y1, window.x0 : window.x1]
    ids = [int(i) for i in np.unique(crop) if i]
    h, w = crop.shape
    if not ids:
        return MaskSet.empty(h, w), []
    masks = torch.from_numpy(np.stack([crop == i for i in ids]))
    boxes = []
    for m in masks:
        ys, xs = torch.nonzero(m, as_tuple=True)
        boxes.append([xs.min(), ys.min(), xs.max(), ys.max()])
    n = len(ids)
    ms = MaskSet(
        masks=masks,
        boxes=torch.tensor(boxes, dtype=torch.float32),
        iou_scores=torch.ones(n),
        stability=torch.ones(n),
        areas=masks.flatten(1).sum(1),
        points=torch.zeros(n, 2),
    )
    return ms, ids


def _mask_ids(kept: MaskSet, crop: np.ndarray) -> list[int]:
    out = []
    for m in kept.masks.numpy():
        values = np.unique(crop[m])
        assert len(values) == 1 and values[0] > 0
        out.append(int(values[0]))
    return out


def test_seam_rule_keeps_every_object_once_and_whole():
    inst = _synthetic_objects()
    n_objects = int(inst.max())
    assert n_objects >= 60
    windows = plan_windows(SCENE_W, SCENE_H, TILE, OVERLAP)
    kept_count = np.zeros(n_objects + 1, np.int32)
    seen_count = np.zeros(n_objects + 1, np.int32)
    cut_somewhere = set()
    for window in windows:
        masks, ids = _window_masks(inst, window)
        crop = inst[window.y0 : window.y1, window.x0 : window.x1]
        for i, m in zip(ids, masks.masks.numpy(), strict=True):
            seen_count[i] += 1
            if m.sum() < (inst == i).sum():
                cut_somewhere.add(i)
        kept = resolve_seams(masks, window)
        for i, m in zip(_mask_ids(kept, crop), kept.masks.numpy(), strict=True):
            kept_count[i] += 1
            # Unsplit: the kept mask is the whole object, not a piece of it.
            assert m.sum() == (inst == i).sum(), f"object {i} kept only in part in window {window.bounds}"
    # The scene really tests seams: many objects are seen by several windows, many are cut.
    assert (seen_count[1:] > 1).sum() >= 20
    assert len(cut_somewhere) >= 15
    assert kept_count[1:].tolist() == [1] * n_objects


def test_seam_rule_stitched_label_equals_ground_truth(tmp_path):
    inst = _synthetic_objects(seed=1)
    truth = np.where(inst > 0, inst % 200, 255).astype(np.uint8)
    out = tmp_path / "scene_labels.png"
    with Stitcher(out, (SCENE_W, SCENE_H), TILE, OVERLAP) as stitcher:
        for window in plan_windows(SCENE_W, SCENE_H, TILE, OVERLAP):
            masks, _ = _window_masks(inst, window)
            kept = resolve_seams(masks, window)
            crop = inst[window.y0 : window.y1, window.x0 : window.x1]
            label = np.full(crop.shape, 255, np.uint8)
            for i, m in zip(_mask_ids(kept, crop), kept.masks.numpy(), strict=True):
                label[m] = i % 200
            stitcher.add(window.bounds, label)
        assert stitcher.missing == []
    stitched = np.asarray(Image.open(out))
    assert stitched.shape == (SCENE_H, SCENE_W)
    np.testing.assert_array_equal(stitched, truth)
    assert not list(tmp_path.glob(".*"))  # no temporary file left behind


def test_keeping_all_masks_would_duplicate_objects():
    """Control: without the rule the same scene duplicates and splits objects."""
    inst = _synthetic_objects()
    counts = np.zeros(int(inst.max()) + 1, np.int32)
    for window in plan_windows(SCENE_W, SCENE_H, TILE, OVERLAP):
        _, ids = _window_masks(inst, window)
        counts[ids] += 1
    assert (counts[1:] > 1).sum() >= 20


def test_object_larger_than_overlap_is_dropped_not_duplicated():
    # A 200 px bar across the seam between two 256-px windows with 64 px overlap.
    inst = np.zeros((256, 448), np.int32)
    inst[100:140, 124:324] = 1
    windows = plan_windows(448, 256, 256, 64)
    assert len(windows) == 2
    kept = [len(resolve_seams(_window_masks(inst, w)[0], w)) for w in windows]
    assert kept == [0, 0]


def test_scene_border_is_not_a_seam_and_edge_margin():
    inst = np.zeros((256, 448), np.int32)
    inst[0:20, 0:20] = 1  # touches the scene's top-left corner: kept
    inst[50:70, 190:250] = 2  # inside window 0, 2 px from its right (internal) edge at 256
    windows = plan_windows(448, 256, 256, 64)
    masks, ids = _window_masks(inst, windows[0])
    assert ids == [1, 2]
    assert len(resolve_seams(masks, windows[0])) == 2
    assert len(resolve_seams(masks, windows[0], edge_margin=6)) == 1
    with pytest.raises(ValueError, match="but window"):
        resolve_seams(MaskSet.empty(100, 100), windows[1])


# -- PIL-read scenes -----------------------------------------------------------------------------


def test_png_scene_windows(tmp_path):
    rng = np.random.default_rng(3)
    scene = rng.integers(0, 256, (300, 500, 3), dtype=np.uint8)
    path = tmp_path / "big.png"
    Image.fromarray(scene).save(path)
    assert raster_size(path) == (500, 300)
    assert wants_windows(path, 256) and not wants_windows(path, 512)
    items = scene_windows(path, 256, 32)
    assert len(items) == 6
    for source, load in items:
        loaded = load()
        x0, y0, x1, y1 = loaded.meta["window"]
        assert source == f"{path}#window={x0},{y0},{x1},{y1}"
        np.testing.assert_array_equal(loaded.rgb, scene[y0:y1, x0:x1])
        assert loaded.valid is None and loaded.image_bytes is None
        assert loaded.meta["scene_size"] == [500, 300] and loaded.meta["crs"] is None
    assert label_raster_suffix(path) == ".png" and label_raster_suffix("a/b.TIF") == ".tif"
    assert window_from_meta(loaded.meta, 256, 32) == plan_windows(500, 300, 256, 32)[-1]
    second = items[1][1]().meta
    assert second["window"] == [224, 0, 480, 256]
    assert window_from_meta(second, 256, 32).core == (240, 0, 362, 150)  # (244 + 480) // 2, (44 + 256) // 2
    with pytest.raises(ValueError, match="not a window"):
        window_from_meta(second, 256, 16)  # another tiling: that window does not exist
    # Loaders cross to DataLoader worker processes under any start method.
    source, load = pickle.loads(pickle.dumps(items[-1]))
    np.testing.assert_array_equal(load().rgb, scene[300 - 256 :, 500 - 256 :])


def test_png_scene_bad_inputs(tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not a png at all")
    with pytest.raises(ImageError, match="broken.png: cannot be opened"):
        scene_windows(bad, 256, 32)
    assert not wants_windows(bad, 256)  # left to the ordinary loader, which records the failure
    good = tmp_path / "ok.png"
    Image.fromarray(np.zeros((10, 10, 3), np.uint8)).save(good)
    with pytest.raises(InputError, match="--bands"):
        scene_windows(good, 256, 32, bands=[4, 3, 2])
    with pytest.raises(ConfigError, match="--tile-overlap"):
        scene_windows(good, 256, 256)


def test_stitcher_rejects_foreign_windows(tmp_path):
    stitcher = Stitcher(tmp_path / "x.png", (500, 300), 256, 32)
    with pytest.raises(ValueError, match="not a window"):
        stitcher.add([0, 0, 100, 100], np.zeros((100, 100), np.uint8))
    with pytest.raises(ValueError, match="shape"):
        stitcher.add([0, 0, 256, 256], np.zeros((10, 10), np.uint8))
    stitcher.add([0, 0, 256, 256], np.zeros((256, 256), np.uint8))
    assert len(stitcher.missing) == 5
    stitcher.abort()
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ConfigError, match="suffix"):
        Stitcher(tmp_path / "x.jpg", (500, 300), 256, 32)



@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_stitcher_with_block_closes_or_aborts_once(tmp_path, suffix):
    """`with` writes the file on success and leaves nothing on an exception; close / abort after either do
    nothing (a finished raster is never removed), and a closed stitcher refuses more windows."""
    if suffix == ".tif":
        pytest.importorskip("rasterio")
    out = tmp_path / f"s{suffix}"
    with Stitcher(out, (300, 200), 256, 32) as stitcher:
        for w in plan_windows(300, 200, 256, 32):
            stitcher.add(w, np.full((w.height, w.width), 4, np.uint8))
    assert sorted(p.name for p in tmp_path.iterdir()) == [out.name]
    stitcher.abort()
    assert stitcher.close() == out and out.exists()
    with Image.open(out) as image:
        assert (np.asarray(image) == 4).all()
    with pytest.raises(ValueError, match="closed"):
        stitcher.add([0, 0, 256, 200], np.zeros((200, 256), np.uint8))
    failed = tmp_path / f"failed{suffix}"
    with pytest.raises(RuntimeError), Stitcher(failed, (300, 200), 256, 32) as stitcher:
        raise RuntimeError("labeling failed")
    assert sorted(p.name for p in tmp_path.iterdir()) == [out.name]


def test_png_scene_cache_belongs_to_the_run(tmp_path, monkeypatch):
    """The windows of a PNG scene decode it once through the cache their caller owns; another caller's
    cache (another run) decodes again: no process-wide scene cache."""
    from alps_hf.geo import readers

    decoded = []
    real = readers.decode_image_bytes
    monkeypatch.setattr(readers, "decode_image_bytes", lambda data, name: decoded.append(name) or real(data, name))
    scenes = {}
    for name in ("a.png", "b.png"):
        scenes[name] = np.random.default_rng(len(name) + ord(name[0])).integers(0, 256, (200, 300, 3), np.uint8)
        Image.fromarray(scenes[name]).save(tmp_path / name)
    cache = readers.SceneCache()
    for name in ("a.png", "b.png"):
        for _, load in scene_windows(tmp_path / name, 128, 16, cache=cache):
            loaded = load()
            x0, y0, x1, y1 = loaded.meta["window"]
            np.testing.assert_array_equal(loaded.rgb, scenes[name][y0:y1, x0:x1])
    assert [p.rsplit("/", 1)[-1] for p in decoded] == ["a.png", "b.png"]
    (_, load), *_ = scene_windows(tmp_path / "a.png", 128, 16, cache=readers.SceneCache())
    load()
    assert len(decoded) == 3
    assert pickle.loads(pickle.dumps(cache)).max_scenes == 1  # arrives empty in a worker process


def test_stitch_rows_per_scene_in_any_order(tmp_path):
    """Two scenes sharing a file stem, rows shuffled, one ordinary row, one window never labeled."""
    rng = np.random.default_rng(5)
    scenes = {str(tmp_path / "a" / "s.png"): (500, 300), str(tmp_path / "b" / "s.png"): (300, 280)}
    truths, rows = {}, []
    for scene, (width, height) in scenes.items():
        truth = rng.integers(0, 46, (height, width)).astype(np.uint8)
        truths[scene] = truth
        for w in plan_windows(width, height, 256, 32):
            meta = {"scene": scene, "window": w.bounds, "scene_size": [width, height], "crs": None, "transform": None}
            rows.append((meta, truth[w.y0 : w.y1, w.x0 : w.x1]))
    dropped_meta, _ = rows.pop(0)  # a window whose labeling failed (the top-left one)
    rows.append(({}, np.zeros((5, 5), np.uint8)))  # an ordinary (not windowed) image: skipped
    rng.shuffle(rows)
    rows = [(json.dumps(m) if i % 2 else m, Image.fromarray(lab) if i % 3 else lab) for i, (m, lab) in enumerate(rows)]
    written = stitch_rows(rows, tmp_path / "stitched", 256, 32)
    assert sorted(p.name for p in written.values()) == ["s_1_labels.png", "s_labels.png"]
    index = json.loads((tmp_path / "stitched" / "index.json").read_text())
    assert index == {scene: written[scene].name for scene in scenes}
    first = str(tmp_path / "a" / "s.png")
    out = np.asarray(Image.open(written[first]))
    # The failed window's core is labeled only where another window of the scene reaches (rule 2).
    hole = window_from_meta(dropped_meta, 256, 32)
    covered = np.zeros((300, 500), bool)
    for w in plan_windows(500, 300, 256, 32):
        if w != hole:
            covered[w.y0 : w.y1, w.x0 : w.x1] = True
    assert not covered.all()
    expected = np.where(covered, truths[first], 255)
    np.testing.assert_array_equal(out, expected)
    second = str(tmp_path / "b" / "s.png")
    np.testing.assert_array_equal(np.asarray(Image.open(written[second])), truths[second])


def test_stitch_dataset_from_label_rows(tmp_path):
    from datasets import Dataset, Features, Value
    from datasets import Image as ImageFeature

    truth = np.random.default_rng(6).integers(0, 10, (300, 400)).astype(np.uint8)
    metas, labels = [], []
    for w in plan_windows(400, 300, 128, 16):
        metas.append(json.dumps({"scene": "scenes/x.jpg", "window": w.bounds, "scene_size": [400, 300]}))
        labels.append(Image.fromarray(truth[w.y0 : w.y1, w.x0 : w.x1]))
    ds = Dataset.from_dict({"meta": metas, "label": labels},
                           features=Features({"meta": Value("string"), "label": ImageFeature()}))
    written = stitch_dataset(ds, tmp_path, 128, 16)
    assert list(written) == ["scenes/x.jpg"] and written["scenes/x.jpg"].name == "x_labels.png"
    np.testing.assert_array_equal(np.asarray(Image.open(written["scenes/x.jpg"])), truth)
