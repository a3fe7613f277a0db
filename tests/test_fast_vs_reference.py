"""The fast mask generator (filter at low resolution, upsample survivors only) against a
straightforward reference (upsample every mask to full resolution first, then filter, as
segment-anything does), on the same model and image."""

import numpy as np
import pytest
import torch
from PIL import Image

from alps_hf.sam import amg
from alps_hf.sam.generator import MaskGenerator, MaskGeneratorConfig, load_sam_image_processor
from sam_fixtures import brute_force_nms


def reference_masks(model, processor, image: np.ndarray, cfg: MaskGeneratorConfig) -> torch.Tensor:
    h, w = image.shape[:2]
    inputs = processor(images=[image], return_tensors="pt")
    rh, rw = (int(v) for v in inputs["reshaped_input_sizes"][0])
    with torch.inference_mode():
        embedding = model.get_image_embeddings(inputs["pixel_values"])
    points = torch.as_tensor(amg.build_point_grid(cfg.points_per_side), dtype=torch.float32) * torch.tensor([w, h])
    masks, scores = [], []
    for start in range(0, len(points), cfg.points_per_batch):
        pts = points[start:start + cfg.points_per_batch] * torch.tensor([rw / w, rh / h])
        with torch.inference_mode():
            out = model(image_embeddings=embedding, input_points=pts[None, :, None, :],
                        input_labels=torch.ones((1, len(pts), 1), dtype=torch.int64), multimask_output=True)
        full = processor.post_process_masks([out.pred_masks[0]], [(h, w)], [(rh, rw)], binarize=False)[0]
        full = full.flatten(0, 1)
        iou = out.iou_scores[0].flatten()
        stab = amg.stability_score(full, cfg.mask_threshold, cfg.stability_score_offset)
        binary = full > cfg.mask_threshold
        area = binary.sum(dim=(1, 2))
        keep = (iou > cfg.pred_iou_thresh) & (stab >= cfg.stability_score_thresh) & (area > 0)
        keep &= area.float() / (h * w) <= cfg.max_area_fraction
        masks.append(binary[keep])
        scores.append(iou[keep])
    masks_t, scores_t = torch.cat(masks), torch.cat(scores)
    keep = brute_force_nms(amg.masks_to_boxes(masks_t), scores_t, cfg.box_nms_thresh)
    return masks_t[keep]


def match_rate(a: torch.Tensor, b: torch.Tensor, thresh: float = 0.95) -> float:
    """Share of masks in a that have a mask in b with IoU >= thresh."""
    if len(a) == 0:
        return 1.0
    af, bf = a.flatten(1).float(), b.flatten(1).float()
    inter = af @ bf.T
    union = af.sum(1)[:, None] + bf.sum(1)[None, :] - inter
    best = (inter / union.clamp_min(1)).amax(dim=1) if len(b) else torch.zeros(len(a))
    return float((best >= thresh).float().mean())


@pytest.mark.slow
@pytest.mark.parametrize("crop", [(0, 512), (40, 470)], ids=["square", "non-square"])
def test_fast_path_matches_reference(toy_sam_dir, scenes_dir, crop):
    from transformers import SamModel

    torch.manual_seed(0)
    model = SamModel.from_pretrained(toy_sam_dir).eval()
    processor = load_sam_image_processor(str(toy_sam_dir))
    image = np.asarray(Image.open(scenes_dir / "images" / "scene_5001.png").convert("RGB"))
    image = np.ascontiguousarray(image[:, crop[0]:crop[1]])
    cfg = MaskGeneratorConfig(points_per_side=12, points_per_batch=48, pred_iou_thresh=0.5,
                              stability_score_thresh=0.8, max_area_fraction=0.3)
    fast = MaskGenerator(model, processor, cfg).generate([image])[0].masks.masks
    ref = reference_masks(model, processor, image, cfg)
    forward, backward = match_rate(ref, fast), match_rate(fast, ref)
    print(f"reference masks {len(ref)}, fast masks {len(fast)}, reference matched {forward:.3f}, "
          f"fast matched {backward:.3f} (IoU >= 0.95)")
    assert len(ref) >= 10, "thresholds must let masks survive for the comparison to mean something"
    assert forward >= 0.99 and backward >= 0.99
