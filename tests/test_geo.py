"""GeoTIFF scenes through rasterio: CRS / transform round trip, bands, 16-bit scaling, no-data,
bad inputs, and memory bounded by the window (synthetic rasters written by the tests)."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest

rasterio = pytest.importorskip("rasterio")
from rasterio.windows import Window as RioWindow  # noqa: E402

from alps_hf.errors import ConfigError, ImageError, InputError  # noqa: E402
from alps_hf.geo.geotiff import open_scene  # noqa: E402
from alps_hf.geo.readers import scene_windows  # noqa: E402
from alps_hf.geo.stitch import Stitcher, label_raster_suffix  # noqa: E402
from alps_hf.geo.windows import plan_windows  # noqa: E402
from alps_hf.images import STRETCH_PERCENTILES as SCALE_PERCENTILES  # noqa: E402

CRS = "EPSG:32640"
TRANSFORM = rasterio.Affine(0.3, 0.0, 500_000.0, 0.0, -0.3, 2_700_000.0)


def write_tif(path, data: np.ndarray, crs=CRS, transform=TRANSFORM, **extra) -> None:
    """Write (bands, H, W) data as a tiled GeoTIFF."""
    count, height, width = data.shape
    profile = dict(driver="GTiff", width=width, height=height, count=count, dtype=data.dtype.name,
                   tiled=True, blockxsize=128, blockysize=128, compress="deflate", **extra)
    if crs is not None:
        profile.update(crs=crs, transform=transform)
    descriptions = profile.pop("descriptions", None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        with rasterio.open(path, "w", **profile) as dst:
            dst.write(data)
            if descriptions:
                dst.descriptions = descriptions


def test_crs_and_transform_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    data = rng.integers(0, 256, (3, 500, 700), dtype=np.uint8)
    path = tmp_path / "scene.tif"
    write_tif(path, data)
    items = scene_windows(path, 256, 32)
    assert len(items) == len(plan_windows(700, 500, 256, 32)) == 9
    with rasterio.open(path) as src:
        wkt = src.crs.to_wkt()
        for source, load in items:
            loaded = load()
            x0, y0, x1, y1 = loaded.meta["window"]
            assert source == f"{path}#window={x0},{y0},{x1},{y1}"
            assert loaded.meta["scene"] == str(path) and loaded.meta["scene_size"] == [700, 500]
            assert loaded.meta["crs"] == wkt
            expected = src.window_transform(RioWindow(x0, y0, x1 - x0, y1 - y0))
            assert loaded.meta["transform"] == pytest.approx(list(expected)[:6])
            # The window's transform puts its pixel (0, 0) where the scene has pixel (x0, y0).
            a, b, c, d, e, f = loaded.meta["transform"]
            assert (c, f) == pytest.approx(src.xy(y0, x0, offset="ul"))
            np.testing.assert_array_equal(loaded.rgb, data[:, y0:y1, x0:x1].transpose(1, 2, 0))
            assert loaded.valid is None
    json.dumps(loaded.meta)  # row meta must be plain JSON-able values
    _, load = pickle.loads(pickle.dumps(items[4]))  # loaders cross to worker processes
    np.testing.assert_array_equal(load().rgb, data[:, 224:480, 224:480].transpose(1, 2, 0))

    # Stitch a label that is a function of scene coordinates; the output must be that function
    # everywhere, with the source CRS and transform.
    assert label_raster_suffix(path) == ".tif"
    yy, xx = np.mgrid[0:500, 0:700]
    truth = ((xx // 16 + yy // 16) % 250).astype(np.uint8)
    out = tmp_path / "scene_labels.tif"
    first = items[0][1]().meta
    with Stitcher.from_meta(out, first, 256, 32) as stitcher:
        for _, load in items:
            x0, y0, x1, y1 = load().meta["window"]
            stitcher.add([x0, y0, x1, y1], truth[y0:y1, x0:x1])
    with rasterio.open(out) as dst:
        assert dst.crs.to_wkt() == wkt
        assert list(dst.transform)[:6] == pytest.approx(list(TRANSFORM)[:6])
        assert dst.nodata == 255 and dst.dtypes == ("uint8",)
        np.testing.assert_array_equal(dst.read(1), truth)


def test_sixteen_bit_scaling_is_per_band_and_per_scene(tmp_path):
    rng = np.random.default_rng(1)
    data = np.stack([
        rng.integers(200, 3000, (300, 400)),
        rng.normal(10_000, 2_000, (300, 400)).clip(0, 65535),
        rng.integers(0, 65535, (300, 400)),
    ]).astype(np.uint16)
    data[0, :5, :5] = 65535  # outliers must not stretch the scale (percentiles, not min..max)
    path = tmp_path / "uint16.tif"
    write_tif(path, data)
    scene = open_scene(path)
    assert scene.dtype == "uint16" and scene.bands == (1, 2, 3)
    for k in range(3):
        lo, hi = np.percentile(data[k].astype(np.float64), SCALE_PERCENTILES)
        assert scene.scale[k] == pytest.approx((lo, hi))
    items = scene_windows(path, 256, 64)
    pixels = {}
    for _, load in items:
        loaded = load()
        x0, y0, x1, y1 = loaded.meta["window"]
        for k in range(3):
            lo, hi = scene.scale[k]
            expected = np.rint(np.clip((data[k, y0:y1, x0:x1].astype(np.float64) - lo) * 255 / (hi - lo), 0, 255))
            assert np.abs(loaded.rgb[..., k].astype(int) - expected).max() <= 1
        # Same scene pixel, same value in every window that reads it (no seams from scaling).
        for (x, y) in [(200, 100), (250, 40), (150, 250)]:
            if x0 <= x < x1 and y0 <= y < y1:
                pixels.setdefault((x, y), set()).add(tuple(loaded.rgb[y - y0, x - x0]))
    assert all(len(v) == 1 for v in pixels.values()) and max(len(v) for v in pixels.values()) == 1
    assert len(items) == 4
    assert loaded.rgb[..., 0].min() == 0 and loaded.rgb[..., 0].max() == 255


def test_same_sixteen_bit_data_same_rgb_in_any_container(tmp_path):
    """One >8-bit rule: a uint16 array as 16-bit PNG (PIL, whole or by window) and as GeoTIFF (rasterio)
    gives the same 8-bit RGB; three bands as GeoTIFF and as an array too."""
    from PIL import Image

    from alps_hf.images import decode_image_bytes, to_rgb_array

    rng = np.random.default_rng(7)
    gray = rng.normal(9_000, 2_500, (180, 300)).clip(0, 65535).astype(np.uint16)
    gray[:3, :3] = 65535  # an outlier: clipped by the percentiles in both containers
    Image.fromarray(gray).save(tmp_path / "gray16.png")
    assert Image.open(tmp_path / "gray16.png").mode.startswith("I;16")
    write_tif(tmp_path / "gray16.tif", gray[None])
    ((_, from_tif),) = scene_windows(tmp_path / "gray16.tif", 512, 64)
    expected = from_tif().rgb
    assert expected.shape == (180, 300, 3) and expected.min() == 0 and expected.max() == 255
    np.testing.assert_array_equal(decode_image_bytes((tmp_path / "gray16.png").read_bytes()), expected)
    for _, load in scene_windows(tmp_path / "gray16.png", 128, 32):  # PIL by window: the scene is the image
        loaded = load()
        x0, y0, x1, y1 = loaded.meta["window"]
        np.testing.assert_array_equal(loaded.rgb, expected[y0:y1, x0:x1])
    bands = np.stack([gray, gray // 3 + 100, 65535 - gray])
    write_tif(tmp_path / "rgb16.tif", bands)
    ((_, from_tif),) = scene_windows(tmp_path / "rgb16.tif", 512, 64)
    np.testing.assert_array_equal(to_rgb_array(bands.transpose(1, 2, 0)), from_tif().rgb)


def test_four_band_scene_band_choice(tmp_path):
    rng = np.random.default_rng(2)
    data = rng.integers(0, 256, (4, 120, 150), dtype=np.uint8)
    described = tmp_path / "bgrn.tif"
    write_tif(described, data, photometric="MINISBLACK", descriptions=("blue", "green", "red", "nir"))
    plain = tmp_path / "four.tif"
    write_tif(plain, data, photometric="MINISBLACK")

    # Default: R, G, B by description when present ...
    (_, load), = scene_windows(described, 256, 32)
    np.testing.assert_array_equal(load().rgb, data[[2, 1, 0]].transpose(1, 2, 0))
    # ... else the first three bands.
    (_, load), = scene_windows(plain, 256, 32)
    np.testing.assert_array_equal(load().rgb, data[:3].transpose(1, 2, 0))
    # An explicit choice, including a false-colour one and a single (grey) band.
    (_, load), = scene_windows(described, 256, 32, bands=[4, 3, 2])
    np.testing.assert_array_equal(load().rgb, data[[3, 2, 1]].transpose(1, 2, 0))
    (_, load), = scene_windows(described, 256, 32, bands=[4])
    np.testing.assert_array_equal(load().rgb, np.repeat(data[3][..., None], 3, axis=2))

    with pytest.raises(ConfigError, match=r"band 5 does not exist .* 4 band\(s\): 1 \(blue\), 2 \(green\), 3 \(red\), 4 \(nir\)"):
        scene_windows(described, 256, 32, bands=[5, 3, 2])
    with pytest.raises(ConfigError, match="give 1 band .* or 3 bands"):
        scene_windows(described, 256, 32, bands=[1, 2])
    with pytest.raises(ConfigError, match=r"--bands \[0, 1, 2\] is not allowed: .* 1-based"):
        scene_windows(plain, 256, 32, bands=[0, 1, 2])


def test_nodata_is_masked_out_and_excluded_from_scaling(tmp_path):
    rng = np.random.default_rng(4)
    data = rng.integers(1000, 5000, (3, 200, 300)).astype(np.uint16)
    data[:, :, :80] = 0  # a no-data strip on the left (e.g. outside the swath)
    data[0, 150:, 150:] = 0  # only one band at 0: still valid data
    path = tmp_path / "nodata.tif"
    write_tif(path, data, nodata=0)
    scene = open_scene(path)
    inside = data[0][data[0] != 0].astype(np.float64)  # band 1's own valid values
    assert scene.scale[0] == pytest.approx(tuple(np.percentile(inside, SCALE_PERCENTILES)))
    assert scene.scale[0][0] > 1000  # the zeros did not drag the low end down
    seen = 0
    for _, load in scene_windows(path, 128, 16):
        loaded = load()
        x0, y0, x1, y1 = loaded.meta["window"]
        expected_valid = data[:, y0:y1, x0:x1].any(axis=0)
        if expected_valid.all():
            assert loaded.valid is None
            continue
        seen += 1
        np.testing.assert_array_equal(loaded.valid, expected_valid)
        assert (loaded.rgb[~loaded.valid] == 0).all()
    assert seen >= 2

    # Alpha band (RGBA): transparent pixels are no-data; default bands skip the alpha band.
    rgba = rng.integers(0, 256, (4, 100, 100), dtype=np.uint8)
    rgba[3] = 255
    rgba[3, 40:60, 40:60] = 0
    alpha_path = tmp_path / "rgba.tif"
    write_tif(alpha_path, rgba, photometric="RGB", alpha="YES")
    (_, load), = scene_windows(alpha_path, 128, 16)
    loaded = load()
    np.testing.assert_array_equal(loaded.valid, rgba[3] > 0)
    np.testing.assert_array_equal(loaded.rgb[loaded.valid], rgba[:3].transpose(1, 2, 0)[rgba[3] > 0])


def test_scene_without_crs_is_labeled_with_a_warning(tmp_path):
    data = np.full((3, 300, 300), 7, np.uint8)
    path = tmp_path / "nocrs.tif"
    write_tif(path, data, crs=None)
    with pytest.warns(UserWarning, match="nocrs.tif has no CRS"):
        items = scene_windows(path, 256, 32)
    meta = items[-1][1]().meta
    assert meta["crs"] is None and meta["transform"] is None and meta["window"] == [44, 44, 300, 300]
    out = tmp_path / "nocrs_labels.tif"
    with Stitcher.from_meta(out, meta, 256, 32) as stitcher:
        for _, load in items:
            stitcher.add(load().meta["window"], np.full((256, 256), 3, np.uint8))
    with rasterio.open(out) as dst:
        assert dst.crs is None
        assert (dst.read(1) == 3).all()


def test_bad_scenes(tmp_path, monkeypatch):
    junk = tmp_path / "junk.tif"
    junk.write_bytes(b"II*\x00 this is not really a tiff")
    with pytest.raises(ImageError, match="junk.tif: cannot be opened as a raster"):
        scene_windows(junk, 256, 32)
    with pytest.raises(ImageError, match="missing.tif: cannot be opened"):
        scene_windows(tmp_path / "missing.tif", 256, 32)
    with pytest.raises(ConfigError, match="--tile-size"):
        scene_windows(junk, 16, 0)

    # A scene that shrinks (rewritten) after planning: the window read fails with a reason.
    path = tmp_path / "changing.tif"
    write_tif(path, np.zeros((3, 300, 300), np.uint8))
    items = scene_windows(path, 256, 32)
    write_tif(path, np.zeros((3, 100, 100), np.uint8))
    with pytest.raises(ImageError, match="size changed from 300x300 to 100x100"):
        items[0][1]()

    # Without the geo extra: a clear message on how to get it.
    monkeypatch.setitem(sys.modules, "rasterio", None)
    with pytest.raises(InputError, match=r"pip install alps_hf\[geo\]"):
        scene_windows(path, 256, 32)


# Runs in a fresh interpreter so ru_maxrss is this scene's peak alone.
_MEMORY_PROBE = textwrap.dedent(
    """
    import json, resource, sys
    import numpy as np
    from alps_hf.geo.readers import scene_windows
    from alps_hf.geo.stitch import Stitcher
    path, out = sys.argv[1], sys.argv[2]
    items = scene_windows(path, 1024, 64)
    checksum = 0
    with Stitcher.from_meta(out, items[0][1]().meta, 1024, 64) as stitcher:
        for _, load in items:
            loaded = load()
            checksum += int(loaded.rgb[::97, ::97].sum())
            stitcher.add(loaded.meta["window"], loaded.rgb[..., 0] // 2)
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"windows": len(items), "peak_mib": peak_mib, "checksum": checksum}))
    """
)


def _big_scene(path, size: int) -> None:
    """A uint16 3-band scene written block-row by block-row (compressible, so small on disk)."""
    profile = dict(driver="GTiff", width=size, height=size, count=3, dtype="uint16", tiled=True,
                   blockxsize=256, blockysize=256, compress="deflate", crs=CRS, transform=TRANSFORM)
    with rasterio.open(path, "w", **profile) as dst:
        xx = np.arange(size)[None, :]
        for y in range(0, size, 512):
            yy = np.arange(y, y + 512)[:, None]
            band = ((xx // 7 + yy // 13) % 4000 + 100).astype(np.uint16)
            dst.write(np.stack([band, band // 2 + 50, band // 3 + 20]), window=RioWindow(0, y, size, 512))


@pytest.mark.slow
def test_memory_is_bounded_by_the_window_not_the_scene(tmp_path):
    peaks = {}
    for size in (4096, 8192):
        path = tmp_path / f"scene{size}.tif"
        _big_scene(path, size)
        assert path.stat().st_size < 16 * 2**20
        result = subprocess.run(
            [sys.executable, "-c", _MEMORY_PROBE, str(path), str(tmp_path / f"labels{size}.tif")],
            capture_output=True, text=True, check=True, timeout=300,
        )
        probe = json.loads(result.stdout.strip().splitlines()[-1])
        assert probe["windows"] == len(plan_windows(size, size, 1024, 64))
        peaks[size] = probe["peak_mib"]
        with rasterio.open(tmp_path / f"labels{size}.tif") as dst:
            assert dst.shape == (size, size) and dst.crs is not None
    decoded_big_mib = 8192 * 8192 * 3 * 2 / 2**20  # 384 MiB of uint16 pixels
    decoded_small_mib = 4096 * 4096 * 3 * 2 / 2**20  # 96 MiB
    growth = peaks[8192] - peaks[4096]
    # Decoding whole scenes would grow the peak by ~290 MiB (more with float copies); windowed
    # reads and writes keep the growth to caches and the bigger decimated statistics read.
    assert growth < 0.25 * (decoded_big_mib - decoded_small_mib), (peaks, growth)
    assert peaks[8192] < 4 * peaks[4096] and peaks[8192] < peaks[4096] + decoded_big_mib / 4, peaks
