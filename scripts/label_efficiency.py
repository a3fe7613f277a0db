"""Label efficiency: fine-tune with several label fractions x several initialisations, tabulate mIoU.

The experiment at the heart of ALPS: with few labels, a model pre-trained on pseudo-labels beats
the same model started from ImageNet weights or from scratch. Each (fraction, initialisation) is
one `alps-hf finetune` run (same seed, so the same labeled subset for every initialisation),
scored on the evaluation split at the end.

    python scripts/label_efficiency.py --dataset ./potsdam --model segformer-b2 \
        --pretrained ./alps-ckpt --backbone nvidia/mit-b2 --fractions 0.01 0.05 0.1 1.0 \
        --output ./label-efficiency -- --max-steps 4000 --crop-size 512 --batch-size 8

Initialisations: `scratch` (random), `backbone` (`--backbone`, ImageNet encoder), `alps`
(`--pretrained`, the checkpoint of `alps-hf pretrain`) and `ground-truth` (`--pretrained-gt`, the same
pre-training on ground-truth labels: the upper bound); those whose flag is missing are skipped.
A random encoder trains at the full learning rate unless `--backbone-learning-rate` is given after `--`.
Flags after `--` go to every `finetune` run (any `alps-hf finetune` flag); `--model-config-overrides`
is a flag of this script, given only to the runs that build `--model` (scratch, backbone), since a
checkpoint brings its own config. Each run uses `--num-threads` CPU threads (default 1: runs on a
shared machine are 5-10x slower when each takes every core).
Writes `<output>/results.csv`, `results.md` and `label_efficiency.png`; each run's model folder
stays in `<output>/runs/<init>-<fraction>/`.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from pathlib import Path

from alps_hf.cli import main as cli_main

INITS = ["scratch", "backbone", "alps", "ground-truth"]
# Initialisations that start from a checkpoint, and the flag of this script that names it.
CHECKPOINT_INITS = {"alps": "pretrained", "ground-truth": "pretrained_gt"}
_NEEDS = {"backbone": "backbone", **CHECKPOINT_INITS}


def run_one(args, init: str, fraction: float, extra: list[str]) -> dict:
    """One `alps-hf finetune` run (or its finished folder), as a results row."""
    out = Path(args.output) / "runs" / f"{init}-{fraction:g}"
    flags = ["--dataset", args.dataset, "--output", str(out), "--seed", str(args.seed)]
    if fraction < 1:
        flags += ["--train-fraction", str(fraction)]
    if args.num_threads:
        flags += ["--num-threads", str(args.num_threads)]
    if init in CHECKPOINT_INITS:
        # The checkpoint defines the model (finetune refuses a --model of another size).
        flags += ["--init", getattr(args, CHECKPOINT_INITS[init])]
    else:
        flags += ["--model", args.model, "--backbone", args.backbone] if init == "backbone" else ["--model", args.model, "--from-scratch"]
        if args.model_config_overrides:
            flags += ["--model-config-overrides", args.model_config_overrides]
    if (out / "metrics.json").is_file() and not args.rerun:
        print(f"[skip] {out} done already")
    else:
        rc = cli_main(["finetune", *flags, "--overwrite", *extra])
        if rc != 0:
            raise SystemExit(f"finetune {init} at {fraction:g} failed (exit {rc})")
    metrics = json.loads((out / "metrics.json").read_text())
    scores = metrics.get("eval") or {}
    return {
        "init": init, "fraction": fraction, "train_examples": metrics["train"]["examples"],
        "mean_iou": scores.get("mean_iou"), "mean_accuracy": scores.get("mean_accuracy"),
        "overall_accuracy": scores.get("overall_accuracy"), "steps": metrics["step"], "folder": str(out),
    }


def _fmt(value) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.2f}"


def write_outputs(rows: list[dict], output: Path) -> None:
    """results.csv (one row per run), results.md (mIoU: fractions x initialisations), the PNG plot."""
    with open(output / "results.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    inits = list(dict.fromkeys(r["init"] for r in rows))
    fractions = sorted({r["fraction"] for r in rows})
    cell = {(r["init"], r["fraction"]): r for r in rows}
    lines = ["| labels | " + " | ".join(inits) + " |", "|---|" + "---|" * len(inits)]
    for f in fractions:
        n = next(r["train_examples"] for r in rows if r["fraction"] == f)
        lines.append(f"| {100 * f:g} % ({n}) | " + " | ".join(_fmt(cell[(i, f)]["mean_iou"]) if (i, f) in cell else "" for i in inits) + " |")
    (output / "results.md").write_text("mIoU (%) on the evaluation split\n\n" + "\n".join(lines) + "\n")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for init in inits:
        pts = [(f, 100 * cell[(init, f)]["mean_iou"]) for f in fractions if (init, f) in cell and cell[(init, f)]["mean_iou"] is not None]
        if pts:
            ax.plot(*zip(*pts, strict=True), "o-", label=init)
    ax.set_xscale("log")
    ax.set_xlabel("fraction of labeled training data")
    ax.set_ylabel("mIoU (%)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(output / "label_efficiency.png", dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    """Run the grid, write the tables and the plot; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument("--dataset", required=True, help="Labeled dataset (train + evaluation split).")
    parser.add_argument("--model", required=True, help="Named variant, e.g. segformer-b2 (the same for every initialisation).")
    parser.add_argument("--pretrained", help="ALPS checkpoint (output of alps-hf pretrain) for the 'alps' initialisation.")
    parser.add_argument("--pretrained-gt", help="Checkpoint pre-trained the same way on ground-truth labels, for the 'ground-truth' initialisation (the upper bound).")
    parser.add_argument("--backbone", help="ImageNet encoder id / folder for the 'backbone' initialisation.")
    parser.add_argument("--model-config-overrides", help="JSON config changes of --model, for the runs that build it (scratch, backbone).")
    parser.add_argument("--num-threads", type=int, default=1, help="CPU threads of each run (0: the finetune default).")
    parser.add_argument("--inits", nargs="+", default=INITS, choices=INITS)
    parser.add_argument("--fractions", nargs="+", type=float, default=[0.01, 0.05, 0.1, 1.0])
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--output", required=True)
    parser.add_argument("--rerun", action="store_true", help="Re-run finished runs instead of reading their metrics.")
    args = parser.parse_args(argv)
    inits = [i for i in args.inits if i not in _NEEDS or getattr(args, _NEEDS[i])]
    skipped = sorted(set(args.inits) - set(inits))
    if skipped:
        print(f"skipping {', '.join(skipped)}: give --backbone / --pretrained / --pretrained-gt to include them")
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    rows = [run_one(args, init, f, extra) for f in sorted(args.fractions) for init in inits]
    write_outputs(rows, output)
    print((output / "results.md").read_text())
    print(f"wrote {output / 'results.csv'}, {output / 'results.md'}, {output / 'label_efficiency.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
