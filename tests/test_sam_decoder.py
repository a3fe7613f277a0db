"""alps_hf's own SAM point decoder (sam/sam_decoder.py) against transformers' SamModel forward.

The decoder shares the first block's image projections across prompts and runs the upscaling as matrix
products; it must give transformers' logits and IoUs to float32 rounding for any decoder shape, and the
generator's masks must not change with it.
"""

import numpy as np
import pytest
import torch
from PIL import Image

from alps_hf.sam import sam_decoder
from alps_hf.sam.families import adapter_for
from alps_hf.sam.generator import MaskGenerator, MaskGeneratorConfig
from sam_family_fixtures import tiny_model, tiny_processor
from sam_fixtures import tiny_sam_config

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def sam_model(seed=0, **decoder):
    from transformers import SamModel

    config = tiny_sam_config()
    for key, value in decoder.items():
        setattr(config.mask_decoder_config, key, value)
    torch.manual_seed(seed)
    model = SamModel(config).eval()
    with torch.no_grad():  # random output layers give logits ~1e-5; scale them to O(10-100) as a trained SAM's
        for mlp in model.mask_decoder.output_hypernetworks_mlps:
            mlp.proj_out.weight.mul_(1e6)
    return model


def assert_same_decoding(model, embedding, points):
    ours_logits, ours_iou = sam_decoder.decode_points(model, embedding, points)
    ref_logits, ref_iou = sam_decoder.transformers_decode(model, embedding, points)
    assert ours_logits.shape == ref_logits.shape and ours_iou.shape == ref_iou.shape
    scale = float(ref_logits.abs().max())
    assert scale > 1.0  # not a vacuous comparison of near-zero logits
    assert float((ours_logits - ref_logits).abs().max()) <= 1e-5 * scale
    assert float((ours_iou - ref_iou).abs().max()) <= 1e-5


@pytest.mark.parametrize("decoder", [
    {},  # the tiny SAM of the other tests: 2 blocks, 2 heads
    {"num_hidden_layers": 1},
    {"num_hidden_layers": 3, "num_attention_heads": 4},
    {"num_multimask_outputs": 2},
    {"attention_downsample_rate": 1},
])
@pytest.mark.parametrize("prompts", [1, 5, 70])
def test_tiny_sam_decoding_equals_transformers(decoder, prompts):
    model = sam_model(**decoder)
    assert sam_decoder.supports(model)
    torch.manual_seed(1)
    embedding = torch.randn(model.config.mask_decoder_config.hidden_size, 8, 8)
    points = torch.rand(prompts, 2) * 128
    assert_same_decoding(model, embedding, points)


def test_upscaling_in_chunks_equals_one_batch(monkeypatch):
    model = sam_model()
    embedding = torch.randn(32, 8, 8)
    points = torch.rand(9, 2) * 128
    whole = sam_decoder.decode_points(model, embedding, points)
    chunk_bytes = 16 * 64 * 4 * 4  # the upscaled embedding of one prompt: 16 pixels per token, 4 channels
    monkeypatch.setattr(sam_decoder, "_UPSCALE_CHUNK_BYTES", 2 * chunk_bytes)  # chunks of 2 prompts
    chunked = sam_decoder.decode_points(model, embedding, points)
    assert torch.equal(whole[0], chunked[0]) and torch.equal(whole[1], chunked[1])


def test_toy_sam_decoding_equals_transformers(toy_sam_dir, scenes_dir):
    gen = MaskGenerator.from_pretrained(str(toy_sam_dir), MaskGeneratorConfig(points_per_side=4))
    image = np.asarray(Image.open(sorted((scenes_dir / "images").iterdir())[0]).convert("RGB"))
    encodings, _ = gen.embed([image])
    assert gen.adapter.own_decoder
    torch.manual_seed(0)
    assert_same_decoding(gen.model, encodings[0].embedding, torch.rand(24, 2) * 512)


def test_generator_masks_unchanged_by_own_decoder(toy_sam_dir, scenes_dir):
    image = np.asarray(Image.open(sorted((scenes_dir / "images").iterdir())[1]).convert("RGB"))
    cfg = MaskGeneratorConfig(points_per_side=12, pred_iou_thresh=0.5, stability_score_thresh=0.8)
    gen = MaskGenerator.from_pretrained(str(toy_sam_dir), cfg)
    ours = gen.generate([image])[0].masks
    gen.adapter.own_decoder = False
    reference = gen.generate([image])[0].masks
    assert len(reference.masks) >= 10
    assert len(ours.masks) == len(reference.masks)
    a, b = ours.masks.flatten(1).float(), reference.masks.flatten(1).float()
    inter = a @ b.T
    iou = inter / (a.sum(1)[:, None] + b.sum(1)[None] - inter)
    assert float(iou.max(1).values.min()) >= 0.99  # float rounding may flip a pixel at a logit of 0, no more


@pytest.mark.parametrize("family", ["sam_hq", "sam2"])
def test_other_families_keep_their_own_forward(family):
    model = tiny_model(family)
    assert not sam_decoder.supports(model)
    assert not adapter_for(model, tiny_processor(family)).own_decoder


def test_decoder_benchmark_runs_and_reports_agreement(tmp_path, toy_sam_dir):
    import json
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "scripts" / "benchmark_sam_decoder.py"
    out = tmp_path / "d.json"
    subprocess.run([sys.executable, str(script), "--decoders", "toy", "--batches", "4", "--threads", "1",
                    "--prompts", "8", "--repeats", "1", "--json", str(out)], check=True, capture_output=True)
    rows = json.loads(out.read_text())["rows"]
    assert [(r["decoder"], r["batch"], r["threads"]) for r in rows] == [("toy", 4, 1)]
    assert rows[0]["max_abs_logit_diff"] <= 1e-5 * rows[0]["max_abs_logit"]
    assert rows[0]["ms_per_prompt_alps"] > 0 and rows[0]["ms_per_prompt_transformers"] > 0


def test_bfloat16_decoding_stays_within_bfloat16_rounding_of_float32(toy_sam_dir):
    from transformers import SamModel

    model = SamModel.from_pretrained(toy_sam_dir).eval()
    torch.manual_seed(3)
    embedding, points = torch.randn(64, 32, 32), torch.rand(8, 2) * 512
    ref_logits, ref_iou = sam_decoder.transformers_decode(model, embedding, points)
    model = model.to(torch.bfloat16)  # what --dtype auto picks on CUDA
    logits, iou = sam_decoder.decode_points(model, embedding.bfloat16(), points.bfloat16())
    theirs, _ = sam_decoder.transformers_decode(model, embedding.bfloat16(), points.bfloat16())
    assert logits.dtype == torch.bfloat16
    ours_err = float((logits.float() - ref_logits).abs().max())
    their_err = float((theirs.float() - ref_logits).abs().max())
    assert ours_err <= max(2 * their_err, 0.05 * float(ref_logits.abs().max()))
    assert float((iou.float() - ref_iou).abs().max()) < 0.05
