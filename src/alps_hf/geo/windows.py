"""Window geometry of large scenes: cutting a scene into overlapping windows, and finding them again.

Pure geometry (no torch, no PIL, no rasterio): the readers (`alps_hf.geo.readers`,
`alps_hf.geo.geotiff`), the seam rule (`alps_hf.geo.seams`), the stitcher (`alps_hf.geo.stitch`)
and mmsegmentation-style patch cutting (`alps_hf.geo.patches`) all use the one `Window` here.

A scene larger than `--tile-size` is read as a grid of overlapping windows (`plan_windows`). Every
planned window has a *core*: the cores of all windows of a scene partition it exactly (the border
between two neighbouring windows' cores lies in the middle of their overlap); the seam rule and
the stitcher decide ownership by it.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

from alps_hf.errors import ConfigError

# Below this a window holds too little context for SAM's 1024-px encoder input (upsampled 16x+),
# and the per-window overhead dominates.
MIN_TILE_SIZE = 64


@dataclass(frozen=True)
class Window:
    """One window of a scene, in scene pixel coordinates (x to the right, y down, ends exclusive).

    Attributes:
        x0, y0, x1, y1: the window's pixels are columns x0..x1-1 and rows y0..y1-1.
        core: (cx0, cy0, cx1, cy1), the part of the scene this window owns; the cores of all windows
            `plan_windows` gives for a scene partition it, so every scene pixel is owned by exactly
            one window. None for windows cut without ownership (`alps_hf.geo.patches`).
        scene_size: (width, height) of the scene (for patches: of the padded image).
        index: position in the window list of the scene.
    """

    x0: int
    y0: int
    x1: int
    y1: int
    core: tuple[int, int, int, int] | None = None
    scene_size: tuple[int, int] | None = None
    index: int = 0

    @property
    def width(self) -> int:
        """Number of columns, x1 - x0."""
        return self.x1 - self.x0

    @property
    def height(self) -> int:
        """Number of rows, y1 - y0."""
        return self.y1 - self.y0

    @property
    def bounds(self) -> list[int]:
        """[x0, y0, x1, y1], the form stored in each row's `window` meta."""
        return [self.x0, self.y0, self.x1, self.y1]

    @property
    def internal_edges(self) -> tuple[bool, bool, bool, bool]:
        """(left, top, right, bottom): True where that edge lies inside the scene (a seam)."""
        width, height = self._scene_size()
        return self.x0 > 0, self.y0 > 0, self.x1 < width, self.y1 < height

    def core_local(self) -> tuple[int, int, int, int]:
        """The core in window-local pixel coordinates (cx0, cy0, cx1, cy1).

        Raises:
            ValueError: a window without a core (not planned by `plan_windows`).
        """
        if self.core is None:
            raise ValueError(f"window {self.bounds} has no core: only plan_windows() windows own pixels")
        cx0, cy0, cx1, cy1 = self.core
        return cx0 - self.x0, cy0 - self.y0, cx1 - self.x0, cy1 - self.y0

    def name(self, stem: str) -> str:
        """Mmsegmentation's patch file name: `<stem>_<y0>_<y1>_<x0>_<x1>.png`."""
        return f"{stem}_{self.y0}_{self.y1}_{self.x0}_{self.x1}.png"

    def _scene_size(self) -> tuple[int, int]:
        if self.scene_size is None:
            raise ValueError(f"window {self.bounds} does not know its scene size")
        return self.scene_size


def _axis_spans(size: int, tile: int, overlap: int) -> list[tuple[int, int, int, int]]:
    """(start, end, core_start, core_end) of the windows along one axis."""
    if size <= tile:
        return [(0, size, 0, size)]
    stride = tile - overlap
    starts = list(range(0, size - tile, stride)) + [size - tile]  # last window flush with the edge
    spans = [(s, s + tile) for s in starts]
    # Core borders sit in the middle of each overlap, so both neighbours keep overlap/2 of context.
    borders = [0] + [(spans[i + 1][0] + spans[i][1]) // 2 for i in range(len(spans) - 1)] + [size]
    return [(s, e, borders[i], borders[i + 1]) for i, (s, e) in enumerate(spans)]


def validate_tiling(tile_size: int, overlap: int) -> None:
    """Check a tiling before anything is read.

    Args:
        tile_size: window side in pixels (`--tile-size`).
        overlap: overlap of neighbouring windows in pixels (`--tile-overlap`).

    Raises:
        ConfigError: unless `MIN_TILE_SIZE <= tile_size` and `0 <= overlap < tile_size` (integers).
    """
    if not isinstance(tile_size, int) or isinstance(tile_size, bool) or tile_size < MIN_TILE_SIZE:
        raise ConfigError(
            f"tile size {tile_size!r} is too small: --tile-size must be an integer >= {MIN_TILE_SIZE} pixels"
        )
    if not isinstance(overlap, int) or isinstance(overlap, bool) or overlap < 0:
        raise ConfigError(f"tile overlap {overlap!r} is invalid: --tile-overlap must be an integer >= 0")
    if overlap >= tile_size:
        raise ConfigError(
            f"tile overlap {overlap} must be smaller than the tile size {tile_size}: "
            f"lower --tile-overlap (e.g. {tile_size // 8}) or raise --tile-size"
        )


def plan_windows(width: int, height: int, tile_size: int, overlap: int) -> list[Window]:
    """Cut a width x height scene into overlapping tile_size windows, row-major.

    Windows step by `tile_size - overlap`; the last window of each row / column is moved back to
    end flush with the scene edge (so it overlaps its neighbour by at least `overlap`), and no
    window is smaller than the tile unless the scene itself is. A scene no larger than the tile
    gives one window. Deterministic: the same arguments always give the same list.

    Args:
        width: scene width in pixels.
        height: scene height in pixels.
        tile_size: window side in pixels.
        overlap: overlap of neighbouring windows in pixels.

    Returns:
        The windows, row-major, each with its core, the scene size and its index.

    Raises:
        ConfigError: tile size below `MIN_TILE_SIZE`, negative overlap, overlap >= tile size,
            or a non-positive scene size.
    """
    validate_tiling(tile_size, overlap)
    if width <= 0 or height <= 0:
        raise ConfigError(f"scene size {width}x{height} is empty: width and height must be > 0")
    xs = _axis_spans(width, tile_size, overlap)
    ys = _axis_spans(height, tile_size, overlap)
    windows = []
    for y0, y1, cy0, cy1 in ys:
        for x0, x1, cx0, cx1 in xs:
            windows.append(Window(x0, y0, x1, y1, (cx0, cy0, cx1, cy1), (width, height), len(windows)))
    return windows


def num_windows(width: int, height: int, tile_size: int, overlap: int) -> int:
    """Number of windows `plan_windows(width, height, tile_size, overlap)` gives, without building them.

    Returns:
        The count, from the same step and flush-last-window rule.

    Raises:
        ConfigError: a bad tiling, as `validate_tiling`.
    """
    validate_tiling(tile_size, overlap)

    def count(size: int) -> int:
        return 1 if size <= tile_size else math.ceil((size - tile_size) / (tile_size - overlap)) + 1

    return count(width) * count(height)


@functools.lru_cache(maxsize=64)
def _plan_by_bounds(width: int, height: int, tile_size: int, overlap: int) -> dict[tuple[int, ...], Window]:
    # Pass 2 asks once per row; a scene's plan is rebuilt only when another scene comes between.
    return {tuple(w.bounds): w for w in plan_windows(width, height, tile_size, overlap)}


def window_from_meta(meta: dict, tile_size: int, overlap: int) -> Window:
    """The `Window` (with its core) of a window row, from its meta `window` and `scene_size`.

    Args:
        meta: a row's meta with `window` [x0, y0, x1, y1] and `scene_size` [W, H].
        tile_size: the window side of the run.
        overlap: the window overlap of the run.

    Returns:
        The planned window with those bounds.

    Raises:
        ValueError: the bounds are not a window of that scene under this tiling.
    """
    width, height = (int(v) for v in meta["scene_size"])
    bounds = tuple(int(v) for v in meta["window"])
    window = _plan_by_bounds(width, height, tile_size, overlap).get(bounds)
    if window is None:
        raise ValueError(
            f"window {list(bounds)} is not a window of a {width}x{height} scene tiled "
            f"{tile_size} px with {overlap} px overlap"
        )
    return window


def window_source(path: str, window: Window) -> str:
    """The `source` string of a window row.

    Args:
        path: the scene as named in the run.
        window: the window.

    Returns:
        `<scene path>#window=x0,y0,x1,y1`.
    """
    return f"{path}#window={window.x0},{window.y0},{window.x1},{window.y1}"
