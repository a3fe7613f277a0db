"""Dense pseudo-labels (issue 10): stuff beneath objects, fill, presets, settings checks, end to end."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from alps_hf.errors import ConfigError
from alps_hf.labeling.config import LabelConfig
from alps_hf.metrics.confusion import PseudoLabelScorer
from alps_hf.sam import amg
from alps_hf.sam.generator import PRESETS, MaskGeneratorConfig
from alps_hf.sam.masks import MaskSet
from alps_hf.sam.segment_map import FILL, OBJECT, STUFF, mask_kinds, paint_labels, paint_segments
from label_helpers import label, png, rows, run_error

FAST = ["--pred-iou-thresh", "0.5", "--stability-score-thresh", "0.8", "--num-workers", "1",
        "--image-batch-size", "2"]


def _mask_set(masks: np.ndarray, scores: list[float]) -> MaskSet:
    stack = torch.as_tensor(masks)
    return MaskSet(stack, amg.masks_to_boxes(stack), torch.tensor(scores), torch.ones(len(scores)),
                   stack.sum(dim=(1, 2)).to(torch.int64), torch.zeros(len(scores), 2))


# ---- units -----------------------------------------------------------------------------------------
def test_stuff_is_painted_beneath_objects():
    h = w = 20
    land = np.ones((h, w), dtype=bool)  # 100 % of the image: stuff at the 0.3 gate
    house = np.zeros((h, w), dtype=bool)
    house[5:9, 5:9] = True
    # The stuff mask comes last and scores highest: paint order still puts it beneath the object.
    masks = _mask_set(np.stack([house, land]), [0.6, 0.99])
    seg = paint_segments(masks)
    kinds = mask_kinds(masks.areas[seg.mask_index], h * w, 0.3)
    assert kinds == [STUFF, OBJECT]
    segments = seg.segments.numpy()
    assert (segments[5:9, 5:9] == 2).all()  # the object is visible where it is
    assert (segments[~house] == 1).all()  # the stuff everywhere else
    assert seg.visible_area.tolist() == [h * w - 16, 16]


def test_mask_kinds_follow_the_gate():
    assert mask_kinds(torch.tensor([30, 31, 0]), 100, 0.3) == [OBJECT, STUFF, OBJECT]


def test_paint_labels_without_fill_hides_fill_segments():
    segments = np.array([[0, 1], [2, 3]])
    label = paint_labels(segments, np.array([4, 5, 6]), hidden=np.array([False, False, True]))
    assert label.tolist() == [[255, 4], [5, 255]]
    assert paint_labels(segments, np.array([4, 5, 6])).tolist() == [[255, 4], [5, 6]]


def test_presets_resolve_only_unset_settings():
    dense = MaskGeneratorConfig(preset="dense")
    assert (dense.points_per_side, dense.large_masks, dense.densify_rounds, dense.densify_budget, dense.fill) == (
        8, "stuff", 3, 256, True)
    paper = MaskGeneratorConfig()  # the bare generator keeps segment-anything + ALPS behaviour
    assert (paper.points_per_side, paper.large_masks, paper.densify_rounds, paper.fill) == (32, "drop", 0, False)
    mixed = MaskGeneratorConfig(preset="alps-paper", points_per_side=8, fill=True)
    assert (mixed.points_per_side, mixed.fill, mixed.large_masks) == (8, True, "drop")
    cfg = LabelConfig(inputs=["x"], output="o")
    assert cfg.preset == "dense" and {k: getattr(cfg, k) for k in PRESETS["dense"]} == PRESETS["dense"]


@pytest.mark.parametrize("kwargs, message", [
    ({"preset": "paper"}, "--preset 'paper' is unknown; choose one of dense, alps-paper"),
    ({"large_masks": "keep"}, "--large-masks 'keep' is unknown; choose one of stuff, drop"),
    ({"fill_min_area": -1}, "--fill-min-area -1 is negative"),
    ({"fill_cell": -2}, "--fill-cell -2 is negative"),
    ({"densify_rounds": -1}, "--densify-rounds -1 is negative"),
    ({"min_mask_region_area": -5}, "--min-mask-region-area -5 is negative"),
    ({"densify_min_uncovered": 0.0}, "--densify-min-uncovered 0.0 is outside (0, 1]"),
    ({"points_per_side": 32, "densify_budget": 1024}, "--densify-budget 1024 leaves no prompt for --densify-rounds 3"),
    ({"densify_budget": 64}, "--densify-budget 64 leaves no prompt for --densify-rounds 3: the first grid alone is 64"),
])
def test_bad_dense_settings_name_the_value_and_the_fix(kwargs, message):
    with pytest.raises(ConfigError, match=None) as err:
        LabelConfig(inputs=["x"], output="o", **kwargs)
    assert message in str(err.value)


def test_bad_dense_setting_fails_before_sam_loads(tmp_path, no_sam, capsys):
    (tmp_path / "in").mkdir()
    Image.new("RGB", (32, 32)).save(tmp_path / "in" / "a.png")
    err = run_error(capsys, ["label", str(tmp_path / "in"), "--output", str(tmp_path / "o"), "--fill-min-area", "-3"])
    assert "--fill-min-area -3 is negative" in err
    assert no_sam == []


# ---- with the toy SAM ----------------------------------------------------------------------------------
def _scenes(tmp_path, scenes_dir, names, size=None):
    folder = tmp_path / "in"
    folder.mkdir()
    for name in names:
        if size is None:
            shutil.copy(scenes_dir / "images" / name, folder / name)
        else:  # a smaller scene keeps the 32x32-grid runs cheap
            Image.open(scenes_dir / "images" / name).convert("RGB").resize((size, size)).save(folder / name)
    return folder


def _quality(folder, scenes_dir, k):
    scorer = PseudoLabelScorer(k, 5)
    for row in rows(folder):
        gt = np.asarray(Image.open(scenes_dir / "labels" / row["source"].split("/")[-1]))
        scorer.update(png(row["label"]), gt)
    return scorer.compute()


def test_alps_paper_preset_equals_the_old_plain_grid_settings(tmp_path, toy_sam_dir, scenes_dir):
    folder = _scenes(tmp_path, scenes_dir, ["scene_5002.png"], size=256)
    paper, plain = tmp_path / "paper", tmp_path / "plain"
    assert label(folder, paper, toy_sam_dir, "--num-clusters", "3", "--preset", "alps-paper", *FAST) == 0
    # The settings the default had before presets, spelled out under the new default preset.
    assert label(folder, plain, toy_sam_dir, "--num-clusters", "3", "--points-per-side", "32", "--large-masks", "drop",
                 "--densify-rounds", "0", "--min-mask-region-area", "0", "--no-fill", *FAST) == 0
    a = pq.read_table(next((paper / "data").glob("*.parquet")))
    b = pq.read_table(next((plain / "data").glob("*.parquet")))
    assert a.column_names == b.column_names
    for name in a.column_names:
        assert a[name].equals(b[name]), name
    kinds = a["segment_kind"].to_pylist()[0]
    assert kinds and set(kinds) == {OBJECT}
    assert all(x <= 0.3 * 256 * 256 for x in a["segment_area"].to_pylist()[0])


def test_dense_labels_cover_the_scene(tmp_path, toy_sam_dir, scenes_dir, capsys):
    names = [f"scene_500{i}.png" for i in range(4)]
    folder = _scenes(tmp_path, scenes_dir, names)
    out = tmp_path / "dense"
    # The default preset (8x8 grid + 3 densify rounds within 256 prompts, stuff, fill).
    assert label(folder, out, toy_sam_dir, "--num-clusters", "8", *FAST) == 0
    raw = rows(out)
    assert [r["source"].split("/")[-1] for r in raw] == names
    for row in raw:
        kinds = row["segment_kind"]
        assert len(kinds) == len(row["segment_class"]) == len(row["segment_area"]) == len(row["segment_iou"])
        assert FILL in kinds and STUFF in kinds
        segments = png(row["segments"])
        assert segments.max() == len(kinds)
        # Fill segments have no SAM score; every segment is visible.
        assert all(iou == 0 for iou, kind in zip(row["segment_iou"], kinds, strict=True) if kind == FILL)
        assert min(row["segment_area"]) > 0
    quality = _quality(out, scenes_dir, 8)
    # Floors measured on these 4 scenes (coverage 1.0, majority mIoU ~0.5 at this tiny setting).
    assert quality["coverage"] > 0.99
    assert quality["many_to_one"]["mean_iou"] > 0.35
    info = json.loads((out / "alps_dataset.json").read_text())
    assert info["generator"]["fill"] is True and info["generator"]["large_masks"] == "stuff"

    # recluster without fill: the fill pixels become 255, the rest keeps its classes.
    again = tmp_path / "again"
    shutil.copytree(out, again)
    assert main_recluster(again, "8", "--no-fill") == 0
    for before, after in zip(raw, rows(again), strict=True):
        kinds = np.asarray(after["segment_kind"])
        segments = png(after["segments"]).astype(np.int64)
        fill_pixels = np.isin(segments, np.flatnonzero(kinds == FILL) + 1)
        assert (png(after["label"])[fill_pixels] == 255).all()
        assert (png(after["label"])[~fill_pixels & (segments > 0)] != 255).all()
        assert after["segment_class"] == before["segment_class"]


def test_recluster_fill_needs_a_run_with_fill(tmp_path, toy_sam_dir, scenes_dir, capsys):
    folder = _scenes(tmp_path, scenes_dir, ["scene_5001.png"], size=128)
    out = tmp_path / "paper"
    assert label(folder, out, toy_sam_dir, "--num-clusters", "2", "--preset", "alps-paper", "--points-per-side", "8",
                 *FAST) == 0
    err = run_error(capsys, ["recluster", str(out), "--num-clusters", "2", "--fill"])
    assert "was labeled without fill segments" in err


def main_recluster(folder, k, *extra) -> int:
    from alps_hf.cli import main

    return main(["recluster", str(folder), "--num-clusters", str(k), *extra])


@pytest.mark.slow
def test_dense_default_on_all_shared_scenes(tmp_path, toy_sam_dir, scenes_dir):
    """The default preset as shipped (8x8 + 3 densify rounds within 256 prompts, stuff, fill) at K = 10 on the 8 shared scenes."""
    names = sorted(p.name for p in (scenes_dir / "images").glob("*.png"))
    folder = _scenes(tmp_path, scenes_dir, names)
    out = tmp_path / "dense"
    assert label(folder, out, toy_sam_dir, "--num-clusters", "10", *FAST) == 0
    quality = _quality(out, scenes_dir, 10)
    assert quality["coverage"] > 0.99
    assert quality["many_to_one"]["mean_iou"] > 0.45


def test_dense_settings_are_part_of_the_resume_fingerprint(tmp_path, tiny_sam_dir, no_sam, capsys):
    from sam_fixtures import blocks_image, write_png

    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(2):
        write_png(folder / f"img_{i}.png", blocks_image(i, 40, 48))
    out = tmp_path / "out"
    # A finished run's manifest, written by start_work_folder; then a resume that changes the fill settings.
    work = out / "work"
    work.mkdir(parents=True)
    from alps_hf.labeling.pass1 import pass1_fields
    from alps_hf.labeling.workdir import WorkDir, input_fingerprint

    cfg = LabelConfig(inputs=[str(folder)], output=str(out), sam=str(tiny_sam_dir))
    sources = sorted(str(p) for p in folder.iterdir())
    WorkDir(work).write_manifest({"fingerprint": {**{k: getattr(cfg, k) for k in pass1_fields()},
                                                  "num_inputs": 2, "inputs_sha256": input_fingerprint(sources)},
                                  "num_shards": 1})
    for flags, change in ((["--no-fill"], "fill: True -> False"), (["--fill-min-area", "64"], "fill_min_area: 128 -> 64"),
                          (["--large-masks", "drop"], "large_masks: 'stuff' -> 'drop'")):
        err = run_error(capsys, ["label", str(folder), "--output", str(out), "--sam", str(tiny_sam_dir), *flags,
                                 "--resume"])
        assert "cannot --resume" in err and change in err, err
    assert no_sam == []  # refused before SAM loads
