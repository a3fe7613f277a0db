"""`alps-hf label` / `alps-hf recluster` end to end, in-process through `alps_hf.cli.main`, on a tiny
random SAM (saved with save_pretrained), on the trained toy SAM, on generated images, odd and broken
files, and real Dubai tiles; plus every configuration error, each failing before SAM loads."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from alps_hf.cli import main
from alps_hf.labeling.clustering import ClusterModel
from label_helpers import TINY, TOY, check_dataset, failures, label, label_bytes, png, rows, run_error
from sam_fixtures import TINY_CHANNELS, blocks_image, write_odd_images, write_png

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ---- fixtures ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def blocks_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("blocks")
    for i, (h, w) in enumerate([(48, 64), (64, 48), (40, 40), (30, 70)]):
        write_png(folder / f"img_{i}.png", blocks_image(i, h, w))
    return folder


@pytest.fixture(scope="module")
def labeled(tmp_path_factory, blocks_dir, tiny_sam_dir) -> Path:
    out = tmp_path_factory.mktemp("runs") / "pseudo"
    assert label(blocks_dir, out, tiny_sam_dir, "--num-clusters", "3", "--shard-size", "2", *TINY) == 0
    return out


# ---- helpers -------------------------------------------------------------------------------------------
def test_label_writes_a_loadable_hub_layout_dataset(labeled, tiny_sam_dir):
    raw = check_dataset(labeled, 3, [f"img_{i}.png" for i in range(4)])
    assert failures(labeled) == {}
    assert sum(len(r["segment_class"]) for r in raw) >= 3
    assert sorted(p.name for p in (labeled / "data").iterdir()) == ["train-00000-of-00001.parquet"]
    assert sorted(p.name for p in (labeled / "work" / "pass1").glob("*.done")) == ["shard-00000.done",
                                                                                  "shard-00001.done"]
    cfg = json.loads((labeled / "label_config.json").read_text())
    assert cfg["num_clusters"] == 3 and cfg["sam"] == str(tiny_sam_dir) and cfg["points_per_side"] == 4
    meta = json.loads((labeled / "cluster_model.json").read_text())
    assert meta["feature_dim"] == TINY_CHANNELS and meta["sam_model"] == str(tiny_sam_dir)
    readme = (labeled / "README.md").read_text()
    # a local SAM is named by its folder only and identified by the hash of its weights (issue 12)
    assert f"`{tiny_sam_dir.name} (local folder)`" in readme and str(tiny_sam_dir) not in readme
    assert "| SAM revision | local weights, sha256 of `model.safetensors`: `" in readme
    # the hash is taken at label time and recorded, so a later change of the folder cannot change the card
    import hashlib

    digest = hashlib.sha256((tiny_sam_dir / "model.safetensors").read_bytes()).hexdigest()
    assert json.loads((labeled / "alps_dataset.json").read_text())["sam_weights"] == ["model.safetensors", digest]
    assert f"`{digest}`" in readme
    assert "were cut into" not in readme  # no window paragraph when nothing was tiled
    assert json.loads((labeled / "alps_dataset.json").read_text())["tiling"]["scenes"] == 0
    # the segment counts say which are SAM masks and which fill (they were all called "masks")
    stats = json.loads((labeled / "alps_dataset.json").read_text())["stats"]
    kinds = [k for r in raw for k in r["segment_kind"]]
    assert stats["segments_by_kind"] == {k: kinds.count(k) for k in sorted(set(kinds))}
    assert sum(stats["segments_by_kind"].values()) == stats["masks_total"]
    assert "| segments by kind | " in readme


def test_original_image_bytes_kept(labeled, blocks_dir):
    for row in rows(labeled):
        assert row["image"]["bytes"] == (blocks_dir / row["source"]).read_bytes()


def test_semantic_segmentation_example_accepts_the_folder(labeled):
    """What transformers' run_semantic_segmentation(_no_trainer).py needs: `image` and `label` columns
    (PIL images), id2label.json as {"0": name}, and labels its image processor turns into class ids."""
    from datasets import load_dataset
    from transformers import SegformerImageProcessorPil

    ds = load_dataset(str(labeled))["train"]
    assert {"image", "label"} <= set(ds.column_names)
    id2label = {int(k): v for k, v in json.loads((labeled / "id2label.json").read_text()).items()}
    assert id2label == {0: "cluster_00", 1: "cluster_01", 2: "cluster_02"}
    proc = SegformerImageProcessorPil(do_reduce_labels=False, size={"height": 32, "width": 32})
    batch = proc([x.convert("RGB") for x in ds["image"]], [x for x in ds["label"]], return_tensors="pt")
    assert tuple(batch["pixel_values"].shape) == (4, 3, 32, 32)
    assert set(batch["labels"].unique().tolist()) <= set(id2label) | {255}


def test_same_seed_gives_byte_identical_labels(labeled, blocks_dir, tiny_sam_dir, tmp_path):
    out = tmp_path / "again"
    assert label(blocks_dir, out, tiny_sam_dir, "--num-clusters", "3", "--shard-size", "2", *TINY) == 0
    assert label_bytes(out) == label_bytes(labeled)
    assert [r["segments"]["bytes"] for r in rows(out)] == [r["segments"]["bytes"] for r in rows(labeled)]
    assert (out / "cluster_model.safetensors").read_bytes() == (labeled / "cluster_model.safetensors").read_bytes()


def test_recluster_changes_k_without_sam(labeled, tmp_path, no_sam, capsys):
    folder = tmp_path / "copy"
    shutil.copytree(labeled, folder)
    before = rows(folder)
    assert main(["recluster", str(folder), "--num-clusters", "2"]) == 0
    assert "wrote" in capsys.readouterr().out
    raw = check_dataset(folder, 2, [r["source"] for r in before])
    assert all(c < 2 for r in raw for c in r["segment_class"])
    # segments and images are untouched: only the classes changed
    assert [r["segments"]["bytes"] for r in raw] == [r["segments"]["bytes"] for r in before]
    assert [r["image"]["bytes"] for r in raw] == [r["image"]["bytes"] for r in before]
    assert json.loads((folder / "label_config.json").read_text())["num_clusters"] == 2
    assert json.loads((folder / "work" / "cluster_model.json").read_text())["num_clusters"] == 2
    # and back to 3: the same labels as the original run (same seed, same features)
    assert main(["recluster", str(folder), "--num-clusters", "3"]) == 0
    assert label_bytes(folder) == label_bytes(labeled)


def test_recluster_output_leaves_the_source_folder_untouched(labeled, tmp_path, no_sam, capsys):
    source = tmp_path / "source"
    shutil.copytree(labeled, source)
    before = {p.relative_to(source): p.read_bytes() for p in sorted(source.rglob("*")) if p.is_file()}
    new = tmp_path / "k2"
    assert main(["recluster", str(source), "--num-clusters", "2", "--output", str(new)]) == 0
    assert f"wrote {new}" in capsys.readouterr().out
    after = {p.relative_to(source): p.read_bytes() for p in sorted(source.rglob("*")) if p.is_file()}
    assert after == before  # not one byte of the source changed
    raw = check_dataset(new, 2, [r["source"] for r in rows(source)])
    assert all(c < 2 for r in raw for c in r["segment_class"])
    assert [r["segments"]["bytes"] for r in raw] == [r["segments"]["bytes"] for r in rows(source)]
    assert json.loads((new / "label_config.json").read_text())["num_clusters"] == 2
    info = json.loads((new / "alps_dataset.json").read_text())
    assert info["reclustered_from"] == "source" and info["num_clusters"] == 2
    # the SAM weights hash of pass 1 is carried over, not taken again from whatever the folder holds now
    assert info["sam_weights"] == json.loads((source / "alps_dataset.json").read_text())["sam_weights"]
    # the new folder is a run of its own: reclustering it back to K = 3 gives the original labels
    assert main(["recluster", str(new), "--num-clusters", "3"]) == 0
    assert label_bytes(new) == label_bytes(labeled)
    # an existing --output is refused without --overwrite, replaced with it
    err = run_error(capsys, ["recluster", str(source), "--num-clusters", "2", "--output", str(new)])
    assert "already exists and is not empty" in err and "--overwrite" in err
    assert main(["recluster", str(source), "--num-clusters", "2", "--output", str(new), "--overwrite"]) == 0
    assert json.loads((new / "label_config.json").read_text())["num_clusters"] == 2


def test_recluster_output_inside_the_source_and_overwrite_without_output(labeled, tmp_path, no_sam, capsys):
    err = run_error(capsys, ["recluster", str(labeled), "--num-clusters", "2", "--output", str(labeled / "k2")])
    assert "is inside" in err and not (labeled / "k2").exists()
    err = run_error(capsys, ["recluster", str(labeled), "--num-clusters", "2", "--overwrite"])
    assert "--overwrite needs --output" in err


def test_default_shard_size_cuts_a_small_run_into_batches(blocks_dir, tmp_path, tiny_sam_dir):
    out = tmp_path / "auto"
    assert label(blocks_dir, out, tiny_sam_dir, "--num-clusters", "3", "--image-batch-size", "1", *TINY) == 0
    done = sorted(p.name for p in (out / "work" / "pass1").glob("*.done"))
    assert done == [f"shard-{i:05d}.done" for i in range(4)]  # 4 images: 4 one-image shards, not one
    assert json.loads((out / "label_config.json").read_text())["shard_size"] is None


def test_resume_after_finished_run_labels_nothing_again(labeled, tmp_path, tiny_sam_dir, blocks_dir,
                                                        count_generated):
    folder = tmp_path / "copy"
    shutil.copytree(labeled, folder)
    args = ["--num-clusters", "3", "--shard-size", "2", *TINY, "--resume"]
    assert label(blocks_dir, folder, tiny_sam_dir, *args) == 0
    assert count_generated == []
    assert label_bytes(folder) == label_bytes(labeled)


def test_resume_redoes_only_the_missing_shard(labeled, tmp_path, tiny_sam_dir, blocks_dir, count_generated):
    folder = tmp_path / "copy"
    shutil.copytree(labeled, folder)
    (folder / "work" / "pass1" / "shard-00001.done").unlink()
    args = ["--num-clusters", "3", "--shard-size", "2", *TINY, "--resume"]
    assert label(blocks_dir, folder, tiny_sam_dir, *args) == 0
    assert sorted(count_generated) == sorted([(40, 40), (30, 70)])  # img_2 and img_3: shard 1 only
    assert (folder / "work" / "pass1" / "shard-00001.done").is_file()
    assert label_bytes(folder) == label_bytes(labeled)


def test_resume_with_changed_settings_is_refused(labeled, tmp_path, tiny_sam_dir, blocks_dir, no_sam, capsys):
    folder = tmp_path / "copy"
    shutil.copytree(labeled, folder)
    args = ["--num-clusters", "3", "--shard-size", "2", *TINY, "--points-per-side", "5", "--resume"]
    assert label(blocks_dir, folder, tiny_sam_dir, *args) == 2
    err = capsys.readouterr().err
    assert "cannot --resume: points_per_side: 4 -> 5 changed" in err and "--overwrite" in err
    more = tmp_path / "more_images"
    shutil.copytree(blocks_dir, more)
    write_png(more / "img_9.png", blocks_image(9))
    args = ["--num-clusters", "3", "--shard-size", "2", *TINY, "--resume"]
    err = run_error(capsys, ["label", str(more), "--output", str(folder), "--sam", str(tiny_sam_dir), *args])
    assert "the input list" in err and "num_inputs: 4 -> 5" in err
    assert label_bytes(folder) == label_bytes(labeled)


def test_existing_cluster_model_labels_new_images_with_the_same_ids(labeled, tmp_path, tiny_sam_dir, blocks_dir):
    new = tmp_path / "new_images"
    new.mkdir()
    shutil.copy(blocks_dir / "img_1.png", new / "same_as_img_1.png")
    write_png(new / "other.png", blocks_image(42, 50, 50))
    out = tmp_path / "with_clusters"
    # --num-clusters is ignored (taken from the cluster model) even when it would be invalid alone
    assert label(new, out, tiny_sam_dir, "--clusters", labeled, "--num-clusters", "46", *TINY) == 0
    raw = check_dataset(out, 3, ["other.png", "same_as_img_1.png"])
    original = {r["source"]: r for r in rows(labeled)}
    assert raw[1]["segment_class"] == original["img_1.png"]["segment_class"]
    assert raw[1]["label"]["bytes"] == original["img_1.png"]["label"]["bytes"]
    assert (out / "cluster_model.safetensors").read_bytes() == (labeled / "cluster_model.safetensors").read_bytes()


def test_odd_and_broken_images_through_the_cli(tmp_path, tiny_sam_dir, capsys):
    folder = tmp_path / "odd"
    expected = write_odd_images(folder)
    # 1-pixel-high strips: at the tiny SAM's 128 px input a 300 px long one would be resized to 0 px high
    # (listed with that reason), a 200 px long one to 1 px (labeled). They share a SAM batch with others,
    # which must still be labeled.
    write_png(folder / "strip.png", np.zeros((1, 300, 3), np.uint8))
    write_png(folder / "strip_ok.png", np.zeros((1, 200, 3), np.uint8))
    expected["strip.png"] = "image is 300x1 px, too thin for SAM: its short side would be resized to 0 px"
    expected["strip_ok.png"] = None
    out = tmp_path / "out"
    assert label(folder, out, tiny_sam_dir, "--num-clusters", "2", "--shard-size", "4", *TINY) == 0
    failed = failures(out)
    good = sorted(n for n, reason in expected.items() if reason is None)
    raw = check_dataset(out, 2, good)
    assert sorted(failed) == sorted(n for n, reason in expected.items() if reason is not None)
    for name, reason in failed.items():
        assert expected[name] in reason, (name, reason)
    assert sorted([*failed, *good]) == sorted(expected)  # every input is in the dataset or in failures.jsonl
    by_source = {r["source"]: r for r in raw}
    assert png(by_source["sub/exif_rotated.jpg"]["label"]).shape == (40, 24)  # upright
    assert png(by_source["tiny8.png"]["label"]).shape == (8, 8)
    assert png(by_source["gray16.png"]["label"]).shape == (35, 40)
    assert png(by_source["strip_ok.png"]["label"]).shape == (1, 200)
    n_failed = len(failed)
    summary = capsys.readouterr().out
    assert f"13 in, {13 - n_failed} labeled, {n_failed} skipped" in summary
    assert json.loads((out / "alps_dataset.json").read_text())["stats"]["failed"] == n_failed


# ---- configuration errors: exit code 2, one line on stderr, SAM never loaded ---------------------------
def test_missing_input(tmp_path, tiny_sam_dir, no_sam, capsys):
    err = run_error(capsys, ["label", str(tmp_path / "nowhere"), "--output", str(tmp_path / "o"),
                             "--sam", str(tiny_sam_dir)])
    assert f"input path {tmp_path / 'nowhere'} does not exist" in err
    assert not (tmp_path / "o").exists()


def test_empty_input_folder(tmp_path, tiny_sam_dir, no_sam, capsys):
    (tmp_path / "empty").mkdir()
    err = run_error(capsys, ["label", str(tmp_path / "empty"), "--output", str(tmp_path / "o"),
                             "--sam", str(tiny_sam_dir)])
    assert "holds no files" in err and str(tmp_path / "empty") in err


def test_no_input_and_no_output(tmp_path, tiny_sam_dir, no_sam, capsys):
    assert "no input given" in run_error(capsys, ["label", "--output", str(tmp_path / "o")])
    assert "--output is required" in run_error(capsys, ["label", str(tmp_path)])


def test_output_exists_without_resume_or_overwrite(tmp_path, blocks_dir, tiny_sam_dir, no_sam, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "something.txt").write_text("keep me")
    err = run_error(capsys, ["label", str(blocks_dir), "--output", str(out), "--sam", str(tiny_sam_dir)])
    assert f"--output {out} already exists and is not empty" in err and "--resume" in err and "--overwrite" in err
    assert (out / "something.txt").read_text() == "keep me"
    err = run_error(capsys, ["label", str(blocks_dir), "--output", str(out), "--sam", str(tiny_sam_dir),
                             "--resume"])
    assert "holds no alps_hf run" in err
    err = run_error(capsys, ["label", str(blocks_dir), "--output", str(out), "--resume", "--overwrite"])
    assert "--resume and --overwrite contradict" in err


@pytest.mark.parametrize("k", ["1", "0", "256", "1000"])
def test_k_out_of_range(tmp_path, blocks_dir, tiny_sam_dir, no_sam, capsys, k):
    err = run_error(capsys, ["label", str(blocks_dir), "--output", str(tmp_path / "o"), "--sam", str(tiny_sam_dir),
                             "--num-clusters", k])
    assert f"--num-clusters {k} is not allowed: K must be in 2..255" in err
    err = run_error(capsys, ["recluster", str(tmp_path), "--num-clusters", k])
    assert f"--num-clusters {k} is not allowed" in err


def test_k_larger_than_masks_found(tmp_path, blocks_dir, tiny_sam_dir, capsys, count_generated):
    two = tmp_path / "two"
    two.mkdir()
    for name in ("img_0.png", "img_2.png"):
        shutil.copy(blocks_dir / name, two / name)
    out = tmp_path / "out"
    # default NMS: the random SAM's masks overlap, so few survive
    args = ["--points-per-side", "4", "--pred-iou-thresh", "0", "--stability-score-thresh", "0",
            "--max-area-fraction", "1.0", "--num-workers", "0", "--num-clusters", "200"]
    err = run_error(capsys, ["label", str(two), "--output", str(out), "--sam", str(tiny_sam_dir), *args])
    found = sum(json.loads(p.read_text())["masks"] for p in (out / "work" / "pass1").glob("*.done"))
    assert 0 < found < 200
    assert f"--num-clusters 200 is larger than the number of masks found ({found})" in err
    assert len(count_generated) == 2
    # the SAM pass is kept: --resume with a K that fits reuses it
    args[-1] = "2"
    assert label(two, out, tiny_sam_dir, *args, "--resume") == 0
    assert len(count_generated) == 2
    check_dataset(out, 2, ["img_0.png", "img_2.png"])


def test_unknown_model(tmp_path, blocks_dir, no_sam, capsys):
    not_a_model = tmp_path / "not_a_model"
    not_a_model.mkdir()
    (not_a_model / "weights.bin").write_bytes(b"\0" * 10)
    err = run_error(capsys, ["label", str(blocks_dir), "--output", str(tmp_path / "o"), "--sam", str(not_a_model)])
    assert f"--sam {str(not_a_model)!r} is a folder but not a save_pretrained folder (it has no config.json)" in err
    # offline (conftest): a Hub id is "cannot be reached / not in the cache", never "unknown" (issue 12 point 9)
    err = run_error(capsys, ["label", str(blocks_dir), "--output", str(tmp_path / "o"), "--sam",
                             "nobody-here/no-such-sam-model"])
    assert "--sam 'nobody-here/no-such-sam-model' cannot be reached (HF_HUB_OFFLINE is set)" in err
    assert "not in the local cache" in err and "unknown" not in err
    err = run_error(capsys, ["label", str(blocks_dir), "--output", str(tmp_path / "o"), "--sam",
                             str(tmp_path / "no" / "such-folder")])
    assert f"--sam {str(tmp_path / 'no' / 'such-folder')!r}: folder not found" in err


def test_sam_folder_without_image_processor(tmp_path, blocks_dir, tiny_sam_dir, no_sam, capsys):
    folder = tmp_path / "weights_only"
    folder.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(tiny_sam_dir / name, folder / name)
    err = run_error(capsys, ["label", str(blocks_dir), "--output", str(tmp_path / "o"), "--sam", str(folder)])
    assert f"--sam {str(folder)!r} has no SAM image processor config" in err


def test_not_a_sam_model(tmp_path, blocks_dir, no_sam, capsys):
    from transformers import SegformerConfig

    SegformerConfig(num_encoder_blocks=1, depths=[1], sr_ratios=[1], hidden_sizes=[8], num_attention_heads=[1],
                    decoder_hidden_size=8).save_pretrained(tmp_path / "segformer")
    err = run_error(capsys, ["label", str(blocks_dir), "--output", str(tmp_path / "o"), "--sam",
                             str(tmp_path / "segformer")])
    assert "is a 'segformer' model, not SAM" in err


def test_unreadable_cluster_file(tmp_path, blocks_dir, tiny_sam_dir, no_sam, capsys):
    bad = tmp_path / "clusters"
    bad.mkdir()
    (bad / "cluster_model.safetensors").write_bytes(b"garbage")
    (bad / "cluster_model.json").write_text("{}")
    base = ["label", str(blocks_dir), "--output", str(tmp_path / "o"), "--sam", str(tiny_sam_dir)]
    err = run_error(capsys, [*base, "--clusters", str(bad)])
    assert "cannot read the cluster model" in err
    err = run_error(capsys, [*base, "--clusters", str(tmp_path / "nothing_here")])
    assert "cluster model not found" in err and "--clusters" in err


def test_cluster_file_of_another_feature_size(tmp_path, blocks_dir, tiny_sam_dir, no_sam, capsys):
    ClusterModel(np.eye(4, 7, dtype=np.float32), "l2", {}).save(tmp_path / "c7")
    err = run_error(capsys, ["label", str(blocks_dir), "--output", str(tmp_path / "o"), "--sam", str(tiny_sam_dir),
                             "--clusters", str(tmp_path / "c7")])
    assert f"has 7-d centroids but --sam {tiny_sam_dir} gives {TINY_CHANNELS}-d features" in err


@pytest.mark.parametrize(("flag", "value", "message"), [
    ("--pred-iou-thresh", "1.5", "pred_iou_thresh=1.5 is outside [0, 1]"),
    ("--stability-score-thresh", "-0.1", "stability_score_thresh=-0.1 is outside [0, 1]"),
    ("--max-area-fraction", "2", "max_area_fraction=2.0 is outside [0, 1]"),
    ("--box-nms-thresh", "1.01", "box_nms_thresh=1.01 is outside [0, 1]"),
    ("--points-per-side", "0", "--points-per-side 0 must be a positive integer"),
    ("--min-area", "-3", "--min-area"),
    ("--stability-score-offset", "0", "--stability-score-offset 0.0 must be > 0"),
    ("--feature-normalization", "cosine", "--feature-normalization 'cosine' is unknown"),
    ("--dtype", "float64", "--dtype 'float64' is unknown"),
])
def test_bad_settings(tmp_path, blocks_dir, tiny_sam_dir, no_sam, capsys, flag, value, message):
    err = run_error(capsys, ["label", str(blocks_dir), "--output", str(tmp_path / "o"), "--sam", str(tiny_sam_dir),
                             flag, value])
    assert message in err


def test_recluster_of_a_folder_that_is_not_a_run(tmp_path, no_sam, capsys):
    err = run_error(capsys, ["recluster", str(tmp_path), "--num-clusters", "4"])
    assert "is not a folder written by `alps-hf label`" in err


def test_recluster_k_larger_than_masks(labeled, tmp_path, no_sam, capsys):
    folder = tmp_path / "copy"
    shutil.copytree(labeled, folder)
    found = sum(json.loads(p.read_text())["masks"] for p in (folder / "work" / "pass1").glob("*.done"))
    if found >= 255:
        pytest.skip("too many masks for this check")
    err = run_error(capsys, ["recluster", str(folder), "--num-clusters", str(found + 1)])
    assert f"larger than the number of masks found ({found})" in err
    assert label_bytes(folder) == label_bytes(labeled)  # nothing rewritten


# ---- the trained toy SAM: generated scenes and real tiles ----------------------------------------------
def test_toy_sam_on_generated_scenes_and_a_real_tile(tmp_path, toy_sam_dir, scenes_dir, dubai_dir, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("scene_5002.png", "scene_5005.png"):
        shutil.copy(scenes_dir / "images" / name, folder / name)
    shutil.copy(dubai_dir / "images" / "tile2_part_001.jpg", folder / "tile2_part_001.jpg")
    out = tmp_path / "out"
    # The paper's preset: the area gate drops large masks (the dense default keeps them as stuff: test_dense_labels).
    assert label(folder, out, toy_sam_dir, "--num-clusters", "4", "--seed", "1", "--preset", "alps-paper", *TOY) == 0
    raw = check_dataset(out, 4, ["scene_5002.png", "scene_5005.png", "tile2_part_001.jpg"])
    for row in raw[:2]:
        assert len(row["segment_class"]) >= 5  # the toy SAM finds objects in its own kind of scene
        assert all(a <= 0.3 * 512 * 512 for a in row["segment_area"])  # ALPS area gate
        assert min(row["segment_iou"]) > 0.5 and min(row["segment_stability"]) >= 0.8
    assert png(raw[2]["label"]).shape == (544, 509)
    info = json.loads((out / "alps_dataset.json").read_text())
    assert info["stats"]["images_without_masks"] == sum(all(k == "fill" for k in r["segment_kind"]) for r in raw)
    if not raw[2]["segment_class"]:  # an image where SAM finds nothing is labeled all-255 and counted
        assert (png(raw[2]["label"]) == 255).all()
        assert f"{info['stats']['images_without_masks']} without any mask" in capsys.readouterr().out


def test_toy_sam_on_real_dubai_tiles(tmp_path, toy_sam_dir, dubai_dir):
    folder = tmp_path / "tiles"
    folder.mkdir()
    names = ["tile1_part_002.jpg", "tile3_part_004.jpg"]
    for name in names:
        shutil.copy(dubai_dir / "images" / name, folder / name)
    out = tmp_path / "out"
    # the toy SAM is weak on real imagery: looser thresholds so that masks survive
    args = ["--points-per-side", "8", "--pred-iou-thresh", "0.2", "--stability-score-thresh", "0.5",
            "--num-workers", "1", "--num-clusters", "3"]
    assert label(folder, out, toy_sam_dir, *args) == 0
    raw = check_dataset(out, 3, names)
    sizes = {r["source"]: png(r["label"]).shape for r in raw}
    assert sizes == {"tile1_part_002.jpg": (644, 797), "tile3_part_004.jpg": (658, 682)}
    assert sum(len(r["segment_class"]) for r in raw) >= 3
    for row in raw:
        assert row["image"]["bytes"] == (dubai_dir / "images" / row["source"]).read_bytes()


# ---- more inputs: images without masks, images above --max-mask-side, datasets, --overwrite ----------
def test_image_without_any_mask_is_all_255_and_counted(tmp_path, blocks_dir, tiny_sam_dir, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(blocks_dir / "img_0.png", folder / "big.png")
    write_png(folder / "small.png", blocks_image(5, 24, 24)[:8, :8].copy())
    out = tmp_path / "out"
    # --min-area 100 leaves no mask on the 8 x 8 (64 px) image
    assert label(folder, out, tiny_sam_dir, "--num-clusters", "2", *TINY, "--min-area", "100") == 0
    raw = check_dataset(out, 2, ["big.png", "small.png"])
    small = raw[1]
    assert small["segment_class"] == [] and small["segment_area"] == []
    assert (png(small["label"]) == 255).all() and (png(small["segments"]) == 0).all()
    assert png(small["label"]).shape == (8, 8)
    assert raw[0]["segment_class"]  # (segment_area is the visible area: it may be below --min-area)
    assert json.loads((out / "alps_dataset.json").read_text())["stats"]["images_without_masks"] == 1
    assert "1 without any mask" in capsys.readouterr().out
    assert failures(out) == {}


def test_images_labeled_by_fill_alone_count_as_without_masks(tmp_path, blocks_dir, tiny_sam_dir, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(blocks_dir / "img_0.png", folder / "a.png")
    shutil.copy(blocks_dir / "img_1.png", folder / "b.png")
    out = tmp_path / "out"
    # --min-area above the image size leaves no SAM mask; fill (the default preset's) still paints every pixel
    assert label(folder, out, tiny_sam_dir, "--num-clusters", "2", *TINY, "--min-area", "100000") == 0
    raw = check_dataset(out, 2, ["a.png", "b.png"])
    for row in raw:
        assert row["segment_kind"] and set(row["segment_kind"]) == {"fill"}
        assert (png(row["label"]) != 255).all()
    stats = json.loads((out / "alps_dataset.json").read_text())["stats"]
    assert stats["images_without_masks"] == 2
    assert stats["masks_total"] == sum(len(r["segment_class"]) for r in raw) > 0
    assert "2 without any mask" in capsys.readouterr().out


def test_images_above_max_mask_side_are_labeled_at_full_size(tmp_path, blocks_dir, tiny_sam_dir, count_generated):
    out = tmp_path / "out"
    assert label(blocks_dir, out, tiny_sam_dir, "--num-clusters", "2", *TINY, "--max-mask-side", "32") == 0
    # SAM saw images no larger than 32 px on their long side ...
    assert sorted(count_generated) == sorted([(24, 32), (32, 24), (32, 32), (14, 32)])
    # ... and the maps come back at the original size (check_dataset: label size == image size, LUT, areas)
    raw = check_dataset(out, 2, [f"img_{i}.png" for i in range(4)])
    assert [png(r["label"]).shape for r in raw] == [(48, 64), (64, 48), (40, 40), (30, 70)]


def test_label_a_dataset_folder_as_input(labeled, tmp_path, tiny_sam_dir):
    """A Hub-layout dataset folder (here: the output of a previous run) is read through `datasets`."""
    out = tmp_path / "relabeled"
    assert label(labeled, out, tiny_sam_dir, "--num-clusters", "3", "--shard-size", "2", *TINY) == 0
    raw = rows(out)
    assert [r["source"] for r in raw] == [f"{labeled.name}:train[{i}]" for i in range(4)]
    # the folder is named, never its local path (rows, alps_dataset.json and card are published)
    assert json.loads((out / "alps_dataset.json").read_text())["source"] == f"dataset folder {labeled.name}"
    assert str(labeled) not in (out / "README.md").read_text()
    assert [r["image"]["bytes"] for r in raw] == [r["image"]["bytes"] for r in rows(labeled)]
    # same pixels, same settings, same seed: the same labels
    assert label_bytes(out) == label_bytes(labeled)


def test_overwrite_replaces_the_folder(labeled, tmp_path, tiny_sam_dir, blocks_dir):
    out = tmp_path / "out"
    shutil.copytree(labeled, out)
    (out / "stale.txt").write_text("old")
    assert label(blocks_dir, out, tiny_sam_dir, "--num-clusters", "2", *TINY, "--overwrite") == 0
    assert not (out / "stale.txt").exists()
    check_dataset(out, 2, [f"img_{i}.png" for i in range(4)])


def test_labels_do_not_depend_on_sharding_or_batching(labeled, blocks_dir, tiny_sam_dir, tmp_path):
    """K-means reads features in input order, re-chunked: shard and batch sizes do not change the result."""
    out = tmp_path / "one_by_one"
    args = ["--num-clusters", "3", *TINY, "--shard-size", "1", "--image-batch-size", "1", "--num-workers", "2"]
    assert label(blocks_dir, out, tiny_sam_dir, *args) == 0
    assert len(list((out / "work" / "pass1").glob("*.done"))) == 4
    assert [r["segments"]["bytes"] for r in rows(out)] == [r["segments"]["bytes"] for r in rows(labeled)]
    assert label_bytes(out) == label_bytes(labeled)


def test_output_inside_the_input_folder(blocks_dir, tiny_sam_dir, tmp_path, count_generated):
    folder = tmp_path / "tiles"
    shutil.copytree(blocks_dir, folder)
    out = folder / "pseudo"
    args = ["--num-clusters", "3", "--shard-size", "2", *TINY]
    assert label(folder, out, tiny_sam_dir, *args) == 0
    check_dataset(out, 3, [f"img_{i}.png" for i in range(4)])
    # resuming or overwriting does not read the output's own files as inputs
    assert label(folder, out, tiny_sam_dir, *args, "--resume") == 0
    assert len(count_generated) == 4
    assert label(folder, out, tiny_sam_dir, *args, "--overwrite") == 0
    assert len(count_generated) == 8
    check_dataset(out, 3, [f"img_{i}.png" for i in range(4)])
    assert failures(out) == {}
