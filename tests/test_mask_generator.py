"""The mask generator's filters (predicted IoU, stability, area gate, min_area, padding) and NMS, on
hand-designed low-resolution logits fed through a tiny SamModel's generator in place of its decoder,
compared with upsampling everything first (SamImageProcessorPil.post_process_masks) and filtering."""

import numpy as np
import pytest
import torch

from alps_hf.errors import ConfigError
from alps_hf.sam import amg
from alps_hf.sam.generator import EmbeddingFrame, MaskGenerator, MaskGeneratorConfig
from sam_fixtures import TINY_INPUT, tiny_sam_model, tiny_sam_processor

H, W = 64, 96  # resized to 85 x 128 in the 128 x 128 frame; low-res logits 32 x 32, valid rows 0..21
LOW = TINY_INPUT // 4
BIG = 100.0


def block(rows, cols, inside=BIG, outside=-BIG) -> torch.Tensor:
    x = torch.full((LOW, LOW), outside)
    x[rows[0]:rows[1], cols[0]:cols[1]] = inside
    return x


# name: (low-res logits, predicted IoU); the IoU value also identifies the mask in the output.
DESIGN = {
    "A": (block((2, 8), (2, 10)), 0.95),
    "A_dup": (block((2, 8), (2, 10)), 0.90),  # same mask, lower score: removed by NMS
    "low_iou": (block((10, 15), (20, 29)), 0.50),  # below pred_iou_thresh
    "unstable": (block((10, 15), (12, 19), 0.3, -0.3), 0.97),  # stability 0
    "huge": (block((0, 22), (0, 32)), 0.99),  # the whole image: over the area gate
    "tiny": (block((17, 19), (27, 29)), 0.93),  # small
    "padding": (block((24, 32), (0, 32)), 0.96),  # only in the padding below the image: area 0
    "F": (block((15, 21), (2, 7)), 0.92),
    "empty1": (block((0, 0), (0, 0)), 0.89),
    "empty2": (block((0, 0), (0, 0)), 0.91),
    "empty3": (block((0, 0), (0, 0)), 0.94),
    "soft": (block((3, 9), (14, 20), 3.0, -3.0), 0.98),  # sharp at low res, stability ~0.8 at full res
}
NAMES = list(DESIGN)
LOGITS = torch.stack([DESIGN[n][0] for n in NAMES])
IOUS = torch.tensor([DESIGN[n][1] for n in NAMES])


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Tiny models run fastest on one thread; two threads on a busy 2-core machine spin far slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def model():
    return tiny_sam_model()


def designed_generator(model, **cfg) -> tuple[MaskGenerator, list]:
    """A generator whose decoder returns DESIGN (2 x 2 grid = 4 prompts x 3 masks = 12 masks)."""
    config = MaskGeneratorConfig(points_per_side=2, points_per_batch=4, **cfg)
    gen = MaskGenerator(model, tiny_sam_processor(), config)
    calls = []

    def fake_decode(embedding, points):
        calls.append(points.clone())
        return LOGITS.clone(), IOUS.clone()

    gen._decode = fake_decode
    return gen, calls


def kept_names(masks) -> list[str]:
    by_iou = {round(v, 4): n for n, (_, v) in DESIGN.items()}
    return [by_iou[round(float(v), 4)] for v in masks.iou_scores]


def full_resolution_reference():
    """Every designed mask upsampled the way SamProcessor does it, with exact stats."""
    proc = tiny_sam_processor()
    full = proc.post_process_masks([LOGITS[:, None]], [(H, W)], [(85, 128)], binarize=False)[0][:, 0]
    return full, amg.stability_score(full, 0.0, 1.0), (full > 0).sum(dim=(1, 2))


def image():
    return np.random.default_rng(0).integers(0, 255, (H, W, 3), dtype=np.uint8)


def run(model, **cfg):
    gen, calls = designed_generator(model, **cfg)
    out = gen.generate([image()])[0]
    return out, calls, gen


def test_prompts_are_grid_points_in_the_input_frame(model):
    out, calls, _ = run(model)
    assert out.frame.original == (H, W) and out.frame.resized == (85, 128) and out.frame.padded == TINY_INPUT
    assert len(calls) == 1
    torch.testing.assert_close(calls[0], torch.tensor([[32.0, 21.25], [96.0, 21.25], [32.0, 63.75], [96.0, 63.75]]))
    # each mask remembers its prompt, in original image pixels: mask k came from point k // 3
    names = kept_names(out.masks)
    grid = amg.build_point_grid(2) * np.array([W, H])
    for name, point in zip(names, out.masks.points.tolist(), strict=True):
        np.testing.assert_allclose(point, grid[NAMES.index(name) // 3], atol=1e-4)


def test_default_filters_keep_the_designed_survivors(model):
    out, _, gen = run(model)  # pred_iou 0.88, stability 0.95, max_area 0.3, min_area 0, NMS 0.7
    assert kept_names(out.masks) == ["A", "tiny", "F"]  # sorted by score after NMS
    full, stab, area = full_resolution_reference()
    for k, name in enumerate(kept_names(out.masks)):
        i = NAMES.index(name)
        assert torch.equal(out.masks.masks[k], full[i] > 0), name  # same pixels as upsample-everything
        assert int(out.masks.areas[k]) == int(area[i])
        assert float(out.masks.stability[k]) == pytest.approx(float(stab[i]))
    assert torch.equal(out.masks.boxes, amg.masks_to_boxes(out.masks.masks))
    # only masks passing the low-resolution pre-filter were upsampled (not "huge", "unstable", ...)
    assert gen.counts["masks_decoded"] == 12
    # A, A_dup, tiny, F, soft (dropped at full resolution), and unstable: about 300 px, too small for the
    # low-res stability to be trusted, so only the exact check drops it
    assert gen.counts["masks_upsampled"] == 6
    assert out.embedding.shape == (32, 8, 8)


def test_reference_agrees_on_the_survivors(model):
    """Upsample all, filter at full resolution, brute-force NMS: the same masks as the fast path."""
    full, stab, area = full_resolution_reference()
    keep = (IOUS > 0.88) & (stab >= 0.95) & (area > 0) & (area.float() / (H * W) <= 0.3)
    idx = [i for i in torch.nonzero(keep).flatten().tolist()]
    idx.sort(key=lambda i: -float(IOUS[i]))
    kept: list[int] = []
    boxes = amg.masks_to_boxes(full > 0)
    for i in idx:
        if all(float(amg.box_iou(boxes[i:i + 1], boxes[j:j + 1])) <= 0.7 for j in kept):
            kept.append(i)
    assert [NAMES[i] for i in kept] == ["A", "tiny", "F"]


def test_each_filter_switches_its_mask(model):
    assert kept_names(run(model, pred_iou_thresh=0.0)[0].masks) == ["A", "tiny", "F", "low_iou"]
    assert kept_names(run(model, pred_iou_thresh=0.925)[0].masks) == ["A", "tiny"]
    assert kept_names(run(model, stability_score_thresh=0.0)[0].masks) == ["soft", "unstable", "A", "tiny", "F"]
    assert kept_names(run(model, max_area_fraction=1.0)[0].masks) == ["huge", "A", "tiny", "F"]
    # NMS off (IoU never above 1): the duplicate stays
    assert kept_names(run(model, box_nms_thresh=1.0)[0].masks) == ["A", "tiny", "F", "A_dup"]
    # the padding-only mask never survives, whatever the thresholds
    loose = run(model, pred_iou_thresh=0.0, stability_score_thresh=0.0, max_area_fraction=1.0, box_nms_thresh=1.0)
    assert "padding" not in kept_names(loose[0].masks)
    assert sorted(kept_names(loose[0].masks)) == sorted(["A", "A_dup", "low_iou", "unstable", "huge", "tiny", "F", "soft"])


def test_thresholds_are_exact_at_full_resolution(model):
    """Thresholds set to a mask's exact full-resolution value keep it; a hair above / below drops it,
    even though the low-resolution pre-filter has slack."""
    _, stab, area = full_resolution_reference()
    tiny, huge, a = NAMES.index("tiny"), NAMES.index("huge"), NAMES.index("A")
    n_tiny = int(area[tiny])
    assert 4 < n_tiny < 60
    assert "tiny" in kept_names(run(model, min_area=n_tiny)[0].masks)
    assert "tiny" not in kept_names(run(model, min_area=n_tiny + 1)[0].masks)
    frac = float(area[a]) / (H * W)
    assert "A" in kept_names(run(model, max_area_fraction=frac)[0].masks)
    assert "A" not in kept_names(run(model, max_area_fraction=frac - 1e-6)[0].masks)
    frac_huge = float(area[huge]) / (H * W)
    assert frac_huge > 0.95
    assert "huge" in kept_names(run(model, max_area_fraction=frac_huge)[0].masks)
    assert "huge" not in kept_names(run(model, max_area_fraction=frac_huge - 1e-6)[0].masks)
    soft = NAMES.index("soft")
    s = float(stab[soft])
    assert 0.7 < s < 0.9
    assert "soft" in kept_names(run(model, stability_score_thresh=s)[0].masks)
    assert "soft" not in kept_names(run(model, stability_score_thresh=s + 1e-6)[0].masks)


def test_crop_layers_give_masks_in_image_coordinates(model):
    """Real tiny random SAM with one crop layer: masks are image-sized and consistent with their stats."""
    cfg = MaskGeneratorConfig(points_per_side=4, pred_iou_thresh=0.0, stability_score_thresh=0.0,
                              max_area_fraction=1.0, crop_n_layers=1, crop_n_points_downscale_factor=2)
    gen = MaskGenerator(model, tiny_sam_processor(), cfg)
    img = np.random.default_rng(2).integers(0, 255, (40, 70, 3), dtype=np.uint8)
    out = gen.generate([img])[0]
    assert gen.counts["encoder_images"] == 5  # the image + 4 crops
    assert gen.counts["decoder_prompts"] == 16 + 4 * 4
    m = out.masks
    assert len(m) >= 1 and m.masks.shape[1:] == (40, 70)
    assert torch.equal(m.boxes, amg.masks_to_boxes(m.masks))
    assert torch.equal(m.areas, m.masks.sum(dim=(1, 2)))
    assert bool((m.areas > 0).all())


def test_batch_of_images_of_different_sizes(model):
    cfg = MaskGeneratorConfig(points_per_side=3, pred_iou_thresh=0.0, stability_score_thresh=0.0,
                              max_area_fraction=1.0)
    gen = MaskGenerator(model, tiny_sam_processor(), cfg)
    rng = np.random.default_rng(4)
    imgs = [rng.integers(0, 255, s, dtype=np.uint8) for s in [(30, 50, 3), (50, 30, 3), (8, 8, 3)]]
    outs = gen.generate(imgs)
    assert gen.counts["encoder_images"] == 3
    for img, out in zip(imgs, outs, strict=True):
        assert out.masks.masks.shape[1:] == img.shape[:2]
        assert out.frame.original == img.shape[:2]
        # one image alone gives the same masks as within the batch
        alone = MaskGenerator(gen.model, gen.processor, cfg).generate([img])[0]
        assert torch.equal(alone.masks.masks, out.masks.masks)


@pytest.mark.parametrize("shape", [(3, 8, 3), (1, 1, 3), (3, 3, 3), (8, 3, 3), (3, 40, 3)])
def test_images_with_a_side_of_1_or_3_pixels_are_not_taken_for_channels_first(model, shape):
    cfg = MaskGeneratorConfig(points_per_side=2, pred_iou_thresh=0.0, stability_score_thresh=0.0,
                              max_area_fraction=1.0)
    gen = MaskGenerator(model, tiny_sam_processor(), cfg)
    img = np.random.default_rng(0).integers(0, 255, shape, dtype=np.uint8)
    out = gen.generate([img])[0]
    h, w = shape[:2]
    assert out.frame.original == (h, w)
    scale = TINY_INPUT / max(h, w)
    assert out.frame.resized == (int(h * scale + 0.5), int(w * scale + 0.5))
    assert out.masks.masks.shape[1:] == (h, w)


@pytest.mark.parametrize("chunk", [1, 2, 5])
def test_upsample_chunk_never_changes_the_masks(model, chunk):
    auto, _, _ = run(model, stability_score_thresh=0.5)  # 0 = auto: all 12 at once for a 64 x 96 image
    out, _, gen = run(model, stability_score_thresh=0.5, upsample_chunk=chunk)
    assert gen.counts["masks_upsampled"] >= 5 and len(out.masks) == len(auto.masks) >= 3
    for field in ("masks", "boxes", "iou_scores", "stability", "areas", "points"):
        assert torch.equal(getattr(out.masks, field), getattr(auto.masks, field)), field


def test_auto_upsample_chunk_fits_the_cpu_pixel_budget(model):
    from alps_hf.sam.generator import EmbeddingFrame

    gen, _ = designed_generator(model)
    assert gen.config.upsample_chunk == 0
    assert [gen._upsample_chunk(EmbeddingFrame((s, s), (s, s), s)) for s in (64, 512, 724, 1024, 4096)] == [
        128, 2, 1, 1, 1]
    assert designed_generator(model, upsample_chunk=3)[0]._upsample_chunk(EmbeddingFrame((64, 64), (64, 64), 64)) == 3
    with pytest.raises(ConfigError, match="--upsample-chunk -1 is negative"):
        MaskGeneratorConfig(upsample_chunk=-1)


def test_auto_prompt_batch_fits_the_cpu_budget(model):
    from alps_hf.sam.families import ImageEncoding

    gen = MaskGenerator(model, tiny_sam_processor(), MaskGeneratorConfig())
    assert gen.config.points_per_batch == 0
    sizes = {(32, 8, 8): 64, (64, 32, 32): 8, (256, 64, 64): 2, (256, 128, 128): 2}  # tiny, toy, ViT-B, beyond
    for shape, expected in sizes.items():
        assert gen.prompt_batch(ImageEncoding(torch.zeros(shape))) == expected, shape
    explicit = MaskGenerator(model, tiny_sam_processor(), MaskGeneratorConfig(points_per_batch=5))
    assert explicit.prompt_batch(ImageEncoding(torch.zeros((256, 64, 64)))) == 5
    with pytest.raises(ConfigError, match="--points-per-batch -2 is negative"):
        MaskGeneratorConfig(points_per_batch=-2)


def test_stability_prefilter_spares_only_small_masks(model):
    gen, _ = designed_generator(model)  # stability 0.95, slack 0.15: low-res stability below 0.8 is dropped
    frame = EmbeddingFrame((H, W), (85, 128), TINY_INPUT)  # 8.7 image pixels per valid low-res pixel
    big_soft = block((0, 12), (0, 12), 0.3, -0.3)  # 144 low-res px (~1250 px), stability 0 at low res
    small_soft = block((2, 6), (2, 8), 0.3, -0.3)  # 24 low-res px (~210 px)
    big_sharp = block((0, 12), (0, 12))
    keep = gen._lowres_filter(torch.stack([big_soft, small_soft, big_sharp]), torch.full((3,), 0.99), frame, 1.0)
    assert keep.tolist() == [False, True, True]


def test_lowres_filter_checks_pixels_of_iou_survivors_only(model):
    gen, _ = designed_generator(model)
    frame = EmbeddingFrame((H, W), (85, 128), TINY_INPUT)
    big_soft, big_sharp, empty = block((0, 12), (0, 12), 0.3, -0.3), block((0, 12), (0, 12)), torch.full((32, 32), -5.0)
    logits = torch.stack([big_sharp, big_sharp, big_soft, empty, big_sharp])
    iou = torch.tensor([0.99, 0.2, 0.99, 0.99, 0.99])  # row 1 fails predicted IoU alone
    keep = gen._lowres_filter(logits, iou, frame, 1.0)
    assert keep.tolist() == [True, False, False, False, True]
    # each row's verdict is the one it gets alone: selecting IoU survivors first changes no decision
    alone = [bool(gen._lowres_filter(logits[i:i + 1], iou[i:i + 1], frame, 1.0)) for i in range(5)]
    assert alone == keep.tolist()
    assert not gen._lowres_filter(logits, torch.zeros(5), frame, 1.0).any()
