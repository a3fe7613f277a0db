"""Survivors that NMS surely drops are never upsampled: the bounds that decide it, and the unchanged result.

`MaskGenerator._upsample_in_score_order` skips a candidate when bounds on its full-resolution box, read
off its low-res logits, prove that an already kept mask overlaps it beyond the NMS threshold. Here: the
adapters' bilinear spans against real one-hot probes, the box bounds against upsampled boxes for both
frame kinds, and the toy SAM's masks with and without skipping.
"""

import types

import numpy as np
import pytest
import torch
from PIL import Image

from alps_hf.sam import amg
from alps_hf.sam.families import Sam2Adapter, SamAdapter, bilinear_span
from alps_hf.sam.generator import EmbeddingFrame, MaskGenerator, MaskGeneratorConfig, load_sam_image_processor

# (adapter class, frame, low-res size): SAM's frame with and without the second resize, SAM 2's square frame.
CASES = {
    "sam-square": (SamAdapter, EmbeddingFrame((64, 64), (64, 64), 64), (16, 16)),
    "sam-wide": (SamAdapter, EmbeddingFrame((45, 70), (41, 64), 64), (16, 16)),
    "sam-small": (SamAdapter, EmbeddingFrame((9, 13), (44, 64), 64), (16, 16)),  # upsampled image
    "sam2-tall": (Sam2Adapter, EmbeddingFrame((83, 37), (64, 64), 64), (16, 16)),
    "sam2-odd": (Sam2Adapter, EmbeddingFrame((50, 50), (64, 64), 64), (13, 11)),
}


def adapter(cls):
    return object.__new__(cls)  # upsample and upsample_spans use no model state


@pytest.mark.parametrize("case", list(CASES))
def test_spans_contain_every_real_dependency(case):
    cls, frame, (low_h, low_w) = CASES[case]
    ad = adapter(cls)
    (rlo, rhi), (clo, chi) = ad.upsample_spans(frame, (low_h, low_w))
    assert len(rlo) == frame.original[0] and len(clo) == frame.original[1]
    assert (np.diff(rlo) >= 0).all() and (np.diff(rhi) >= 0).all() and (rlo <= rhi).all()
    # one probe per low-res row (a band of ones) and per column; any output it reaches must list it
    rows = torch.zeros((low_h, 1, low_h, low_w))
    rows[torch.arange(low_h), 0, torch.arange(low_h), :] = 1.0
    cols = torch.zeros((low_w, 1, low_h, low_w))
    cols[torch.arange(low_w), 0, :, torch.arange(low_w)] = 1.0
    reach_rows = ad.upsample(rows, frame)[:, 0].abs().amax(dim=2) > 0  # (probe, output row)
    reach_cols = ad.upsample(cols, frame)[:, 0].abs().amax(dim=1) > 0
    for k, y in zip(*np.nonzero(reach_rows.numpy()), strict=True):
        assert rlo[y] <= k <= rhi[y], (case, "row", y, k)
    for k, x in zip(*np.nonzero(reach_cols.numpy()), strict=True):
        assert clo[x] <= k <= chi[x], (case, "column", x, k)
    # tight: every span is at most 3 wide (2 taps, one more only where rounding could move the floor)
    assert int((rhi - rlo).max()) <= 3 and int((chi - clo).max()) <= 3


def test_bilinear_span_widens_only_near_integer_positions():
    lo, hi = bilinear_span(16, 64)  # positions o / 4 - 0.375: never near an integer
    assert ((hi - lo) <= 1).all()
    lo, hi = bilinear_span(10, 10)  # identity: positions are integers
    assert lo.tolist() == [0] + list(range(0, 9)) and hi.tolist() == [min(i + 1, 9) for i in range(10)]


def smooth_logits(n: int, low: tuple[int, int], seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn((n, 1, low[0] // 4 + 1, low[1] // 4 + 1), generator=gen) * 4 + 1.0
    x = torch.nn.functional.interpolate(x, low, mode="bilinear", align_corners=False)[:, 0]
    x[0] = -5.0  # an empty mask
    x[1] = -5.0
    x[1, low[0] // 2, low[1] // 2] = 0.01  # a sliver: maybe in the mask, surely not much
    return x


@pytest.mark.parametrize("case", list(CASES))
def test_box_bounds_contain_the_true_box(case):
    cls, frame, low = CASES[case]
    gen = types.SimpleNamespace(adapter=adapter(cls), config=MaskGeneratorConfig())
    logits = smooth_logits(40, low, seed=len(case))
    inner, outer, empty = MaskGenerator._box_bounds(gen, logits, frame)
    full = adapter(cls).upsample(logits[:, None], frame)[:, 0] > 0
    nonempty = full.flatten(1).any(1)
    truth = amg.masks_to_boxes(full)
    assert bool(empty[0]) and not bool(nonempty[0])
    assert not (empty & nonempty).any()  # never called empty when it is not
    for i in torch.nonzero(nonempty).flatten().tolist():
        t, o = truth[i], outer[i]
        assert o[0] <= t[0] and o[1] <= t[1] and o[2] >= t[2] and o[3] >= t[3], (case, i, t, o)
        if not torch.isnan(inner[i]).any():
            n = inner[i]
            assert t[0] <= n[0] and t[1] <= n[1] and t[2] >= n[2] and t[3] >= n[3], (case, i, t, n)
    assert (~torch.isnan(inner[:, 0])).sum() >= 10  # most blobs have a sure core: the test bites


def test_surely_suppressed_only_above_the_threshold():
    gen = types.SimpleNamespace(config=MaskGeneratorConfig(box_nms_thresh=0.7))
    kept = torch.tensor([[0.0, 0.0, 100.0, 100.0]])
    inner = torch.tensor([[5.0, 5.0, 95.0, 95.0], [30.0, 30.0, 70.0, 70.0], [5.0, 5.0, 95.0, 95.0],
                          [float("nan")] * 4])
    outer = torch.tensor([[0.0, 0.0, 100.0, 100.0], [0.0, 0.0, 100.0, 100.0], [0.0, 0.0, 130.0, 100.0],
                          [0.0, 0.0, 100.0, 100.0]])
    # bound = inter(kept, inner) / (area(kept) + area(outer) - inter(kept, outer)):
    # 8100 / 10000 = 0.81 > 0.7: suppressed whatever the true box; 1600 / 10000: maybe not;
    # 8100 / 13000 = 0.62: a box reaching x = 130 may overlap by 0.7 or less; unknown inner: never
    assert MaskGenerator._surely_suppressed(gen, kept, inner, outer).tolist() == [True, False, False, False]
    assert MaskGenerator._surely_suppressed(gen, kept[:0], inner, outer).tolist() == [False] * 4


@pytest.mark.parametrize("preset,extra", [("dense", {}), ("alps-paper", {"points_per_side": 12})])
def test_skipping_never_changes_the_toy_sam_masks(toy_sam_dir, scenes_dir, one_torch_thread, preset, extra):
    from transformers import SamModel

    model = SamModel.from_pretrained(toy_sam_dir).eval()
    cfg = MaskGeneratorConfig(preset=preset, pred_iou_thresh=0.5, stability_score_thresh=0.8, **extra)
    gen = MaskGenerator(model, load_sam_image_processor(str(toy_sam_dir)), cfg)
    image = np.asarray(Image.open(sorted((scenes_dir / "images").glob("*.png"))[0]).convert("RGB"))
    out = {}
    for flag in (False, True):
        gen.presuppress = flag
        gen.counts.clear()
        out[flag] = gen.generate([image[:480, :400].copy() if preset == "alps-paper" else image])[0].masks
        counts = dict(gen.counts)
    assert len(out[True]) == len(out[False]) >= 5
    for field in ("masks", "boxes", "iou_scores", "stability", "areas", "points"):
        assert torch.equal(getattr(out[True], field), getattr(out[False], field)), field
    if preset == "dense":  # the stuff masks' duplicates are skipped
        assert counts["masks_presuppressed"] >= 10
