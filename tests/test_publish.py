"""Publishing: what reaches the (stand-in) Hub, round trips on the uploaded folder, refusals before sending."""

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from huggingface_hub import metadata_load

from alps_hf.cli import main
from alps_hf.errors import PublishError
from alps_hf.hub.cards import card_is_generated
from alps_hf.hub.publish import detect_kind, push_to_hub, stage, validate_dataset
from hub_fixtures import FAKE_TOKEN, FakeHfApi, make_dataset_folder, make_model_folder, snapshot

DATASET_FILES = [
    "README.md",
    "alps_dataset.json",
    "class_histogram.png",
    "cluster_model.json",
    "cluster_model.safetensors",
    "data/train-00000-of-00002.parquet",
    "data/train-00001-of-00002.parquet",
    "failures.jsonl",
    "id2label.json",
    "label_config.json",
    "preview.png",
]
MODEL_FILES = [
    "README.md",
    "config.json",
    "id2label.json",
    "metrics.json",
    "model.safetensors",
    "preprocessor_config.json",
    "training_config.json",
    "training_curve.png",
]


@pytest.fixture(scope="module")
def dataset_src(tmp_path_factory):
    return make_dataset_folder(tmp_path_factory.mktemp("pub") / "pseudo")


@pytest.fixture(scope="module")
def model_src(tmp_path_factory):
    return make_model_folder(tmp_path_factory.mktemp("pub") / "ckpt")


@pytest.fixture
def dataset_dir(dataset_src, tmp_path):
    """A private copy for tests that break it."""
    return Path(shutil.copytree(dataset_src, tmp_path / "pseudo"))


@pytest.fixture
def token_env(monkeypatch, tmp_path):
    """A fake token in HF_TOKEN and no token file, so that it is the only token anywhere."""
    import huggingface_hub.constants

    monkeypatch.setenv("HF_TOKEN", FAKE_TOKEN)
    monkeypatch.setattr(huggingface_hub.constants, "HF_TOKEN_PATH", str(tmp_path / "no-token-file"))
    return FAKE_TOKEN


# ---------------------------------------------------------------------------------------------
# uploads to the stand-in


def test_dataset_push_sends_one_commit_with_the_right_files(dataset_src, tmp_path, token_env, capsys):
    before = snapshot(dataset_src)
    api = FakeHfApi(tmp_path / "hub")
    code = main_with_api(api, ["push", str(dataset_src), "--repo-id", "alps/isaid-pseudo", "--private"])
    assert code == 0
    assert api.names() == ["create_repo", "hf_hub_download", "upload_folder"]
    create = api.calls[0][1]
    assert create == {
        "repo_id": "alps/isaid-pseudo",
        "repo_type": "dataset",
        "private": True,
        "exist_ok": True,
    }
    upload = api.calls[2][1]
    assert upload["repo_type"] == "dataset" and upload["revision"] is None
    assert upload["commit_message"] == (
        "Upload ALPS pseudo-labeled dataset: 5 images, K=4 pseudo-classes, SAM facebook/sam-vit-base (alps_hf 0.1.0)"
    )
    assert api.uploaded_files() == DATASET_FILES  # work/, temp files excluded
    out = capsys.readouterr()
    assert "https://huggingface.co/datasets/alps/isaid-pseudo" in out.out
    assert "left out: work" in out.out
    _assert_no_token([out.out, out.err, repr(api.calls)], [api.received, dataset_src])
    assert snapshot(dataset_src) == before
    # the uploaded card names the repo in its snippets and still parses
    readme = (api.received / "README.md").read_text()
    assert 'load_dataset("alps/isaid-pseudo", split="train")' in readme
    assert metadata_load(api.received / "README.md")["configs"][0]["data_files"][0]["path"] == "data/train-*"


def test_uploaded_dataset_round_trips_through_load_dataset(dataset_src, tmp_path, token_env):
    from datasets import load_dataset

    api = FakeHfApi(tmp_path / "hub")
    push_to_hub(dataset_src, "alps/isaid-pseudo", api=api)
    source = load_dataset(
        "parquet",
        data_files={"train": sorted(str(p) for p in (dataset_src / "data").glob("train-*.parquet"))},
        cache_dir=str(tmp_path / "cache_src"),
    )
    uploaded = load_dataset(str(api.received), cache_dir=str(tmp_path / "cache_up"))
    assert list(uploaded) == ["train"]
    assert uploaded["train"].features == source["train"].features
    from alps_hf.labeling.writer import dataset_features

    assert uploaded["train"].features == dataset_features()  # the card's YAML says what the writer wrote
    assert uploaded["train"].num_rows == 5
    assert uploaded["train"].with_format("arrow")[:] == source["train"].with_format("arrow")[:]
    labels = uploaded["train"][0]["label"]
    assert labels.mode == "L" and set(labels.get_flattened_data()) <= {0, 1, 2, 3, 255}


def test_model_push_and_from_pretrained_round_trip(model_src, tmp_path, token_env, capsys):
    from transformers import SegformerForSemanticSegmentation

    folder, model = model_src
    before = snapshot(folder)
    api = FakeHfApi(tmp_path / "hub")
    result = push_to_hub(folder, "alps/segformer-b2-isaid-pseudo", revision="v1", api=api)
    assert api.names() == ["create_repo", "create_branch", "hf_hub_download", "upload_folder"]
    assert api.calls[0][1]["repo_type"] == "model" and api.calls[0][1]["private"] is False
    assert api.calls[1][1] == {
        "repo_id": "alps/segformer-b2-isaid-pseudo",
        "branch": "v1",
        "repo_type": "model",
        "exist_ok": True,
    }
    assert api.calls[3][1]["revision"] == "v1"
    assert api.calls[3][1]["commit_message"] == (
        "Upload SegformerForSemanticSegmentation, pretrain on alps/isaid-pseudo, step 4, mean IoU 0.3125 (alps_hf 0.1.0)"
    )
    assert api.uploaded_files() == MODEL_FILES  # checkpoints/, checkpoint-4/, temp file excluded
    assert result.files == MODEL_FILES and result.excluded == [
        ".model.safetensors.tmp-1",
        "checkpoint-4",
        "checkpoints",
    ]
    assert result.url == "https://huggingface.co/alps/segformer-b2-isaid-pseudo/tree/v1"
    assert snapshot(folder) == before
    pixels = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    loaded = SegformerForSemanticSegmentation.from_pretrained(api.received).eval()
    expected, got = model.state_dict(), loaded.state_dict()
    assert expected.keys() == got.keys() and all(torch.equal(expected[k], got[k]) for k in expected)
    with torch.no_grad():
        # identical weights; the kernels may order sums differently for the loaded tensors' layout
        torch.testing.assert_close(
            loaded(pixel_values=pixels).logits, model(pixel_values=pixels).logits, rtol=0, atol=1e-7
        )
    # downstream fine-tuning: a new head for other classes, the encoder kept
    target = {0: "building", 1: "road"}
    tuned = SegformerForSemanticSegmentation.from_pretrained(
        api.received, id2label=target, ignore_mismatched_sizes=True
    )
    assert tuned.config.num_labels == 2
    kept = {k: v for k, v in tuned.state_dict().items() if k.startswith("segformer.")}
    assert kept and all(torch.equal(v, expected[k]) for k, v in kept.items())
    assert tuned.decode_head.classifier.weight.shape[0] == 2
    meta = metadata_load(api.received / "README.md")
    assert meta["model-index"][0]["name"] == "segformer-b2-isaid-pseudo"
    out = capsys.readouterr()
    _assert_no_token([out.out, out.err, repr(api.calls)], [api.received, folder])


def test_hand_edited_hub_card_is_kept_unless_overwrite(dataset_src, tmp_path, token_env):
    edited = "---\nlicense: cc-by-4.0\n---\n# Our curated notes about this dataset\n"
    api = FakeHfApi(tmp_path / "hub", hub_readme=edited)
    result = push_to_hub(dataset_src, "alps/isaid-pseudo", api=api)
    assert result.card == "kept-hub-card"
    assert "README.md" not in api.uploaded_files() and "README.md" not in result.files
    assert "data/train-00000-of-00002.parquet" in api.uploaded_files()

    api = FakeHfApi(tmp_path / "hub2", hub_readme=edited)
    result = push_to_hub(dataset_src, "alps/isaid-pseudo", overwrite_card=True, api=api)
    assert result.card == "uploaded" and "README.md" in api.uploaded_files()

    # a card alps_hf generated earlier (marker intact) is replaced without the flag
    generated = (dataset_src / "README.md").read_text()
    assert card_is_generated(generated)
    api = FakeHfApi(tmp_path / "hub3", hub_readme=generated)
    result = push_to_hub(dataset_src, "alps/isaid-pseudo", api=api)
    assert result.card == "uploaded"
    assert 'load_dataset("alps/isaid-pseudo"' in (api.received / "README.md").read_text()


def test_locally_edited_card_is_uploaded_as_is(dataset_dir, tmp_path, token_env):
    readme = dataset_dir / "README.md"
    readme.write_text(readme.read_text().replace("## Limitations", "## Limitations\n\nHand-written note."))
    api = FakeHfApi(tmp_path / "hub")
    result = push_to_hub(dataset_dir, "alps/isaid-pseudo", api=api)
    assert result.card == "kept-local-card"
    assert (api.received / "README.md").read_text() == readme.read_text()


# ---------------------------------------------------------------------------------------------
# token and failures


def test_missing_token_says_how_to_log_in(dataset_src, tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_TOKEN_PATH", str(tmp_path / "no-token-file"))
    api = FakeHfApi(tmp_path / "hub", token=None)
    with pytest.raises(PublishError, match=r"no Hugging Face token.*hf auth login.*HF_TOKEN"):
        push_to_hub(dataset_src, "alps/isaid-pseudo", api=api)
    assert api.calls == []


def test_refused_write_says_how_to_log_in(dataset_src, tmp_path, token_env, capsys):
    api = FakeHfApi(tmp_path / "hub", refuse=403)
    code = main_with_api(api, ["push", str(dataset_src), "--repo-id", "someone-else/isaid-pseudo"])
    assert code == 2
    err = capsys.readouterr().err
    assert (
        "refused to write to someone-else/isaid-pseudo" in err
        and "hf auth login" in err
        and "HF_TOKEN" in err
    )
    assert FAKE_TOKEN not in err
    assert api.names() == ["create_repo"]


def test_failed_upload_leaves_folder_untouched_and_can_be_retried(dataset_src, tmp_path, token_env):
    before = snapshot(dataset_src)
    api = FakeHfApi(tmp_path / "hub", fail_upload=ConnectionError(f"connection reset (token {FAKE_TOKEN})"))
    with pytest.raises(PublishError, match="unchanged, run the same command again to retry") as info:
        push_to_hub(dataset_src, "alps/isaid-pseudo", api=api)
    assert FAKE_TOKEN not in str(info.value)  # scrubbed even when an exception echoes it
    assert snapshot(dataset_src) == before
    api.fail_upload = None
    push_to_hub(dataset_src, "alps/isaid-pseudo", api=api)
    assert api.uploaded_files() == DATASET_FILES


def test_dry_run_needs_no_token_and_sends_nothing(model_src, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    folder, _ = model_src
    api = FakeHfApi(tmp_path / "hub")
    assert main_with_api(api, ["push", str(folder), "--repo-id", "alps/m", "--dry-run"]) == 0
    assert api.calls == []
    out = capsys.readouterr().out
    assert "would upload 8 files" in out
    listed = [line.strip() for line in out.splitlines() if line.startswith("  ")]
    assert listed == MODEL_FILES  # --dry-run lists exactly what would be sent


# ---------------------------------------------------------------------------------------------
# refused before anything is sent


@pytest.mark.parametrize(
    "repo_id", ["", "a/b/c", "-abc/x", "a--b/x", "a/b..c", "user/na me", "user/" + "x" * 97]
)
def test_invalid_repo_id_is_refused(dataset_src, tmp_path, token_env, repo_id):
    api = FakeHfApi(tmp_path / "hub")
    with pytest.raises(PublishError, match=r"invalid repo id .*letters, digits, '-', '_' or '\.'.*--repo-id"):
        push_to_hub(dataset_src, repo_id, api=api)
    assert api.calls == []


def test_cli_refuses_invalid_repo_id(dataset_src, capsys):
    assert main(["push", str(dataset_src), "--repo-id", "bad--name"]) == 2
    assert "invalid repo id 'bad--name'" in capsys.readouterr().err


def test_folder_that_is_neither_is_refused(tmp_path, token_env):
    folder = tmp_path / "random"
    folder.mkdir()
    (folder / "notes.txt").write_text("hello")
    with pytest.raises(
        PublishError,
        match=r"neither an alps_hf dataset folder \(needs alps_dataset.json.*config.json and model.safetensors.*notes.txt",
    ):
        detect_kind(folder)
    (folder / "config.json").write_text("{}")
    with pytest.raises(PublishError, match="looks like a model folder but has no model.safetensors"):
        detect_kind(folder)


def _refused(folder, tmp_path, pattern):
    before = snapshot(folder)
    api = FakeHfApi(tmp_path / "hub")
    with pytest.raises(PublishError, match=pattern):
        push_to_hub(folder, "alps/isaid-pseudo", api=api)
    assert api.calls == []
    assert snapshot(folder) == before


def test_missing_shard_is_refused(dataset_dir, tmp_path, token_env):
    (dataset_dir / "data" / "train-00001-of-00002.parquet").unlink()
    _refused(dataset_dir, tmp_path, r"shard data/train-00001-of-00002.parquet .* missing")


def test_unlisted_extra_shard_is_refused(dataset_dir, tmp_path, token_env):
    shutil.copy(
        dataset_dir / "data" / "train-00000-of-00002.parquet",
        dataset_dir / "data" / "train-00002-of-00003.parquet",
    )
    _refused(dataset_dir, tmp_path, r"\['data/train-00002-of-00003.parquet'\] are under data/ but not listed")


def test_misnumbered_shards_are_refused(dataset_dir, tmp_path, token_env):
    info = json.loads((dataset_dir / "alps_dataset.json").read_text())
    os.rename(
        dataset_dir / "data" / "train-00001-of-00002.parquet",
        dataset_dir / "data" / "train-00001-of-00003.parquet",
    )
    info["splits"]["train"]["files"][1] = "data/train-00001-of-00003.parquet"
    (dataset_dir / "alps_dataset.json").write_text(json.dumps(info))
    _refused(dataset_dir, tmp_path, r"lists 2 shard\(s\) .* but expects .*train-00001-of-00002")


def test_row_count_mismatch_is_refused(dataset_dir, tmp_path, token_env):
    info = json.loads((dataset_dir / "alps_dataset.json").read_text())
    info["splits"]["train"]["num_rows"] = 7
    (dataset_dir / "alps_dataset.json").write_text(json.dumps(info))
    _refused(dataset_dir, tmp_path, r"shards hold 5 rows, alps_dataset.json says 7")


def test_card_configs_disagreeing_with_shards_are_refused(dataset_dir, tmp_path, token_env):
    readme = dataset_dir / "README.md"
    # a hand edit (so the card is kept) that points the train split at files that are not there
    readme.write_text(readme.read_text().replace("path: data/train-*", "path: data/train-00000-*"))
    _refused(
        dataset_dir,
        tmp_path,
        r"README.md configs select \['data/train-00000-of-00002.parquet'\] for split 'train'",
    )


def test_corrupt_shard_is_refused(dataset_dir, tmp_path, token_env):
    (dataset_dir / "data" / "train-00000-of-00002.parquet").write_bytes(b"not parquet at all")
    _refused(dataset_dir, tmp_path, r"train-00000-of-00002.parquet is not a readable parquet file")


def test_weights_that_do_not_load_are_refused(model_src, tmp_path, token_env):
    folder = Path(shutil.copytree(model_src[0], tmp_path / "broken"))
    (folder / "model.safetensors").write_bytes(b"\x00" * 64)
    _refused(
        folder,
        tmp_path,
        r"weights in broken do not load with SegformerForSemanticSegmentation.from_pretrained",
    )


def test_weights_missing_parameters_are_refused(model_src, tmp_path, token_env):
    from safetensors.torch import load_file, save_file

    folder = Path(shutil.copytree(model_src[0], tmp_path / "partial"))
    weights = load_file(folder / "model.safetensors")
    save_file(
        {k: v for k, v in weights.items() if not k.startswith("decode_head.classifier")},
        folder / "model.safetensors",
        metadata={"format": "pt"},
    )
    _refused(folder, tmp_path, r"left parameters uninitialised or mismatched .*decode_head.classifier")


def test_model_without_image_processor_is_refused(model_src, tmp_path, token_env):
    folder = Path(shutil.copytree(model_src[0], tmp_path / "noproc"))
    (folder / "preprocessor_config.json").unlink()
    _refused(folder, tmp_path, r"no preprocessor_config.json")


def test_stage_is_what_validation_sees(dataset_src, tmp_path):
    kind, card = stage(dataset_src, tmp_path / "staged", repo_id="alps/x")
    assert (kind, card) == ("dataset", "uploaded")
    assert validate_dataset(tmp_path / "staged")["num_clusters"] == 4
    assert not (tmp_path / "staged" / "work").exists()


# ---------------------------------------------------------------------------------------------


def main_with_api(api, argv):
    """Run the CLI with the stand-in answering where `HfApi()` would."""
    from alps_hf.hub import publish

    original = publish.default_api
    publish.default_api = lambda: api
    try:
        return main(argv)
    finally:
        publish.default_api = original


def _assert_no_token(texts, folders):
    for text in texts:
        assert FAKE_TOKEN not in text
    for folder in folders:
        for path in Path(folder).rglob("*"):
            if path.is_file():
                assert FAKE_TOKEN.encode() not in path.read_bytes(), path


def test_auth_errors_are_recognised_by_exception_class(dataset_src, tmp_path, token_env):
    """A RepositoryNotFoundError from upload (no rights / no such repo) is a refusal; upload gets the ignore rule."""
    import httpx2
    from huggingface_hub.errors import RepositoryNotFoundError

    from alps_hf.hub.publish import IGNORE_PATTERNS

    response = httpx2.Response(404, request=httpx2.Request("POST", "https://huggingface.co/api/x"))
    api = FakeHfApi(tmp_path / "hub", fail_upload=RepositoryNotFoundError("no such repo", response=response))
    with pytest.raises(PublishError, match=r"refused to write to alps/isaid-pseudo .*hf auth login"):
        push_to_hub(dataset_src, "alps/isaid-pseudo", api=api)
    assert api.calls[-1][1]["ignore_patterns"][: len(IGNORE_PATTERNS)] == list(IGNORE_PATTERNS)

    class AuthErrorLookalike(Exception):  # a class *name* is no evidence of an auth failure
        pass

    AuthErrorLookalike.__name__ = "LocalTokenNotFoundError"
    api = FakeHfApi(tmp_path / "hub2", fail_upload=AuthErrorLookalike("boom"))
    with pytest.raises(PublishError, match="upload to alps/isaid-pseudo failed"):
        push_to_hub(dataset_src, "alps/isaid-pseudo", api=api)


def test_commit_message_and_card_name_a_local_sam_by_folder_only(dataset_dir, tmp_path, token_env):
    sam = tmp_path / "home" / "me" / "toy-sam"
    sam.mkdir(parents=True)
    (sam / "model.safetensors").write_bytes(b"w")
    info = json.loads((dataset_dir / "alps_dataset.json").read_text())
    (dataset_dir / "alps_dataset.json").write_text(json.dumps({**info, "sam_model": str(sam)}))
    config = json.loads((dataset_dir / "label_config.json").read_text())
    (dataset_dir / "label_config.json").write_text(json.dumps({**config, "sam": str(sam)}))
    api = FakeHfApi(tmp_path / "hub")
    result = push_to_hub(dataset_dir, "alps/isaid-pseudo", api=api)
    assert result.commit_message == (
        "Upload ALPS pseudo-labeled dataset: 5 images, K=4 pseudo-classes, SAM toy-sam (local folder) (alps_hf 0.1.0)"
    )
    readme = (api.received / "README.md").read_text()
    assert str(tmp_path) not in readme and "home/me" not in readme and "toy-sam (local folder)" in readme


def test_staged_json_files_name_no_local_path(dataset_dir, model_src, tmp_path):
    """label_config.json / alps_dataset.json / training records are uploaded: local folders by name only."""
    sam = tmp_path / "models" / "my-sam"
    info = json.loads((dataset_dir / "alps_dataset.json").read_text())
    info["sam_model"] = str(sam)
    (dataset_dir / "alps_dataset.json").write_text(json.dumps(info, indent=2))
    config = {"inputs": [str(tmp_path / "tiles")], "output": str(dataset_dir), "sam": str(sam), "clusters": None,
              "num_clusters": 4, "split": "train"}
    (dataset_dir / "label_config.json").write_text(json.dumps(config))
    before = {p.name: p.read_bytes() for p in dataset_dir.glob("*.json")}
    staged = tmp_path / "staged"
    stage(dataset_dir, staged, repo_id="alps/x")
    got = json.loads((staged / "label_config.json").read_text())
    assert got == {**config, "inputs": ["tiles (local folder)"], "output": "pseudo (local folder)",
                   "sam": "my-sam (local folder)"}
    staged_info = json.loads((staged / "alps_dataset.json").read_text())
    assert staged_info["sam_model"] == "my-sam (local folder)"
    assert staged_info["splits"] == info["splits"]  # relative file names are the folder's own: kept
    assert list(staged_info["features"]) == list(info["features"])  # column order kept
    assert validate_dataset(staged)["num_clusters"] == 4
    for path in staged.rglob("*"):
        if path.is_file() and path.suffix in (".json", ".md"):
            assert str(tmp_path) not in path.read_text(), path.name
    # the local folder is untouched (resume / recluster read it)
    assert {p.name: p.read_bytes() for p in dataset_dir.glob("*.json")} == before
    model_staged = tmp_path / "model-staged"
    stage(model_src[0], model_staged, repo_id="alps/m")
    root = str(model_src[0].parent)
    for path in model_staged.rglob("*.json"):
        assert root not in path.read_text(), path.name
