"""Online K-means over mask features, and the cluster model that labels new images.

`fit_online_kmeans` streams feature chunks into scikit-learn's `MiniBatchKMeans.partial_fit`,
re-chunked to a fixed batch size so the result depends only on the order of the features (which
is the sorted input order), never on how they were split into shards or processes.
The fitted model is saved as safetensors centroids plus JSON metadata: never a pickle, since a
pickle downloaded from the Hub runs code when loaded.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from alps_hf.core import atomic_path, atomic_write_text
from alps_hf.errors import ClusterModelError, ConfigError

FORMAT = "alps_hf.cluster_model"
FORMAT_VERSION = 1
FILE_STEM = "cluster_model"


def normalize_features(features: np.ndarray, mode: str) -> np.ndarray:
    """float32 copy of features (N, D), L2-normalised per row for mode 'l2', unchanged for 'none'."""
    x = np.asarray(features, dtype=np.float32)
    if mode == "l2":
        norm = np.linalg.norm(x, axis=1, keepdims=True)
        return x / np.maximum(norm, 1e-12)
    if mode == "none":
        return x.copy()
    raise ConfigError(f"unknown feature normalisation {mode!r}; choose 'l2' or 'none'")


@dataclass
class ClusterModel:
    """K centroids in the normalised feature space, plus what is needed to use them again.

    Attributes:
        centroids: (K, D) float32.
        normalization: 'l2' or 'none', applied to features before the nearest-centroid search.
        metadata: JSON-serialisable facts (feature source, SAM id and revision, seed, counts).
    """

    centroids: np.ndarray
    normalization: str = "l2"
    metadata: dict = field(default_factory=dict)

    @property
    def num_clusters(self) -> int:
        """K, the number of centroids (pseudo-classes)."""
        return int(self.centroids.shape[0])

    @property
    def feature_dim(self) -> int:
        """D, the length of the feature vectors the centroids live among (256 for SAM)."""
        return int(self.centroids.shape[1])

    def predict(self, features: np.ndarray, chunk: int = 65536) -> np.ndarray:
        """Cluster id (int64) of each feature row: the nearest centroid (first one on ties)."""
        x = np.asarray(features)
        if x.ndim != 2 or x.shape[1] != self.feature_dim:
            raise ClusterModelError(
                f"features of shape {tuple(x.shape)} do not fit this cluster model (feature size "
                f"{self.feature_dim}); it was made with another SAM model: refit without --clusters"
            )
        c = self.centroids.astype(np.float32)
        c_sq = (c * c).sum(axis=1)
        out = np.empty(len(x), dtype=np.int64)
        for start in range(0, len(x), chunk):
            xn = normalize_features(x[start:start + chunk], self.normalization)
            out[start:start + chunk] = np.argmin(c_sq[None, :] - 2.0 * xn @ c.T, axis=1)
        return out

    def save(self, folder: str | os.PathLike) -> tuple[Path, Path]:
        """Write `cluster_model.safetensors` and `cluster_model.json` into folder (atomically)."""
        from safetensors.numpy import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        weights, meta = folder / f"{FILE_STEM}.safetensors", folder / f"{FILE_STEM}.json"
        with atomic_path(weights) as tmp:
            save_file({"centroids": np.ascontiguousarray(self.centroids, dtype=np.float32)}, str(tmp),
                      metadata={"format": FORMAT})
        info = {"format": FORMAT, "format_version": FORMAT_VERSION, "num_clusters": self.num_clusters,
                "feature_dim": self.feature_dim, "normalization": self.normalization, **self.metadata}
        atomic_write_text(meta, json.dumps(info, indent=2, sort_keys=True) + "\n")
        return weights, meta

    @classmethod
    def load(cls, path: str | os.PathLike) -> ClusterModel:
        """Load from a folder holding cluster_model.{safetensors,json}, or either file's path."""
        from safetensors import SafetensorError
        from safetensors.numpy import load_file

        path = Path(path)
        folder = path if path.is_dir() else path.parent
        weights, meta = folder / f"{FILE_STEM}.safetensors", folder / f"{FILE_STEM}.json"
        if path.is_file() and path.suffix == ".safetensors":
            weights, meta = path, path.with_suffix(".json")
        if not weights.is_file() or not meta.is_file():
            raise ClusterModelError(
                f"cluster model not found at {path}: expected {weights.name} and {meta.name} (written by "
                "`alps-hf label` into its output folder); pass that folder or file to --clusters"
            )
        try:
            info = json.loads(meta.read_text(encoding="utf-8"))
            centroids = load_file(str(weights))["centroids"]
        except (json.JSONDecodeError, UnicodeDecodeError, SafetensorError, KeyError, OSError) as err:
            raise ClusterModelError(f"cannot read the cluster model at {weights} / {meta}: {err}") from None
        if info.get("format") != FORMAT or centroids.ndim != 2:
            raise ClusterModelError(f"{meta} is not an alps_hf cluster model (format {info.get('format')!r})")
        if int(info.get("num_clusters", -1)) != centroids.shape[0]:
            raise ClusterModelError(
                f"{meta} says {info.get('num_clusters')} clusters but {weights} holds {centroids.shape[0]} centroids"
            )
        normalization = info.pop("normalization", "l2")
        for key in ("format", "format_version", "num_clusters", "feature_dim"):
            info.pop(key, None)
        return cls(centroids.astype(np.float32), normalization, info)


def rechunk(chunks: Iterable[np.ndarray], size: int) -> Iterator[np.ndarray]:
    """Yield arrays of exactly `size` rows (the last may be shorter) from arbitrarily sized chunks."""
    buffer: list[np.ndarray] = []
    held = 0
    for chunk in chunks:
        if len(chunk) == 0:
            continue
        buffer.append(chunk)
        held += len(chunk)
        if held >= size:
            # One concatenation per incoming chunk, then slices: re-joining the remainder for every
            # batch made large chunks quadratic.
            joined = np.concatenate(buffer) if len(buffer) > 1 else buffer[0]
            full = len(joined) // size
            for i in range(full):
                yield joined[i * size:(i + 1) * size]
            rest = joined[full * size:]
            buffer, held = ([rest] if len(rest) else []), len(rest)
    if held:
        yield np.concatenate(buffer)


def fit_online_kmeans(
    chunks: Callable[[], Iterable[np.ndarray]],
    num_clusters: int,
    *,
    seed: int = 0,
    normalization: str = "l2",
    batch_size: int = 4096,
    passes: int = 3,
    metadata: dict | None = None,
) -> ClusterModel:
    """Fit K-means by streaming features through `MiniBatchKMeans.partial_fit`.

    Args:
        chunks: called once per pass; returns an iterable of (n_i, D) feature arrays in a fixed order.
            Features are never all held in memory.
        num_clusters: K; must not exceed the number of features.
        seed: random state of MiniBatchKMeans (`--seed`).
        normalization: 'l2' or 'none' (`--feature-normalization`), applied before fitting and in `predict`.
        batch_size: features per partial_fit call (`--kmeans-batch-size`); at least 3 K are used.
        passes: how many times the features are streamed (`--kmeans-passes`).
        metadata: JSON-ready facts stored with the model (feature source, SAM id and revision).

    Returns:
        The fitted ClusterModel.

    Raises:
        ConfigError: fewer features than clusters.
    """
    from sklearn.cluster import MiniBatchKMeans

    # The first partial_fit initialises the centroids (k-means++) from its batch: make it big enough.
    batch = max(batch_size, 3 * num_clusters)
    kmeans = MiniBatchKMeans(n_clusters=num_clusters, random_state=seed, batch_size=batch, n_init=1,
                             init_size=batch)
    seen = 0
    for epoch in range(passes):
        count = 0
        for part in rechunk((normalize_features(c, normalization) for c in chunks()), batch):
            if epoch == 0 and count == 0 and len(part) < num_clusters:
                raise ConfigError(
                    f"--num-clusters {num_clusters} is larger than the number of masks found ({len(part)}); "
                    f"use --num-clusters {max(2, len(part))} or fewer, or label more images"
                )
            kmeans.partial_fit(part)
            count += len(part)
        if count == 0:
            raise ConfigError("no mask features to cluster: SAM found no mask in any image")
        seen = count
    meta = {"seed": seed, "num_features_fit": seen, "passes": passes, "batch_size": batch,
            "algorithm": "sklearn.cluster.MiniBatchKMeans.partial_fit", **(metadata or {})}
    return ClusterModel(kmeans.cluster_centers_.astype(np.float32), normalization, meta)
