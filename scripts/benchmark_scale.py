"""Archive-scale costs of `alps-hf label`: K-means fit + assign, and labeling throughput.

Part 1 (always): K-means over N synthetic 256-d float32 mask features (a mixture of K Gaussian
clusters) on a fixed number of CPU threads, N in --sizes (default 10^5 and 10^6):
  * fit: `alps_hf.labeling.clustering.fit_online_kmeans`, i.e. sklearn `MiniBatchKMeans.partial_fit`
    streamed in --batch-size chunks, --passes passes (the pipeline's code path, L2-normalised),
    and the same partial_fit loop called directly on batch slices (`fit_direct_partial_fit_s`);
  * assign: nearest centroid for every vector, in torch chunks (matmul + argmin), and the
    library's numpy `ClusterModel.predict` for comparison;
  * quality: adjusted Rand index of the assignment against the generating clusters (subsample).
  Target: fit + assign of 10^6 vectors within 60 s on 2 cores.
Part 2 (--images N, 0 skips it): images/s of `alps-hf label` with the tiny toy SAM from
  ../shared/models/toy-sam on N copies of the synthetic scenes, for 1 process and, under
  `ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu`, 2 processes (wall time of the whole command, model load and K-means
  included, so small N understates steady-state throughput).

Prints one line per measurement and writes all of them to --output (JSON).
    python scripts/benchmark_scale.py --threads 2 --output benchmark_scale.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _limit_threads(threads: int) -> None:
    # Before numpy / torch / sklearn start their pools.
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(threads)


def synthetic_features(n: int, dim: int, k: int, seed: int):
    """(n, dim) float32 vectors from k Gaussian clusters, and their cluster ids (built in chunks)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    centres = rng.normal(0.0, 1.0, (k, dim)).astype(np.float32)
    x = np.empty((n, dim), np.float32)
    truth = rng.integers(0, k, n)
    for start in range(0, n, 100_000):
        stop = min(n, start + 100_000)
        x[start:stop] = centres[truth[start:stop]] + rng.normal(0.0, 0.8, (stop - start, dim)).astype(np.float32)
    return x, truth


def torch_assign(x, centroids, chunk: int = 65536):
    """Nearest centroid of each row of x (L2-normalised like the pipeline), in torch chunks."""
    import numpy as np
    import torch

    c = torch.from_numpy(np.ascontiguousarray(centroids, dtype=np.float32))
    c_sq = (c * c).sum(1)
    out = np.empty(len(x), np.int64)
    with torch.inference_mode():
        for start in range(0, len(x), chunk):
            xb = torch.from_numpy(x[start : start + chunk])
            xb = xb / xb.norm(dim=1, keepdim=True).clamp_min(1e-12)
            out[start : start + chunk] = torch.argmin(c_sq[None, :] - 2.0 * xb @ c.T, dim=1).numpy()
    return out


def bench_kmeans(n: int, dim: int, k: int, batch_size: int, passes: int, seed: int) -> dict:
    """Fit + assign timings for n vectors (data generation not timed)."""
    import numpy as np
    from sklearn.cluster import MiniBatchKMeans
    from sklearn.metrics import adjusted_rand_score

    from alps_hf.labeling.clustering import fit_online_kmeans

    t0 = time.perf_counter()
    x, truth = synthetic_features(n, dim, k, seed)
    gen_s = time.perf_counter() - t0
    stream = 65536  # what the pipeline's shard reader hands over at a time

    def chunks():
        return (x[s : s + stream] for s in range(0, n, stream))

    t0 = time.perf_counter()
    model = fit_online_kmeans(chunks, k, seed=seed, normalization="l2", batch_size=batch_size, passes=passes)
    fit_s = time.perf_counter() - t0
    # The same algorithm without the library's re-chunking: partial_fit straight on batch slices,
    # to show how much of fit_s is the streaming glue rather than K-means itself.
    t0 = time.perf_counter()
    direct = MiniBatchKMeans(n_clusters=k, random_state=seed, batch_size=batch_size, n_init=1, init_size=batch_size)
    for _ in range(passes):
        for start in range(0, n, batch_size):
            part = x[start : start + batch_size]
            direct.partial_fit(part / np.maximum(np.linalg.norm(part, axis=1, keepdims=True), 1e-12))
    fit_direct_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    labels = torch_assign(x, model.centroids)
    assign_torch_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    labels_np = model.predict(x)
    assign_numpy_s = time.perf_counter() - t0
    sample = np.random.default_rng(seed).choice(n, min(n, 100_000), replace=False)
    return {
        "part": "kmeans",
        "n": n,
        "dim": dim,
        "k": k,
        "batch_size": batch_size,
        "passes": passes,
        "generate_s": round(gen_s, 2),
        "fit_s": round(fit_s, 2),
        "fit_direct_partial_fit_s": round(fit_direct_s, 2),
        "assign_torch_s": round(assign_torch_s, 2),
        "assign_numpy_s": round(assign_numpy_s, 2),
        "fit_plus_assign_s": round(fit_s + assign_torch_s, 2),
        "torch_numpy_agree": float((labels == labels_np).mean()),
        "ari_vs_truth": round(float(adjusted_rand_score(truth[sample], labels[sample])), 4),
    }


def _scene_folder(n_images: int, folder: Path) -> Path:
    """n copies of the shared synthetic scenes (512 px), cycled, with distinct names."""
    scenes = sorted((REPO.parent / "shared" / "data" / "synthetic_scenes" / "images").glob("*.png"))
    if not scenes:
        raise SystemExit("../shared/data/synthetic_scenes/images not found beside the checkout")
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n_images):
        shutil.copyfile(scenes[i % len(scenes)], folder / f"img_{i:05d}.png")
    return folder


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def bench_label(n_images: int, processes: int, threads: int, points_per_side: int, workdir: Path) -> dict:
    """Wall-clock images/s of `alps-hf label` with the toy SAM for 1 or more CPU processes."""
    sam = REPO.parent / "shared" / "models" / "toy-sam"
    images = _scene_folder(n_images, workdir / "images")
    output = workdir / f"out_{processes}p"
    label_args = [
        str(images), "--output", str(output), "--sam", str(sam), "--num-clusters", "8",
        "--points-per-side", str(points_per_side), "--device", "cpu", "--overwrite",
        "--preview-images", "0",
        # Several work shards even for a few images, so that 2 processes have shards to share (same for 1).
        "--shard-size", str(max(1, n_images // 8)),
        # The toy SAM's scores are low; its README's loosened thresholds give tens of masks per image.
        "--pred-iou-thresh", "0.5", "--stability-score-thresh", "0.8",
    ]
    if processes == 1:
        cmd = [sys.executable, "-m", "alps_hf.cli", "label", *label_args]
    else:
        # `--cpu --num_processes N` silently starts one process; on CPU the gloo launch is --multi_gpu plus
        # ACCELERATE_USE_CPU=1 (set below).
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "--main_process_port", str(_free_port()), "-m", "alps_hf.cli", "label", *label_args]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "ACCELERATE_USE_CPU": "1",
           # All three pools, not only OMP: an MKL / OpenBLAS pool left at the parent's size oversubscribes
           # the cores (measured: 2 processes ran 3x slower than 1 with MKL_NUM_THREADS=2 left over).
           **{var: str(max(1, threads // processes))
              for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}}
    t0 = time.perf_counter()
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=workdir)
    wall = time.perf_counter() - t0
    record = {"part": "label", "images": n_images, "processes": processes, "points_per_side": points_per_side,
              "wall_s": round(wall, 2), "returncode": result.returncode}
    if result.returncode == 0:
        record["images_per_s"] = round(n_images / wall, 3)
        # Which processes wrote the pass-1 shards (each done marker records its writer's pid): proof that
        # the work was split, not duplicated.
        markers = sorted((output / "work" / "pass1").glob("shard-*.done"))
        record["pass1_writer_processes"] = len({json.loads(m.read_text())["pid"] for m in markers})
        record["pass1_shards"] = len(markers)
    else:
        record["error_tail"] = (result.stderr or result.stdout)[-800:]
    return record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000], help="feature counts")
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--clusters", type=int, default=46)
    parser.add_argument("--batch-size", type=int, default=4096)
    parser.add_argument("--passes", type=int, default=1, help="online K-means passes (alps-hf label default: 3)")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads for numpy / torch / sklearn")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--images", type=int, default=0, help="images for the alps-hf label part (0: skip)")
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2], help="process counts for --images")
    parser.add_argument("--points-per-side", type=int, default=8, help="prompt grid for the label part")
    parser.add_argument("--output", default="benchmark_scale.json")
    args = parser.parse_args(argv)
    _limit_threads(args.threads)
    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(args.threads)
    records = []
    header = {"python": platform.python_version(), "torch": torch.__version__, "threads": args.threads,
              "cpus_on_machine": os.cpu_count()}
    print(json.dumps({"part": "setup", **header}))
    with threadpool_limits(args.threads):
        for n in args.sizes:
            record = bench_kmeans(n, args.dim, args.clusters, args.batch_size, args.passes, args.seed)
            print(json.dumps(record), flush=True)
            records.append(record)
    if args.images:
        with tempfile.TemporaryDirectory() as tmp:
            for processes in args.processes:
                record = bench_label(args.images, processes, args.threads, args.points_per_side, Path(tmp))
                print(json.dumps(record), flush=True)
                records.append(record)
    Path(args.output).write_text(json.dumps({"setup": header, "results": records}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
