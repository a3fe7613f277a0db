"""The work folder of a labeling run: pass-1 shards, their done markers, and the manifest.

Pass 1 writes one parquet file per shard of the (sorted) input list: for every input either its
segment map, per-segment stats and float16 mask features, or the reason it failed. A shard is
finished when its done marker exists; both are written through a temporary name and a rename, so
a killed run never leaves a half-written shard that looks finished. The manifest holds a
fingerprint of everything that shapes pass 1 (inputs and settings): `--resume` refuses to
continue when it changed, and says what changed. Pass 2 and `recluster` read only this folder.
The done marker records the shard's byte size, so a shard whose file does not match its marker (a
truncated file after a crash) is redone, and the pid of the process that wrote it (multi-process
runs: which process did which share). A killed run leaves its temporaries (`.name.tmp-<pid>`)
behind; `WorkDir.clean_temporaries()` removes them before a resumed run writes anything.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from alps_hf.core import atomic_path, atomic_write_text
from alps_hf.errors import ConfigError
from alps_hf.labeling.record import Pass1Record, pass1_schema


def input_fingerprint(sources: list[str]) -> str:
    """sha256 (hex) of the input list in order: a resumed run must see the same inputs, sorted the same way."""
    digest = hashlib.sha256()
    for s in sources:
        digest.update(s.encode("utf-8") + b"\0")
    return digest.hexdigest()


class WorkDir:
    """Layout: <output>/work/{manifest.json, pass1/shard-NNNNN.parquet, pass1/shard-NNNNN.done}."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.pass1 = self.root / "pass1"
        self.pass2 = self.root / "pass2"

    @property
    def manifest_path(self) -> Path:
        """work/manifest.json: the fingerprint of the run's inputs and pass-1 settings."""
        return self.root / "manifest.json"

    def shard_path(self, shard: int) -> Path:
        """The parquet file of pass-1 shard `shard`."""
        return self.pass1 / f"shard-{shard:05d}.parquet"

    def done_path(self, shard: int) -> Path:
        """The done marker of pass-1 shard `shard` (JSON: its summary, byte size and writer pid)."""
        return self.pass1 / f"shard-{shard:05d}.done"

    def is_done(self, shard: int) -> bool:
        """True when the shard's done marker exists and its parquet file has the size the marker recorded.

        A marker that cannot be read, or a file of another size (truncated by a crash before the data
        reached the disk), means the shard is redone. Markers of older versions carry no size: the file
        only has to exist.
        """
        path = self.shard_path(shard)
        if not (self.done_path(shard).is_file() and path.is_file()):
            return False
        try:
            summary = self.shard_summary(shard)
        except (OSError, ValueError):
            return False
        if not isinstance(summary, dict):
            return False
        return summary.get("bytes") is None or summary["bytes"] == path.stat().st_size

    def clean_temporaries(self) -> list[Path]:
        """Remove what killed runs left half-done in the output folder (this work folder's parent).

        Every write of a run goes through a hidden temporary name (`.name.tmp-<pid>`, `.README.md.tmp`)
        and a rename; a run killed between the two leaves the temporary behind, and nothing else ever
        removes it. Call from the main process only, before any process of the resumed run writes:
        a temporary of a live process would be taken from under it. Returns the removed paths.
        """
        removed = []
        output = self.root.parent
        if not output.is_dir():
            return removed
        for folder, _dirs, names in os.walk(output):
            for name in names:
                if name.startswith(".") and ".tmp" in name:
                    path = Path(folder) / name
                    path.unlink(missing_ok=True)
                    removed.append(path)
        return sorted(removed)

    # ---- manifest ------------------------------------------------------------------------------
    def read_manifest(self) -> dict | None:
        """The manifest as written by `write_manifest`, or None before a run has written one."""
        if not self.manifest_path.is_file():
            return None
        return json.loads(self.manifest_path.read_text(encoding="utf-8"))

    def write_manifest(self, manifest: dict) -> None:
        """Write the manifest atomically (JSON, sorted keys), creating the work folder if needed."""
        self.root.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.manifest_path, json.dumps(manifest, indent=2, sort_keys=True) + "\n")

    def check_manifest(self, fingerprint: dict) -> None:
        """Raise ConfigError naming every pass-1 setting or input that differs from the manifest."""
        old = (self.read_manifest() or {}).get("fingerprint")
        if old is None:
            return
        changed = [k for k in sorted(set(old) | set(fingerprint)) if old.get(k) != fingerprint.get(k)]
        if changed:
            detail = "; ".join(
                "the input list" if k == "inputs_sha256" else f"{k}: {old.get(k)!r} -> {fingerprint.get(k)!r}"
                for k in changed
            )
            raise ConfigError(
                f"cannot --resume: {detail} changed since the run in {self.root.parent} started. Run with the "
                "same settings and inputs, or start again with --overwrite"
            )

    # ---- pass-1 shards -------------------------------------------------------------------------
    def write_shard(self, shard: int, records: list[Pass1Record], summary: dict) -> None:
        """Write a pass-1 shard, then its done marker: `summary` plus the file's size and the writer's pid."""
        self.pass1.mkdir(parents=True, exist_ok=True)
        table = pa.Table.from_pylist([r.to_row() for r in records], schema=pass1_schema())
        path = self.shard_path(shard)
        with atomic_path(path) as tmp:
            pq.write_table(table, tmp)
            size = tmp.stat().st_size
        marker = {**summary, "bytes": size, "pid": os.getpid()}
        atomic_write_text(self.done_path(shard), json.dumps(marker, sort_keys=True) + "\n")

    def read_shard(self, shard: int, columns: list[str] | None = None) -> pa.Table:
        """Pass-1 shard `shard` as an arrow table, only `columns` when given (e.g. no image bytes)."""
        return pq.read_table(self.shard_path(shard), columns=columns)

    def shard_summary(self, shard: int) -> dict:
        """The done marker of `shard`: images, masks, failed, bytes, pid (OSError when it is absent)."""
        return json.loads(self.done_path(shard).read_text(encoding="utf-8"))

    def iter_features(self, num_shards: int) -> Iterator[np.ndarray]:
        """Mask features of every labeled image, in input order, one (n, D) float32 array per image."""
        for shard in range(num_shards):
            table = self.read_shard(shard, ["error", "features", "feature_dim"])
            for err, blob, dim in zip(*(table.column(c).to_pylist() for c in ("error", "features", "feature_dim")),
                                      strict=True):
                if err is None and blob:
                    yield np.frombuffer(blob, dtype=np.float16).reshape(-1, dim).astype(np.float32)


def link_or_copy(source: Path, target: Path) -> None:
    """Hard-link `source` as `target` (pass-1 files are never rewritten in place), else copy it."""
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)
    except OSError:  # another file system, or links not allowed
        shutil.copy2(source, target)


def copy_work_folder(source: WorkDir, target: WorkDir, num_shards: int) -> None:
    """A new work folder holding `source`'s manifest and finished pass-1 shards (for `recluster --output`).

    Every write of a run replaces files through a rename, so a hard link never sees a later change of
    its source: the two folders stay independent.
    """
    target.root.mkdir(parents=True, exist_ok=True)
    shutil.copy2(source.manifest_path, target.manifest_path)
    for shard in range(num_shards):
        link_or_copy(source.shard_path(shard), target.shard_path(shard))
        shutil.copy2(source.done_path(shard), target.done_path(shard))


# --shard-size default: about this many shards per run (a killed run loses at most ~1 % of its pass 1) ...
TARGET_SHARDS = 100
# ... with no more images per shard than this (a shard is also the unit of the multi-process split).
MAX_AUTO_SHARD_SIZE = 256


def auto_shard_size(num_items: int, image_batch_size: int) -> int:
    """The --shard-size default: ~TARGET_SHARDS shards, a multiple of the encoder batch, <= MAX_AUTO_SHARD_SIZE.

    A shard is what a killed run keeps, so a run of 96 images is 96 one-image shards (with batch 1)
    rather than one shard that keeps nothing; a large run gets shards of MAX_AUTO_SHARD_SIZE images.
    """
    batch = max(1, image_batch_size)
    size = -(-max(1, num_items) // TARGET_SHARDS)  # ceil
    size = -(-size // batch) * batch  # whole encoder batches
    return max(batch, min(size, max(batch, MAX_AUTO_SHARD_SIZE // batch * batch)))


def shard_ranges(num_items: int, shard_size: int) -> list[tuple[int, int]]:
    """[start, end) item ranges of consecutive shards of shard_size items (the last may be shorter)."""
    return [(s, min(s + shard_size, num_items)) for s in range(0, num_items, shard_size)]


def split_for_process(num_units: int, rank: int, world: int) -> range:
    """The contiguous share of units [0, num_units) that process `rank` of `world` handles."""
    return range(rank * num_units // world, (rank + 1) * num_units // world)


def ensure_empty_or_resumable(output: Path, resume: bool, overwrite: bool) -> None:
    """Refuse an existing, non-empty output folder unless --resume or --overwrite says what to do."""
    if output.exists() and not output.is_dir():
        raise ConfigError(f"--output {output} exists and is a file; choose a folder path")
    if output.is_dir() and any(output.iterdir()) and not (resume or overwrite):
        raise ConfigError(
            f"--output {output} already exists and is not empty; pass --resume to continue that run or "
            "--overwrite to replace it"
        )
    if resume and output.is_dir() and any(output.iterdir()) and not (output / "work" / "manifest.json").is_file():
        raise ConfigError(f"--resume: {output} holds no alps_hf run (no work/manifest.json); use --overwrite")
