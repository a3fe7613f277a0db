"""`alps-hf label` and `alps-hf recluster`: the two passes of DESIGN.md, end to end.

Pass 1 (`pass1.py`, sharded over processes): SAM masks, features and segment maps into work shards.
K-means and pass 2 (`pass2.py`): clusters from the features in input order, then label maps into
parquet shards in Hub layout. Recluster = K-means + pass 2 on the stored work shards. Under
`accelerate launch` each process takes a contiguous share of the work shards; the result is
identical to a one-process run because K-means reads the features in input order.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict
from pathlib import Path

import torch
from tqdm.auto import tqdm

from alps_hf import __version__
from alps_hf.config_utils import atomic_write_text, save_config
from alps_hf.errors import ClusterModelError, ConfigError, InputError
from alps_hf.labeling.clustering import ClusterModel
from alps_hf.labeling.config import LabelConfig, ReclusterConfig
from alps_hf.labeling.inputs import Tiling, resolve_inputs
from alps_hf.labeling.pass1 import load_pass1_runner, load_sam_config, pass1_fields, run_pass1
from alps_hf.labeling.pass2 import finish_folder, fit_clusters, run_pass2
from alps_hf.labeling.workdir import (
    WorkDir,
    auto_shard_size,
    copy_work_folder,
    ensure_empty_or_resumable,
    input_fingerprint,
    shard_ranges,
    split_for_process,
)
from alps_hf.sam.families import FAMILIES, SamFamily, feature_dim
from alps_hf.sam.generator import MaskGeneratorConfig


def process_state(device: str | None):
    """Accelerate's PartialState for this process, CPU launches included.

    A bare `PartialState()` ignores `ACCELERATE_USE_CPU` (only `Accelerator` reads it): under
    `ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes N` on a machine without GPUs every
    process would then believe it is alone and label everything. A launch that still does not give the
    world size it announced is refused rather than silently duplicated.
    """
    import os

    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    state = PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU") or device == "cpu")
    announced = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if announced > state.num_processes:
        raise ConfigError(
            f"the launcher announced WORLD_SIZE={announced} processes but Accelerate set up {state.num_processes}; "
            "without GPUs launch with `ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes N`"
        )
    return state


def given_cluster_model(cfg: LabelConfig, family: SamFamily, sam_config) -> ClusterModel | None:
    """The cluster model of `--clusters`, checked against the SAM's feature size; None without the flag.

    Raises:
        ClusterModelError: the centroids have another dimension than the SAM's features.
    """
    if not cfg.clusters:
        return None
    given = ClusterModel.load(cfg.clusters)
    dim = feature_dim(family, sam_config)
    if given.feature_dim != dim:
        raise ClusterModelError(
            f"--clusters {cfg.clusters} has {given.feature_dim}-d centroids but --sam {cfg.sam} gives {dim}-d "
            f"features ({family.title}); use a cluster model made with the same SAM"
        )
    return given


def start_work_folder(state, work: WorkDir, cfg: LabelConfig, sources: list[str], num_shards: int,
                      sam_family: str | None = None) -> None:
    """Check (on --resume) and write the manifest and label_config.json; every process waits for it.

    label_config.json also records `sam_family`, the family --sam was detected as.

    Raises:
        ConfigError: on --resume, when the inputs or a pass-1 setting changed since the run started.
    """
    fingerprint = {**{k: getattr(cfg, k) for k in pass1_fields()}, "num_inputs": len(sources),
                   "inputs_sha256": input_fingerprint(sources)}
    if cfg.resume:
        work.check_manifest(fingerprint)
    if state.is_main_process:
        if cfg.resume:  # temporaries of the killed run; main process only, before anyone writes again
            work.clean_temporaries()
        work.write_manifest({"fingerprint": fingerprint, "num_shards": num_shards, "alps_hf_version": __version__})
        save_config(cfg, work.root.parent / "label_config.json", alps_hf_version=__version__, sam_family=sam_family)
    state.wait_for_everyone()


def shared_clusters(state, work: WorkDir, num_shards: int, cfg: LabelConfig,
                    given: ClusterModel | None = None, sam_family: str | None = None) -> ClusterModel:
    """K-means on the main process (or the `given` model), saved to the work folder, loaded by every process.

    label and recluster both end pass 1 this way, so all processes paint with the same centroids.
    """
    if state.is_main_process:
        (given or fit_clusters(work, num_shards, cfg, sam_family)).save(work.root)
    state.wait_for_everyone()
    return ClusterModel.load(work.root)


def run_label(cfg: LabelConfig) -> int:
    """`alps-hf label`: see the module docstring. Returns the exit code (0)."""
    output = Path(cfg.output)
    ensure_empty_or_resumable(output, cfg.resume, cfg.overwrite)
    tiling = Tiling(cfg.tile_size, cfg.window_size, cfg.tile_overlap, cfg.bands)
    inputs = resolve_inputs(cfg.inputs, cfg.split, cfg.image_column, exclude=output, tiling=tiling)
    family, sam_config = load_sam_config(cfg.sam, cfg.sam_revision)
    family.resolve(cfg)  # settings left unset take the family's defaults, before they are saved or fingerprinted
    given_clusters = given_cluster_model(cfg, family, sam_config)
    state = process_state(cfg.device)
    if cfg.overwrite and output.exists() and state.is_main_process:
        shutil.rmtree(output)
    state.wait_for_everyone()
    work = WorkDir(output / "work")
    ranges = shard_ranges(len(inputs.items), cfg.shard_size or auto_shard_size(len(inputs.items), cfg.image_batch_size))
    start_work_folder(state, work, cfg, [it.source for it in inputs.items], len(ranges), family.name)

    t_start = time.perf_counter()
    device = torch.device(cfg.device) if cfg.device else state.device
    mine = list(split_for_process(len(ranges), state.process_index, state.num_processes))
    runner = load_pass1_runner(cfg, work, mine, device)
    t_loaded = time.perf_counter()
    total = len(inputs.items)
    with tqdm(total=sum(ranges[s][1] - ranges[s][0] for s in mine), desc="pass 1: SAM masks", unit="img",
              disable=not state.is_local_main_process, dynamic_ncols=True) as progress:
        run_pass1(runner, inputs.items, work, mine, ranges, cfg, progress)
    state.wait_for_everyone()
    t_pass1 = time.perf_counter()

    clusters = shared_clusters(state, work, len(ranges), cfg, given_clusters, family.name)
    t_kmeans = time.perf_counter()
    names = run_pass2(state, output, work, len(ranges), clusters, cfg.split, cfg.max_shard_bytes, cfg.fill)
    t_pass2 = time.perf_counter()
    if not state.is_main_process:
        return 0
    info = finish_folder(output, work, len(ranges), clusters, names,
                         dataset_info_base(cfg, inputs.description, inputs.scenes, inputs.readings, family.name),
                         cfg.preview_images)
    stats = info["stats"]
    t_finish = time.perf_counter()
    stitched = {}
    if cfg.stitch:
        from alps_hf.geo.stitch import stitch_parquet

        stitched = stitch_parquet(names, output / "stitched", cfg.window_size, cfg.tile_overlap)
    seconds = {"load_model": t_loaded - t_start, "pass1": t_pass1 - t_loaded, "kmeans": t_kmeans - t_pass1,
               "pass2": t_pass2 - t_kmeans, "finish": t_finish - t_pass2,
               **({"stitch": time.perf_counter() - t_finish} if cfg.stitch else {}),
               **{f"pass1.{k}": v for k, v in (runner.generator.timings if runner else {}).items()},
               **{f"pass1.{k}": v for k, v in (runner.timings if runner else {}).items()}}
    record_seconds(output, info, seconds)
    print_summary(output, total, stats, seconds, scenes=inputs.scenes, verbose=cfg.verbose)
    if cfg.stitch:
        print(f"  stitched: {len(stitched)} scene raster(s) in {output / 'stitched'}"
              + ("" if stitched else " (no input was cut into windows: nothing to stitch)"))
    if cfg.push_to_hub:
        from alps_hf.hub.publish import push_to_hub

        push_to_hub(output, cfg.push_to_hub, private=cfg.private)
    return 0


def dataset_info_base(cfg: LabelConfig, description: str, scenes: int = 0, readings: list[dict] | None = None,
                      sam_family: str = "sam") -> dict:
    """The settings part of alps_dataset.json: versions, SAM, seed, generator, K-means and tiling settings.

    Args:
        cfg: the run's settings.
        description: where the inputs came from, in words (the card's source line).
        scenes: how many scenes were cut into tiles (0 for plain images).
        readings: per GeoTIFF-family scene, the bands read and each band's stretch (`InputSet.readings`).
        sam_family: the SAM family of `cfg.sam` (alps_hf.sam.families); generator settings left unset are
            recorded with its defaults.

    Returns:
        A JSON-ready dict; the run adds the stats, splits and seconds.
    """
    from alps_hf.hub.cards import is_hub_id, local_weights_sha256

    settings = MaskGeneratorConfig.settings_of(cfg)
    if sam_family in FAMILIES:  # a name this version does not know (a newer run's) leaves the settings as saved
        FAMILIES[sam_family].resolve(settings)
    gen = asdict(settings)
    gen.pop("upsample_chunk", None)
    # A local SAM has no revision: the hash of its weights, taken now, says which weights made the masks.
    weights = None if is_hub_id(cfg.sam) else local_weights_sha256(cfg.sam)
    return {"alps_hf_version": __version__, "sam_model": cfg.sam, "sam_revision": cfg.sam_revision,
            "sam_weights": list(weights) if weights else None, "sam_family": sam_family,
            "seed": cfg.seed, "source": description, "license": cfg.license, "pretty_name": cfg.pretty_name,
            "split": cfg.split, "generator": gen, "kmeans": {"passes": cfg.kmeans_passes,
                                                             "batch_size": cfg.kmeans_batch_size},
            "tiling": {"tile_size": cfg.tile_size, "window_size": cfg.window_size,
                       "tile_overlap": cfg.tile_overlap, "bands": cfg.bands, "scenes": scenes,
                       "scene_readings": readings or []}}


def record_seconds(output: Path, info: dict, seconds: dict) -> None:
    """Add the per-stage seconds of this run to the folder's alps_dataset.json (`info` is what it holds)."""
    info = {**info, "seconds": {k: round(v, 3) for k, v in seconds.items()}}
    atomic_write_text(output / "alps_dataset.json", json.dumps(info, indent=2) + "\n")


def _kinds(stats: dict) -> str:
    """'; 40 object, 3 stuff, 120 fill' from the stats' segment kinds ('' for runs that recorded none)."""
    kinds = stats.get("segments_by_kind") or {}
    order = [k for k in ("object", "stuff", "fill") if k in kinds] + sorted(set(kinds) - {"object", "stuff", "fill"})
    return ("; " + ", ".join(f"{kinds[k]} {k}" for k in order)) if kinds else ""


def print_summary(output: Path, total: int, stats: dict, seconds: dict, scenes: int = 0,
                  verbose: bool = False) -> None:
    """Print where the dataset went and its counts; with `verbose`, also the seconds of each stage."""
    windows = f" (including the windows of {scenes} scene(s) cut by --tile-size)" if scenes else ""
    lines = [
        f"alps-hf: wrote {output}",
        f"  images: {total} in{windows}, {stats['images']} labeled, {stats['failed']} skipped (see failures.jsonl), "
        f"{stats['images_without_masks']} without any mask",
        f"  segments: {stats['masks_total']} ({stats['masks_per_image_mean']:.1f} per image{_kinds(stats)}), "
        f"pixel coverage {100 * stats['pixel_coverage']:.1f} %",
    ]
    if verbose:
        lines.append("  seconds: " + ", ".join(f"{k} {v:.2f}" for k, v in seconds.items()))
    print("\n".join(lines))


def run_recluster(cfg: ReclusterConfig) -> int:
    """`alps-hf recluster`: refit K-means on the stored features and rewrite the labels; SAM is not loaded.

    With `--output` the source folder is only read: its work folder and label_config.json are carried
    to the new folder first, which is then reclustered in place.
    """
    source = Path(cfg.folder)
    work = WorkDir(source / "work")
    manifest = work.read_manifest()
    config_path = source / "label_config.json"
    if manifest is None or not config_path.is_file():
        raise InputError(f"{source} is not a folder written by `alps-hf label` (no work/manifest.json or "
                         "label_config.json); recluster needs the work folder of the original run")
    num_shards = manifest["num_shards"]
    missing = [s for s in range(num_shards) if not work.is_done(s)]
    if missing:
        raise InputError(f"{source}: pass 1 is unfinished ({len(missing)} of {num_shards} work shards missing); "
                         "finish it with `alps-hf label ... --resume` first")
    saved = json.loads(config_path.read_text(encoding="utf-8"))
    saved.pop("alps_hf_version", None)
    sam_family = saved.pop("sam_family", None) or "sam"  # runs from before SAM families were all SamModel
    saved.setdefault("preset", "alps-paper")  # runs from before presets: no stuff, no fill
    label_cfg = LabelConfig(**{k: v for k, v in saved.items() if k in LabelConfig.__dataclass_fields__})
    label_cfg.num_clusters = cfg.num_clusters
    label_cfg.clusters = None
    if cfg.output:
        label_cfg.output = cfg.output
    # What pass 1 made is in the manifest (label_config.json records the last label maps' choice).
    if cfg.fill and not manifest["fingerprint"].get("fill"):
        raise ConfigError(f"--fill: {source} was labeled without fill segments (pass 1 made none); label it again "
                          "with `alps-hf label ... --fill`, or recluster without --fill")
    if cfg.fill is not None:
        label_cfg.fill = cfg.fill
    for name in ("seed", "feature_normalization", "kmeans_passes"):
        if getattr(cfg, name) is not None:
            setattr(label_cfg, name, getattr(cfg, name))
    output = Path(cfg.output) if cfg.output else source
    separate = output.resolve() != source.resolve()
    if separate:
        if output.resolve().is_relative_to(source.resolve()) or source.resolve().is_relative_to(output.resolve()):
            raise ConfigError(f"--output {output} is inside {source} (or holds it); choose a folder beside it")
        ensure_empty_or_resumable(output, resume=False, overwrite=cfg.overwrite)
    state = process_state(None)
    t0 = time.perf_counter()
    if state.is_main_process:
        if separate:
            if output.exists():
                shutil.rmtree(output)
            copy_work_folder(work, WorkDir(output / "work"), num_shards)
            shutil.copy2(config_path, output / "label_config.json")
        else:
            work.clean_temporaries()
    state.wait_for_everyone()
    work, config_path = WorkDir(output / "work"), output / "label_config.json"
    clusters = shared_clusters(state, work, num_shards, label_cfg, sam_family=sam_family)
    t1 = time.perf_counter()
    names = run_pass2(state, output, work, num_shards, clusters, label_cfg.split, label_cfg.max_shard_bytes,
                      label_cfg.fill)
    t2 = time.perf_counter()
    if not state.is_main_process:
        return 0
    previous = json.loads((source / "alps_dataset.json").read_text()) if (source / "alps_dataset.json").is_file() else {}
    tiling = previous.get("tiling") or {}
    base = dataset_info_base(label_cfg, previous.get("source", str(source)), tiling.get("scenes", 0),
                             tiling.get("scene_readings"), sam_family)
    if separate:
        base["reclustered_from"] = source.name
    if "sam_weights" in previous:  # hashed when pass 1 ran; the folder may hold other weights by now
        base["sam_weights"] = previous["sam_weights"]
    info = finish_folder(output, work, num_shards, clusters, names, base, label_cfg.preview_images)
    save_config(label_cfg, config_path, alps_hf_version=__version__, sam_family=sam_family)
    total = sum(work.shard_summary(s)["images"] for s in range(num_shards))
    seconds = {"kmeans": t1 - t0, "pass2": t2 - t1, "finish": time.perf_counter() - t2}
    record_seconds(output, info, seconds)
    print_summary(output, total, info["stats"], seconds, verbose=cfg.verbose)
    return 0


__all__ = ["run_label", "run_recluster", "dataset_info_base"]
