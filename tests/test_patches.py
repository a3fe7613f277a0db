"""Patch cutting against a transcription of mmsegmentation's iSAID loop."""

import numpy as np
import pytest

from alps_hf.geo.patches import Window, cut_patches, sliding_windows


def mmseg_windows(img_h, img_w, patch_h=896, patch_w=896, overlap=384):
    """The window loop of mmsegmentation's slide_crop_image, after its padding step."""
    out = set()
    for x in range(0, img_w, patch_w - overlap):
        for y in range(0, img_h, patch_h - overlap):
            x_str, x_end = x, x + patch_w
            if x_end > img_w:
                x_str, x_end = x_str - (x_end - img_w), img_w
            y_str, y_end = y, y + patch_h
            if y_end > img_h:
                y_str, y_end = y_str - (y_end - img_h), img_h
            out.add((y_str, y_end, x_str, x_end))
    return sorted(out)


@pytest.mark.parametrize(
    "size", [(896, 896), (1000, 1000), (1100, 3000), (4000, 4000), (2048, 1409), (5000, 7000)]
)
def test_windows_match_mmsegmentation(size):
    got = sliding_windows(*size)
    assert sorted((w.y0, w.y1, w.x0, w.x1) for w in got) == mmseg_windows(*size)
    assert len(set(got)) == len(got)  # mmseg's coinciding windows appear once


def test_windows_cover_every_pixel_with_full_patches():
    h, w = 1100, 3000
    cover = np.zeros((h, w), dtype=int)
    for win in sliding_windows(h, w):
        assert (win.y1 - win.y0, win.x1 - win.x0) == (896, 896)
        assert win.x0 >= 0 and win.y0 >= 0 and win.x1 <= w and win.y1 <= h
        cover[win.y0 : win.y1, win.x0 : win.x1] += 1
    assert cover.min() >= 1
    starts = sorted({win.x0 for win in sliding_windows(h, w)})
    assert starts == [0, 512, 1024, 1536, 2048, 2104]  # stride 512, the last one moved back to the border


def test_small_image_is_padded_bottom_right():
    image = np.full((300, 1000, 3), 7, dtype=np.uint8)
    patches = list(cut_patches(image))
    assert [w.bounds for w, _ in patches] == [[0, 0, 896, 896], [104, 0, 1000, 896]]
    assert patches[1][0] == Window(104, 0, 1000, 896, scene_size=(1000, 896), index=1)  # the one Window class
    first = patches[0][1]
    assert first.shape == (896, 896, 3)
    assert (first[:300] == 7).all() and (first[300:] == 0).all()


def test_potsdam_tiles_without_overlap():
    windows = sliding_windows(6000, 6000, patch=512, overlap=0)
    xs = sorted({w.x0 for w in windows})
    assert xs == [*range(0, 5632, 512), 5488] and len(windows) == 144
    assert windows[0].name("top_potsdam_2_10_RGB") == "top_potsdam_2_10_RGB_0_512_0_512.png"


def test_bad_arguments():
    with pytest.raises(ValueError, match="overlap 896"):
        sliding_windows(100, 100, patch=896, overlap=896)
    with pytest.raises(ValueError, match="must be positive"):
        sliding_windows(0, 100)
