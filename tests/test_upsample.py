"""Windowed upsampling (sam/upsample.py): a survivor upsampled over its window gives the whole frame's pixels.

The window rule, the pixels against the whole-frame resize, the counts a window decides, the adapters'
integer factors, and the toy SAM's masks with and without windows.
"""

import numpy as np
import pytest
import torch
from PIL import Image

from alps_hf.sam import amg
from alps_hf.sam.families import Sam2Adapter, SamAdapter, integer_factors
from alps_hf.sam.generator import EmbeddingFrame, MaskGenerator, MaskGeneratorConfig, load_sam_image_processor
from alps_hf.sam.upsample import MIN_SIDE, bilinear, upsample_window, window, windows_are_exact


def test_window_covers_one_cell_beyond_and_widens_to_the_least_side():
    profile = np.zeros(128, dtype=bool)
    profile[50:60] = True
    assert window(profile, min_side=1) == (49, 61)
    start, stop = window(profile)
    assert stop - start == MIN_SIDE and start <= 49 and stop >= 61
    profile[:] = False
    profile[[0, 127]] = True  # both ends: clamped to the axis
    assert window(profile) == (0, 128)
    profile[:] = False
    profile[126] = True  # near the end: widened against it
    assert window(profile) == (128 - MIN_SIDE, 128)
    assert window(np.array([False, True, False])) == (0, 3)  # an axis shorter than the least side


@pytest.mark.parametrize("factors", [(4, 4), (2, 8)])
def test_window_pixels_are_the_whole_resize_where_its_sources_are_inside(factors):
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn((1, 1, 64, 48), generator=gen) * 5
    sy, sx = factors
    whole = bilinear(logits, (64 * sy, 48 * sx))[0, 0]
    for rows, cols in (((3, 40), (5, 45)), ((0, 64), (0, 48)), ((20, 64), (0, 33))):
        pixels, y0, x0 = upsample_window(logits[0, 0], rows, cols, factors, (64 * sy, 48 * sx))
        assert (y0, x0) == (rows[0] * sy, cols[0] * sx)
        assert pixels.shape == ((rows[1] - rows[0]) * sy, (cols[1] - cols[0]) * sx)
        top, left = ((sy + 1) // 2 if rows[0] else 0), ((sx + 1) // 2 if cols[0] else 0)
        bottom = pixels.shape[0] - ((sy + 1) // 2 if rows[1] < 64 else 0)
        right = pixels.shape[1] - ((sx + 1) // 2 if cols[1] < 48 else 0)
        assert torch.equal(pixels[top:bottom, left:right],
                           whole[y0 + top:y0 + bottom, x0 + left:x0 + right])


def test_window_is_clipped_to_the_frame():
    logits = torch.zeros((32, 32))
    pixels, y0, x0 = upsample_window(logits, (0, 32), (16, 32), (4, 4), (100, 120))
    assert (y0, x0) == (0, 64) and pixels.shape == (100, 56)


def test_counts_of_a_blob_from_its_window_equal_the_whole_frames():
    """A mask's counts at the three thresholds from its window alone (the generator's rule)."""
    yy, xx = torch.meshgrid(torch.arange(128.0), torch.arange(128.0), indexing="ij")
    logits = 6.0 - ((yy - 70) ** 2 + (xx - 30) ** 2) / 20.0  # a disc, far below -1 elsewhere
    whole = bilinear(logits[None, None], (512, 512))[0, 0]
    maybe = logits > -1.0 - 1e-3
    pixels, y0, x0 = upsample_window(logits, window(amg.any_along(maybe, 1).numpy()),
                                     window(amg.any_along(maybe, 0).numpy()), (4, 4), (512, 512))
    assert pixels.numel() < whole.numel() / 4
    for thr in (1.0, 0.0, -1.0):
        assert int((pixels > thr).sum()) == int((whole > thr).sum()) > 0
    inside = whole > 0
    assert torch.equal(inside[y0:y0 + pixels.shape[0], x0:x0 + pixels.shape[1]], pixels > 0)


def test_this_torch_reproduces_whole_frames_in_windows():
    """The kernel check passes on the pinned CPU torch; else the generator silently upsamples whole frames."""
    assert windows_are_exact((128, 128), (4, 4), "cpu", torch.float32)
    assert windows_are_exact((16, 16), (4, 4), "cpu", torch.float32)
    assert windows_are_exact((32, 16), (2, 8), "cpu", torch.float32)
    # 1/3 is not a float: a window's source positions round unlike the whole frame's
    assert not windows_are_exact((16, 16), (3, 4), "cpu", torch.float32)


def test_adapters_give_integer_factors_only_for_one_exact_resize():
    sam, sam2 = object.__new__(SamAdapter), object.__new__(Sam2Adapter)
    assert sam.upsample_factors(EmbeddingFrame((64, 64), (64, 64), 64), (16, 16)) == (4, 4)
    assert sam.upsample_factors(EmbeddingFrame((45, 70), (41, 64), 64), (16, 16)) is None  # second resize
    assert sam.upsample_factors(EmbeddingFrame((41, 64), (41, 64), 64), (16, 16)) == (4, 4)  # crop only
    assert sam2.upsample_factors(EmbeddingFrame((64, 32), (64, 64), 64), (16, 16)) == (4, 2)
    assert sam2.upsample_factors(EmbeddingFrame((50, 50), (64, 64), 64), (13, 11)) is None
    assert integer_factors((16, 16), (64, 48)) == (4, 3) and integer_factors((16, 16), (64, 50)) is None


@pytest.mark.parametrize("preset,extra,crop", [
    ("dense", {}, None),
    ("alps-paper", {"points_per_side": 12}, None),
    ("alps-paper", {"points_per_side": 8, "crop_n_layers": 1}, None),
    ("dense", {}, (480, 400)),  # a second resize: whole frames
    ("dense", {}, (512, 400)),  # resized = original, padded on the right: windows clipped to the frame
])
def test_windows_never_change_the_toy_sam_masks(toy_sam_dir, scenes_dir, one_torch_thread, preset, extra, crop):
    from transformers import SamModel

    model = SamModel.from_pretrained(toy_sam_dir).eval()
    cfg = MaskGeneratorConfig(preset=preset, pred_iou_thresh=0.5, stability_score_thresh=0.8, **extra)
    gen = MaskGenerator(model, load_sam_image_processor(str(toy_sam_dir)), cfg)
    assert gen.windowed  # on CPU by default
    image = np.asarray(Image.open(sorted((scenes_dir / "images").glob("*.png"))[1]).convert("RGB"))
    if crop:
        image = np.ascontiguousarray(image[:crop[0], :crop[1]])
    out, counts = {}, {}
    for flag in (False, True):
        gen.windowed = flag
        gen.counts.clear()
        out[flag] = gen.generate([image])[0].masks
        counts[flag] = dict(gen.counts)
    assert len(out[True]) == len(out[False]) >= 5
    for field in ("masks", "boxes", "iou_scores", "stability", "areas", "points"):
        assert torch.equal(getattr(out[True], field), getattr(out[False], field)), field
    assert counts[False].get("masks_windowed", 0) == 0
    if crop and crop[0] != 512:
        assert counts[True].get("masks_windowed", 0) == 0
    else:  # every upsampled survivor of the whole image went through a window
        assert counts[True]["masks_windowed"] >= 5
