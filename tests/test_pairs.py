"""images/ + labels/ folder pairs: matching by stem, colour tables, label decoding, size checks."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from alps_hf.errors import ConfigError, DatasetFormatError, InputError
from alps_hf.labeled.pairs import (
    LabelPair,
    check_size,
    image_size,
    match_pairs,
    parse_palette,
    read_label,
    read_pair_label,
    resolve_folders,
)


def _write(folder, name, array, mode=None):
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode=mode).save(folder / name)
    return folder / name


def _pair_folder(root, names_images, names_labels, size=(6, 8)):
    for n in names_images:
        _write(root / "images", n, np.zeros((*size, 3), np.uint8))
    for n in names_labels:
        _write(root / "labels", n, np.zeros(size, np.uint8))
    return root / "images", root / "labels"


def test_pairs_match_by_stem_across_suffixes_and_subfolders(tmp_path):
    images, labels = _pair_folder(tmp_path, ["b.jpg", "a.png"], ["a.png", "b.png"])
    _write(images / "sub", "c.tif", np.zeros((6, 8, 3), np.uint8))
    _write(labels / "sub", "c.png", np.zeros((6, 8), np.uint8))
    (images / "README.txt").write_text("not an image")
    (labels / ".hidden.png").write_bytes(b"")
    pairs = match_pairs(images, labels)
    assert [p.name for p in pairs] == ["a", "b", "sub/c"]
    assert pairs[1].image == images / "b.jpg" and pairs[1].label == labels / "b.png"
    assert pairs[2].image.name == "c.tif"


def test_missing_names_are_listed_on_each_side(tmp_path):
    images, labels = _pair_folder(tmp_path, ["a.png", "b.png", "only_image.png"], ["a.png", "b.png", "x1.png", "x2.png"])
    with pytest.raises(InputError) as err:
        match_pairs(images, labels)
    msg = str(err.value)
    assert f"1 images in {images} without a partner: only_image" in msg
    assert f"2 labels in {labels} without a partner: x1, x2" in msg


def test_long_missing_lists_are_cut(tmp_path):
    images, labels = _pair_folder(tmp_path, [f"i{n:02d}.png" for n in range(12)], ["z.png"])
    with pytest.raises(InputError, match=r"12 images .* i00, i01, i02, i03, i04, i05, i06, i07 and 4 more"):
        match_pairs(images, labels)


def test_two_files_with_one_stem_are_refused(tmp_path):
    images, labels = _pair_folder(tmp_path, ["a.png", "a.jpg"], ["a.png"])
    with pytest.raises(InputError, match=r"a.jpg and a.png share the name 'a'"):
        match_pairs(images, labels)


def test_missing_or_empty_folders(tmp_path):
    with pytest.raises(InputError, match=r"images folder .*nope.*no such folder"):
        match_pairs(tmp_path / "nope", tmp_path)
    (tmp_path / "empty").mkdir()
    images, _ = _pair_folder(tmp_path, ["a.png"], [])
    with pytest.raises(InputError, match=r"labels folder .*empty.* holds no image file"):
        match_pairs(images, tmp_path / "empty")


def test_resolve_folders_root_and_errors(tmp_path):
    _pair_folder(tmp_path / "set", ["a.png"], ["a.png"])
    assert resolve_folders([str(tmp_path / "set")]) == (tmp_path / "set" / "images", tmp_path / "set" / "labels")
    (tmp_path / "m" / "images").mkdir(parents=True)
    (tmp_path / "m" / "masks").mkdir()
    assert resolve_folders([str(tmp_path / "m")])[1] == tmp_path / "m" / "masks"
    assert resolve_folders(["x", "y"])[0].name == "x"
    with pytest.raises(InputError, match=r"has none of the folder pairs images/ \+ labels/"):
        resolve_folders([str(tmp_path)])
    with pytest.raises(InputError, match=r"got 3"):
        resolve_folders(["a", "b", "c"])


def test_palette_forms_agree(tmp_path):
    by_colour = parse_palette('{"#3C1098": 0, "#8429f6": 1, "#000000": 255}')
    by_class = parse_palette(json.dumps({"0": "#3C1098", "1": [132, 41, 246], "255": "#000000"}))
    assert by_colour == by_class == {(60, 16, 152): 0, (132, 41, 246): 1, (0, 0, 0): 255}
    file = tmp_path / "palette.json"
    file.write_text('{"#FFFFFF": 3}')
    assert parse_palette(str(file)) == {(255, 255, 255): 3}
    assert parse_palette(None) is None


@pytest.mark.parametrize("value, message", [
    ("{not json", "neither a JSON file nor inline JSON"),
    ("[1, 2]", "expected a non-empty JSON object"),
    ('{"#12345": 0}', "'#12345' is not a colour"),
    ('{"0": [1, 2, 300]}', "is not a colour"),
    ('{"#000000": 256}', "class 256 outside 0..254"),
    ('{"#000000": "road"}', "class 'road' is not an integer"),
    ('{"0": "#000000", "1": "#000000"}', "colour #000000 given for classes 0 and 1"),
])
def test_bad_palettes_say_what_is_wrong(value, message):
    with pytest.raises(ConfigError, match=message):
        parse_palette(value)


def test_colour_masks_map_through_the_palette(tmp_path):
    rgb = np.zeros((4, 5, 3), np.uint8)
    rgb[:, :2] = (60, 16, 152)
    rgb[:, 2:] = (132, 41, 246)
    rgb[0, 4] = (0, 0, 0)
    path = _write(tmp_path, "m.png", rgb)
    label = read_label(path, parse_palette('{"#3C1098": 0, "#8429F6": 1, "#000000": 255}'))
    expected = np.array([[0, 0, 1, 1, 255]] + [[0, 0, 1, 1, 1]] * 3, np.uint8)
    np.testing.assert_array_equal(label, expected)
    assert label.dtype == np.uint8


def test_unknown_colours_are_listed_by_pixel_count(tmp_path):
    rgb = np.zeros((4, 5, 3), np.uint8)
    rgb[:, :3] = (255, 0, 0)
    rgb[:, 3:] = (0, 255, 0)
    rgb[0, 0] = (1, 2, 3)
    path = _write(tmp_path, "m.png", rgb)
    with pytest.raises(DatasetFormatError) as err:
        read_label(path, {(1, 2, 3): 0})
    assert f"{path}: 2 colours are not in --palette: #FF0000 (11 px), #00FF00 (8 px)" in str(err.value)


def test_colour_mask_without_palette_says_which_flag(tmp_path):
    path = _write(tmp_path, "m.png", np.zeros((3, 3, 3), np.uint8))
    with pytest.raises(DatasetFormatError, match=r"m.png: label is a RGB colour mask; pass --palette"):
        read_label(path)


def test_class_index_labels_l_p_and_16_bit(tmp_path):
    values = np.array([[0, 1, 2], [255, 4, 0]], np.uint8)
    np.testing.assert_array_equal(read_label(_write(tmp_path, "l.png", values)), values)
    p = Image.fromarray(values, mode="L").convert("P")
    p.putpalette([v for i in range(256) for v in (i, 255 - i, 7)])
    p.save(tmp_path / "p.png")
    np.testing.assert_array_equal(read_label(tmp_path / "p.png"), values)  # indices, not colours
    wide = values.astype(np.uint16)
    Image.fromarray(wide).save(tmp_path / "w.png")
    np.testing.assert_array_equal(read_label(tmp_path / "w.png"), values)
    wide[0, 0] = 300
    Image.fromarray(wide).save(tmp_path / "w300.png")
    with pytest.raises(DatasetFormatError, match=r"w300.png: label values 0..300 do not fit 0..255"):
        read_label(tmp_path / "w300.png")


def test_unreadable_label_is_an_input_error(tmp_path):
    (tmp_path / "bad.png").write_bytes(b"not a png")
    with pytest.raises(InputError, match=r"bad.png: not an image PIL can read"):
        read_label(tmp_path / "bad.png")


def test_size_mismatch_names_both_files_and_sizes(tmp_path):
    image = _write(tmp_path / "images", "a.jpg", np.zeros((6, 8, 3), np.uint8))
    label = _write(tmp_path / "labels", "a.png", np.zeros((6, 9), np.uint8))
    pair = LabelPair("a", image, label)
    with pytest.raises(DatasetFormatError) as err:
        read_pair_label(pair)
    assert f"a: image {image} is 8x6 but label {label} is 9x6 (W x H)" in str(err.value)
    check_size(pair, (6, 8))  # the right size passes


def test_exif_rotated_image_is_measured_upright(tmp_path):
    im = Image.fromarray(np.zeros((6, 8, 3), np.uint8))
    exif = im.getexif()
    exif[0x0112] = 6  # rotate 90: decodes as 6 wide, 8 high
    im.save(tmp_path / "r.jpg", exif=exif)
    assert image_size(tmp_path / "r.jpg") == (6, 8)


def test_real_dubai_pairs(dubai_dir):
    pairs = match_pairs(dubai_dir / "images", dubai_dir / "labels")
    assert len(pairs) == 72 and pairs[0].name == "tile1_part_001"
    label = read_pair_label(pairs[0])
    assert label.shape == (644, 797)
    assert set(np.unique(label).tolist()) <= {0, 1, 2, 3, 4, 5, 255}
