"""`alps-hf label` and `alps-hf recluster`: the two passes of DESIGN.md, end to end.

Pass 1 (SAM, sharded over processes): decode -> MaskGenerator (one encoder pass per image) ->
mask features from the same embedding -> segment map -> work shard. K-means (main process):
features streamed from the work shards in input order. Pass 2 (cheap, sharded again): cluster id
per segment -> label = lut[segments] -> parquet shards in Hub layout. Recluster = K-means + pass 2.
Under `accelerate launch` each process takes a contiguous share of the work shards; the result
is identical to a one-process run because K-means reads the features in input order.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import sys
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from alps_hf import __version__
from alps_hf.config_utils import atomic_write_text, config_to_dict, save_config
from alps_hf.errors import AlpsError, ClusterModelError, ConfigError, InputError
from alps_hf.geo.seams import resolve_seams
from alps_hf.geo.windows import Window, window_from_meta
from alps_hf.labeling.clustering import ClusterModel, fit_online_kmeans
from alps_hf.labeling.config import LabelConfig, ReclusterConfig
from alps_hf.labeling.figures import GALLERY_FILE, PREVIEW_FILE, write_cluster_gallery, write_preview
from alps_hf.labeling.inputs import ImageItem, LoadedImage, Tiling, resolve_inputs
from alps_hf.labeling.record import Pass1Record
from alps_hf.labeling.workdir import (
    WorkDir,
    auto_shard_size,
    copy_work_folder,
    ensure_empty_or_resumable,
    input_fingerprint,
    shard_ranges,
    split_for_process,
)
from alps_hf.labeling.writer import (
    encode_png,
    group_shards,
    id2label,
    merge_stats,
    shard_file_name,
    write_failures,
    write_group,
)
from alps_hf.sam.families import FAMILIES, SamFamily, feature_dim, load_family_processor, read_family
from alps_hf.sam.features import mask_features
from alps_hf.sam.fill import add_fill_segments
from alps_hf.sam.generator import GeneratedMasks, MaskGenerator, MaskGeneratorConfig
from alps_hf.sam.masks import MaskSet
from alps_hf.sam.segment_map import FILL, MAX_SEGMENTS, SegmentMap, mask_kinds, paint_segments


def pass1_fields() -> tuple[str, ...]:
    """The LabelConfig fields that shape pass 1, i.e. the keys of the resume fingerprint.

    Every setting declared with `pass1` metadata: the mask-generation settings of MaskGeneratorConfig, the
    SAM, the input, tiling and shard settings.
    """
    return tuple(f.name for f in dataclasses.fields(LabelConfig) if f.metadata.get("pass1"))


# ---- model loading, checked before any weights are read -------------------------------------------------
def load_sam_config(name: str, revision: str | None) -> tuple[SamFamily, object]:
    """(SAM family, config) of --sam, or ConfigError saying why it is unusable (fast: config files only).

    The family (SAM, SAM-HQ, SAM 2, EdgeTAM, SAM 3 tracker) is told by config.json's model_type
    (`alps_hf.sam.families`); its image processor config and the modules its model needs are checked too.
    """
    # A folder without config.json would fail later, after work has started.
    if Path(name).is_dir() and not (Path(name) / "config.json").is_file():
        raise ConfigError(
            f"--sam {name!r} is a folder but not a save_pretrained folder (it has no config.json); pass a folder "
            "written by SamModel.save_pretrained (or Sam2Model, SamHQModel, ...), or a Hub id such as "
            "facebook/sam-vit-base or facebook/sam2.1-hiera-large"
        )
    try:
        family, config = read_family(name, revision)
    except ConfigError:
        raise
    except (OSError, ValueError) as err:
        from alps_hf.hub.references import unloadable_reason

        # Offline and not cached, a folder that does not exist, not on the Hub: each has its own fix.
        raise ConfigError(unloadable_reason("--sam", name, err)) from None
    family.check_requirements()
    try:  # a JSON file, cheap; without it MaskGenerator.from_pretrained fails with a traceback
        load_family_processor(family, name, revision)
    except (OSError, ValueError) as err:
        raise ConfigError(
            f"--sam {name!r} has no SAM image processor config ({str(err).splitlines()[0]}); save one beside the "
            "model with SamImageProcessorPil(...).save_pretrained(folder)"
        ) from None
    return family, config


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """The torch dtype SAM runs in: `--dtype` by name; 'auto' is bfloat16 on CUDA, float32 elsewhere."""
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return getattr(torch, name)


# ---- pass 1 ------------------------------------------------------------------------------------------
def _prefetch(items: list[tuple[int, ImageItem]], workers: int) -> Iterator[tuple[int, ImageItem, object]]:
    """Decode items ahead of SAM on a few threads; yields (index, item, LoadedImage or the exception)."""

    def load(item: ImageItem):
        try:
            return item.load()
        except Exception as err:  # noqa: BLE001 - a bad image is recorded, never fatal
            return err

    if workers == 0:
        for index, item in items:
            yield index, item, load(item)
        return
    with ThreadPoolExecutor(workers) as pool:
        pending: deque = deque()
        it = iter(items)
        for index, item in it:
            pending.append((index, item, pool.submit(load, item)))
            if len(pending) >= 2 * workers + 2:
                break
        for index, item in it:
            i0, it0, fut = pending.popleft()
            yield i0, it0, fut.result()
            pending.append((index, item, pool.submit(load, item)))
        while pending:
            i0, it0, fut = pending.popleft()
            yield i0, it0, fut.result()


def _nearest_resize(array: np.ndarray, height: int, width: int) -> np.ndarray:
    rows = (np.arange(height) * array.shape[0] // height).clip(0, array.shape[0] - 1)
    cols = (np.arange(width) * array.shape[1] // width).clip(0, array.shape[1] - 1)
    return array[rows][:, cols]


def _work_image_size(shape: tuple[int, int], max_side: int) -> tuple[int, int]:
    """(height, width) masks are made at: the image's, or scaled down to `max_side` on the long side."""
    h, w = shape
    if max(h, w) <= max_side:
        return h, w
    scale = max_side / max(h, w)
    return max(1, round(h * scale)), max(1, round(w * scale))


def _work_image(loaded: LoadedImage, max_side: int) -> tuple[np.ndarray, np.ndarray | None]:
    rgb, valid = loaded.rgb, loaded.valid
    h, w = _work_image_size(rgb.shape[:2], max_side)
    if (h, w) == rgb.shape[:2]:
        return rgb, valid
    from PIL import Image

    small = np.asarray(Image.fromarray(rgb).resize((w, h), Image.BILINEAR))
    return small, (None if valid is None else _nearest_resize(valid, h, w))


class SegmentMapSizeError(RuntimeError):
    """A segment map whose size is not the image's: a bug in alps_hf, raised through, never recorded."""


class Pass1Runner:
    """Labels images into pass-1 records with one MaskGenerator; keeps per-stage seconds."""

    def __init__(self, generator: MaskGenerator, cfg: LabelConfig):
        self.generator = generator
        self.cfg = cfg
        self.timings: dict[str, float] = {"decode_wait": 0.0, "seams": 0.0, "features": 0.0, "painting": 0.0,
                                          "writing": 0.0}

    def _window(self, loaded: LoadedImage) -> Window | None:
        """The window a row was cut from (None for an ordinary image)."""
        if "window" not in loaded.meta:
            return None
        return window_from_meta(loaded.meta, self.cfg.window_size, self.cfg.tile_overlap)

    def _records(self, batch: list[tuple[int, ImageItem, LoadedImage]]) -> list[Pass1Record]:
        works = [_work_image(loaded, self.cfg.max_mask_side) for _, _, loaded in batch]
        outputs = self.generator.generate([rgb for rgb, _ in works])
        records = []
        for (index, item, loaded), (_, valid), out in zip(batch, works, outputs, strict=True):
            t_seam = time.perf_counter()
            masks = out.masks
            window = self._window(loaded)
            if window is not None:  # drop masks cut by the window or owned by a neighbour (geo/seams.py)
                masks = resolve_seams(masks, window)
            t0 = time.perf_counter()
            feats = mask_features(masks.masks, out.embedding, out.frame)
            t1 = time.perf_counter()
            valid_t = None if valid is None else torch.as_tensor(valid, device=masks.masks.device)
            seg = paint_segments(masks, valid_t)
            segments, feats, kinds, n_fill = self._dense_segments(seg, masks, feats, out, valid)
            h, w = loaded.rgb.shape[:2]
            work_size = _work_image_size((h, w), self.cfg.max_mask_side)
            if segments.shape != work_size:  # a generator bug, never to be papered over by resizing
                raise SegmentMapSizeError(f"segment map is {segments.shape}, expected {work_size} for a {w}x{h} image")
            if work_size != (h, w):  # labeled below --max-mask-side: maps back to the original size
                segments = _nearest_resize(segments, h, w)
            area = np.bincount(segments.ravel(), minlength=len(kinds) + 1)[1:]
            # Fill segments have no SAM prediction: IoU and stability 0.
            no_score = torch.zeros(n_fill, dtype=torch.float32)
            t2 = time.perf_counter()
            records.append(Pass1Record(
                index=index, source=item.source,
                image_bytes=loaded.image_bytes if loaded.image_bytes is not None else encode_png(loaded.rgb),
                meta=json.dumps(loaded.meta, sort_keys=True),
                segments_png=encode_png(segments),
                segment_area=area.astype(np.int64).tolist(),
                segment_iou=torch.cat([masks.iou_scores[seg.mask_index].cpu().float(), no_score]).tolist(),
                segment_stability=torch.cat([masks.stability[seg.mask_index].cpu().float(), no_score]).tolist(),
                segment_kind=kinds,
                features=feats.cpu().numpy().astype(np.float16).tobytes(),
                feature_dim=int(feats.shape[1]),
            ))
            self.timings["seams"] += t0 - t_seam
            self.timings["features"] += t1 - t0
            self.timings["painting"] += t2 - t1
            self.timings["writing"] += time.perf_counter() - t2
        return records

    def _dense_segments(self, seg: SegmentMap, masks: MaskSet, feats: torch.Tensor, out: GeneratedMasks,
                        valid: np.ndarray | None) -> tuple[np.ndarray, torch.Tensor, list[str], int]:
        """The uint16 segment map, features and kinds of the visible masks, plus fill segments with --fill.

        Returns:
            (segments, features, kinds, n_fill): features and kinds have one row per segment id 1..n in order.
        """
        cfg = self.cfg
        segments = seg.segments.cpu().numpy()
        image_area = int(segments.shape[0] * segments.shape[1])
        kinds = mask_kinds(masks.areas[seg.mask_index], image_area, cfg.max_area_fraction)
        feats = feats[seg.mask_index]
        n_fill = 0
        if cfg.fill:
            segments, fill_feats = add_fill_segments(segments, len(kinds), out.embedding, out.frame,
                                                     cell=cfg.fill_cell, min_area=cfg.fill_min_area, valid=valid)
            n_fill = int(fill_feats.shape[0])
            feats = torch.cat([feats, fill_feats.to(feats.device, feats.dtype)])
            kinds = kinds + [FILL] * n_fill
        if len(kinds) > MAX_SEGMENTS:  # uint16 maps; fill pieces of one image never come near this
            raise ValueError(f"{len(kinds)} segments do not fit a 16-bit segment map; raise --fill-min-area or --fill-cell")
        return segments.astype(np.uint16), feats, kinds, n_fill

    def label_batch(self, batch: list[tuple[int, ImageItem, LoadedImage]]) -> list[Pass1Record]:
        """Records for a batch; an image that breaks SAM is retried alone and, failing, recorded as failed."""
        unfit = []
        for one in batch:
            h, w = _work_image_size(one[2].rgb.shape[:2], self.cfg.max_mask_side)
            problem = self.generator.image_problem(h, w)
            if problem is not None:
                unfit.append(Pass1Record.failure(one[0], one[1].source, problem))
        if unfit:
            bad = {r.index for r in unfit}
            rest = [one for one in batch if one[0] not in bad]
            return sorted(unfit + (self.label_batch(rest) if rest else []), key=lambda r: r.index)
        try:
            return self._records(batch)
        except SegmentMapSizeError:
            raise  # our bug, not the image's: it must stop the run, never become a failures.jsonl row
        except Exception:  # noqa: BLE001 - whatever SAM raises on one image is that image's failure
            if len(batch) == 1:
                index, item, _ = batch[0]
                err = sys.exc_info()[1]
                return [Pass1Record.failure(index, item.source, f"labeling failed: {type(err).__name__}: {err}")]
            return [r for one in batch for r in self.label_batch([one])]


def load_pass1_runner(cfg: LabelConfig, work: WorkDir, shards: list[int], device: torch.device) -> Pass1Runner | None:
    """SAM loaded for pass 1, or None when every one of `shards` is already done.

    A resume of a run whose SAM pass is complete needs no SAM: loading it would cost time and print
    transformers' "Loading weights" bar for nothing.
    """
    if all(work.is_done(shard) for shard in shards):
        return None
    generator = MaskGenerator.from_pretrained(cfg.sam, MaskGeneratorConfig.settings_of(cfg), revision=cfg.sam_revision,
                                              device=device, dtype=resolve_dtype(cfg.dtype, device))
    return Pass1Runner(generator, cfg)


def run_pass1(runner: Pass1Runner | None, items: list[ImageItem], work: WorkDir, shards: list[int],
              ranges: list[tuple[int, int]], cfg: LabelConfig, progress: tqdm) -> None:
    """Pass 1 over this process's shards: one parquet shard and done marker per shard.

    Every input gets its SAM masks, segment map and features, or a failure row; shards already done
    (a resumed run) are skipped.

    Args:
        runner: the Pass1Runner holding the loaded MaskGenerator; None when every shard is done.
        items: every input of the run, in sorted order.
        work: the run's work folder.
        shards: the shard indices this process labels (`split_for_process`).
        ranges: [start, end) item range of every shard (`shard_ranges`).
        cfg: the run's settings (`--num-workers`, `--image-batch-size`, the sizes of the work image).
        progress: advanced by one per input, done or skipped.

    Raises:
        SegmentMapSizeError: a bug in alps_hf (a segment map of the wrong size); a bad image is never
            raised, it becomes a failure row with its reason.
    """
    for shard in shards:
        if work.is_done(shard):
            progress.update(ranges[shard][1] - ranges[shard][0])
            continue
        start, stop = ranges[shard]
        records: list[Pass1Record] = []
        batch: list = []
        t_wait = time.perf_counter()
        for index, item, loaded in _prefetch([(i, items[i]) for i in range(start, stop)], cfg.num_workers):
            runner.timings["decode_wait"] += time.perf_counter() - t_wait
            if isinstance(loaded, BaseException):
                reason = str(loaded) if isinstance(loaded, AlpsError) else f"{type(loaded).__name__}: {loaded}"
                records.append(Pass1Record.failure(index, item.source, reason))
                progress.update(1)
            else:
                batch.append((index, item, loaded))
                if len(batch) >= cfg.image_batch_size:
                    records += runner.label_batch(batch)
                    progress.update(len(batch))
                    batch = []
            t_wait = time.perf_counter()
        if batch:
            records += runner.label_batch(batch)
            progress.update(len(batch))
        records.sort(key=lambda r: r.index)
        t0 = time.perf_counter()
        n_masks = sum(r.num_segments for r in records)
        work.write_shard(shard, records, {"images": stop - start, "masks": n_masks,
                                          "failed": sum(r.error is not None for r in records)})
        runner.timings["writing"] += time.perf_counter() - t0


# ---- K-means + pass 2 (shared by label and recluster) -----------------------------------------------
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


# ---- commands ----------------------------------------------------------------------------------------
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


def print_summary(output: Path, total: int, stats: dict, seconds: dict, scenes: int = 0,
                  verbose: bool = False) -> None:
    """Print where the dataset went and its counts; with `verbose`, also the seconds of each stage."""
    windows = f" (including the windows of {scenes} scene(s) cut by --tile-size)" if scenes else ""
    lines = [
        f"alps-hf: wrote {output}",
        f"  images: {total} in{windows}, {stats['images']} labeled, {stats['failed']} skipped (see failures.jsonl), "
        f"{stats['images_without_masks']} without any mask",
        f"  masks: {stats['masks_total']} ({stats['masks_per_image_mean']:.1f} per image), "
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


__all__ = ["run_label", "run_recluster", "config_to_dict"]
