"""K-means and pass 2, shared by `alps-hf label` and `alps-hf recluster`.

K-means (main process) streams the work shards' features in input order; pass 2 (sharded over
processes) gives every segment its cluster, paints `label = lut[segments]` and writes the output
parquet shards; `finish_folder` adds id2label.json, the cluster model, failures, the figures,
alps_dataset.json and the card.
"""

from __future__ import annotations

import json
from pathlib import Path

from tqdm.auto import tqdm

from alps_hf import __version__
from alps_hf.config_utils import atomic_write_text
from alps_hf.errors import ConfigError
from alps_hf.labeling.clustering import ClusterModel, fit_online_kmeans
from alps_hf.labeling.config import LabelConfig
from alps_hf.labeling.figures import GALLERY_FILE, PREVIEW_FILE, write_cluster_gallery, write_preview
from alps_hf.labeling.workdir import (
    WorkDir,
    split_for_process,
)
from alps_hf.labeling.writer import (
    group_shards,
    id2label,
    merge_stats,
    shard_file_name,
    write_failures,
    write_group,
)


def fit_clusters(work: WorkDir, num_shards: int, cfg: LabelConfig, sam_family: str | None = None) -> ClusterModel:
    """K-means over the work shards' features with the K-means settings of cfg (label and recluster).

    `sam_family` (alps_hf.sam.families) is recorded in the cluster model's metadata with the SAM id.
    """
    k = cfg.num_clusters
    total = sum(work.shard_summary(s)["masks"] for s in range(num_shards))
    if total < 2:
        images = sum(work.shard_summary(s)["images"] for s in range(num_shards))
        raise ConfigError(
            f"the mask filters kept {total} mask(s) in {images} image(s), too few for any --num-clusters: loosen "
            f"--pred-iou-thresh (now {cfg.pred_iou_thresh}) and --stability-score-thresh (now "
            f"{cfg.stability_score_thresh}), e.g. 0.5 and 0.8 for a small SAM, or --max-area-fraction (now "
            f"{cfg.max_area_fraction}) / --min-area (now {cfg.min_area}); these are SAM-pass settings, so run "
            "`alps-hf label` again with --overwrite"
        )
    if total < k:
        raise ConfigError(
            f"--num-clusters {k} is larger than the number of masks found ({total}); use --num-clusters {total} "
            "or fewer (the SAM pass is "
            "saved: the same command with --resume and a smaller --num-clusters reuses it), or label more images"
        )
    metadata = {"feature_source": "sam_image_embedding_masked_mean", "sam_model": cfg.sam,
                "sam_revision": cfg.sam_revision, "sam_family": sam_family, "alps_hf_version": __version__}
    return fit_online_kmeans(lambda: work.iter_features(num_shards), k, seed=cfg.seed,
                             normalization=cfg.feature_normalization, batch_size=cfg.kmeans_batch_size,
                             passes=cfg.kmeans_passes, metadata=metadata)


def run_pass2(state, output: Path, work: WorkDir, num_shards: int, clusters: ClusterModel, split: str,
              max_shard_bytes: int, fill: bool = True) -> list[Path]:
    """Pass 2: the pass-1 shards labeled with the fitted clusters and written as the dataset's parquet shards.

    Each process writes its contiguous share of output shards; every process waits for the others, then
    the main process removes shards of an earlier run of this split that the new layout no longer has.

    Args:
        state: Accelerate's PartialState (process index, count, barrier).
        output: the output folder; shards go to output/data.
        work: the run's work folder, whose pass-1 shards are read and pass-2 group stats written.
        num_shards: how many pass-1 shards there are.
        clusters: the fitted cluster model.
        split: the split name in the shard file names (`--split`).
        max_shard_bytes: the largest group of pass-1 bytes in one output shard (`--max-shard-bytes`).
        fill: paint fill segments with their class (False: 255 there; `--fill` / `--no-fill`).

    Returns:
        The paths of every output shard of the split, in order (those of other processes included).
    """
    sizes = [work.shard_path(s).stat().st_size for s in range(num_shards)]
    groups = group_shards(sizes, max_shard_bytes)
    names = [output / "data" / shard_file_name(split, g, len(groups)) for g in range(len(groups))]
    mine = split_for_process(len(groups), state.process_index, state.num_processes)
    work.pass2.mkdir(parents=True, exist_ok=True)
    for g in tqdm(mine, desc="pass 2: label maps", unit="shard", disable=not state.is_local_main_process):
        stats = write_group(work, groups[g], clusters, names[g], fill)
        atomic_write_text(work.pass2 / f"group-{g:05d}.json", json.dumps(stats) + "\n")
    state.wait_for_everyone()
    if state.is_main_process:
        keep = {n.name for n in names}
        for old in (output / "data").glob(f"{split}-*.parquet"):
            if old.name not in keep:
                old.unlink()
    return names


def finish_folder(output: Path, work: WorkDir, num_shards: int, clusters: ClusterModel, names: list[Path],
                  info: dict, preview_images: int) -> dict:
    """Write id2label.json, the cluster model, failures.jsonl, the figures, alps_dataset.json, README.md."""
    from alps_hf.labeling.writer import dataset_features

    k = clusters.num_clusters
    parts = [json.loads((work.pass2 / f"group-{g:05d}.json").read_text()) for g in range(len(names))]
    stats = merge_stats(parts, k)
    failures = write_failures(output, work, num_shards)
    stats["failed"] = len(failures)
    clusters.save(output)
    atomic_write_text(output / "id2label.json", json.dumps(id2label(k), indent=2) + "\n")
    figures = {}
    if write_preview(output, names, k, preview_images):
        figures["preview"] = PREVIEW_FILE
    hist = stats["class_pixel_histogram"]
    share = [v / max(1, sum(hist)) for v in hist]
    if write_cluster_gallery(output, names, k, share):
        figures["cluster_gallery"] = GALLERY_FILE
    for name in {PREVIEW_FILE, GALLERY_FILE} - set(figures.values()):
        (output / name).unlink(missing_ok=True)  # of an earlier run: it would show other clusters
    split = info["split"]
    info = {**info, "num_clusters": k, "feature_normalization": clusters.normalization,
            "splits": {split: {"num_rows": stats["images"], "files": [f"data/{n.name}" for n in names],
                               "num_bytes": sum(n.stat().st_size for n in names)}},
            "stats": stats, "figures": figures, "features": dataset_features().to_dict()}
    # Not sort_keys: the order of `features` is the column order of the dataset.
    atomic_write_text(output / "alps_dataset.json", json.dumps(info, indent=2) + "\n")
    from alps_hf.hub.cards import write_dataset_card

    write_dataset_card(output)
    return info
