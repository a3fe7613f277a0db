"""Every SAM family of transformers on the one fast path: tiny random SAM, SAM-HQ, SAM 2, EdgeTAM (needs
timm) and SAM 3 tracker models built from configs. Family detection and its errors, preprocessing from the
processor config without torchvision, each family's frame, features pooled against a naive per-mask loop
in that frame, and the fast path against upsample-everything-then-filter."""

import contextlib
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from alps_hf.errors import ConfigError
from alps_hf.sam import amg
from alps_hf.sam.families import (
    FAMILIES,
    SquarePreprocessor,
    family_of_model_type,
    read_family,
    read_processor_config,
)
from alps_hf.sam.features import mask_features
from alps_hf.sam.generator import MaskGenerator, MaskGeneratorConfig
from alps_hf.sam.masks import MaskSet
from label_helpers import TINY, check_dataset, label, png, rows
from sam_family_fixtures import (
    FAMILY_NAMES,
    input_size,
    processor_dict,
    save_tiny_family,
    skip_without_requirements,
    tiny_model,
    tiny_processor,
)
from sam_fixtures import blocks_image, brute_force_nms

pytestmark = pytest.mark.usefixtures("one_torch_thread")
LOOSE = {"points_per_side": 4, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0, "max_area_fraction": 1.0,
         "box_nms_thresh": 1.0}


@pytest.fixture(scope="module", params=FAMILY_NAMES)
def family(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def generator(family) -> MaskGenerator:
    return MaskGenerator(tiny_model(family), tiny_processor(family), MaskGeneratorConfig(**LOOSE))


def test_every_mask_generation_model_type_of_transformers_has_a_family():
    from transformers.models.auto.modeling_auto import MODEL_FOR_MASK_GENERATION_MAPPING_NAMES

    for model_type, cls in MODEL_FOR_MASK_GENERATION_MAPPING_NAMES.items():
        assert family_of_model_type(model_type, "x").model_class == cls


def test_not_sam_and_sam3_without_tracker_are_refused_naming_what_works():
    with pytest.raises(ConfigError, match="'segformer' model, not SAM") as err:
        family_of_model_type("segformer", "nvidia/mit-b0")
    for fam in FAMILIES.values():
        assert fam.title in str(err.value) and fam.example in str(err.value)
    with pytest.raises(ConfigError, match="without the tracker head") as err:
        family_of_model_type("sam3", "facebook/sam3-detector")
    assert "Sam3TrackerModel" in str(err.value) and "sam3_tracker" in str(err.value)


def test_edgetam_without_timm_says_what_to_install(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "timm" else real(name, *a))
    with pytest.raises(ConfigError, match=r"pip install 'alps_hf\[edgetam\]'"):
        FAMILIES["edgetam"].check_requirements()


def test_family_defaults_come_from_the_upstream_generators(family):
    cfg = MaskGenerator(tiny_model(family), tiny_processor(family)).config
    assert cfg.pred_iou_thresh == (0.88 if family in ("sam", "sam_hq") else 0.8)
    assert (cfg.stability_score_thresh, cfg.stability_score_offset, cfg.box_nms_thresh) == (0.95, 1.0, 0.7)
    explicit = MaskGenerator(tiny_model(family), tiny_processor(family), MaskGeneratorConfig(pred_iou_thresh=0.5))
    assert explicit.config.pred_iou_thresh == 0.5


def test_saved_checkpoint_is_detected_and_reloaded(family, tmp_path):
    folder = save_tiny_family(family, tmp_path / family)
    fam, _ = read_family(str(folder))
    assert fam.name == family
    gen = MaskGenerator.from_pretrained(str(folder))
    assert gen.family.name == family and type(gen.model).__name__ == fam.model_class
    if fam.frame == "square":
        assert read_processor_config(str(folder)) == processor_dict(family)
        assert tuple(gen.processor.size) == (input_size(family),) * 2


def test_square_preprocessing_is_the_processor_formula_from_its_config():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (128, 128, 3), dtype=np.uint8)  # already the input size: no resize
    for family in ("sam2", "sam3_tracker"):
        data = {**processor_dict(family), "size": {"height": 128, "width": 128}}
        got = SquarePreprocessor.from_dict(data, family)([image])[0].double()
        mean, std = torch.tensor(data["image_mean"]).double(), torch.tensor(data["image_std"]).double()
        want = (torch.from_numpy(image).permute(2, 0, 1).double() / 255 - mean[:, None, None]) / std[:, None, None]
        assert float((got - want).abs().max()) < 1e-5
    # sizes, mean and std are read, not assumed; missing keys take the transformers class defaults
    pre = SquarePreprocessor.from_dict({"size": {"height": 64, "width": 64}, "image_mean": [0.1, 0.2, 0.3]})
    assert pre([image]).shape == (1, 3, 64, 64) and pre.image_mean == (0.1, 0.2, 0.3)
    assert pre.image_std == (0.229, 0.224, 0.225)
    assert SquarePreprocessor.from_dict({}, "sam3_tracker").size == (1008, 1008)


def test_square_resize_is_antialiased_bilinear_like_pil():
    """Downscaling and upscaling, non-uniform: within one grey level of PIL's bilinear resize."""
    rng = np.random.default_rng(1)
    pre = SquarePreprocessor.from_dict({"size": {"height": 64, "width": 64}, "do_normalize": False,
                                        "do_rescale": False})
    for h, w in ((37, 150), (200, 90)):
        image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        got = pre([image])[0].permute(1, 2, 0).numpy()
        want = np.asarray(Image.fromarray(image).resize((64, 64), Image.BILINEAR)).astype(np.float32)
        assert np.abs(got - want).max() <= 1.0


def test_generator_frame_embedding_and_masks_per_family(generator, family):
    image = blocks_image(3, 48, 72)
    out = generator.generate([image])[0]
    side = input_size(family)
    if FAMILIES[family].frame == "square":
        assert out.frame.resized == (side, side) and out.frame.padded == side  # non-uniform scale, no padding
    else:
        assert out.frame.resized == (round(48 * side / 72), side) and out.frame.padded == side
    assert out.frame.original == (48, 72)
    assert out.embedding.shape == (32, 8, 8) and out.embedding.dtype == torch.float32
    assert len(out.masks) > 0 and out.masks.masks.shape[1:] == (48, 72)
    assert generator.counts["encoder_images"] >= 1


def naive_square_features(masks: np.ndarray, embedding: np.ndarray, frame) -> np.ndarray:
    """Per mask, per pixel, per cell: pixel (y, x) of an h x w image covers the rectangle
    [x * S / w, (x + 1) * S / w) x [y * S / h, (y + 1) * S / h) of the S x S input (padded frames: the
    resized part, the padding covered by nothing); cell (i, j) covers [j * P, (j + 1) * P) x [i * P, ...)."""
    channels, grid, _ = embedding.shape
    h, w = masks.shape[1:]
    sy, sx = frame.resized[0] / h, frame.resized[1] / w
    cell = frame.padded / grid
    out = np.zeros((len(masks), channels))
    for n, mask in enumerate(masks):
        weights = np.zeros((grid, grid))
        for y, x in zip(*np.nonzero(mask), strict=True):
            for i in range(grid):
                oy = min((y + 1) * sy, (i + 1) * cell) - max(y * sy, i * cell)
                for j in range(grid):
                    ox = min((x + 1) * sx, (j + 1) * cell) - max(x * sx, j * cell)
                    if oy > 0 and ox > 0:
                        weights[i, j] += ox * oy
        if weights.sum() > 0:
            out[n] = (embedding * weights[None]).sum(axis=(1, 2)) / weights.sum()
    return out


@pytest.mark.parametrize(("height", "width"), [(30, 30), (21, 50), (45, 13)], ids=["square", "wide", "tall"])
def test_pooled_features_equal_naive_loop_in_each_family_frame(generator, height, width):
    rng = np.random.default_rng(height * 7 + width)
    image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    encodings, frames = generator.embed([image])
    emb = encodings[0].embedding.float()
    masks = np.zeros((4, height, width), dtype=bool)
    masks[0, : height // 2, : width // 3] = True
    masks[1] = rng.random((height, width)) < 0.2
    masks[2, height - 1, width - 1] = True  # the last pixel: next to the padding in SAM's frame
    got = mask_features(torch.as_tensor(masks), emb, frames[0]).numpy()
    np.testing.assert_allclose(got, naive_square_features(masks, emb.numpy(), frames[0]), rtol=1e-4, atol=1e-5)
    assert not got[3].any()  # an empty mask gets zeros


def reference_masks(generator: MaskGenerator, image: np.ndarray, cfg: MaskGeneratorConfig,
                    sam2_cleanup=None) -> torch.Tensor:
    """Upsample every mask to full resolution the family's way, then filter and NMS (segment-anything's order).

    `sam2_cleanup(logits, area, threshold)`, when given, cleans every low-res logit map first (SAM 2's
    predictor with max_hole_area = max_sprinkle_area = min_mask_region_area).
    """
    h, w = image.shape[:2]
    encodings, frames = generator.embed([image])
    frame = frames[0]
    points = torch.as_tensor(amg.build_point_grid(cfg.points_per_side), dtype=torch.float32) * torch.tensor([w, h])
    points = points * torch.tensor([frame.resized[1] / w, frame.resized[0] / h])
    with torch.inference_mode():
        logits, iou = generator.adapter.decode(encodings[0], points)
    if sam2_cleanup is not None:
        logits = torch.as_tensor(sam2_cleanup(logits.numpy(), cfg.min_mask_region_area, cfg.mask_threshold))
    if generator.family.frame == "square":  # SAM2Transforms.postprocess_masks: straight to the image size
        full = F.interpolate(logits[:, None], (h, w), mode="bilinear", align_corners=False)[:, 0]
    else:  # SamProcessor.post_process_masks: to the padded input, crop, to the image size
        full = F.interpolate(logits[:, None], (frame.padded,) * 2, mode="bilinear", align_corners=False)
        full = F.interpolate(full[..., : frame.resized[0], : frame.resized[1]], (h, w), mode="bilinear",
                             align_corners=False)[:, 0]
    stab = amg.stability_score(full, cfg.mask_threshold, cfg.stability_score_offset)
    binary = full > cfg.mask_threshold
    area = binary.sum(dim=(1, 2))
    keep = (stab >= cfg.stability_score_thresh) & (area > 0) & (area.float() / (h * w) <= cfg.max_area_fraction)
    if cfg.pred_iou_thresh > 0:  # segment-anything's "0 disables"
        keep &= iou > cfg.pred_iou_thresh
    masks, scores = binary[keep], iou[keep]
    return masks[brute_force_nms(amg.masks_to_boxes(masks), scores, cfg.box_nms_thresh)]


def test_fast_path_equals_upsampling_everything(family):
    """Same masks, bit for bit, as upsampling every logit map first: the family's own upsampling is used.

    A random tiny model's logits are ~1e-5 (so stability is 0 everywhere and every box overlaps): the
    stability filter and NMS are left to the SAM tests on designed logits and on the toy SAM.
    """
    cfg = MaskGeneratorConfig(points_per_side=6, points_per_batch=16, pred_iou_thresh=0.0, stability_score_thresh=0.0,
                              max_area_fraction=1.0, box_nms_thresh=1.0)
    gen = MaskGenerator(tiny_model(family, seed=3), tiny_processor(family), cfg)
    image = blocks_image(5, 40, 70)
    fast = gen.generate([image])[0].masks.masks
    ref = reference_masks(gen, image, gen.config)
    assert len(ref) == 6 * 6 * 3
    assert sorted(m.numpy().tobytes() for m in fast) == sorted(m.numpy().tobytes() for m in ref)


@pytest.mark.parametrize("family", ["sam2", "edgetam"])
def test_sam2_type_families_clean_low_res_logits_as_sam2_does(family):
    """With --min-mask-region-area, SAM 2 and EdgeTAM fill holes / sprinkles in each mask's low-res logits
    (SAM2Transforms.postprocess_masks) before filtering, then run segment-anything's cleanup after NMS."""
    from alps_hf.sam.cleanup import postprocess_small_regions
    from test_cleanup import naive_sam2_cleanup

    skip_without_requirements(family)
    cfg = MaskGeneratorConfig(points_per_side=3, points_per_batch=4, pred_iou_thresh=0.0, stability_score_thresh=0.0,
                              max_area_fraction=1.0, box_nms_thresh=1.0, min_mask_region_area=3)
    gen = MaskGenerator(tiny_model(family, seed=3), tiny_processor(family), cfg)
    image = blocks_image(5, 40, 70)
    fast = gen.generate([image])[0].masks
    ref = reference_masks(gen, image, gen.config, naive_sam2_cleanup)
    plain = reference_masks(gen, image, gen.config)
    ref_set = MaskSet(ref, amg.masks_to_boxes(ref), torch.ones(len(ref)), torch.ones(len(ref)),
                      ref.sum(dim=(1, 2)), torch.zeros(len(ref), 2))
    expected = postprocess_small_regions(ref_set, 3, 1.0).masks
    key = sorted(m.numpy().tobytes() for m in fast.masks)
    assert key == sorted(m.numpy().tobytes() for m in expected)
    assert key != sorted(m.numpy().tobytes() for m in postprocess_small_regions(
        MaskSet(plain, amg.masks_to_boxes(plain), torch.ones(len(plain)), torch.ones(len(plain)),
                plain.sum(dim=(1, 2)), torch.zeros(len(plain), 2)), 3, 1.0).masks)  # the low-res fill mattered


def test_sam_type_families_skip_the_low_res_fill(monkeypatch):
    import alps_hf.sam.generator as generator_module

    calls = []
    monkeypatch.setattr(generator_module, "fill_holes_and_sprinkles", lambda *a: calls.append(a) or a[0])
    for family, expected in (("sam", 0), ("sam_hq", 0), ("sam3_tracker", 0), ("sam2", 1)):
        calls.clear()
        gen = MaskGenerator(tiny_model(family), tiny_processor(family), MaskGeneratorConfig(
            **{**LOOSE, "points_per_side": 2}, min_mask_region_area=5))
        gen.generate([blocks_image(2, 40, 56)])
        assert (len(calls) > 0) == bool(expected), family


def test_cleanup_runs_for_every_family(family):
    cfg = MaskGeneratorConfig(**LOOSE, min_mask_region_area=20)
    gen = MaskGenerator(tiny_model(family), tiny_processor(family), cfg)
    out = gen.generate([blocks_image(2, 40, 56)])[0]
    assert gen.timings["cleanup"] > 0 and len(out.masks) > 0


def test_generator_config_json_round_trip_keeps_none_for_the_family():
    """The family default is filled on a copy: the caller's config keeps None (it may serve another family)."""
    cfg = MaskGeneratorConfig()
    MaskGenerator(tiny_model("sam2"), tiny_processor("sam2"), cfg)
    assert cfg.pred_iou_thresh is None
    assert json.loads(json.dumps({"p": cfg.pred_iou_thresh})) == {"p": None}


# ---- end to end: `alps-hf label` and `alps-hf recluster` with each family -------------------------------
@pytest.fixture(scope="module")
def family_dir(family, tmp_path_factory):
    return save_tiny_family(family, tmp_path_factory.mktemp("sam") / family)


@pytest.fixture(scope="module")
def images_dir(tmp_path_factory):
    from sam_fixtures import write_png

    folder = tmp_path_factory.mktemp("images")
    for i, (h, w) in enumerate([(40, 56), (48, 48), (30, 64)]):
        write_png(folder / f"img{i}.png", blocks_image(10 + i, h, w))
    return folder


@pytest.fixture(scope="module")
def labeled(family, family_dir, images_dir, tmp_path_factory):

    out = tmp_path_factory.mktemp("out") / family
    assert label(images_dir, out, family_dir, "--num-clusters", "3", "--preset", "alps-paper", *TINY) == 0
    return out


def test_label_end_to_end_records_the_family(family, labeled):
    from alps_hf.labeling.workdir import WorkDir

    raw = check_dataset(labeled, 3, ["img0.png", "img1.png", "img2.png"])
    sizes = [(40, 56), (48, 48), (30, 64)]
    for row, size in zip(raw, sizes, strict=True):
        assert png(row["label"]).shape == png(row["segments"]).shape == size
        assert len(row["segment_class"]) == int(png(row["segments"]).max()) > 0
    features = list(WorkDir(labeled / "work").iter_features(len(list((labeled / "work" / "pass1").glob("*.done")))))
    assert sum(len(f) for f in features) == sum(len(r["segment_class"]) for r in rows(labeled))
    assert all(f.shape[1] == 32 for f in features)  # the pooled embedding's channels (fpn / output size)
    config = json.loads((labeled / "label_config.json").read_text())
    assert config["sam_family"] == family
    assert config["pred_iou_thresh"] == 0.0  # given explicitly: kept
    assert json.loads((labeled / "cluster_model.json").read_text())["sam_family"] == family
    assert json.loads((labeled / "alps_dataset.json").read_text())["sam_family"] == family
    card = (labeled / "README.md").read_text()
    assert f"| SAM family | {FAMILIES[family].title} (`{family}`) |" in card


def test_recluster_keeps_the_family(family, labeled, tmp_path):
    from alps_hf.cli import main

    new = tmp_path / "k2"
    assert main(["recluster", str(labeled), "--num-clusters", "2", "--output", str(new)]) == 0
    check_dataset(new, 2, [r["source"] for r in rows(labeled)])
    assert json.loads((new / "label_config.json").read_text())["sam_family"] == family
    assert json.loads((new / "cluster_model.json").read_text())["sam_family"] == family
    assert f"(`{family}`)" in (new / "README.md").read_text()


def test_label_takes_the_family_default_when_unset(family_dir, family, images_dir, tmp_path):

    out = tmp_path / "defaults"
    # the random tiny models' masks rarely pass the real thresholds: the run may stop at K-means, after
    # label_config.json was written with the resolved settings
    with contextlib.suppress(SystemExit):
        label(images_dir, out, family_dir, "--num-clusters", "2", "--points-per-side", "2", "--num-workers", "0")
    config = json.loads((out / "label_config.json").read_text())
    assert config["pred_iou_thresh"] == FAMILIES[family].defaults["pred_iou_thresh"]


def test_label_refuses_a_model_of_another_kind_before_loading(tmp_path, images_dir, capsys):
    from transformers import SegformerConfig


    folder = tmp_path / "segformer"
    SegformerConfig(num_encoder_blocks=1).save_pretrained(folder)
    assert label(images_dir, tmp_path / "out", folder) == 2
    err = capsys.readouterr().err
    assert "'segformer' model, not SAM" in err and "SAM 2" in err and "EdgeTAM" in err


def test_clusters_of_one_run_label_new_images_with_a_square_family(tmp_path, images_dir):
    """--clusters checks the centroids against the family's feature size (SAM 2: the FPN width)."""
    folder = save_tiny_family("sam2", tmp_path / "sam2")
    first, second = tmp_path / "first", tmp_path / "second"
    assert label(images_dir, first, folder, "--num-clusters", "2", "--preset", "alps-paper", *TINY) == 0
    assert label(images_dir, second, folder, "--clusters", str(first), "--preset", "alps-paper", *TINY) == 0
    assert [r["segment_class"] for r in rows(second)] == [r["segment_class"] for r in rows(first)]
    assert json.loads((second / "label_config.json").read_text())["sam_family"] == "sam2"
