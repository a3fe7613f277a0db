"""Online K-means and the saved cluster model (safetensors + JSON, never pickle)."""

import json

import numpy as np
import pytest

from alps_hf.errors import ClusterModelError, ConfigError
from alps_hf.labeling.clustering import ClusterModel, fit_online_kmeans, normalize_features, rechunk


def blobs(seed: int = 0, n_per: int = 60, dim: int = 8, k: int = 4) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(k, dim)) * 5
    return np.concatenate([c + rng.normal(size=(n_per, dim)) for c in centres]).astype(np.float32)[
        rng.permutation(k * n_per)]


def test_normalize_features():
    x = np.array([[3.0, 4.0], [0.0, 0.0]], dtype=np.float64)
    np.testing.assert_allclose(normalize_features(x, "l2"), [[0.6, 0.8], [0.0, 0.0]])
    out = normalize_features(x, "none")
    assert out.dtype == np.float32 and out is not x
    np.testing.assert_array_equal(out, x)
    with pytest.raises(ConfigError, match="'cosine'"):
        normalize_features(x, "cosine")


def test_predict_nearest_centroid():
    model = ClusterModel(np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]], np.float32), "none")
    x = np.array([[1.0, 1.0], [9.0, -1.0], [-1.0, 8.0], [5.0, 0.0]], np.float32)
    assert model.predict(x).tolist() == [0, 1, 2, 0]  # (5, 0) is a tie: the first centroid wins
    assert model.predict(x, chunk=1).tolist() == [0, 1, 2, 0]
    l2 = ClusterModel(np.array([[1.0, 0.0], [0.0, 1.0]], np.float32), "l2")
    assert l2.predict(np.array([[100.0, 1.0], [0.1, 0.2]], np.float32)).tolist() == [0, 1]
    with pytest.raises(ClusterModelError, match="feature size 2"):
        model.predict(np.zeros((3, 5), np.float32))


def test_save_load_round_trip_gives_identical_assignments(tmp_path):
    x = blobs()
    model = fit_online_kmeans(lambda: [x[:100], x[100:]], 4, seed=3, batch_size=64, passes=2,
                              metadata={"sam_model": "tiny"})
    weights, meta = model.save(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cluster_model.json", "cluster_model.safetensors"]
    info = json.loads(meta.read_text())
    assert info["num_clusters"] == 4 and info["feature_dim"] == 8 and info["normalization"] == "l2"
    assert info["seed"] == 3 and info["sam_model"] == "tiny" and info["format"] == "alps_hf.cluster_model"
    for source in (tmp_path, weights, meta):
        loaded = ClusterModel.load(source)
        assert np.array_equal(loaded.centroids, model.centroids)
        assert loaded.normalization == "l2" and loaded.metadata["sam_model"] == "tiny"
        new = blobs(seed=9)
        assert np.array_equal(loaded.predict(new), model.predict(new))
    # the blobs are well separated: four clusters, each blob in one
    labels = model.predict(x)
    assert sorted(np.bincount(labels).tolist()) == [60, 60, 60, 60]


def test_load_refuses_corrupt_or_mismatched_files(tmp_path):
    model = ClusterModel(np.eye(3, dtype=np.float32), "none", {"seed": 0})
    good = tmp_path / "good"
    model.save(good)

    def copy(name):
        folder = tmp_path / name
        folder.mkdir()
        for f in good.iterdir():
            (folder / f.name).write_bytes(f.read_bytes())
        return folder

    missing = tmp_path / "missing"
    missing.mkdir()
    with pytest.raises(ClusterModelError, match="cluster model not found"):
        ClusterModel.load(missing)
    garbage = copy("garbage")
    (garbage / "cluster_model.safetensors").write_bytes(b"this is not safetensors at all")
    with pytest.raises(ClusterModelError, match="cannot read"):
        ClusterModel.load(garbage)
    truncated = copy("truncated")
    data = (truncated / "cluster_model.safetensors").read_bytes()
    (truncated / "cluster_model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ClusterModelError, match="cannot read"):
        ClusterModel.load(truncated)
    bad_json = copy("bad_json")
    (bad_json / "cluster_model.json").write_text("{not json")
    with pytest.raises(ClusterModelError, match="cannot read"):
        ClusterModel.load(bad_json)
    wrong_k = copy("wrong_k")
    info = json.loads((wrong_k / "cluster_model.json").read_text())
    (wrong_k / "cluster_model.json").write_text(json.dumps({**info, "num_clusters": 5}))
    with pytest.raises(ClusterModelError, match="says 5 clusters but .* holds 3 centroids"):
        ClusterModel.load(wrong_k)
    foreign = copy("foreign")
    (foreign / "cluster_model.json").write_text(json.dumps({**info, "format": "something_else"}))
    with pytest.raises(ClusterModelError, match="not an alps_hf cluster model"):
        ClusterModel.load(foreign)
    from safetensors.numpy import save_file

    other_key = copy("other_key")
    save_file({"weights": np.eye(3, dtype=np.float32)}, str(other_key / "cluster_model.safetensors"))
    with pytest.raises(ClusterModelError, match="cannot read"):
        ClusterModel.load(other_key)


@pytest.mark.parametrize("size", [1, 3, 7, 100])
def test_rechunk(size):
    rng = np.random.default_rng(size)
    parts = [rng.normal(size=(n, 2)) for n in (0, 5, 1, 0, 9, 2)]
    out = list(rechunk(iter(parts), size))
    assert all(len(o) == size for o in out[:-1]) and 0 < len(out[-1]) <= size
    np.testing.assert_array_equal(np.concatenate(out), np.concatenate(parts))
    assert list(rechunk(iter([np.zeros((0, 2))]), 4)) == []


def test_kmeans_independent_of_chunking_and_seeded():
    x = blobs(seed=1, n_per=50)

    def fit(splits, seed=0):
        chunks = lambda: np.split(x, splits)  # noqa: E731
        return fit_online_kmeans(chunks, 4, seed=seed, batch_size=32, passes=2).centroids

    a = fit([10, 11, 150])
    b = fit([1, 2, 3, 4, 100, 199])
    c = fit([])
    assert np.array_equal(a, b) and np.array_equal(a, c)
    assert np.array_equal(fit([], seed=5), fit([7], seed=5))


def test_kmeans_too_few_features_says_how_many():
    x = blobs(n_per=2)  # 8 features
    with pytest.raises(ConfigError, match=r"--num-clusters 10 is larger than the number of masks found \(8\)"):
        fit_online_kmeans(lambda: [x[:3], x[3:]], 10, batch_size=4)
    with pytest.raises(ConfigError, match="no mask features"):
        fit_online_kmeans(lambda: [], 2)
