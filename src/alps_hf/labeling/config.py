"""Configuration of the labeling commands (`alps-hf label`, `alps-hf recluster`).

Dataclasses with help text, parsed by `HfArgumentParser` in `cli.py`, validated in
`__post_init__` so that a bad value fails in the first second, before any model loads.
The resolved config is written next to the output as `label_config.json`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from alps_hf.config_utils import arg
from alps_hf.core import IGNORE_INDEX
from alps_hf.errors import ConfigError
from alps_hf.geo.geotiff import validate_bands
from alps_hf.geo.windows import MIN_TILE_SIZE, validate_tiling
from alps_hf.labeling.workdir import MAX_AUTO_SHARD_SIZE, TARGET_SHARDS
from alps_hf.sam.generator import GROUP_MASKS, GROUP_SCALE, MaskGeneratorConfig

# Window side used for GeoTIFF-family scenes when --tile-size is not given.
DEFAULT_TILE_SIZE = 1024

NORMALIZATIONS = ("l2", "none")

# The headings `alps-hf label --help` lists the flags under (cli.py reads each field's `group`).
_INPUTS = "inputs"
_SAM = "SAM"
_MASKS = GROUP_MASKS
_CLUSTERING = "clustering"
_OUTPUT = "output"
_SCALE = GROUP_SCALE


# Field metadata of a setting that shapes pass 1 (what SAM sees, how the work is cut into shards): part of
# the resume fingerprint, with the generator settings (alps_hf.labeling.pass1.pass1_fields).
PASS1 = {"pass1": True}


@dataclass
class LabelConfig(MaskGeneratorConfig):
    """Everything `alps-hf label` needs: inputs, SAM, clustering, output, and the mask-generation settings.

    The mask-generation settings are inherited from `MaskGeneratorConfig`, where they are declared once.
    """

    # The order of the headings in `--help` (each field names its own in `group`).
    flag_groups: ClassVar[tuple[str, ...]] = (_INPUTS, _SAM, _MASKS, _CLUSTERING, _OUTPUT, _SCALE)

    # `alps-hf label` defaults to dense pseudo-labels; the bare generator keeps segment-anything's behaviour.
    # Same help text and metadata as the generator's field, only the default differs.
    preset: str = field(default="dense", metadata=MaskGeneratorConfig.__dataclass_fields__["preset"].metadata)

    inputs: list[str] = arg(
        [],
        "Images to label: a folder (searched recursively, sorted), image files, a `save_to_disk` folder, a "
        "Hub-layout dataset folder, or a Hub dataset id (with --split / --image-column).", group=_INPUTS,
    )
    output: str = arg(None, "Output folder (written in Hub dataset layout). Required.", group=_OUTPUT)
    sam: str = arg("facebook/sam-vit-base", "SAM checkpoint: a Hub id or a local `save_pretrained` folder of any SAM "
                   "family (SAM, SAM-HQ, SAM 2 / 2.1, EdgeTAM, SAM 3 tracker; told by its config.json's model_type), "
                   "e.g. facebook/sam2.1-hiera-large.", metadata=PASS1, group=_SAM)
    sam_revision: str | None = arg(None, "Hub revision (branch, tag or commit) of --sam.", metadata=PASS1, group=_SAM)
    split: str = arg("train", "Split to read when the input is a dataset; also the split name of the output.", metadata=PASS1, group=_INPUTS)
    image_column: str = arg("image", "Image column when the input is a dataset.", metadata=PASS1, group=_INPUTS)
    num_clusters: int = arg(46, "K, the number of pseudo-classes (2..255; ALPS uses 46).", group=_CLUSTERING)
    clusters: str | None = arg(
        None,
        "An existing cluster model (cluster_model.safetensors or the folder holding it): label with its "
        "centroids and class ids instead of fitting K-means (--num-clusters is then taken from it).", group=_CLUSTERING,
    )
    feature_normalization: str = arg(
        "l2",
        "Mask feature normalisation before K-means: 'l2' (default: unit length, so clusters group masks by the "
        "direction of the SAM embedding, i.e. what the content is, not by how strongly the encoder responds, "
        "which varies with contrast and texture) or 'none'.", group=_CLUSTERING,
    )
    kmeans_batch_size: int = arg(4096, "Mini-batch size of the online K-means (MiniBatchKMeans.partial_fit).", group=_CLUSTERING)
    kmeans_passes: int = arg(
        3, "Passes of online K-means over the streamed mask features (more passes, steadier centroids).", group=_CLUSTERING
    )
    seed: int = arg(0, "Seed of K-means (the only random part of labeling).", group=_CLUSTERING)
    max_mask_side: int = arg(
        4096,
        "Masks are made at most this many pixels on their long side; larger images are labeled at that size and "
        "the maps scaled up (nearest) to the original size. SAM itself resizes every image to its processor's "
        "input size (1024 px for facebook/sam-vit-*); this bounds the size of the masks and maps only.", metadata=PASS1, group=_MASKS,
    )
    tile_size: int | None = arg(
        None,
        "Cut images wider or taller than this many pixels into overlapping windows, each labeled as one row "
        "(source `<scene>#window=x0,y0,x1,y1`, coordinates in `meta`); masks cut by a window edge are resolved "
        "by the centre-ownership seam rule (README). GeoTIFF / TIFF / VRT / JP2 scenes are always read by "
        f"window (at {DEFAULT_TILE_SIZE} px when this is not given) with the geo extra installed. "
        f"{MIN_TILE_SIZE}..--max-mask-side.", metadata=PASS1, group=_INPUTS,
    )
    tile_overlap: int = arg(128, "Overlap of neighbouring windows in pixels (0 <= overlap < tile size).", metadata=PASS1, group=_INPUTS)
    bands: list[int] | None = arg(
        None,
        "GeoTIFF bands to read, 1-based: one (grey) or three in R G B order, e.g. --bands 4 3 2. Default: the "
        "bands described as red, green, blue, else 1 2 3.", metadata=PASS1, group=_INPUTS,
    )
    stitch: bool = arg(
        False,
        "Also write one full-size label raster per windowed scene to <output>/stitched/ (GeoTIFF with the "
        "scene's CRS and transform for rasterio-read scenes, PNG otherwise) and an index.json.", group=_OUTPUT,
    )
    image_batch_size: int = arg(4, "Images encoded together by the SAM image encoder.", group=_SCALE)
    shard_size: int | None = arg(
        None,
        "Images per work shard (the unit of progress, resume and multi-process split). Default: about "
        f"{TARGET_SHARDS} shards per run, so a killed run loses at most about one percent of its work; a multiple of "
        f"--image-batch-size, at most {MAX_AUTO_SHARD_SIZE}.", metadata=PASS1, group=_SCALE,
    )
    max_shard_bytes: int = arg(500_000_000, "Target size of each output parquet shard (Hub-friendly ~500 MB).", group=_OUTPUT)
    num_workers: int = arg(2, "Threads that decode images ahead of SAM.", group=_SCALE)
    device: str | None = arg(None, "Torch device (default: the Accelerate device, cuda when available).", group=_SAM)
    dtype: str = arg("auto", "Model dtype: auto (bfloat16 on GPU, float32 on CPU), float32, bfloat16, float16.", group=_SAM)
    resume: bool = arg(False, "Continue an interrupted run in --output (finished shards are kept).", group=_OUTPUT)
    overwrite: bool = arg(False, "Delete an existing --output folder first.", group=_OUTPUT)
    license: str | None = arg(None, "License of the source imagery, written into the dataset card.", group=_OUTPUT)
    pretty_name: str | None = arg(None, "Human-readable dataset name for the card.", group=_OUTPUT)
    preview_images: int = arg(4, "Images shown in preview.png.", group=_OUTPUT)
    push_to_hub: str | None = arg(None, "After labeling, publish the folder to this Hub dataset repo id.", group=_OUTPUT)
    private: bool = arg(False, "With --push-to-hub: create the repo private.", group=_OUTPUT)
    verbose: bool = arg(False, "Also print the seconds of each stage (always recorded in alps_dataset.json).", group=_OUTPUT)

    def __post_init__(self) -> None:
        if isinstance(self.inputs, str):
            self.inputs = [self.inputs]
        if not self.inputs:
            raise ConfigError("no input given; pass a folder, image files or a dataset, e.g. `alps-hf label ./tiles`")
        if not self.output:
            raise ConfigError("--output is required: the folder the dataset is written to")
        if self.clusters is None and not 2 <= self.num_clusters <= IGNORE_INDEX:
            raise ConfigError(
                f"--num-clusters {self.num_clusters} is not allowed: K must be in 2..{IGNORE_INDEX} (labels are 8-bit, {IGNORE_INDEX} = no mask)"
            )
        if self.feature_normalization not in NORMALIZATIONS:
            raise ConfigError(
                f"--feature-normalization {self.feature_normalization!r} is unknown; choose one of {NORMALIZATIONS}"
            )
        super().__post_init__()  # the mask-generation settings
        for name in ("image_batch_size", "shard_size", "kmeans_batch_size", "kmeans_passes", "max_mask_side"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} {getattr(self, name)} must be a positive integer")
        if self.preview_images < 0 or self.num_workers < 0:
            raise ConfigError("--preview-images and --num-workers must be >= 0")
        if self.dtype not in ("auto", "float32", "bfloat16", "float16"):
            raise ConfigError(f"--dtype {self.dtype!r} is unknown; choose auto, float32, bfloat16 or float16")
        if self.resume and self.overwrite:
            raise ConfigError("--resume and --overwrite contradict each other; pass one of them")
        self._check_tiling()

    @property
    def window_size(self) -> int:
        """The window side actually used: --tile-size, else the GeoTIFF default (capped by --max-mask-side)."""
        return self.tile_size if self.tile_size is not None else min(DEFAULT_TILE_SIZE, self.max_mask_side)

    def _check_tiling(self) -> None:
        # Without --tile-size the GeoTIFF default is checked when such a scene is found (sources.py).
        if self.tile_size is not None:
            validate_tiling(self.tile_size, self.tile_overlap)
        if self.tile_size is not None and self.tile_size > self.max_mask_side:
            raise ConfigError(
                f"--tile-size {self.tile_size} is larger than --max-mask-side {self.max_mask_side}: windows must be "
                f"labeled at full resolution for the seam rule; lower --tile-size or raise --max-mask-side"
            )
        self.bands = validate_bands(self.bands)


@dataclass
class ReclusterConfig:
    """`alps-hf recluster FOLDER --num-clusters K`: new pseudo-classes from the stored mask features."""

    folder: str = arg(None, "A folder written by `alps-hf label` (its work/ folder holds the features).", group=_INPUTS)
    num_clusters: int = arg(None, "The new K (2..255).", group=_CLUSTERING)
    output: str | None = arg(
        None, "Write the reclustered dataset to this new folder and leave FOLDER as it is (default: rewrite FOLDER "
        "in place). The new folder gets its own work/ (pass-1 shards hard-linked where the file system allows, "
        "else copied), so it can be reclustered again.", group=_OUTPUT,
    )
    overwrite: bool = arg(False, "With --output: delete an existing --output folder first.", group=_OUTPUT)
    seed: int | None = arg(None, "K-means seed (default: the one of the original run).", group=_CLUSTERING)
    feature_normalization: str | None = arg(None, "Override the feature normalisation ('l2' or 'none').", group=_CLUSTERING)
    kmeans_passes: int | None = arg(None, "Override the number of online K-means passes.", group=_CLUSTERING)
    fill: bool | None = arg(
        None, "Label maps with (--fill) or without (--no-fill: 255 there) the fill segments of pass 1 (default: as "
        "the original run; --fill needs a run labeled with fill).", group=_OUTPUT,
    )
    verbose: bool = arg(False, "Also print the seconds of each stage.", group=_OUTPUT)

    def __post_init__(self) -> None:
        if not self.folder:
            raise ConfigError("give the labeled folder: `alps-hf recluster ./pseudo --num-clusters 20`")
        if self.num_clusters is None or not 2 <= self.num_clusters <= IGNORE_INDEX:
            raise ConfigError(f"--num-clusters {self.num_clusters} is not allowed: K must be in 2..{IGNORE_INDEX}")
        if self.overwrite and not self.output:
            raise ConfigError("--overwrite needs --output: recluster rewrites FOLDER in place without it")
        if self.feature_normalization is not None and self.feature_normalization not in NORMALIZATIONS:
            raise ConfigError(
                f"--feature-normalization {self.feature_normalization!r} is unknown; choose one of {NORMALIZATIONS}"
            )
