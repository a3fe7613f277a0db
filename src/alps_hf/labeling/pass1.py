"""Pass 1 of `alps-hf label` (DESIGN.md): SAM masks, features and segment maps into work shards.

decode (prefetched) -> `MaskGenerator` (one encoder pass per image, any SAM family) -> seam rule for
windows -> mask features from the same embedding -> segment map (objects over stuff, fill) -> one
`Pass1Record` per input, written shard by shard with done markers (`workdir.py`). Also the checks
made before any weights load (`load_sam_config`) and the list of settings that shape pass 1
(`pass1_fields`, the resume fingerprint).
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from alps_hf.errors import AlpsError, ConfigError
from alps_hf.geo.seams import resolve_seams
from alps_hf.geo.windows import Window, window_from_meta
from alps_hf.labeling.config import LabelConfig
from alps_hf.labeling.inputs import ImageItem, LoadedImage
from alps_hf.labeling.record import Pass1Record
from alps_hf.labeling.workdir import (
    WorkDir,
)
from alps_hf.labeling.writer import (
    encode_png,
)
from alps_hf.sam.families import SamFamily, load_family_processor, read_family
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
