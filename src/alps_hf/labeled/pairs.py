"""An images/ folder and a labels/ folder of masks, matched by file stem: the usual remote-sensing layout.

    scenes/images/tile_001.jpg   scenes/labels/tile_001.png
    scenes/images/tile_002.jpg   scenes/labels/tile_002.png

Files are paired by their path relative to their folder, without the suffix (`a/b.jpg` pairs with
`a/b.png`), so images may be JPEG while labels are lossless PNG. A label is either a class-index
image (8-bit `L` / `P`, or 16-bit with values below 256; the value is the class, 255 = ignore) or
an RGB colour mask mapped to class indices by a colour table (`--palette`). Image and label sizes
must agree (EXIF rotation applied, as `datasets.Image` decodes). Listing is cheap: no pixel is read
until `read_label` / `check_size`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from alps_hf.core import IGNORE_INDEX
from alps_hf.errors import ConfigError, DatasetFormatError, InputError

#: Suffixes listed as images or labels; anything else in the folders (README, CSV, world files) is not.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp", ".gif")
#: Folder names tried under one root folder, in order: (images, labels).
LAYOUTS = (("images", "labels"), ("images", "masks"), ("images", "annotations"))
#: How many names an error lists before it says "and N more".
_SHOWN = 8
_ROTATED = (5, 6, 7, 8)  # EXIF orientations that swap width and height


@dataclass(frozen=True)
class LabelPair:
    """One image and its label mask.

    Attributes:
        name: the shared relative path without suffix (POSIX), the key of the pair.
        image: path of the image file.
        label: path of the label file.
    """

    name: str
    image: Path
    label: Path


def _listed(names: list[str]) -> str:
    """`a, b, c` for at most `_SHOWN` names, then `... and N more`."""
    shown = ", ".join(names[:_SHOWN])
    return shown + (f" and {len(names) - _SHOWN} more" if len(names) > _SHOWN else "")


def missing_names_message(left: str, left_names: list[str], right: str, right_names: list[str]) -> str:
    """The part of an error that says which names lack a partner, on each side.

    Args:
        left: what the first side is, e.g. "images in scenes/images".
        left_names: names of the first side that have no partner on the second.
        right: what the second side is.
        right_names: names of the second side without partner on the first.

    Returns:
        e.g. "2 images in scenes/images have no partner: a, b; 1 label in ... has no partner: c".
    """
    parts = []
    for what, names in ((left, left_names), (right, right_names)):
        if names:
            parts.append(f"{len(names)} {what} without a partner: {_listed(sorted(names))}")
    return "; ".join(parts)


def files_by_stem(folder: Path, flag: str) -> dict[str, Path]:
    """Image-like files under `folder` (recursive, hidden skipped), keyed by relative path without suffix.

    Raises:
        InputError: `folder` is not a directory, holds no image file, or two files share a stem.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{flag} {str(folder)!r}: no such folder; expected a folder of image files")
    found: dict[str, Path] = {}
    for root, dirs, names in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for n in sorted(names):
            path = Path(root) / n
            if n.startswith(".") or path.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            key = path.relative_to(folder).with_suffix("").as_posix()
            if key in found:
                raise InputError(
                    f"{flag} {str(folder)!r}: {found[key].name} and {path.name} share the name {key!r}; "
                    "pairs are matched by name without suffix, so keep one of them"
                )
            found[key] = path
    if not found:
        raise InputError(f"{flag} {str(folder)!r} holds no image file ({', '.join(IMAGE_SUFFIXES)})")
    return dict(sorted(found.items()))


def resolve_folders(folders: list[str]) -> tuple[Path, Path]:
    """(images folder, labels folder) from `[IMAGES, LABELS]` or `[ROOT]` holding images/ + labels/.

    Raises:
        InputError: wrong count, or ROOT lacks the expected sub-folders.
    """
    if len(folders) == 2:
        return Path(folders[0]), Path(folders[1])
    if len(folders) != 1:
        raise InputError(f"expected IMAGES LABELS (two folders) or one folder holding images/ and labels/, got {len(folders)}: {folders}")
    root = Path(folders[0])
    for images, labels in LAYOUTS:
        if (root / images).is_dir() and (root / labels).is_dir():
            return root / images, root / labels
    layouts = ", ".join(f"{a}/ + {b}/" for a, b in LAYOUTS)
    raise InputError(
        f"{str(root)!r} has none of the folder pairs {layouts}; give the two folders: IMAGES LABELS"
    )


def match_pairs(images: str | os.PathLike, labels: str | os.PathLike) -> list[LabelPair]:
    """Pair every image with the label of the same stem, sorted by name.

    Raises:
        InputError: a folder is missing or empty, or some names have no partner (all listed, per side).
    """
    image_files = files_by_stem(Path(images), "images folder")
    label_files = files_by_stem(Path(labels), "labels folder")
    no_label = [n for n in image_files if n not in label_files]
    no_image = [n for n in label_files if n not in image_files]
    if no_label or no_image:
        detail = missing_names_message(f"images in {images}", no_label, f"labels in {labels}", no_image)
        raise InputError(f"images and labels do not pair up by file name (suffix ignored): {detail}")
    return [LabelPair(n, image_files[n], label_files[n]) for n in image_files]


# ---------------------------------------------------------------------------------------------------
# Colour tables


def _colour(value: object, where: str) -> tuple[int, int, int]:
    """An (r, g, b) tuple from '#RRGGBB' or [r, g, b]."""
    if isinstance(value, str) and len(value) == 7 and value.startswith("#"):
        try:
            return (int(value[1:3], 16), int(value[3:5], 16), int(value[5:7], 16))
        except ValueError:
            pass
    if isinstance(value, list | tuple) and len(value) == 3 and all(isinstance(v, int) and 0 <= v <= 255 for v in value):
        return (int(value[0]), int(value[1]), int(value[2]))
    raise ConfigError(f"--palette: {where}: {value!r} is not a colour; write '#RRGGBB' or [r, g, b] with 0..255")


def parse_palette(value: str | None) -> dict[tuple[int, int, int], int] | None:
    """The colour -> class table of `--palette` (a JSON file or inline JSON), or None.

    Accepted forms: `{"#3C1098": 0, "#8429F6": 1}` (colour -> class) or `{"0": "#3C1098"}` /
    `{"0": [60, 16, 152]}` (class -> colour). Class 255 marks a colour as ignore (void).

    Raises:
        ConfigError: not JSON, not an object, a bad colour or class, or a colour given twice.
    """
    if value is None:
        return None
    text = Path(value).read_text(encoding="utf-8") if Path(value).is_file() else value
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as err:
        raise ConfigError(f"--palette {value[:80]!r}: neither a JSON file nor inline JSON ({err.msg}); e.g. '{{\"#3C1098\": 0}}'") from None
    if not isinstance(raw, dict) or not raw:
        raise ConfigError(f"--palette {value[:80]!r}: expected a non-empty JSON object of colour -> class, e.g. '{{\"#3C1098\": 0}}'")
    table: dict[tuple[int, int, int], int] = {}
    for key, item in raw.items():
        colour_first = key.startswith("#")
        colour, index = (key, item) if colour_first else (item, key)
        try:
            index = int(index)
        except (TypeError, ValueError):
            raise ConfigError(f"--palette: class {index!r} is not an integer (0..254, or 255 for ignore)") from None
        if not 0 <= index <= IGNORE_INDEX:
            raise ConfigError(f"--palette: class {index} outside 0..254 (255 = ignore)")
        rgb = _colour(colour, f"entry {key!r}")
        if rgb in table and table[rgb] != index:
            raise ConfigError(f"--palette: colour {colour} given for classes {table[rgb]} and {index}; one colour, one class")
        table[rgb] = index
    return table


def _hex(code: int) -> str:
    return f"#{code >> 16 & 255:02X}{code >> 8 & 255:02X}{code & 255:02X}"


def map_colours(rgb: np.ndarray, palette: dict[tuple[int, int, int], int], where: str) -> np.ndarray:
    """(H, W) uint8 class map of an (H, W, 3) colour mask through `palette`.

    Raises:
        DatasetFormatError: colours not in the table (the most frequent listed, with pixel counts).
    """
    codes = (rgb[..., 0].astype(np.int32) << 16) | (rgb[..., 1].astype(np.int32) << 8) | rgb[..., 2].astype(np.int32)
    values, inverse, counts = np.unique(codes.ravel(), return_inverse=True, return_counts=True)
    lookup = {(r << 16) | (g << 8) | b: c for (r, g, b), c in palette.items()}
    unknown = [i for i, v in enumerate(values) if int(v) not in lookup]
    if unknown:
        worst = sorted(unknown, key=lambda i: -counts[i])[:_SHOWN]
        shown = ", ".join(f"{_hex(int(values[i]))} ({int(counts[i])} px)" for i in worst)
        raise DatasetFormatError(
            f"{where}: {len(unknown)} colours are not in --palette: {shown}; add them to the table "
            "(class 255 = ignore)"
        )
    classes = np.array([lookup[int(v)] for v in values], np.uint8)
    return classes[inverse].reshape(codes.shape)


# ---------------------------------------------------------------------------------------------------
# Reading


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) of an image as it decodes upright (EXIF rotation applied), from its header.

    Raises:
        InputError: the file is not an image PIL can read.
    """
    try:
        with Image.open(path) as im:
            width, height = im.size
            rotated = im.getexif().get(0x0112) in _ROTATED
    except (OSError, SyntaxError, ValueError) as err:
        raise InputError(f"{path}: not an image PIL can read ({err})") from None
    return (height, width) if rotated else (width, height)


def label_from_pil(im: Image.Image, palette: dict[tuple[int, int, int], int] | None, where: str) -> np.ndarray:
    """The (H, W) uint8 class map of a decoded label image (see `read_label`); `where` names it in errors.

    Raises:
        DatasetFormatError: a colour mask without `palette`, unknown colours, or values above 255.
    """
    mode = im.mode
    if mode in ("RGB", "RGBA") or (mode == "P" and palette is not None):
        if palette is None:
            raise DatasetFormatError(
                f"{where}: label is a {mode} colour mask; pass --palette with its colour table, e.g. "
                "'{\"#3C1098\": 0, \"#8429F6\": 1}', or give single-channel class-index PNGs"
            )
        return map_colours(np.asarray(im.convert("RGB")), palette, where)
    array = np.asarray(im)
    if array.ndim != 2:
        raise DatasetFormatError(f"{where}: label has shape {array.shape} (mode {mode}); expected a single-channel class-index image")
    if array.dtype != np.uint8:
        if array.size and (int(array.min()) < 0 or int(array.max()) > IGNORE_INDEX):
            raise DatasetFormatError(
                f"{where}: label values {int(array.min())}..{int(array.max())} do not fit 0..255 "
                "(classes 0..254, 255 = ignore); relabel the masks"
            )
        array = array.astype(np.uint8)
    return array


def read_label(path: Path, palette: dict[tuple[int, int, int], int] | None = None) -> np.ndarray:
    """The (H, W) uint8 class map of a label file.

    Single-channel images (`L`, `P`, 16/32-bit) are class indices as stored (a `P` image's indices,
    not its colours, unless `palette` is given); RGB / RGBA masks need `palette`.

    Raises:
        InputError: unreadable file.
        DatasetFormatError: a colour mask without `palette`, unknown colours, or values above 255.
    """
    try:
        with Image.open(path) as im:
            im.load()
            return label_from_pil(im, palette, str(path))
    except (OSError, SyntaxError, ValueError) as err:
        raise InputError(f"{path}: not an image PIL can read ({err})") from None


def check_size(pair: LabelPair, label_shape: tuple[int, int]) -> None:
    """Raise `DatasetFormatError` naming both files and sizes unless image and label sizes agree."""
    width, height = image_size(pair.image)
    if (height, width) != tuple(label_shape):
        raise DatasetFormatError(
            f"{pair.name}: image {pair.image} is {width}x{height} but label {pair.label} is "
            f"{label_shape[1]}x{label_shape[0]} (W x H); a label must have its image's size"
        )


def read_pair_label(pair: LabelPair, palette: dict[tuple[int, int, int], int] | None = None) -> np.ndarray:
    """The label of `pair` as a uint8 class map, after checking it has its image's size."""
    label = read_label(pair.label, palette)
    check_size(pair, label.shape)
    return label
