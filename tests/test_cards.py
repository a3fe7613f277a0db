"""Dataset and model cards: YAML parsed by huggingface_hub, bodies carrying every recorded value."""

import json

import pytest
from huggingface_hub import metadata_load

from alps_hf.errors import DatasetFormatError
from alps_hf.hub.cards import (
    card_is_generated,
    is_hub_id,
    public_name,
    render_dataset_card,
    render_model_card,
    repo_id_problem,
    write_model_card,
)
from hub_fixtures import K, make_dataset_folder, make_model_folder


@pytest.fixture(scope="module")
def dataset_folder(tmp_path_factory):
    return make_dataset_folder(tmp_path_factory.mktemp("cards") / "pseudo")


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory):
    root, _ = make_model_folder(tmp_path_factory.mktemp("cards") / "ckpt")
    return root


def test_dataset_card_yaml(dataset_folder, tmp_path):
    info = json.loads((dataset_folder / "alps_dataset.json").read_text())
    card = render_dataset_card(info, repo_id="alps/isaid-pseudo")
    card.save(tmp_path / "README.md")
    meta = metadata_load(tmp_path / "README.md")
    assert meta["license"] == "cc-by-4.0"
    assert meta["task_categories"] == ["image-segmentation"]
    assert set(meta["tags"]) >= {"remote-sensing", "pseudo-labels", "segment-anything", "alps"}
    assert meta["size_categories"] == ["n<1K"]
    assert meta["configs"] == [
        {"config_name": "default", "data_files": [{"split": "train", "path": "data/train-*"}]}
    ]
    names = [f["name"] for f in meta["dataset_info"]["features"]]
    assert names == [
        "image",
        "label",
        "segments",
        "segment_class",
        "segment_area",
        "segment_iou",
        "segment_stability",
        "segment_kind",
        "source",
        "meta",
    ]
    # the writer's schema (int32 class ids), as `alps-hf label` writes it
    assert {"name": "segment_class", "list": "int32"} in meta["dataset_info"]["features"]
    assert meta["dataset_info"]["splits"] == [
        {"name": "train", "num_bytes": info["splits"]["train"]["num_bytes"], "num_examples": 5}
    ]


def test_dataset_card_body_records_how_it_was_made(dataset_folder):
    info = json.loads((dataset_folder / "alps_dataset.json").read_text())
    info["sam_revision"] = "abc123"
    text = str(render_dataset_card(info, repo_id="alps/isaid-pseudo"))
    from alps_hf.hub.cards import generator_keys

    # every recorded setting is listed, in MaskGeneratorConfig's declared order
    recorded = [k for k in generator_keys() if k in info["generator"]]
    assert len(recorded) >= 13 and set(recorded) == set(info["generator"])
    positions = [text.index(f"| `{key}` |") for key in recorded]
    assert positions == sorted(positions)
    assert "| `pred_iou_thresh` | 0.88 |" in text and "| `max_area_fraction` | 0.3 |" in text
    assert "`facebook/sam-vit-base`" in text and "`abc123`" in text
    assert f"**{K} pseudo-classes**" in text
    assert "| feature normalisation | l2 |" in text and "| seed | 0 |" in text
    assert "| pixels covered by a mask | 50.0 % |" in text
    assert "| images that failed to decode (skipped, see failures.jsonl) | 1 |" in text
    # the largest class first, with its pixel share (640 of 1200)
    assert "| 0 | cluster_00 | 53.3 % | 5 |" in text
    assert 'load_dataset("alps/isaid-pseudo", split="train")' in text
    assert "ignore_mismatched_sizes=True" in text
    assert "Pseudo-classes are not semantic classes" in text
    assert "arXiv:2406.10855" in text and "Segment Anything" in text
    assert "class_histogram.png" in text and (dataset_folder / "class_histogram.png").is_file()


def test_written_dataset_card_parses_and_is_marked(dataset_folder):
    text = (dataset_folder / "README.md").read_text()
    assert metadata_load(dataset_folder / "README.md")["task_categories"] == ["image-segmentation"]
    assert card_is_generated(text)
    assert not card_is_generated(text.replace("Limitations", "Known limitations"))
    assert not card_is_generated("---\nlicense: mit\n---\n# hand written\n")


def test_dataset_card_refuses_info_without_features():
    with pytest.raises(DatasetFormatError, match="'splits' and 'features'"):
        render_dataset_card({"num_clusters": 4, "splits": {"train": {"num_rows": 1, "files": []}}})


def test_model_card_yaml_and_model_index(model_folder):
    meta = metadata_load(model_folder / "README.md")
    assert meta["library_name"] == "transformers"
    assert meta["pipeline_tag"] == "image-segmentation"
    assert meta["datasets"] == ["alps/isaid-pseudo"]
    assert meta["base_model"] == "nvidia/mit-b0"
    assert meta["license"] == "unknown"
    assert {"remote-sensing", "alps", "pseudo-labels", "segformer"} <= set(meta["tags"])
    (result,) = meta["model-index"][0]["results"]
    assert result["task"]["type"] == "image-segmentation"
    assert result["dataset"] == {
        "name": "alps/isaid-pseudo",
        "type": "alps/isaid-pseudo",
        "split": "validation",
    }
    values = {m["type"]: m["value"] for m in result["metrics"]}
    assert values == {"mean_iou": 0.3125, "mean_accuracy": 0.5, "overall_accuracy": 0.75}


def test_model_card_body(model_folder):
    text = str(render_model_card(model_folder, repo_id="alps/segformer-b2-isaid-pseudo"))
    assert 'SegformerForSemanticSegmentation.from_pretrained(\n    "alps/segformer-b2-isaid-pseudo",' in text
    assert "id2label=id2label" in text and "ignore_mismatched_sizes=True" in text
    assert "| mean IoU | 0.3125 |" in text and "| class_2 | n/a (class absent) |" in text
    assert "| `learning_rate` | 6e-05 |" in text and "| `max_steps` | 4 |" in text
    assert "![training curve](training_curve.png)" in text
    assert "not semantic" in text and "arXiv:2406.10855" in text and "SegFormer" in text
    assert card_is_generated(text)


def test_model_card_without_metrics_says_not_measured(tmp_path):
    root, _ = make_model_folder(tmp_path / "ckpt", metrics=False, task="finetune", dataset="./local/potsdam")
    write_model_card(root)
    meta = metadata_load(root / "README.md")
    assert "model-index" not in meta
    # a local path is no Hub dataset id: it stays out of the metadata, but the body names it
    assert "datasets" not in meta and "base_model" not in meta
    text = (root / "README.md").read_text()
    assert "Not yet measured" in text and "`potsdam (local folder)`" in text and "./local" not in text
    assert "pseudo-labels" not in meta["tags"]


@pytest.mark.parametrize(
    ("repo_id", "ok"),
    [
        ("alps/isaid-pseudo", True),
        ("user_1/segformer-b2.v1", True),
        ("name-only", True),
        ("", False),
        ("a/b/c", False),
        ("-abc/x", False),
        ("abc/x-", False),
        ("a--b/x", False),
        ("a/b..c", False),
        ("user/na me", False),
        ("user/" + "x" * 97, False),
        ("model.git", False),
        (None, False),
    ],
)
def test_repo_id_rule(repo_id, ok):
    assert (repo_id_problem(repo_id) is None) is ok


def test_a_bare_local_folder_name_is_not_a_hub_reference(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "pseudo").mkdir()
    assert repo_id_problem("pseudo") is None and not is_hub_id("pseudo")
    assert public_name("pseudo") == "pseudo (local folder)"
    assert is_hub_id("alps/isaid-pseudo") and public_name("alps/isaid-pseudo") == "alps/isaid-pseudo"
    assert is_hub_id("gone") and public_name(str(tmp_path / "ckpt")) == "ckpt (local folder)"


def test_dataset_card_keeps_contract_column_order_and_describes_extra_columns(dataset_folder):
    info = json.loads((dataset_folder / "alps_dataset.json").read_text())
    feats = dict(
        info["features"],
        meta={"dtype": "string", "_type": "Value"},
        tile_crs={"dtype": "string", "_type": "Value"},
    )
    info["features"] = dict(sorted(feats.items()))  # as json.dumps(sort_keys=True) leaves it
    card = render_dataset_card(info)
    names = [f["name"] for f in card.data.to_dict()["dataset_info"]["features"]]
    assert names[:3] == ["image", "label", "segments"] and names[-2:] == ["meta", "tile_crs"]
    text = str(card)
    assert "| `meta` | string (JSON) |" in text and "| `tile_crs` | string | additional column |" in text
    assert "| `label` | 8-bit PNG | pseudo-class `0..3` of each pixel; `255` = no mask |" in text


def test_yaml_features_are_what_datasets_reads_back(tmp_path):
    """The card's features, built from Features.to_dict(), are parsed by load_dataset into the writer's schema."""
    from datasets import Dataset, Features, Image, List, Value, load_dataset

    from alps_hf.hub.cards import yaml_features
    from alps_hf.labeling.writer import dataset_features

    features = dataset_features()
    assert {"name": "segment_class", "list": "int32"} in yaml_features(features)
    assert {"name": "meta", "dtype": "string"} in yaml_features(features)
    # a column whose parquet type differs from the card's: load_dataset must follow the card
    (tmp_path / "data").mkdir()
    Dataset.from_dict({"n": [[1, 2]], "s": ["a"]}, features=Features({"n": List(Value("int64")), "s": Value("string")})).to_parquet(
        str(tmp_path / "data" / "train-00000-of-00001.parquet")
    )
    wanted = Features({"n": List(Value("int32")), "s": Value("string")})
    info = {"splits": {"train": {"num_rows": 1, "files": ["data/train-00000-of-00001.parquet"]}},
            "features": wanted.to_dict()}
    render_dataset_card(info).save(tmp_path / "README.md")
    loaded = load_dataset(str(tmp_path), split="train", cache_dir=str(tmp_path / "cache"))
    assert loaded.features == wanted
    with pytest.raises(DatasetFormatError, match="column 'img' has feature"):
        yaml_features(Features({"img": Image(mode="RGB")}))


# ---------------------------------------------------------------------------------------------
# issue 12: what a newcomer read wrongly in the cards


def test_local_card_reads_the_folder_not_the_hub(dataset_folder):
    local = (dataset_folder / "README.md").read_text()  # written without a repo id, as `alps-hf label` does
    assert 'hf_hub_download("path/to/this/folder"' not in local
    assert 'json.load(open("path/to/this/folder/id2label.json"))' in local
    pushed = str(render_dataset_card(json.loads((dataset_folder / "alps_dataset.json").read_text()), "alps/x"))
    assert 'hf_hub_download("alps/x", "id2label.json", repo_type="dataset")' in pushed


def test_local_sam_is_named_by_folder_and_hashed(tmp_path):
    import hashlib

    sam = tmp_path / "private" / "models" / "toy-sam"
    sam.mkdir(parents=True)
    (sam / "model.safetensors").write_bytes(b"weights of a local SAM")
    (sam / "config.json").write_text("{}")
    root = make_dataset_folder(tmp_path / "pseudo")
    config = json.loads((root / "label_config.json").read_text())
    (root / "label_config.json").write_text(json.dumps({**config, "sam": str(sam)}))
    info = json.loads((root / "alps_dataset.json").read_text())
    (root / "alps_dataset.json").write_text(json.dumps({**info, "sam_model": str(sam)}))
    from alps_hf.hub.cards import write_dataset_card

    text = write_dataset_card(root).read_text()
    digest = hashlib.sha256(b"weights of a local SAM").hexdigest()
    assert f"| SAM revision | local weights, sha256 of `model.safetensors`: `{digest}` |" in text
    assert "| SAM checkpoint | `toy-sam (local folder)` |" in text
    assert str(tmp_path) not in text and "private/models" not in text
    assert "https://arxiv.org/abs/2304.02643" in text  # no Hub link for a local model
    (sam / "model.safetensors").unlink()
    assert "its weights were not found here to hash" in write_dataset_card(root).read_text()


def test_card_follows_the_split_of_the_run_and_loads_as_written(tmp_path):
    from datasets import load_dataset

    root = make_dataset_folder(tmp_path / "pseudo", rows_per_shard=(2,), split="validation")
    text = (root / "README.md").read_text()
    assert 'split="validation"' in text and 'split="train"' not in text
    ds = load_dataset(str(root), split="validation", cache_dir=str(tmp_path / "cache"))  # the snippet, on the folder
    assert ds.num_rows == 2


def test_clusters_run_names_where_its_centroids_came_from(tmp_path):
    root = make_dataset_folder(tmp_path / "pseudo")
    default = (root / "README.md").read_text()
    assert "| clustering | online (mini-batch) K-means, fitted on these images' masks |" in default
    config = json.loads((root / "label_config.json").read_text())
    (root / "label_config.json").write_text(json.dumps({**config, "clusters": str(tmp_path / "old-run")}))
    from alps_hf.hub.cards import write_dataset_card

    text = write_dataset_card(root).read_text()
    assert (
        "| clustering | centroids of an existing cluster model, `old-run (local folder)` (`--clusters`): "
        "not fitted on these images |"
    ) in text
    assert str(tmp_path) not in text


def test_model_card_with_metrics_but_no_evaluation(tmp_path):
    root, _ = make_model_folder(tmp_path / "ckpt", metrics=False)
    (root / "metrics.json").write_text(json.dumps({"step": 1, "eval": {}, "history": [{"step": 1, "loss": 2.0}]}))
    text = str(render_model_card(root))
    assert "has no `metrics.json`" not in text
    assert "`metrics.json` records the training run but no evaluation" in text
    assert "the run logged 1 training step(s), too few for a curve" in text
    assert "![training curve]" not in text
    assert "model-index" not in metadata_load_text(text)


def metadata_load_text(text: str) -> dict:
    """The YAML header of a card given as text."""
    from huggingface_hub import ModelCard

    return ModelCard(text).data.to_dict()


def test_training_curve_of_a_short_run_shows_points_and_says_too_little(tmp_path):
    import numpy as np
    from PIL import Image

    from alps_hf.hub.cards import render_training_curve

    def blue_pixels(path):  # tab:blue marker pixels inside the plot area (the y label is outside it)
        rgb = np.asarray(Image.open(path).convert("RGB")).astype(int)
        h, w, _ = rgb.shape
        core = rgb[h // 5 : 4 * h // 5, w // 5 : 4 * w // 5]
        return int((np.abs(core - [31, 119, 180]).sum(-1) < 40).sum())

    def red_pixels(path):  # the "too few" note is drawn in tab:red, a colour nothing else uses
        rgb = np.asarray(Image.open(path).convert("RGB")).astype(int)
        return int((np.abs(rgb - [214, 39, 40]).sum(-1) < 40).sum())

    one = render_training_curve([{"step": 1, "loss": 1.5}], [], tmp_path / "one.png")
    three = render_training_curve([{"step": s, "loss": 2.0 - s / 4} for s in (1, 2, 3)], [], tmp_path / "three.png")
    assert blue_pixels(one) > 8  # a single step is a visible marker (a plain line draws nothing)
    assert red_pixels(one) > 100 and red_pixels(three) == 0
    assert not list(tmp_path.glob(".*"))  # written atomically, no temporary left
