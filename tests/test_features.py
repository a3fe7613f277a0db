"""Mask features: the SAM embedding averaged inside each mask, in the resized + padded input frame,
checked against a naive per-mask, per-pixel, per-cell loop of exact rectangle intersections."""

import numpy as np
import pytest
import torch

from alps_hf.sam.features import mask_cell_weights, mask_features, pixels_per_cell
from alps_hf.sam.generator import EmbeddingFrame, MaskGenerator
from sam_fixtures import TINY_INPUT, tiny_sam_model, tiny_sam_processor


def naive_cell_weights(mask: np.ndarray, resized: tuple[int, int], padded: int, grid: int) -> np.ndarray:
    """(grid, grid) covered share of each embedding cell: pixel (y, x) of the original image is the
    rectangle [x*sx, (x+1)*sx) x [y*sy, (y+1)*sy) of the resized frame; cell (i, j) the square
    [j*P, (j+1)*P) x [i*P, (i+1)*P); the weight is the summed intersection area over P*P."""
    h, w = mask.shape
    sy, sx = resized[0] / h, resized[1] / w
    cell = padded / grid
    weights = np.zeros((grid, grid))
    for y, x in zip(*np.nonzero(mask), strict=True):
        px0, px1, py0, py1 = x * sx, (x + 1) * sx, y * sy, (y + 1) * sy
        for i in range(grid):
            oy = min(py1, (i + 1) * cell) - max(py0, i * cell)
            if oy <= 0:
                continue
            for j in range(grid):
                ox = min(px1, (j + 1) * cell) - max(px0, j * cell)
                if ox > 0:
                    weights[i, j] += ox * oy
    return weights / (cell * cell)


def naive_features(masks: np.ndarray, embedding: np.ndarray, frame: EmbeddingFrame) -> np.ndarray:
    channels, grid, _ = embedding.shape
    out = np.zeros((len(masks), channels))
    for n, m in enumerate(masks):
        wgt = naive_cell_weights(m, frame.resized, frame.padded, grid)
        if wgt.sum() > 0:
            out[n] = (embedding * wgt[None]).sum(axis=(1, 2)) / wgt.sum()
    return out


def random_masks(rng, n: int, h: int, w: int) -> np.ndarray:
    masks = np.zeros((n, h, w), dtype=bool)
    for k in range(n):
        y0, x0 = rng.integers(0, h), rng.integers(0, w)
        masks[k, y0:y0 + rng.integers(1, h), x0:x0 + rng.integers(1, w)] = True
        masks[k] |= rng.random((h, w)) < 0.05  # scattered pixels too
    masks[-1] = False
    masks[-1, h - 1, w - 1] = True  # a single pixel in the bottom-right corner (next to the padding)
    return masks


def processor_frame(height: int, width: int, input_size: int) -> EmbeddingFrame:
    """The frame SamImageProcessorPil really produces for an image of this size."""
    from transformers import SamImageProcessorPil

    proc = SamImageProcessorPil(size={"longest_edge": input_size},
                                pad_size={"height": input_size, "width": input_size})
    out = proc(images=[np.zeros((height, width, 3), np.uint8)], return_tensors="pt")
    assert out["pixel_values"].shape[-2:] == (input_size, input_size)
    resized = tuple(int(v) for v in out["reshaped_input_sizes"][0])
    return EmbeddingFrame((height, width), resized, input_size)


@pytest.mark.parametrize(
    ("height", "width", "input_size", "grid"),
    [(24, 24, 32, 8), (13, 21, 32, 8), (21, 13, 32, 8), (40, 17, 64, 16), (5, 7, 32, 4), (70, 50, 32, 8),
     (32, 24, 32, 8), (16, 12, 32, 8)],
    ids=["square", "wide", "tall", "tall-upscaled", "tiny", "downscaled", "aligned-padded", "aligned-upscaled"],
)
def test_mask_features_equal_naive_loop(height, width, input_size, grid):
    rng = np.random.default_rng(height * 100 + width)
    frame = processor_frame(height, width, input_size)
    masks = random_masks(rng, 6, height, width)
    embedding = rng.normal(size=(5, grid, grid)).astype(np.float32)
    got = mask_features(torch.as_tensor(masks), torch.as_tensor(embedding), frame).numpy()
    want = naive_features(masks, embedding, frame)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    weights = mask_cell_weights(torch.as_tensor(masks), frame, grid).numpy()
    for m, wgt in zip(masks, weights, strict=True):
        np.testing.assert_allclose(wgt, naive_cell_weights(m, frame.resized, frame.padded, grid), atol=1e-5)


def test_padding_gets_no_weight():
    # A wide image: resized to 32 x 18 (w x h) in a 32 x 32 frame, so embedding rows 5..7 (of 8, 4 px each)
    # are padding only and row 4 is half image (rows 16..18) and half padding.
    frame = processor_frame(27, 48, 32)
    assert frame.resized == (18, 32)
    full = torch.ones((1, 27, 48), dtype=torch.bool)
    weights = mask_cell_weights(full, frame, 8)[0]
    assert torch.all(weights[5:] == 0)
    np.testing.assert_allclose(weights[:4].numpy(), 1.0, atol=1e-6)
    np.testing.assert_allclose(weights[4].numpy(), 0.5, atol=1e-6)  # 2 of 4 pixel rows of the cell are image
    # Total weight x cell area = resized image area.
    assert float(weights.sum()) * 16 == pytest.approx(18 * 32, rel=1e-6)
    # Whatever the embedding holds in the padding cells, the feature does not change.
    rng = np.random.default_rng(0)
    emb = torch.as_tensor(rng.normal(size=(3, 8, 8)).astype(np.float32))
    before = mask_features(full, emb, frame)
    emb[:, 5:] = 1e6
    torch.testing.assert_close(mask_features(full, emb, frame), before)
    # The whole image on a constant embedding pools to that constant.
    const = torch.full((3, 8, 8), 2.5)
    torch.testing.assert_close(mask_features(full, const, frame), torch.full((1, 3), 2.5))


def test_mask_inside_one_cell_takes_that_cell():
    frame = processor_frame(32, 32, 32)  # identity resize, 4 x 4 px cells
    emb = torch.arange(64, dtype=torch.float32).reshape(1, 8, 8)
    masks = torch.zeros((2, 32, 32), dtype=torch.bool)
    masks[0, 9:11, 13:15] = True  # inside cell (2, 3)
    masks[1, 0:4, 0:8] = True  # cells (0, 0) and (0, 1), equally
    feats = mask_features(masks, emb, frame)
    assert feats[:, 0].tolist() == [2 * 8 + 3, 0.5]


def test_empty_mask_gives_zeros_and_size_mismatch_raises():
    frame = processor_frame(10, 12, 32)
    feats = mask_features(torch.zeros((1, 10, 12), dtype=torch.bool), torch.ones((4, 8, 8)), frame)
    assert feats.tolist() == [[0.0, 0.0, 0.0, 0.0]]
    assert mask_features(torch.zeros((0, 10, 12), dtype=torch.bool), torch.ones((4, 8, 8)), frame).shape == (0, 4)
    with pytest.raises(ValueError, match="12x10|10x12"):
        mask_features(torch.zeros((1, 12, 10), dtype=torch.bool), torch.ones((4, 8, 8)), frame)


def test_generator_frame_matches_processor_and_features_match_naive():
    """The frame the mask generator records is the processor's, for a non-square image, and pooling its
    real embedding agrees with the naive loop."""
    gen = MaskGenerator(tiny_sam_model(), tiny_sam_processor())
    rng = np.random.default_rng(1)
    image = rng.integers(0, 255, (37, 90, 3), dtype=np.uint8)
    embeddings, frames = gen.embed([image])
    frame = frames[0]
    assert frame.original == (37, 90)
    assert frame.padded == TINY_INPUT
    assert frame == processor_frame(37, 90, TINY_INPUT)
    assert frame.resized == (round(37 * TINY_INPUT / 90), TINY_INPUT)
    emb = embeddings[0].embedding.float()
    assert emb.shape == (32, 8, 8)
    masks = random_masks(rng, 4, 37, 90)
    got = mask_features(torch.as_tensor(masks), emb, frame).numpy()
    np.testing.assert_allclose(got, naive_features(masks, emb.numpy(), frame), rtol=1e-4, atol=1e-5)


def test_pixels_per_cell_only_for_cells_of_whole_pixel_blocks():
    assert pixels_per_cell(512, 512, 32, 512) == 16  # toy SAM, 512 px tile
    assert pixels_per_cell(512, 1024, 64, 1024) == 8  # SAM ViT, 512 px tile upscaled
    assert pixels_per_cell(24, 32, 8, 32) == 3
    assert pixels_per_cell(384, 384, 32, 512) == 16  # the short side of a padded frame
    assert pixels_per_cell(300, 300, 32, 512) is None  # ends inside a cell
    assert pixels_per_cell(13, 21, 8, 32) is None  # 21 / 13 resize: cells are not whole pixels
    assert pixels_per_cell(16, 32, 8, 32) == 2


@pytest.mark.parametrize(("height", "width", "input_size", "grid"), [(32, 24, 32, 8), (24, 24, 32, 8), (16, 12, 32, 8)])
def test_aligned_block_counts_equal_the_coverage_matmuls(monkeypatch, height, width, input_size, grid):
    from alps_hf.sam import features

    rng = np.random.default_rng(7)
    frame = processor_frame(height, width, input_size)
    masks = torch.as_tensor(random_masks(rng, 9, height, width))
    k = pixels_per_cell(height, frame.resized[0], grid, input_size)
    assert k is not None and k == pixels_per_cell(width, frame.resized[1], grid, input_size)
    fast = mask_cell_weights(masks, frame, grid)
    monkeypatch.setattr(features, "pixels_per_cell", lambda *args: None)
    slow = mask_cell_weights(masks, frame, grid)
    if k & (k - 1) == 0:  # k a power of 2: the shares are exact floats both ways
        assert torch.equal(fast, slow)
    torch.testing.assert_close(fast, slow, rtol=0, atol=1e-6)  # k = 3: 1/9 rounds differently, no more
