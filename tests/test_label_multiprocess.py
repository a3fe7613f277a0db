"""`alps-hf label` under `accelerate launch` with two processes equals a one-process run.

Two CPU processes talk over gloo (`ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2`;
`--cpu --num_processes 2` would start one process only). With `--shard-size 1` and one output shard per
work shard, each process takes three contiguous shards in pass 1 and three in pass 2; the main process
fits K-means in between. Proof that both processes worked: the done markers and pass-2 group files
record the pid of their writer, and only the main process prints the summary.

`PartialState()` alone does not read ACCELERATE_USE_CPU (only `Accelerator` does): before
`run.process_state` asked for the CPU state itself, every launched process believed it was alone and
labeled everything; this test launches the plain `-m alps_hf.cli` and would catch that again.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from label_helpers import TINY, assert_same_result, check_dataset
from sam_fixtures import blocks_image, write_png

NUM_IMAGES = 6
INPUTS = [f"imgs/img_{i}.png" for i in range(NUM_IMAGES)]  # relative: both runs get the same `source`
OUT = "out"
# --max-shard-bytes 1: one output shard per work shard, so pass 2 is split across the processes too.
ARGS = ["--num-clusters", "3", "--shard-size", "1", "--max-shard-bytes", "1", *TINY]
WAIT_S = 300


def run_dir(tmp_path_factory, name: str) -> Path:
    folder = tmp_path_factory.mktemp(name)
    for i in range(NUM_IMAGES):
        write_png(folder / INPUTS[i], blocks_image(i, 40 + 4 * i, 56 - 4 * i))
    return folder


def env(**extra: str) -> dict[str, str]:
    # torchrun sets OMP_NUM_THREADS=1 in every process; the one-process run must match it (SAM's float
    # reductions can differ in the last bit between thread counts).
    return {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
            "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", **extra}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_two(folder: Path, entry: list[str], tiny_sam_dir: Path) -> subprocess.CompletedProcess:
    accelerate = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                  "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                  "--main_process_port", str(free_port())]
    cmd = [*accelerate, *entry, "label", *INPUTS, "--output", OUT, "--sam", str(tiny_sam_dir), *ARGS]
    return subprocess.run(cmd, cwd=folder, env=env(ACCELERATE_USE_CPU="1"), capture_output=True, text=True,
                          timeout=WAIT_S)


@pytest.fixture(scope="module")
def one_process(tmp_path_factory, tiny_sam_dir) -> Path:
    folder = run_dir(tmp_path_factory, "one")
    done = subprocess.run([sys.executable, "-m", "alps_hf.cli", "label", *INPUTS, "--output", OUT, "--sam",
                           str(tiny_sam_dir), *ARGS], cwd=folder, env=env(), capture_output=True, text=True,
                          timeout=WAIT_S)
    assert done.returncode == 0, done.stderr[-3000:]
    return folder / OUT


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory, tiny_sam_dir) -> tuple[Path, subprocess.CompletedProcess]:
    folder = run_dir(tmp_path_factory, "two")
    done = launch_two(folder, ["-m", "alps_hf.cli"], tiny_sam_dir)
    assert done.returncode == 0, done.stderr[-4000:]
    return folder / OUT, done


def writers(out: Path) -> tuple[list[int], list[int]]:
    """The pid that wrote each pass-1 shard (done markers) and each output shard (pass-2 group files)."""
    pass1 = [json.loads((out / "work" / "pass1" / f"shard-{s:05d}.done").read_text())["pid"]
             for s in range(NUM_IMAGES)]
    groups = sorted((out / "work" / "pass2").glob("group-*.json"))
    return pass1, [json.loads(g.read_text())["pid"] for g in groups]


def assert_split_over_two_processes(out: Path, stdout: str) -> None:
    pass1, pass2 = writers(out)
    first, second = pass1[0], pass1[-1]
    assert first != second, f"one process wrote every shard: {pass1}"
    assert pass1 == [first] * 3 + [second] * 3, f"contiguous halves expected, got writers {pass1}"
    assert pass2 == pass1, f"pass 2 is split the same way (one output shard per work shard): {pass2}"
    assert stdout.count("alps-hf: wrote") == 1, f"only the main process reports:\n{stdout}"


def assert_same_as_one_process(out: Path, ref: Path) -> None:
    shards = [f"train-{i:05d}-of-{NUM_IMAGES:05d}.parquet" for i in range(NUM_IMAGES)]
    assert_same_result(out, ref, INPUTS, 3, shards)


@pytest.mark.slow
def test_one_process_run_is_one_writer(one_process):
    check_dataset(one_process, 3, INPUTS)
    pass1, pass2 = writers(one_process)
    assert len(set(pass1)) == 1 and pass2 == pass1


@pytest.mark.slow
def test_two_processes_share_the_work(two_processes):
    out, done = two_processes
    assert_split_over_two_processes(out, done.stdout)
    check_dataset(out, 3, INPUTS)


@pytest.mark.slow
def test_two_processes_equal_one(two_processes, one_process):
    out, _ = two_processes
    assert_same_as_one_process(out, one_process)
