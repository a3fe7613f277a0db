"""`alps-hf label --tile-size ... --stitch` end to end (issue 5): large PNG and GeoTIFF scenes become one
row per window, masks cut by a window edge are resolved by the seam rule before features and painting,
no-data is 255, rows carry CRS / transform, and `--stitch` writes one label raster per scene.
Runs the trained toy SAM on synthetic scenes (a random SAM finds almost no masks that survive the seam
rule), in-process through `alps_hf.cli.main`."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("rasterio")
import rasterio  # noqa: E402

from alps_hf.geo.windows import Window, plan_windows, window_from_meta  # noqa: E402
from alps_hf.labeling import pass1 as pipeline  # noqa: E402  (pass 1 applies the seam rule)
from alps_hf.labeling.inputs import Tiling, list_image_files, resolve_inputs  # noqa: E402
from label_helpers import TOY, check_dataset, failures, label, png, rows, run_error  # noqa: E402
from sam_fixtures import blocks_image, write_png  # noqa: E402

TILE, OVERLAP, K = 256, 64, 3
CRS = "EPSG:32640"
TRANSFORM = rasterio.Affine(0.3, 0.0, 500_000.0, 0.0, -0.3, 2_700_000.0)
NODATA_COLS = 40  # the geo scene's left strip has no data


def write_tif(path: Path, data: np.ndarray, crs=CRS, transform=TRANSFORM, **extra) -> Path:
    count, height, width = data.shape
    profile = dict(driver="GTiff", width=width, height=height, count=count, dtype=data.dtype.name, **extra)
    if crs is not None:
        profile.update(crs=crs, transform=transform)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        with rasterio.open(path, "w", **profile) as dst:
            dst.write(data)
    return path


def make_scenes(folder: Path, scenes_dir: Path) -> None:
    """big.png (512 px PNG), geo.tif (4-band uint16, B G R NIR, CRS, nodata strip), nocrs.tif (one window,
    no CRS), broken.tif (not a raster), small.png (smaller than a tile), geo.tif.aux.xml (GDAL sidecar)."""
    folder.mkdir()
    shutil.copy(scenes_dir / "images" / "scene_5002.png", folder / "big.png")
    rgb = np.asarray(Image.open(scenes_dir / "images" / "scene_5005.png").convert("RGB")).astype(np.uint16)
    data = np.stack([rgb[..., 2], rgb[..., 1], rgb[..., 0], rgb[..., 0] // 2]) * 16 + 100
    data[:, :, :NODATA_COLS] = 0
    write_tif(folder / "geo.tif", data, nodata=0)
    part = np.asarray(Image.open(scenes_dir / "images" / "scene_5003.png").convert("RGB"))[:180, :200]
    write_tif(folder / "nocrs.tif", np.ascontiguousarray(part.transpose(2, 0, 1)), crs=None)
    (folder / "broken.tif").write_bytes(b"II*\x00 this is not a tiff")
    write_png(folder / "small.png", blocks_image(5, 40, 50))
    (folder / "geo.tif.aux.xml").write_text("<PAMDataset/>")


@pytest.fixture(scope="module")
def tiled(tmp_path_factory, toy_sam_dir, scenes_dir):
    """One labeling run over the scenes; records what the seam rule dropped and the warnings."""
    root = tmp_path_factory.mktemp("tiling")
    make_scenes(root / "in", scenes_dir)
    out = root / "out"
    seams: list[tuple[int, int]] = []
    original = pipeline.resolve_seams

    def spy(masks, window):
        kept = original(masks, window)
        seams.append((len(masks), len(kept)))
        return kept

    with pytest.MonkeyPatch.context() as mp, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        mp.setattr(pipeline, "resolve_seams", spy)
        # No densify rounds: their prompts sit in uncovered cells, and a toy-SAM mask that misses its own prompt
        # can lie wholly outside the core of the window owning it, which the core check below does not allow.
        code = label(root / "in", out, toy_sam_dir, "--num-clusters", K, "--tile-size", TILE, "--tile-overlap",
                     OVERLAP, "--bands", 3, 2, 1, "--stitch", "--densify-rounds", 0, *TOY)
    assert code == 0
    return {"out": out, "in": root / "in", "seams": seams, "warnings": [str(w.message) for w in caught],
            "scene_5005": scenes_dir / "images" / "scene_5005.png"}


def windows_of(name: str, width: int, height: int) -> list[tuple[str, Window]]:
    return [(f"{name}#window={w.x0},{w.y0},{w.x1},{w.y1}", w) for w in plan_windows(width, height, TILE, OVERLAP)]


def expected_rows() -> list[tuple[str, Window | None]]:
    return [*windows_of("big.png", 512, 512), *windows_of("geo.tif", 512, 512), *windows_of("nocrs.tif", 200, 180),
            ("small.png", None)]


def test_one_row_per_window_in_input_order(tiled):
    expected = expected_rows()
    assert len(expected) == 9 + 9 + 1 + 1
    raw = check_dataset(tiled["out"], K, [source for source, _ in expected])
    for row, (source, window) in zip(raw, expected, strict=True):
        meta = json.loads(row["meta"])
        if window is None:
            assert "window" not in meta and png(row["label"]).shape == (40, 50)
            continue
        assert meta["window"] == window.bounds and meta["scene"] == source.split("#")[0]
        assert meta["scene_size"] == list(window.scene_size)
        assert png(row["label"]).shape == png(row["image"]).shape[:2] == (window.height, window.width)
    info = json.loads((tiled["out"] / "alps_dataset.json").read_text())
    readings = info["tiling"].pop("scene_readings")
    assert info["tiling"] == {"tile_size": TILE, "window_size": TILE, "tile_overlap": OVERLAP, "bands": [3, 2, 1],
                              "scenes": 3}
    # the bands read and each band's 2..98 percentile stretch are recorded per GeoTIFF scene (issue 12.17)
    rgb = np.asarray(Image.open(tiled["scene_5005"]).convert("RGB")).astype(np.float64)[:, NODATA_COLS:]
    expected_stretch = [list(np.percentile(rgb[..., c] * 16 + 100, [2, 98])) for c in range(3)]  # --bands 3 2 1 = R G B
    geo, nocrs = readings
    assert (geo["scene"], geo["bands"], geo["band_names"], geo["dtype"]) == ("geo.tif", [3, 2, 1], ["", "", ""], "uint16")
    assert np.allclose(geo["stretch"], expected_stretch)
    # (--bands applies to every scene; GDAL names an RGB TIFF's bands by colour interpretation)
    assert nocrs == {"scene": "nocrs.tif", "bands": [3, 2, 1], "band_names": ["blue", "green", "red"],
                     "dtype": "uint8", "stretch": None}
    card = (tiled["out"] / "README.md").read_text()
    assert "3 scene(s) were cut into 256 x 256 px windows overlapping by 64 px" in card
    lo, hi = expected_stretch[0]
    assert f"| `geo.tif` | 3 2 1 | uint16 | {lo:.4g}..{hi:.4g}, " in card
    assert "| `nocrs.tif` | 3 (blue) 2 (green) 1 (red) | uint8 | as stored (8-bit) |" in card
    # every input is a row or a failure; the GDAL sidecar is neither
    assert set(failures(tiled["out"])) == {"broken.tif"}
    assert "cannot be opened as a raster" in failures(tiled["out"])["broken.tif"]


def test_seam_rule_is_applied_before_painting(tiled):
    """No painted segment touches an inner window edge, and the rule did drop masks in this run."""
    assert len(tiled["seams"]) == 19  # every window row went through resolve_seams; small.png did not
    assert sum(before - after for before, after in tiled["seams"]) > 0
    kept_total = 0
    for row, (_, window) in zip(rows(tiled["out"]), expected_rows(), strict=True):
        if window is None:
            continue
        # The seam rule is about SAM masks; fill segments (issue 10) are made per window from what stays uncovered.
        fill_ids = [i + 1 for i, kind in enumerate(row["segment_kind"]) if kind == "fill"]
        segments = png(row["segments"]).astype(np.int64)
        segments[np.isin(segments, fill_ids)] = 0
        left, top, right, bottom = window.internal_edges
        for inner, edge in ((left, segments[:, 0]), (right, segments[:, -1]), (top, segments[0]),
                            (bottom, segments[-1])):
            if inner:
                assert not edge.any(), f"{row['source']}: a kept segment touches an inner edge"
        kept_total += len(row["segment_class"]) - len(fill_ids)
        # every kept segment's pixels are centred in this window's core (its visible part may be smaller
        # than the mask, so check the looser condition that it reaches into the core)
        cx0, cy0, cx1, cy1 = window.core_local()
        # (objects only: a stuff mask is painted beneath the objects, so its visible part may miss the core)
        for s in [i + 1 for i, kind in enumerate(row["segment_kind"]) if kind == "object"]:
            ys, xs = np.nonzero(segments == s)
            if len(xs):
                assert (xs < cx1).any() and (xs >= cx0).any() and (ys < cy1).any() and (ys >= cy0).any()
    # only kept masks are painted (a kept mask hidden under smaller ones gets no segment)
    assert 0 < kept_total <= sum(after for _, after in tiled["seams"])


def test_geotiff_rows_carry_crs_transform_bands_and_nodata(tiled):
    by_source = {r["source"]: r for r in rows(tiled["out"])}
    for source, window in windows_of("geo.tif", 512, 512):
        row = by_source[source]
        meta = json.loads(row["meta"])
        assert rasterio.crs.CRS.from_wkt(meta["crs"]) == rasterio.crs.CRS.from_string(CRS)
        assert meta["transform"] == pytest.approx([0.3, 0.0, 500_000.0 + 0.3 * window.x0, 0.0, -0.3,
                                                   2_700_000.0 - 0.3 * window.y0])
        image, lab = png(row["image"]), png(row["label"])
        strip = max(0, NODATA_COLS - window.x0)
        if strip:
            assert (lab[:, :strip] == 255).all() and (image[:, :strip] == 0).all()
            assert (png(row["segments"])[:, :strip] == 0).all()
    # --bands 3 2 1 reads the stored B G R back as R G B: the scaled image is monotone in the scene's channels
    first = png(by_source["geo.tif#window=0,0,256,256"]["image"]).astype(float)[:, NODATA_COLS:]
    scene = np.asarray(Image.open(tiled["scene_5005"]).convert("RGB")).astype(float)[:256, NODATA_COLS:256]
    for c in range(3):
        assert np.corrcoef(first[..., c].ravel(), scene[..., c].ravel())[0, 1] > 0.95, c
    nocrs = json.loads(by_source["nocrs.tif#window=0,0,200,180"]["meta"])
    assert nocrs["crs"] is None and nocrs["transform"] is None
    assert any("nocrs.tif has no CRS" in w for w in tiled["warnings"])


def test_stitch_writes_one_raster_per_scene(tiled):
    stitched = tiled["out"] / "stitched"
    index = json.loads((stitched / "index.json").read_text())
    assert index == {"big.png": "big_labels.png", "geo.tif": "geo_labels.tif", "nocrs.tif": "nocrs_labels.tif"}
    by_source = {r["source"]: r for r in rows(tiled["out"])}
    big = np.asarray(Image.open(stitched / "big_labels.png"))
    with rasterio.open(stitched / "geo_labels.tif") as src:
        geo = src.read(1)
        assert src.crs == rasterio.crs.CRS.from_string(CRS) and src.transform == TRANSFORM and src.nodata == 255
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        with rasterio.open(stitched / "nocrs_labels.tif") as src:
            assert src.crs is None and (src.width, src.height) == (200, 180)
            nocrs = src.read(1)
    assert np.array_equal(nocrs, png(by_source["nocrs.tif#window=0,0,200,180"]["label"]))
    assert big.shape == geo.shape == (512, 512)
    assert (geo[:, :NODATA_COLS] == 255).all()
    labeled_pixels = 0
    for name, raster in (("big.png", big), ("geo.tif", geo)):
        for source, w in windows_of(name, 512, 512):
            lab = png(by_source[source]["label"])
            cx0, cy0, cx1, cy1 = w.core
            core = lab[cy0 - w.y0 : cy1 - w.y0, cx0 - w.x0 : cx1 - w.x0]
            stitched_core = raster[cy0:cy1, cx0:cx1]
            has = core != 255  # rule 1: the core window's label wins where it has one
            assert np.array_equal(stitched_core[has], core[has])
            labeled_pixels += int(has.sum())
    assert labeled_pixels > 0
    assert set(np.unique(big).tolist()) <= set(range(K)) | {255}


def test_resume_with_other_tiling_is_refused(tiled, tmp_path, toy_sam_dir, no_sam, capsys):
    out = tmp_path / "copy"
    shutil.copytree(tiled["out"], out)
    err = run_error(capsys, ["label", str(tiled["in"]), "--output", str(out), "--sam", str(toy_sam_dir), "--resume",
                             "--num-clusters", str(K), "--tile-size", str(TILE), "--tile-overlap", "32",
                             "--bands", "3", "2", "1", *TOY])
    assert "cannot --resume: " in err and "tile_overlap: 64 -> 32" in err


# ---- configuration errors, before SAM loads ----------------------------------------------------------
@pytest.mark.parametrize("flags, message", [
    (["--tile-size", "32"], "tile size 32 is too small: --tile-size must be an integer >= 64"),
    (["--tile-size", "128", "--tile-overlap", "128"], "tile overlap 128 must be smaller than the tile size 128"),
    (["--tile-size", "256", "--tile-overlap", "-1"], "--tile-overlap must be an integer >= 0"),
    (["--tile-size", "5000"], "--tile-size 5000 is larger than --max-mask-side 4096"),
    (["--bands", "0"], "--bands [0] is not allowed"),
    (["--bands", "1", "2"], "--bands [1, 2] is not allowed"),
])
def test_bad_tiling_flags(tmp_path, toy_sam_dir, no_sam, capsys, flags, message):
    write_png(tmp_path / "in" / "a.png", blocks_image(0))
    err = run_error(capsys, ["label", str(tmp_path / "in"), "--output", str(tmp_path / "o"), "--sam",
                             str(toy_sam_dir), *flags])
    assert message in err


def test_band_the_scene_lacks(tmp_path, toy_sam_dir, no_sam, capsys):
    (tmp_path / "in").mkdir()
    write_tif(tmp_path / "in" / "s.tif", np.ones((4, 80, 90), np.uint16))
    err = run_error(capsys, ["label", str(tmp_path / "in"), "--output", str(tmp_path / "o"), "--sam",
                             str(toy_sam_dir), "--bands", "5", "3", "2"])
    assert "band 5 does not exist in" in err and "which has 4 band(s)" in err
    assert not (tmp_path / "o" / "work").exists() or not any((tmp_path / "o" / "work").rglob("*.parquet"))


def test_default_geotiff_window_overlap_checked(tmp_path, toy_sam_dir, no_sam, capsys):
    """Without --tile-size a GeoTIFF is windowed at min(1024, --max-mask-side): an overlap that does not fit
    is reported when such a scene is found, naming the flag."""
    (tmp_path / "in").mkdir()
    write_tif(tmp_path / "in" / "s.tif", np.ones((3, 80, 90), np.uint8))
    err = run_error(capsys, ["label", str(tmp_path / "in"), "--output", str(tmp_path / "o"), "--sam",
                             str(toy_sam_dir), "--max-mask-side", "100"])
    assert "tile overlap 128 must be smaller than the tile size 100" in err and "--tile-overlap" in err


# ---- input listing ------------------------------------------------------------------------------------
def test_gdal_sidecars_are_not_inputs(tmp_path):
    for name in ("a.tif", "a.tif.aux.xml", "a.tif.ovr", "a.tfw", "b.jpg", "b.jgw", "notes.txt", "lone.tfw"):
        (tmp_path / name).write_bytes(b"x")
    names = [p.name for p in list_image_files(tmp_path)]
    assert names == ["a.tif", "b.jpg", "lone.tfw", "notes.txt"]  # a world file without its image is kept


def test_windows_follow_their_file_in_sorted_order(tmp_path):
    write_png(tmp_path / "b.png", blocks_image(0, 100, 150))
    write_png(tmp_path / "a.png", blocks_image(1, 30, 30))
    write_png(tmp_path / "c.png", blocks_image(2, 64, 64))
    items = resolve_inputs([str(tmp_path)], tiling=Tiling(64, 64, 16)).items
    expected = ["a.png", *[s for s, _ in [(f"b.png#window={w.x0},{w.y0},{w.x1},{w.y1}", w)
                                         for w in plan_windows(150, 100, 64, 16)]], "c.png"]
    assert [it.source for it in items] == expected
    loaded = items[1].load()
    assert loaded.rgb.shape == (64, 64, 3) and loaded.meta["scene"] == "b.png"
    assert np.array_equal(loaded.rgb, blocks_image(0, 100, 150)[:64, :64])
    # without tiling nothing is cut
    assert [it.source for it in resolve_inputs([str(tmp_path)]).items] == ["a.png", "b.png", "c.png"]


def test_tiff_without_rasterio(tmp_path, monkeypatch):
    """Without the geo extra a TIFF is read whole by PIL; asking for windows or bands says what to install."""
    from alps_hf.errors import InputError
    from alps_hf.geo import geotiff as geo

    write_tif(tmp_path / "s.tif", np.full((3, 40, 50), 7, np.uint8), crs=None)
    monkeypatch.setattr(geo, "rasterio_available", lambda: False)
    items = resolve_inputs([str(tmp_path)], tiling=Tiling(None, 1024, 128)).items
    assert [it.source for it in items] == ["s.tif"] and items[0].load().rgb.shape == (40, 50, 3)
    with pytest.raises(InputError, match=r"pip install 'alps_hf\[geo\]'"):
        resolve_inputs([str(tmp_path)], tiling=Tiling(256, 256, 32))


# ---- memory follows the window, not the scene, through the whole command ----------------------------
_LABEL_PROBE = """
import json, resource, sys
from alps_hf.cli import main
code = main(sys.argv[1:])
print(json.dumps({"code": code, "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def _striped_scene(path: Path, size: int) -> None:
    """A uint16 3-band GeoTIFF written block-row by block-row, so the test never holds the scene."""
    from rasterio.windows import Window as RioWindow

    profile = dict(driver="GTiff", width=size, height=size, count=3, dtype="uint16", tiled=True, blockxsize=256,
                   blockysize=256, compress="deflate", crs=CRS, transform=TRANSFORM)
    with rasterio.open(path, "w", **profile) as dst:
        xx = np.arange(size)[None, :]
        for y in range(0, size, 256):
            yy = np.arange(y, y + 256)[:, None]
            band = ((xx // 37 + yy // 53) % 7 * 500 + 100).astype(np.uint16)
            dst.write(np.stack([band, band // 2 + 50, band // 3 + 20]), window=RioWindow(0, y, size, 256))


@pytest.mark.slow
def test_label_memory_is_bounded_by_the_window_not_the_scene(tmp_path, tiny_sam_dir):
    """`alps-hf label --tile-size 512 --stitch` on a 2048 px and a 4x larger 4096 px uint16 scene, each in a
    fresh interpreter: decoding the scene whole would add >= 72 MiB of pixels (more with the float copies
    of the 16-bit scaling); windowed reads, per-shard records and window-by-window stitching do not."""
    import subprocess
    import sys

    from alps_hf.labeling.clustering import ClusterModel
    from sam_fixtures import TINY_CHANNELS

    # A given cluster model: no K-means, so the run does not depend on how many masks the random SAM finds.
    ClusterModel(np.eye(2, TINY_CHANNELS, dtype=np.float32)).save(tmp_path / "clusters")
    peaks, windows = {}, {}
    for size in (2048, 4096):
        scene = tmp_path / f"in{size}" / f"scene{size}.tif"
        scene.parent.mkdir()
        _striped_scene(scene, size)
        out = tmp_path / f"out{size}"
        argv = ["label", str(scene.parent), "--output", str(out), "--sam", str(tiny_sam_dir), "--clusters",
                str(tmp_path / "clusters"), "--tile-size", "512", "--tile-overlap", "32", "--shard-size", "8",
                "--points-per-side", "4", "--pred-iou-thresh", "0", "--stability-score-thresh", "0",
                "--num-workers", "1", "--image-batch-size", "2", "--preview-images", "1", "--stitch"]
        result = subprocess.run([sys.executable, "-c", _LABEL_PROBE, *argv], capture_output=True, text=True,
                                timeout=600)
        assert result.returncode == 0, result.stderr[-2000:]
        probe = json.loads(result.stdout.strip().splitlines()[-1])
        assert probe["code"] == 0
        peaks[size] = probe["peak_mib"]
        windows[size] = len(rows(out))
        with rasterio.open(out / "stitched" / f"scene{size}_labels.tif") as src:
            assert (src.width, src.height) == (size, size) and src.crs == rasterio.crs.CRS.from_string(CRS)
    assert windows == {2048: len(plan_windows(2048, 2048, 512, 32)), 4096: len(plan_windows(4096, 4096, 512, 32))}
    growth = peaks[4096] - peaks[2048]
    decoded_growth = (4096**2 - 2048**2) * 3 * 2 / 2**20  # 72 MiB of uint16 pixels
    # Measured here: +28 MiB (capped caches: GDAL's 64 MiB block cache, the decimated statistics read);
    # with the scene decoded whole, +114 MiB.
    assert growth < decoded_growth / 2, (peaks, growth)


def test_score_pairs_the_windows_of_a_scene_with_its_ground_truth(tiled, scenes_dir, tmp_path):
    """`alps-hf score` of a tiled run: the 9 windows of big.png score its 512 x 512 ground truth once."""
    from alps_hf.labeling.score import ScoreConfig, score

    gt = tmp_path / "gt"
    (gt / "images").mkdir(parents=True)
    (gt / "labels").mkdir()
    shutil.copy(scenes_dir / "images" / "scene_5002.png", gt / "images" / "big.png")
    shutil.copy(scenes_dir / "labels" / "scene_5002.png", gt / "labels" / "big.png")
    report = score(ScoreConfig(pseudo=str(tiled["out"]), ground_truth=[str(gt)], only_matched=True))
    truth = np.asarray(Image.open(scenes_dir / "labels" / "scene_5002.png"))
    assert report["images"] == 1 and report["num_pixels"] == int((truth != 255).sum()) == 512 * 512
    assert report["whole_image"]["majority"]["mean_iou"] > 0.2


def test_densify_on_windows_keeps_the_seam_rule(tiled, tmp_path, toy_sam_dir):
    """The default densify rounds run per window; their masks go through the seam rule like the grid's."""
    scene = tmp_path / "in"
    scene.mkdir()
    shutil.copy(tiled["in"] / "geo.tif", scene / "geo.tif")
    out = tmp_path / "out"
    assert label(scene, out, toy_sam_dir, "--num-clusters", K, "--tile-size", TILE, "--tile-overlap", OVERLAP,
                 "--bands", 3, 2, 1, *TOY) == 0
    info = json.loads((out / "alps_dataset.json").read_text())
    assert info["generator"]["densify_rounds"] == 3 and info["seconds"]["pass1.densify"] > 0
    plain = {r["source"]: r for r in rows(tiled["out"])}
    objects = {"densify": 0, "plain": 0}
    for row in rows(out):
        window = window_from_meta(json.loads(row["meta"]), TILE, OVERLAP)
        segments = png(row["segments"]).astype(np.int64)
        sam_ids = [i + 1 for i, kind in enumerate(row["segment_kind"]) if kind != "fill"]
        masked = np.where(np.isin(segments, sam_ids), segments, 0)
        left, top, right, bottom = window.internal_edges
        for inner, edge in ((left, masked[:, 0]), (right, masked[:, -1]), (top, masked[0]), (bottom, masked[-1])):
            if inner:
                assert not edge.any(), f"{row['source']}: a kept SAM segment touches an inner edge"
        objects["densify"] += sum(kind == "object" for kind in row["segment_kind"])
        objects["plain"] += sum(kind == "object" for kind in plain[row["source"]]["segment_kind"])
    assert len(rows(out)) == 9 and objects["densify"] > objects["plain"]  # the rounds found more objects
