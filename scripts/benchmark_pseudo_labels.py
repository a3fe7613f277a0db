"""Does pre-training on our pseudo-labels pay off? The experiment of issue 10, end to end, rerunnable.

1. Synthetic scenes with ground truth (`make_scenes.py`): unlabeled, labeled and validation sets
   from disjoint seed ranges (default from 900000: seeds the project never tuned on; 0-1599 trained
   the toy SAM).
2. `alps-hf label` the unlabeled scenes with the toy SAM (pred IoU 0.5, stability 0.8, K = 10, plus
   `--label-args`, e.g. "--preset alps-paper"), then `alps-hf score` them against their ground truth.
3. `alps-hf pretrain` SegFormer on the pseudo-labels (ALPS) and on the same scenes' ground truth (GT,
   the upper bound).
4. `alps-hf finetune` from scratch / ALPS / GT on a few labeled scenes, for each seed (a seed picks
   the same scenes for every start) and each fine-tune length, scored on the validation scenes.
5. `results.json`, `results.md` (mean, per seed, paired differences to scratch, the ratio
   (ALPS - scratch) / (GT - scratch)) and `benchmark_pseudo_labels.png`; the table is printed.

`--baselines-from DIR` reuses the scenes, datasets, ground-truth pre-training and the scratch / GT
fine-tunes of an earlier run with the same sizes and seeds in DIR (they do not depend on the
pseudo-labels), so a second labeling variant costs only its labeling, pre-training and ALPS
fine-tunes; results DIR is still writing are waited for.

Every step is an `alps-hf` command in its own process with one thread (`OMP_NUM_THREADS=1`);
`--jobs 2` runs two at once, as soon as their inputs exist (the scratch runs do not wait for
labeling). A step whose result exists is skipped on a rerun (`--rerun` redoes them).

    python scripts/benchmark_pseudo_labels.py --output bench-default --jobs 2
    python scripts/benchmark_pseudo_labels.py --output bench-paper --label-args "--preset alps-paper" \
        --baselines-from bench-default
    python scripts/benchmark_pseudo_labels.py --output /tmp/tiny --tiny      # seconds, for the test

Default size (issue 10): 96 unlabeled, 48 labeled (3 used per seed), 24 validation scenes of 512 px;
segformer-b0 shrunk by --model-config-overrides, random init, crop 256, batch 8, lr 1e-3 for encoder
and head; pre-train 500 steps; fine-tune 200 and 700 steps, 3 seeds.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shlex
import subprocess
import sys
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

SHARED = Path(__file__).resolve().parents[2] / "shared"
MAKE_SCENES = SHARED / "data" / "synthetic_scenes" / "make_scenes.py"
TOY_SAM = SHARED / "models" / "toy-sam"
CLASSES = {"0": "building", "1": "land", "2": "road", "3": "vegetation", "4": "water"}
SMALL_SEGFORMER = {"hidden_sizes": [16, 32, 64, 128], "depths": [1, 1, 2, 1], "num_attention_heads": [1, 2, 4, 8],
                   "decoder_hidden_size": 64}
TINY_SEGFORMER = {"hidden_sizes": [8, 16, 24, 32], "depths": [1, 1, 1, 1], "num_attention_heads": [1, 1, 1, 1],
                  "decoder_hidden_size": 16}
STARTS = ("scratch", "alps", "gt")
# --tiny: every stage runs, on sizes that take seconds (for tests/test_benchmark_pseudo_labels.py).
TINY = {"unlabeled": 3, "labeled": 4, "validation": 2, "size": 128, "labeled_per_run": 2, "clusters": 3,
        "pretrain_steps": 2, "finetune_steps": [2], "seeds": [0, 1, 2], "crop_size": 64, "batch_size": 2,
        "points_per_side": 4}


@dataclass
class Job:
    """One command of the experiment: runs when its `deps` are done; skipped when `result` exists."""

    name: str
    cmd: list[str]
    result: Path
    deps: tuple[str, ...] = ()
    seconds: float = field(default=0.0)


def alps(*args: str) -> list[str]:
    """An `alps-hf` command line run by this interpreter (the venv the script runs in)."""
    return [sys.executable, "-m", "alps_hf.cli", *args]


def train_flags(args) -> list[str]:
    """Flags shared by every pretrain / finetune run (the issue's measurement settings)."""
    return ["--crop-size", str(args.crop_size), "--batch-size", str(args.batch_size),
            "--learning-rate", str(args.learning_rate), "--backbone-learning-rate", str(args.learning_rate),
            "--num-workers", "0", "--checkpointing-steps", "0", "--eval-steps", "0", "--logging-steps", "50",
            "--overwrite"]


def scratch_model(args) -> list[str]:
    """A randomly initialised, shrunk segformer-b0."""
    return ["--model", "segformer-b0", "--from-scratch", "--model-config-overrides", json.dumps(args.overrides)]


def data_jobs(args, out: Path) -> list[Job]:
    """Scenes, the labeled datasets (ground truth of the unlabeled scenes; labeled + validation)."""
    seeds = {"unlabeled": args.seed0, "labeled": args.seed0 + args.unlabeled,
             "validation": args.seed0 + args.unlabeled + args.labeled}
    jobs = []
    for name, first in seeds.items():
        n = getattr(args, name)
        jobs.append(Job(f"scenes-{name}", [sys.executable, str(MAKE_SCENES), str(out / "scenes" / name), "--n", str(n),
                                           "--size", str(args.size), "--seed0", str(first)],
                        out / "scenes" / name / "labels" / f"scene_{first + n - 1:04d}.png"))
    names = json.dumps(CLASSES)
    jobs.append(Job("gt-dataset", alps("make-dataset", str(out / "scenes" / "unlabeled"), "--output", str(out / "gt-dataset"),
                                       "--id2label", names, "--overwrite"),
                    out / "gt-dataset" / "README.md", ("scenes-unlabeled",)))
    jobs.append(Job("labeled-train", alps("make-dataset", str(out / "scenes" / "labeled"), "--output", str(out / "labeled"),
                                          "--id2label", names, "--overwrite"),
                    out / "labeled" / "data" / "train-00000-of-00001.parquet", ("scenes-labeled",)))
    jobs.append(Job("labeled-validation", alps("make-dataset", str(out / "scenes" / "validation"), "--output",
                                               str(out / "labeled"), "--split", "validation", "--add-split"),
                    out / "labeled" / "data" / "validation-00000-of-00001.parquet", ("scenes-validation", "labeled-train")))
    return jobs


def pretrain_jobs(args, out: Path, data: Path) -> list[Job]:
    """Labeling, scoring and the two pre-training runs (on pseudo-labels, on ground truth); scenes read from `data`."""
    label = alps("label", str(data / "scenes" / "unlabeled" / "images"), "--output", str(out / "pseudo"),
                 "--sam", str(args.sam), "--pred-iou-thresh", "0.5", "--stability-score-thresh", "0.8",
                 "--num-clusters", str(args.clusters), "--overwrite", *shlex.split(args.label_args))
    score = alps("score", str(out / "pseudo"), "--ground-truth", str(data / "scenes" / "unlabeled"),
                 "--id2label", json.dumps(CLASSES), "--output", str(out / "score.json"))
    jobs = [Job("label", label, out / "pseudo" / "README.md", ("scenes-unlabeled",)),
            Job("score", score, out / "score.json", ("label",))]
    for start, dataset, dep in (("alps", out / "pseudo", "label"), ("gt", data / "gt-dataset", "gt-dataset")):
        cmd = alps("pretrain", "--dataset", str(dataset), "--output", str(out / f"pretrain-{start}"), *scratch_model(args),
                   "--max-steps", str(args.pretrain_steps), "--seed", "0", "--eval-split", "none", *train_flags(args))
        jobs.append(Job(f"pretrain-{start}", cmd, out / f"pretrain-{start}" / "metrics.json", (dep,)))
    return jobs


def finetune_dir(out: Path, steps: int, seed: int, start: str, base: Path | None = None) -> Path:
    """Where the fine-tuned model of one (length, seed, start) lives: in `base` for scratch / GT when given."""
    return (base if base is not None and start != "alps" else out) / "finetune" / f"steps{steps}" / f"seed{seed}" / start


# Jobs that do not depend on the pseudo-labels: `--baselines-from` takes their results from another run.
BASELINE_JOBS = ("scenes-", "gt-dataset", "labeled-", "pretrain-gt", "finetune-")


def is_baseline(job: Job) -> bool:
    """True for a job whose result is the same for every labeling variant (scratch / GT fine-tunes included)."""
    if job.name.startswith("finetune-"):
        return not job.name.endswith("-alps")
    return job.name.startswith(BASELINE_JOBS)


def finetune_jobs(args, out: Path, data: Path) -> list[Job]:
    """One fine-tune per (length, seed, start); the seed picks the labeled scenes, the same for each start.

    The labeled data and the GT checkpoint are read from `data` (the `--baselines-from` run, else `out`).
    """
    jobs = []
    for steps in args.finetune_steps:
        for seed in args.seeds:
            for start in STARTS:
                folder = finetune_dir(out, steps, seed, start)
                init = (out if start == "alps" else data) / f"pretrain-{start}"
                model = scratch_model(args) if start == "scratch" else ["--init", str(init)]
                deps = ("labeled-validation",) if start == "scratch" else ("labeled-validation", f"pretrain-{start}")
                cmd = alps("finetune", "--dataset", str(data / "labeled"), "--output", str(folder), *model,
                           "--train-samples", str(args.labeled_per_run), "--seed", str(seed), "--max-steps", str(steps),
                           *train_flags(args))
                jobs.append(Job(f"finetune-{steps}-{seed}-{start}", cmd, folder / "metrics.json", deps))
    return jobs


def run_jobs(jobs: list[Job], workers: int, logs: Path, rerun: bool, external: dict[str, Path] | None = None) -> None:
    """Run `jobs` (a DAG by name) with `workers` at a time, each with one thread; stop at the first failure.

    Jobs are started in list order as soon as their dependencies are done, so the list order is the
    priority (the long labeling chain first). `external` maps names of jobs another run does (the
    `--baselines-from` run) to their result files: such a dependency is done once its file exists.
    """
    external = dict(external or {})
    logs.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    done = {j.name for j in jobs if j.result.exists() and not rerun}
    for name in sorted(done):
        print(f"[skip] {name}: done already")
    pending = [j for j in jobs if j.name not in done]
    running: dict[Future, Job] = {}

    def execute(job: Job) -> int:
        began = time.perf_counter()
        with open(logs / f"{job.name}.log", "w") as log:
            log.write(shlex.join(job.cmd) + "\n")
            log.flush()
            rc = subprocess.call(job.cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        job.seconds = time.perf_counter() - began
        return rc

    with ThreadPoolExecutor(max_workers=workers) as pool:
        while pending or running:
            for name, path in list(external.items()):
                if path.exists():
                    done.add(name)
                    del external[name]
            for job in [j for j in pending if all(d in done for d in j.deps)][: workers - len(running)]:
                pending.remove(job)
                running[pool.submit(execute, job)] = job
                print(f"[start] {job.name}", flush=True)
            if not running:
                if not external:
                    raise SystemExit(f"jobs {[j.name for j in pending]} wait for jobs that never ran")
                time.sleep(10)  # waiting for the --baselines-from run
                continue
            finished, _ = wait(running, return_when=FIRST_COMPLETED, timeout=10 if external else None)
            for future in finished:
                job = running.pop(future)
                if future.result() != 0:
                    raise SystemExit(f"{job.name} failed (exit {future.result()}); see {logs / (job.name + '.log')}")
                done.add(job.name)
                print(f"[done] {job.name} in {job.seconds:.0f} s", flush=True)
    for name, path in external.items():  # the results table reads them all, needed by a job here or not
        print(f"[wait] {name}: for {path}", flush=True)
        while not path.exists():
            time.sleep(10)


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def collect(args, out: Path, base: Path | None = None) -> dict:
    """Per (length, start): mIoU per seed and mean, per-class IoU means, paired differences, the gain ratio.

    Scratch and GT results are read from `base` when given (`--baselines-from`).
    """
    lengths = {}
    for steps in args.finetune_steps:
        per_seed = {s: [] for s in STARTS}
        per_class: dict[str, dict[str, list[float]]] = {s: {} for s in STARTS}
        for seed in args.seeds:
            for start in STARTS:
                scores = json.loads((finetune_dir(out, steps, seed, start, base) / "metrics.json").read_text())["eval"]
                per_seed[start].append(scores["mean_iou"])
                for name, iou in scores["per_class_iou"].items():
                    per_class[start].setdefault(name, []).append(iou if iou is not None else float("nan"))
        mean = {s: _mean(v) for s, v in per_seed.items()}
        paired = {f"{s}-scratch": [a - b for a, b in zip(per_seed[s], per_seed["scratch"], strict=True)] for s in ("alps", "gt")}
        gain = mean["gt"] - mean["scratch"]
        lengths[str(steps)] = {
            "per_seed": per_seed, "mean": mean,
            "per_class_mean": {s: {n: _mean(v) for n, v in c.items()} for s, c in per_class.items()},
            "paired": {k: {"per_seed": v, "mean": _mean(v), "all_positive": all(d > 0 for d in v)} for k, v in paired.items()},
            "ratio_alps_over_gt_gain": (mean["alps"] - mean["scratch"]) / gain if gain else None,
        }
    return lengths


def _pct(value) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.1f}"


def markdown(results: dict) -> str:
    """results.md: the settings line, the pseudo-label score, and one mIoU table per fine-tune length."""
    s, q = results["settings"], results["pseudo_labels"]
    lines = [
        f"benchmark_pseudo_labels: {s['unlabeled']} unlabeled / {s['labeled_per_run']} of {s['labeled']} labeled / "
        f"{s['validation']} validation scenes ({s['size']} px, seeds from {s['seed0']}), K = {s['clusters']}, "
        f"label args {s['label_args']!r}, pre-train {s['pretrain_steps']} steps, seeds {s['seeds']}, "
        f"{s['machine']}, {results['total_seconds'] / 60:.1f} min",
        "",
        f"pseudo-labels: coverage {_pct(q['coverage'])} %, whole-image mIoU majority {_pct(q['majority_miou'])} / "
        f"Hungarian {_pct(q['hungarian_miou'])}, covered-pixel mIoU majority {_pct(q['covered_majority_miou'])}",
    ]
    for steps, r in results["finetune"].items():
        lines += ["", f"fine-tune {steps} steps: validation mIoU (%)", "",
                  "| start | mean | " + " | ".join(f"seed {x}" for x in s["seeds"]) + " |",
                  "|---|---|" + "---|" * len(s["seeds"])]
        for start in STARTS:
            lines.append(f"| {start} | {_pct(r['mean'][start])} | " + " | ".join(_pct(v) for v in r["per_seed"][start]) + " |")
        for key, p in r["paired"].items():
            lines.append(f"| {key} (paired) | {_pct(p['mean'])} | " + " | ".join(_pct(v) for v in p["per_seed"]) + " |")
        lines.append(f"\n(ALPS - scratch) / (GT - scratch) = {_pct(r['ratio_alps_over_gt_gain'])} %; "
                     f"ALPS above scratch for every seed: {r['paired']['alps-scratch']['all_positive']}")
    return "\n".join(lines) + "\n"


def plot(results: dict, path: Path) -> None:
    """Validation mIoU against fine-tune length per start: seeds as dots, the mean as a line."""
    import matplotlib

    matplotlib.use("Agg")  # no display on servers; must precede pyplot
    import matplotlib.pyplot as plt

    lengths = sorted(results["finetune"], key=int)
    fig, ax = plt.subplots(figsize=(6, 4))
    for start in STARTS:
        xs = [int(n) for n in lengths]
        ax.plot(xs, [100 * results["finetune"][n]["mean"][start] for n in lengths], "o-", label=start)
        for n in lengths:
            ax.scatter([int(n)] * len(results["finetune"][n]["per_seed"][start]),
                       [100 * v for v in results["finetune"][n]["per_seed"][start]], s=10, alpha=0.4)
    ax.set_xlabel("fine-tune steps")
    ax.set_ylabel("validation mIoU (%)")
    ax.set_title(f"{results['settings']['labeled_per_run']} labeled scenes, {len(results['settings']['seeds'])} seeds")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def parse_args(argv: list[str] | None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                     allow_abbrev=False)
    parser.add_argument("--output", required=True, help="Folder of every scene, dataset, model, log and result.")
    parser.add_argument("--tiny", action="store_true", help="Seconds-long settings for a test (overrides the sizes).")
    parser.add_argument("--jobs", type=int, default=2, help="Commands run at once (each with one thread).")
    parser.add_argument("--label-args", default="", help='Extra `alps-hf label` flags, e.g. "--preset alps-paper".')
    parser.add_argument("--sam", default=str(TOY_SAM), help="SAM folder for labeling.")
    parser.add_argument("--seed0", type=int, default=900_000, help="First scene seed (0-1599 trained the toy SAM).")
    parser.add_argument("--unlabeled", type=int, default=96)
    parser.add_argument("--labeled", type=int, default=48)
    parser.add_argument("--validation", type=int, default=24)
    parser.add_argument("--labeled-per-run", type=int, default=3, help="Labeled scenes each fine-tune sees.")
    parser.add_argument("--size", type=int, default=512, help="Scene size in pixels.")
    parser.add_argument("--clusters", type=int, default=10, help="K of labeling.")
    parser.add_argument("--pretrain-steps", type=int, default=500)
    parser.add_argument("--finetune-steps", type=int, nargs="+", default=[200, 700])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--crop-size", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--learning-rate", type=float, default=1e-3, help="Peak lr of encoder and head alike.")
    parser.add_argument("--rerun", action="store_true", help="Redo steps whose result exists.")
    parser.add_argument("--baselines-from", type=Path, default=None,
                        help="An earlier run's --output with the same sizes and seeds: its scenes, datasets, GT "
                             "pre-training and scratch / GT fine-tunes are reused (waited for while it runs).")
    args = parser.parse_args(argv)
    args.overrides = SMALL_SEGFORMER
    if args.tiny:
        for key, value in TINY.items():
            setattr(args, key, value)
        args.overrides = TINY_SEGFORMER
        args.label_args = f"--points-per-side {TINY['points_per_side']} {args.label_args}".strip()
    if args.jobs < 1 or len(args.seeds) < 1 or args.labeled_per_run > args.labeled:
        parser.error("need --jobs >= 1, at least one seed, and --labeled-per-run <= --labeled")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    began = time.perf_counter()
    # Priority order: the labeling chain is the longest, so it starts first.
    base = args.baselines_from
    data = base if base is not None else out
    jobs = data_jobs(args, data) + pretrain_jobs(args, out, data) + finetune_jobs(args, out, data)
    order = ["scenes-unlabeled", "label", "score", "pretrain-alps"]
    jobs.sort(key=lambda j: order.index(j.name) if j.name in order else len(order))
    external = {}
    if base is not None:
        if base.resolve() == out.resolve():
            raise SystemExit("--baselines-from must be another run's folder than --output")
        # (a baseline's result lies in the --baselines-from run, wherever this run's job list would put it)
        external = {j.name: base / j.result.relative_to(out) if j.result.is_relative_to(out) else j.result
                    for j in jobs if is_baseline(j)}
        jobs = [j for j in jobs if not is_baseline(j)]
    run_jobs(jobs, args.jobs, out / "logs", args.rerun, external)
    score = json.loads((out / "score.json").read_text())
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k not in ("output", "rerun")}
    settings["machine"] = f"{platform.machine()}, {os.cpu_count()} CPUs, {args.jobs} jobs x 1 thread, Python {platform.python_version()}"
    results = {
        "settings": settings,
        "pseudo_labels": {"coverage": score["coverage"], "majority_miou": score["whole_image"]["majority"]["mean_iou"],
                          "hungarian_miou": score["whole_image"]["hungarian"]["mean_iou"],
                          "covered_majority_miou": score["covered_pixels"]["majority"]["mean_iou"],
                          "per_class_iou": score["whole_image"]["majority"]["per_class_iou"]},
        "finetune": collect(args, out, base),
        "job_seconds": {j.name: round(j.seconds, 1) for j in jobs if j.seconds},
        "total_seconds": time.perf_counter() - began,
    }
    (out / "results.json").write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    text = markdown(results)
    (out / "results.md").write_text(text)
    plot(results, out / "benchmark_pseudo_labels.png")
    print(text, end="")
    print(f"wrote {out / 'results.json'}, {out / 'results.md'}, {out / 'benchmark_pseudo_labels.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
