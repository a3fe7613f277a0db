"""`Stitcher`: per-window label maps of one scene -> one full-size label raster on disk (`--stitch`).

`stitch_rows` / `stitch_dataset` run it over all window rows of a labeling run, one raster per
scene, named `<scene stem>_labels.tif|png`, with an `index.json` mapping scene -> file.

Windows are written into the output file one at a time (read-modify-write of the window's
region), so memory is bounded by the window for GeoTIFF output. Ownership follows the seam rule
of `alps_hf.geo.seams`: the label maps given to `add` are painted from the masks `resolve_seams`
kept, and each output pixel takes
  1. the label of the window whose core contains it, when that window has a mask there;
  2. otherwise the label of a neighbouring window whose kept mask reaches over the core border
     (a kept object is whole in its window and may extend up to overlap/2 past the core);
     the first such window in row-major order wins;
  3. otherwise 255 (no mask, no data, or a window that was never added).
So an object kept by one window appears whole in the stitched raster, once.

Output format by suffix: `.tif` / `.tiff` -> tiled, deflate-compressed GeoTIFF with the scene's
CRS and transform when it has them (needs the geo extra); `.png` -> 8-bit PNG, assembled in a
temporary W*H-byte memory-mapped file and encoded at `close` (PNG cannot be written by window).
The file appears under its final name only at `close` (temporary name, then rename).
"""

from __future__ import annotations

import contextlib
import os
import warnings
from pathlib import Path

import numpy as np

from alps_hf.core import IGNORE_INDEX, atomic_write_text
from alps_hf.errors import ConfigError
from alps_hf.geo.geotiff import GDAL_CACHE_BYTES, rasterio_module
from alps_hf.geo.readers import uses_rasterio
from alps_hf.geo.windows import Window, plan_windows


def label_raster_suffix(scene_path: str | os.PathLike) -> str:
    """The suffix of a scene's stitched label raster.

    Args:
        scene_path: the scene file.

    Returns:
        ".tif" for scenes read through rasterio (keeps CRS / transform, written by window), else ".png".
    """
    return ".tif" if uses_rasterio(scene_path) else ".png"


def scene_transform_from_window(window_transform: list[float] | None, x0: int, y0: int) -> tuple | None:
    """The scene's affine transform (a, b, c, d, e, f) from a window's transform and the window's origin.

    Args:
        window_transform: the window's (a, b, c, d, e, f) from its row meta, or None.
        x0: the window's first column in the scene.
        y0: the window's first row in the scene.

    Returns:
        The transform of the window moved back by its own offset (rasterio's `windows.transform`
        of the window at (-x0, -y0)), or None when the window has none.
    """
    if window_transform is None:
        return None
    rasterio_module()
    from rasterio import Affine
    from rasterio.windows import Window as RioWindow
    from rasterio.windows import transform

    return tuple(transform(RioWindow(-x0, -y0, 1, 1), Affine(*window_transform)))[:6]


class _PngStore:
    """The label raster in a temporary W*H-byte memory-map, encoded as PNG at `finish`.

    PNG cannot be written by window, so the scene is assembled in a file-backed array first.
    """

    def __init__(self, tmp: Path, width: int, height: int) -> None:
        self._tmp = tmp
        self._raw = tmp.with_suffix(".raw")
        self._array = np.memmap(self._raw, dtype=np.uint8, mode="w+", shape=(height, width))
        self._array[:] = IGNORE_INDEX

    def read(self, w: Window) -> np.ndarray:
        return np.array(self._array[w.y0 : w.y1, w.x0 : w.x1])

    def write(self, w: Window, region: np.ndarray) -> None:
        self._array[w.y0 : w.y1, w.x0 : w.x1] = region

    def finish(self) -> None:
        """Encode the PNG at the temporary name and drop the memory map."""
        from PIL import Image

        self._array.flush()
        Image.fromarray(np.asarray(self._array)).save(self._tmp, format="PNG")
        self.discard()

    def discard(self) -> None:
        """Drop the memory map and its file."""
        del self._array
        self._raw.unlink(missing_ok=True)


class _GeoTiffStore:
    """The label raster as a tiled, deflate-compressed GeoTIFF at the temporary name, written by window."""

    def __init__(self, tmp: Path, width: int, height: int, crs: str | None, transform: tuple | list | None) -> None:
        rasterio = rasterio_module()
        from rasterio.errors import NotGeoreferencedWarning

        profile = {
            "driver": "GTiff",
            "width": width,
            "height": height,
            "count": 1,
            "dtype": "uint8",
            "nodata": IGNORE_INDEX,
            "tiled": True,
            "blockxsize": 256,
            "blockysize": 256,
            "compress": "deflate",
            "BIGTIFF": "IF_SAFER",
        }
        if crs is not None:
            profile["crs"] = crs
        if transform is not None:
            profile["transform"] = rasterio.Affine(*transform)
        # The GDAL environment (bounded block cache) and the open file live as long as the store:
        # entered on one stack, kept past this block once both are open, closed by `finish`.
        with contextlib.ExitStack() as stack:
            stack.enter_context(rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_BYTES))
            with warnings.catch_warnings():
                # A scene without CRS was already warned about when it was opened.
                warnings.simplefilter("ignore", NotGeoreferencedWarning)
                self._dst = stack.enter_context(rasterio.open(tmp, "w+", **profile))
            self._stack = stack.pop_all()

    @staticmethod
    def _rio(w: Window):
        from rasterio.windows import Window as RioWindow

        return RioWindow(w.x0, w.y0, w.width, w.height)

    def read(self, w: Window) -> np.ndarray:
        return self._dst.read(1, window=self._rio(w))

    def write(self, w: Window, region: np.ndarray) -> None:
        self._dst.write(region, 1, window=self._rio(w))

    def finish(self) -> None:
        """Close the file (and leave the GDAL environment)."""
        self._stack.close()

    discard = finish  # the caller removes the temporary file


class Stitcher:
    """Assemble the label maps of one scene's windows into one raster at `path`.

    Args:
        path: output file; its suffix picks the format (.tif / .tiff GeoTIFF, .png PNG).
        scene_size: (width, height) of the scene.
        tile_size: the window side the windows came from (`plan_windows` is re-run to know
            each window's core).
        overlap: the window overlap the windows came from.
        crs: WKT of the scene's CRS, or None (GeoTIFF output only).
        transform: the scene's affine (a, b, c, d, e, f), or None (GeoTIFF output only).

    Raises:
        ConfigError: a suffix other than .tif, .tiff, .png.
        InputError: GeoTIFF output and rasterio is not installed.

    Use as a context manager (`close` on success, `abort` on an exception), or call `close()`
    (writes the file) / `abort()` (removes it); after either, both do nothing.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        scene_size: tuple[int, int] | list[int],
        tile_size: int,
        overlap: int,
        crs: str | None = None,
        transform: tuple | list | None = None,
    ) -> None:
        self.path = Path(path)
        self.width, self.height = (int(v) for v in scene_size)
        self.windows = {tuple(w.bounds): w for w in plan_windows(self.width, self.height, tile_size, overlap)}
        self.added: set[tuple[int, ...]] = set()
        self.format = self.path.suffix.lower()
        if self.format not in (".tif", ".tiff", ".png"):
            raise ConfigError(f"stitched label raster {self.path}: suffix must be .tif, .tiff or .png")
        self._tmp = self.path.with_name(f".{self.path.name}.tmp-{os.getpid()}")
        self._store: _PngStore | _GeoTiffStore | None
        if self.format == ".png":
            self._store = _PngStore(self._tmp, self.width, self.height)
        else:
            self._store = _GeoTiffStore(self._tmp, self.width, self.height, crs, transform)

    @classmethod
    def from_meta(cls, path: str | os.PathLike, meta: dict, tile_size: int, overlap: int) -> Stitcher:
        """A Stitcher for the scene of a window row.

        Args:
            path: the output raster.
            meta: the row's meta (`scene_size`, `window`, `crs`, `transform`).
            tile_size: the window side of the run.
            overlap: the window overlap of the run.

        Returns:
            The open Stitcher, with the scene's size, CRS and transform.
        """
        x0, y0 = meta["window"][:2]
        return cls(
            path,
            meta["scene_size"],
            tile_size,
            overlap,
            crs=meta.get("crs"),
            transform=scene_transform_from_window(meta.get("transform"), x0, y0),
        )

    def add(self, window: Window | list[int] | tuple[int, ...], label: np.ndarray) -> None:
        """Merge one window's (h, w) uint8 label map (255 = no label) into the output.

        Args:
            window: a `Window` of this scene's tiling, or its bounds [x0, y0, x1, y1].
            label: the window's (h, w) uint8 label map, painted from the masks `resolve_seams` kept.

        Raises:
            ValueError: a window that is not one of this scene's tiling, a label of another size,
                or a stitcher already closed.
        """
        if self._store is None:
            raise ValueError(f"{self.path}: the stitcher is closed")
        bounds = tuple(window.bounds if isinstance(window, Window) else (int(v) for v in window))
        if bounds not in self.windows:
            raise ValueError(f"window {list(bounds)} is not a window of this {self.width}x{self.height} tiling")
        w = self.windows[bounds]
        label = np.asarray(label)
        if label.shape != (w.height, w.width):
            raise ValueError(f"label of shape {label.shape} for window {list(bounds)} of {w.width}x{w.height}")
        current = self._store.read(w)
        in_core = np.zeros(label.shape, dtype=bool)
        cx0, cy0, cx1, cy1 = w.core_local()
        in_core[cy0:cy1, cx0:cx1] = True
        has = label != IGNORE_INDEX
        # Core: this window's masks win, and core pixels without a mask here keep a neighbour's
        # spill (rule 2) or stay 255. Outside the core: only fill what nobody labeled yet.
        take = np.where(in_core, has, has & (current == IGNORE_INDEX))
        self.added.add(bounds)
        self._store.write(w, np.where(take, label, current).astype(np.uint8))

    @property
    def missing(self) -> list[list[int]]:
        """Bounds of the windows not added yet (their core pixels stay 255)."""
        return [list(b) for b in self.windows if b not in self.added]

    def close(self) -> Path:
        """Finish the file and move it to `path`; returns `path`."""
        if self._store is not None:
            store, self._store = self._store, None
            store.finish()
            os.replace(self._tmp, self.path)
        return self.path

    def abort(self) -> None:
        """Drop the partial output (nothing is left under `path` or the temporary names)."""
        if self._store is not None:
            store, self._store = self._store, None
            store.discard()
            self._tmp.unlink(missing_ok=True)

    def __enter__(self) -> Stitcher:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def _scene_file_name(scene: str, used: set[str]) -> str:
    stem = Path(scene).stem or "scene"
    name, i = f"{stem}_labels", 1
    while name in used:  # two scenes with one stem (different folders): number the later ones
        name, i = f"{stem}_{i}_labels", i + 1
    used.add(name)
    return name + label_raster_suffix(scene)


def stitch_rows(rows, out_dir: str | os.PathLike, tile_size: int, overlap: int) -> dict[str, Path]:
    """Stitch window rows into one label raster per scene under `out_dir` (the `--stitch` step).

    Args:
        rows: iterable of (meta, label) in any order: `meta` the row's meta dict (or its JSON
            string) with `scene`, `window`, `scene_size` and optionally `crs` / `transform`;
            `label` the (h, w) uint8 label map of that window (255 = no label). Rows without a
            `window` in their meta (ordinary images) are skipped.
        out_dir: folder for the rasters, named `<scene stem>_labels.tif` (rasterio-read scenes) or
            `.png`; an `index.json` maps each scene path to its file.
        tile_size: the window side the rows were made with.
        overlap: the window overlap the rows were made with.

    Returns:
        {scene path: raster path}. A scene's raster is closed as soon as all its windows arrived,
        so only scenes whose windows are interleaved with others are open at the same time.
    """
    import json

    from PIL import Image

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    open_scenes: dict[str, Stitcher] = {}
    written: dict[str, Path] = {}
    used: set[str] = set()
    try:
        for meta, label in rows:
            if isinstance(meta, str):
                meta = json.loads(meta)
            if not meta or "window" not in meta:
                continue
            scene = str(meta["scene"])
            stitcher = open_scenes.get(scene)
            if stitcher is None:
                if scene in written:
                    raise ValueError(f"window {meta['window']} of {scene} came after its raster was finished")
                stitcher = Stitcher.from_meta(out_dir / _scene_file_name(scene, used), meta, tile_size, overlap)
                open_scenes[scene] = stitcher
            if isinstance(label, Image.Image):
                label = np.asarray(label)
            stitcher.add(meta["window"], label)
            if not stitcher.missing:
                written[scene] = open_scenes.pop(scene).close()
        for scene, stitcher in open_scenes.items():  # windows that failed stay 255
            written[scene] = stitcher.close()
        open_scenes.clear()
    finally:
        for stitcher in open_scenes.values():
            stitcher.abort()
    index = {scene: path.name for scene, path in sorted(written.items())}
    atomic_write_text(out_dir / "index.json", json.dumps(index, indent=2) + "\n")
    return written


def stitch_dataset(dataset, out_dir: str | os.PathLike, tile_size: int, overlap: int) -> dict[str, Path]:
    """`stitch_rows` over a labeled `datasets.Dataset` with `meta` (JSON) and `label` columns.

    `out_dir`, `tile_size`, `overlap` and the return value are those of `stitch_rows`.
    """
    def rows():
        for row in dataset.select_columns(["meta", "label"]):
            yield row["meta"], row["label"]

    return stitch_rows(rows(), out_dir, tile_size, overlap)


def stitch_parquet(files: list[str | os.PathLike], out_dir: str | os.PathLike, tile_size: int,
                   overlap: int) -> dict[str, Path]:
    """`stitch_rows` over the parquet shards `alps-hf label` wrote (`--stitch`), read a batch at a time.

    Only the `meta` and `label` columns are read, so memory holds one record batch of label PNGs and
    the windows of the scenes being assembled, never the dataset. `files` are the shards in order;
    `out_dir`, `tile_size`, `overlap` and the return value are those of `stitch_rows`.
    """
    import io
    import json

    import pyarrow.parquet as pq
    from PIL import Image

    def rows():
        for file in files:
            with pq.ParquetFile(file) as shard:
                for batch in shard.iter_batches(batch_size=64, columns=["meta", "label"]):
                    for meta, label in zip(batch.column("meta").to_pylist(), batch.column("label").to_pylist(),
                                           strict=True):
                        meta = json.loads(meta or "{}")
                        if "window" not in meta:  # an ordinary image: skip before decoding its label
                            continue
                        with Image.open(io.BytesIO(label["bytes"])) as image:
                            yield meta, np.asarray(image)

    return stitch_rows(rows(), out_dir, tile_size, overlap)
