"""`alps-hf label` killed (SIGKILL) at several points, then `--resume`d, equals an uninterrupted run.

The runs to kill are real subprocesses. One is the plain CLI (`python -m alps_hf.cli`), killed as soon
as polling sees its first pass-1 done marker (where exactly it stops varies). The others run the same
CLI under a breakpoint: `os.replace` (every atomic write of the library ends in it) is wrapped so that
the process announces itself and sleeps when it is about to rename a chosen file; the test then kills
it. Those kills land at exact, repeatable points: between a complete temporary and its rename, in
pass 1, pass 2 and the card. The library itself is not changed or slowed.

The resumed folder must give the same rows (every column, bytes), id2label, cluster centroids,
failures and stats as the uninterrupted run. Half-written shards (a parquet without its done marker,
a truncated parquet, a garbled marker) are redone, and only they.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import pytest

from alps_hf.labeling.workdir import WorkDir, shard_ranges
from label_helpers import TINY, assert_same_result, check_dataset, label
from sam_fixtures import blocks_image, write_png

NUM_IMAGES = 6
SIZES = [(40 + 4 * i, 56 - 4 * i) for i in range(NUM_IMAGES)]  # distinct: count_generated tells images apart
INPUTS = [f"imgs/img_{i}.png" for i in range(NUM_IMAGES)]  # relative: every run gets the same `source`
OUT = "out"
ARGS = ["--num-clusters", "3", "--shard-size", "1", *TINY]
WAIT_S = 120  # a generous bound on one subprocess; only reached when something hangs

# Wrap os.replace: before renaming onto a file whose name matches the gate, write the marker file
# (with the pid) and sleep; the test kills the process there. argv: gate, marker, CLI arguments.
BREAKPOINT = """
import fnmatch, os, sys, time
gate, marker = sys.argv[1], sys.argv[2]
_replace = os.replace
def replace(src, dst, *args, **kwargs):
    if fnmatch.fnmatch(os.path.basename(os.fspath(dst)), gate):
        with open(marker, "w") as f:
            f.write(str(os.getpid()))
        time.sleep(3600)
    return _replace(src, dst, *args, **kwargs)
os.replace = replace
from alps_hf.cli import main
sys.exit(main(sys.argv[3:]))
"""

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ---- fixtures ------------------------------------------------------------------------------------------
def cli_argv(tiny_sam_dir: Path) -> list[str]:
    return ["label", *INPUTS, "--output", OUT, "--sam", str(tiny_sam_dir), *ARGS]


def subprocess_env() -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
            "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def new_run_dir(tmp_path_factory, name: str) -> Path:
    """A folder holding imgs/ (the inputs); runs use it as their working directory."""
    folder = tmp_path_factory.mktemp(name)
    for i, (h, w) in enumerate(SIZES):
        write_png(folder / INPUTS[i], blocks_image(i, h, w))
    return folder


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_sam_dir) -> Path:
    """An uninterrupted run of the same command, as a subprocess like the killed ones."""
    folder = new_run_dir(tmp_path_factory, "reference")
    done = subprocess.run([sys.executable, "-m", "alps_hf.cli", *cli_argv(tiny_sam_dir)], cwd=folder,
                          env=subprocess_env(), capture_output=True, text=True, timeout=WAIT_S)
    assert done.returncode == 0, done.stderr[-3000:]
    return folder / OUT


# ---- killing -------------------------------------------------------------------------------------------
@dataclass
class KillPoint:
    """gate: the file name (fnmatch) whose rename the run is stopped before; None = the plain CLI,
    killed when polling sees the first pass-1 done marker."""

    name: str
    gate: str | None
    meaning: str


POINTS = {p.name: p for p in [
    KillPoint("first-done", None, "pass 1, as soon as the first shard is done (plain CLI, polled)"),
    KillPoint("pass1-parquet", "shard-00002.parquet", "pass 1: shard 2 written to its temporary, not renamed"),
    KillPoint("pass1-marker", "shard-00004.done", "pass 1: shard 4's parquet in place, its done marker not"),
    KillPoint("pass2", "train-*.parquet", "after pass 1 and K-means: the output shard not renamed yet"),
    KillPoint("card", "README.md", "after pass 2 and the folder files: the dataset card not renamed yet"),
]}


def temporaries(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob(".*") if ".tmp" in p.name)


def done_shards(out: Path) -> list[int]:
    return sorted(int(p.stem.split("-")[1]) for p in (out / "work" / "pass1").glob("shard-*.done"))


def state_of(out: Path) -> dict:
    """What a killed run left: finished shards, the folder's files, its temporaries."""
    return {
        "done": done_shards(out) if (out / "work" / "pass1").is_dir() else [],
        "files": sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file() and
                        not p.name.startswith(".") and "pass1" not in p.parts),
        "temporaries": temporaries(out),
    }


def kill_run(folder: Path, tiny_sam_dir: Path, point: KillPoint) -> dict:
    """Start the labeling subprocess in folder, SIGKILL it at `point`; return the state it left."""
    marker = folder / "breakpoint-reached"
    if point.gate is None:
        cmd = [sys.executable, "-m", "alps_hf.cli", *cli_argv(tiny_sam_dir)]
    else:
        cmd = [sys.executable, "-c", BREAKPOINT, point.gate, str(marker), *cli_argv(tiny_sam_dir)]
    proc = subprocess.Popen(cmd, cwd=folder, env=subprocess_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    pass1 = folder / OUT / "work" / "pass1"
    deadline = time.monotonic() + WAIT_S
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            reached = marker.exists() if point.gate else any(pass1.glob("*.done"))
            if reached:
                break
            time.sleep(0.002 if point.gate is None else 0.05)
        finished = proc.poll() is not None
        proc.send_signal(signal.SIGKILL)
        output, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    state = state_of(folder / OUT)
    state["finished_before_kill"] = finished
    state["returncode"] = proc.returncode
    state["log_tail"] = output[-2000:]
    return state


@pytest.fixture(scope="module")
def kill_and_resume(tmp_path_factory, tiny_sam_dir):
    """point name -> (state the killed run left, the resumed output folder); each point runs once."""
    done: dict[str, tuple[dict, Path]] = {}

    def run(name: str) -> tuple[dict, Path]:
        if name not in done:
            folder = new_run_dir(tmp_path_factory, f"kill-{name}")
            state = kill_run(folder, tiny_sam_dir, POINTS[name])
            cwd = os.getcwd()
            os.chdir(folder)  # relative inputs: the same `source` values as the reference
            try:
                code = label(INPUTS, OUT, tiny_sam_dir, *ARGS, "--resume")
            finally:
                os.chdir(cwd)
            assert code == 0, f"--resume after a kill at {name} failed; killed state: {state}"
            done[name] = (state, folder / OUT)
        return done[name]

    return run


def assert_same_as_reference(out: Path, ref: Path) -> None:
    """The shared checks of a repeated run, plus what only a resume can get wrong: the card, the preview and
    every pass-1 done marker."""
    assert_same_result(out, ref, INPUTS, 3, ["train-00000-of-00001.parquet"])
    assert (out / "README.md").is_file() and (out / "preview.png").is_file()
    assert done_shards(out) == list(range(NUM_IMAGES))


# ---- tests ---------------------------------------------------------------------------------------------
def test_reference_run_is_a_complete_dataset(reference):
    raw = check_dataset(reference, 3, INPUTS)
    assert sum(len(r["segment_class"]) for r in raw) >= 3
    assert done_shards(reference) == list(range(NUM_IMAGES))


@pytest.mark.slow
def test_killed_runs_stopped_where_intended(kill_and_resume):
    """The state each kill left (so a kill that came too late is seen, not silently counted)."""
    states = {name: kill_and_resume(name)[0] for name in POINTS}
    polled = states.pop("first-done")
    if polled["finished_before_kill"]:  # polling lost the race (a very busy machine): the point still counts
        warnings.warn(f"first-done: the run ended before the kill; resumed a finished run: {polled}", stacklevel=1)
    else:
        assert polled["returncode"] == -signal.SIGKILL and "README.md" not in polled["files"], polled
    assert len(polled["done"]) >= 1, polled
    for name, state in states.items():  # breakpoints: these kills land exactly where intended
        assert not state["finished_before_kill"], f"{name}: the run ended before the kill: {state}"
        assert state["returncode"] == -signal.SIGKILL, f"{name}: {state}"
        assert "README.md" not in state["files"], f"{name}: {state}"
    assert states["pass1-parquet"]["done"] == [0, 1]
    assert [t.rsplit("-", 1)[0] for t in states["pass1-parquet"]["temporaries"]] == [
        "work/pass1/.shard-00002.parquet.tmp"]
    assert states["pass1-marker"]["done"] == [0, 1, 2, 3]
    assert [t.rsplit("-", 1)[0] for t in states["pass1-marker"]["temporaries"]] == ["work/pass1/.shard-00004.done.tmp"]
    for name in ("pass2", "card"):
        assert states[name]["done"] == list(range(NUM_IMAGES)), name
        assert "work/cluster_model.safetensors" in states[name]["files"], name
    assert not any(f.startswith("data/") for f in states["pass2"]["files"])
    assert [t.rsplit("-", 1)[0] for t in states["pass2"]["temporaries"]] == [
        "data/.train-00000-of-00001.parquet.tmp"]
    assert {"data/train-00000-of-00001.parquet", "id2label.json", "alps_dataset.json",
            "preview.png"} <= set(states["card"]["files"])
    assert [t.rsplit("-", 1)[0] for t in states["card"]["temporaries"]] == [".README.md.tmp"]


@pytest.mark.parametrize("point", list(POINTS))
def test_resume_after_kill_equals_uninterrupted_run(point, kill_and_resume, reference):
    state, out = kill_and_resume(point)
    assert_same_as_reference(out, reference)


@pytest.mark.parametrize("point", ["pass1-parquet", "pass1-marker", "pass2"])
def test_resume_removes_the_temporaries_of_the_killed_run(point, kill_and_resume):
    state, out = kill_and_resume(point)
    assert state["temporaries"], "the kill left a temporary to clean"
    assert temporaries(out) == []


def test_resume_with_a_shard_after_a_kill_with_no_done_marker(kill_and_resume):
    """The kill between a shard's rename and its marker left a parquet without a done marker."""
    state, out = kill_and_resume("pass1-marker")
    assert 4 not in state["done"]
    assert json.loads((out / "work" / "pass1" / "shard-00004.done").read_text())["images"] == 1


# ---- half-written shards, in-process -------------------------------------------------------------------
@pytest.fixture
def finished_copy(reference, tmp_path, monkeypatch) -> Path:
    """A copy of the reference run's folder (inputs and output); the working directory for label()."""
    folder = tmp_path / "copy"
    shutil.copytree(reference.parent, folder)
    monkeypatch.chdir(folder)
    return folder / OUT


def resume(tiny_sam_dir: Path) -> None:
    assert label(INPUTS, OUT, tiny_sam_dir, *ARGS, "--resume") == 0


def test_parquet_without_done_marker_is_redone(finished_copy, tiny_sam_dir, reference, count_generated):
    pass1 = finished_copy / "work" / "pass1"
    (pass1 / "shard-00001.done").unlink()
    resume(tiny_sam_dir)
    assert count_generated == [SIZES[1]]
    assert_same_as_reference(finished_copy, reference)


def test_truncated_parquet_is_redone(finished_copy, tiny_sam_dir, reference, count_generated):
    """Half a file without its marker (a non-atomic writer), and half a file WITH its marker (the rename
    reached the disk, the data did not: a crash without fsync) are both redone."""
    pass1 = finished_copy / "work" / "pass1"
    for shard in (2, 5):
        path = pass1 / f"shard-{shard:05d}.parquet"
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    (pass1 / "shard-00002.done").unlink()
    assert not WorkDir(finished_copy / "work").is_done(5)
    resume(tiny_sam_dir)
    assert sorted(count_generated) == sorted([SIZES[2], SIZES[5]])
    assert_same_as_reference(finished_copy, reference)


def test_garbled_done_marker_is_redone(finished_copy, tiny_sam_dir, reference, count_generated):
    (finished_copy / "work" / "pass1" / "shard-00003.done").write_text('{"images": 1, "ma')
    resume(tiny_sam_dir)
    assert count_generated == [SIZES[3]]
    assert_same_as_reference(finished_copy, reference)


def test_done_marker_records_size_and_writer(reference):
    work = WorkDir(reference / "work")
    pids = set()
    for shard in range(NUM_IMAGES):
        marker = work.shard_summary(shard)
        assert marker["bytes"] == work.shard_path(shard).stat().st_size
        assert marker["images"] == 1 and marker["failed"] == 0 and marker["masks"] >= 1
        pids.add(marker["pid"])
    assert len(pids) == 1 and pids != {os.getpid()}  # one process, the subprocess


def test_clean_temporaries_removes_only_temporaries(tmp_path):
    out = tmp_path / "out"
    keep = ["README.md", "data/train-00000-of-00001.parquet", "work/pass1/shard-00000.parquet",
            "work/pass1/shard-00000.done", ".gitattributes", "work/.hidden-but-not-temporary", "notes.tmp.txt"]
    stale = [".README.md.tmp", ".class_histogram.png.tmp.png", "data/.train-00000-of-00001.parquet.tmp-123",
             "work/pass1/.shard-00003.parquet.tmp-99", "work/.cluster_model.safetensors.tmp-7",
             "stitched/.scene.tif.tmp-5"]
    for name in keep + stale:
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_text("x")
    os.mkfifo(out / "work" / "pass2.tmp-fifo-not-hidden")  # not hidden: kept
    removed = WorkDir(out / "work").clean_temporaries()
    assert sorted(p.relative_to(out).as_posix() for p in removed) == sorted(stale)
    assert temporaries(out) == []
    assert all((out / name).is_file() for name in keep)
    assert (out / "work" / "pass2.tmp-fifo-not-hidden").exists()
    assert WorkDir(tmp_path / "absent" / "work").clean_temporaries() == []


@pytest.mark.parametrize(("items", "batch", "size"), [
    (96, 1, 1), (96, 4, 4), (1, 4, 4), (0, 1, 1), (1000, 4, 12), (1000, 1, 10), (25_600, 1, 256),
    (10**6, 1, 256), (10**6, 3, 255), (10**6, 300, 300),
])
def test_auto_shard_size(items, batch, size):
    from alps_hf.labeling.workdir import auto_shard_size

    assert auto_shard_size(items, batch) == size
    if items >= 100 and batch == 1 and size < 256:
        assert len(shard_ranges(items, size)) == 100  # about TARGET_SHARDS shards
