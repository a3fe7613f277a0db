"""Image decoding (every PIL mode, EXIF, broken files) and input resolution (folders, files, datasets)."""

import io

import numpy as np
import pytest
from PIL import Image

from alps_hf.errors import ImageError, InputError
from alps_hf.images import decode_image_bytes, to_rgb_array
from alps_hf.labeling.inputs import list_image_files, resolve_inputs
from sam_fixtures import write_odd_images, write_png


@pytest.fixture(scope="module")
def odd(tmp_path_factory):
    folder = tmp_path_factory.mktemp("odd")
    return folder, write_odd_images(folder)


def decode(folder, name):
    return decode_image_bytes((folder / name).read_bytes(), name)


def test_odd_but_valid_images_decode(odd):
    folder, _ = odd
    gray = decode(folder, "gray.png")
    src = np.asarray(Image.open(folder / "gray.png"))
    assert gray.shape == (30, 41, 3) and gray.dtype == np.uint8
    assert all(np.array_equal(gray[..., c], src) for c in range(3))
    rgba = decode(folder, "rgba.png")
    assert np.array_equal(rgba, np.asarray(Image.open(folder / "rgba.png"))[..., :3])  # alpha dropped
    pal = decode(folder, "palette.png")
    assert np.array_equal(pal, np.asarray(Image.open(folder / "palette.png").convert("RGB")))
    assert decode(folder, "palette_transparent.png").shape == (36, 44, 3)
    g16 = decode(folder, "gray16.png")
    assert g16.shape == (35, 40, 3)
    assert g16.min() == 0 and g16.max() == 255  # stretched from its own 2..98th percentile of 1000..3000
    assert g16[0, 0, 0] == 0 and g16[-1, -1, 0] == 255 and 120 <= g16[17, 20, 0] <= 135
    assert decode(folder, "tiny8.png").shape == (8, 8, 3)
    cmyk = decode(folder, "cmyk.jpg")
    assert cmyk.shape == (30, 30, 3)


def test_exif_rotated_jpeg_is_upright(odd):
    folder, _ = odd
    img = decode(folder, "sub/exif_rotated.jpg")
    assert img.shape == (40, 24, 3)  # stored 40 x 24 (w x h), displayed 24 wide x 40 high
    top, bottom = img[:15].reshape(-1, 3).mean(0), img[25:].reshape(-1, 3).mean(0)
    assert top[0] > 200 and top[2] < 60  # red on top
    assert bottom[2] > 200 and bottom[0] < 60  # blue below


@pytest.mark.parametrize(("name", "reason"), [("empty.png", "empty file (0 bytes)"),
                                              ("truncated.jpg", "corrupt or truncated"),
                                              ("notes.txt", "not an image")])
def test_broken_files_raise_image_error(odd, name, reason):
    folder, _ = odd
    with pytest.raises(ImageError, match=rf"^{name}: .*{reason.replace('(', '.').replace(')', '.')}"):
        decode(folder, name)


def test_to_rgb_array_variants(odd):
    folder, _ = odd
    gray = np.arange(12, dtype=np.uint8).reshape(3, 4)
    assert np.array_equal(to_rgb_array(gray), np.repeat(gray[..., None], 3, axis=2))
    assert np.array_equal(to_rgb_array(gray[..., None]), to_rgb_array(gray))
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[..., 1] = 7
    assert to_rgb_array(rgba).shape == (2, 2, 3) and (to_rgb_array(rgba)[..., 1] == 7).all()
    floats = np.array([[0.0, 0.5], [1.0, 0.25]])
    # The one >8-bit rule: 2..98th percentile (0.015..0.97 here) to 0..255, clipped.
    assert to_rgb_array(floats)[..., 0].tolist() == [[0, 130], [255, 63]]
    assert to_rgb_array(np.full((2, 2), 9.0)).max() == 0  # constant high-depth image
    data = (folder / "palette.png").read_bytes()
    assert np.array_equal(to_rgb_array({"bytes": data, "path": None}), decode(folder, "palette.png"))
    assert np.array_equal(to_rgb_array({"bytes": None, "path": str(folder / "palette.png")}),
                          decode(folder, "palette.png"))
    assert to_rgb_array(Image.open(folder / "sub" / "exif_rotated.jpg")).shape == (40, 24, 3)
    with pytest.raises(ImageError, match=r"shape \(2, 2, 5\)"):
        to_rgb_array(np.zeros((2, 2, 5)))
    with pytest.raises(ImageError, match="empty file"):
        to_rgb_array({"bytes": b"", "path": str(folder / "empty.png")})


def test_folder_listing_recursive_sorted_hidden_skipped(tmp_path):
    img = np.zeros((4, 4, 3), np.uint8)
    for rel in ["b.png", "a/z.png", "a/b/c.png", ".hidden.png", ".git/x.png", "B2.png", "a10.png", "a2.png"]:
        write_png(tmp_path / rel, img)
    names = [p.relative_to(tmp_path).as_posix() for p in list_image_files(tmp_path)]
    assert names == ["B2.png", "a/b/c.png", "a/z.png", "a10.png", "a2.png", "b.png"]
    inputs = resolve_inputs([str(tmp_path)])
    assert [it.source for it in inputs.items] == names
    loaded = inputs.items[0].load()
    assert loaded.rgb.shape == (4, 4, 3) and loaded.image_bytes == (tmp_path / "B2.png").read_bytes()


def test_files_and_folders_together(tmp_path):
    img = np.zeros((4, 4, 3), np.uint8)
    f1 = write_png(tmp_path / "x" / "one.png", img)
    write_png(tmp_path / "y" / "two.png", img)
    inputs = resolve_inputs([str(tmp_path / "y"), str(f1)])
    assert sorted(it.source for it in inputs.items) == [f1.as_posix(), (tmp_path / "y" / "two.png").as_posix()]
    with pytest.raises(InputError, match="nope.png does not exist"):
        resolve_inputs([str(f1), str(tmp_path / "nope.png")])


def test_missing_and_empty_inputs(tmp_path):
    with pytest.raises(InputError, match=r"input path .*missing_folder does not exist"):
        resolve_inputs([str(tmp_path / "missing_folder")])
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / ".hidden").write_text("x")
    with pytest.raises(InputError, match=r"input folder .*empty holds no files"):
        resolve_inputs([str(tmp_path / "empty")])


def test_broken_file_in_folder_fails_only_on_load(odd):
    folder, expected = odd
    inputs = resolve_inputs([str(folder)])
    assert sorted(it.source for it in inputs.items) == sorted(expected)
    for item in inputs.items:
        if expected[item.source] is None:
            assert item.load().rgb.ndim == 3
        else:
            with pytest.raises(ImageError, match=expected[item.source].replace("(", ".").replace(")", ".")):
                item.load()


def test_saved_dataset_and_hub_layout_inputs(tmp_path):
    from datasets import Dataset, DatasetDict, Features, Value
    from datasets import Image as ImageFeature

    rng = np.random.default_rng(0)
    pngs = []
    for i in range(3):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (6 + i, 5, 3), dtype=np.uint8)).save(buf, format="PNG")
        pngs.append(buf.getvalue())
    feats = Features({"pixels": ImageFeature(), "idx": Value("int32")})
    ds = Dataset.from_dict({"pixels": [{"bytes": b, "path": None} for b in pngs], "idx": [0, 1, 2]}, features=feats)
    ds.save_to_disk(tmp_path / "saved")
    inputs = resolve_inputs([str(tmp_path / "saved")], image_column="pixels")
    assert [it.source for it in inputs.items] == [f"saved:train[{i}]" for i in range(3)]
    assert [it.load().rgb.shape for it in inputs.items] == [(6, 5, 3), (7, 5, 3), (8, 5, 3)]
    assert inputs.items[1].load().image_bytes == pngs[1]
    with pytest.raises(InputError, match=r"no column 'image'.*--image-column"):
        resolve_inputs([str(tmp_path / "saved")])
    DatasetDict({"validation": ds}).save_to_disk(tmp_path / "dict")
    with pytest.raises(InputError, match=r"no split 'train'.*\['validation'\].*--split"):
        resolve_inputs([str(tmp_path / "dict")], image_column="pixels")
    assert len(resolve_inputs([str(tmp_path / "dict")], split="validation", image_column="pixels").items) == 3
    hub = tmp_path / "hub"
    (hub / "data").mkdir(parents=True)
    ds.to_parquet(str(hub / "data" / "train-00000-of-00001.parquet"))
    inputs = resolve_inputs([str(hub)], image_column="pixels")
    assert [it.load().rgb.shape for it in inputs.items] == [(6, 5, 3), (7, 5, 3), (8, 5, 3)]


def test_hub_id_offline_fails_with_input_error():
    with pytest.raises(InputError, match="not a local path, and loading it as a Hub dataset failed"):
        resolve_inputs(["someone/no-such-dataset-xyz"])


def test_excluded_folder_is_not_listed(tmp_path):
    img = np.zeros((4, 4, 3), np.uint8)
    for rel in ["a.png", "out/data/x.png", "out/README.md", "sub/b.png", "sub/out/c.png"]:
        write_png(tmp_path / rel, img) if rel.endswith(".png") else (tmp_path / rel).write_text("x")
    names = [p.relative_to(tmp_path).as_posix() for p in list_image_files(tmp_path, exclude=tmp_path / "out")]
    assert names == ["a.png", "sub/b.png", "sub/out/c.png"]  # only that folder, not every folder named "out"
    inputs = resolve_inputs([str(tmp_path)], exclude=str(tmp_path / "sub" / ".." / "out"))
    assert [it.source for it in inputs.items] == names
    assert len(resolve_inputs([str(tmp_path), str(tmp_path / "a.png")], exclude=tmp_path / "out").items) == 4


def test_high_bit_depth_stretch_is_per_band_percentile():
    """>8-bit arrays: each channel from its own 2nd..98th percentile, so one hot pixel does not darken the rest."""
    rng = np.random.default_rng(0)
    data = np.stack([rng.integers(1000, 2000, (50, 60)), rng.integers(0, 60000, (50, 60)),
                     np.full((50, 60), 7)], axis=2).astype(np.uint16)
    data[0, 0, 0] = 65535  # an outlier in band 0
    rgb = to_rgb_array(data)
    for k in range(2):
        lo, hi = np.percentile(data[..., k].astype(np.float64), [2, 98])
        expected = np.rint(np.clip((data[..., k] - lo) * 255 / (hi - lo), 0, 255))
        assert np.abs(rgb[..., k].astype(int) - expected).max() <= 1
    assert rgb[0, 0, 0] == 255 and rgb[..., 0].mean() > 100  # the outlier is clipped, not the scale
    assert (rgb[..., 2] == 0).all()  # a constant band
    eight = rng.integers(0, 256, (5, 6, 3), dtype=np.uint8)
    assert np.array_equal(to_rgb_array(eight), eight)  # 8-bit data is never stretched


def test_pil_pixel_limit_is_not_changed_on_import():
    """Importing alps_hf leaves PIL's global decompression-bomb limit alone; our opens raise it only while
    they run, and restore the caller's value (also when nested)."""
    from alps_hf import images

    before = Image.MAX_IMAGE_PIXELS
    assert before != images.MAX_IMAGE_PIXELS
    with images.allow_large_images():
        assert Image.MAX_IMAGE_PIXELS == images.MAX_IMAGE_PIXELS
        with images.allow_large_images():
            pass
        assert Image.MAX_IMAGE_PIXELS == images.MAX_IMAGE_PIXELS
    assert Image.MAX_IMAGE_PIXELS == before
