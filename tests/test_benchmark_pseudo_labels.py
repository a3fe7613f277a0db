"""scripts/benchmark_pseudo_labels.py --tiny: every stage runs and results.json holds what the issue asks."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "benchmark_pseudo_labels.py"


def _load():
    spec = importlib.util.spec_from_file_location("benchmark_pseudo_labels", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_default_settings_are_the_issue_measurement():
    bench = _load()
    args = bench.parse_args(["--output", "x"])
    assert (args.unlabeled, args.labeled, args.validation, args.labeled_per_run, args.size) == (96, 48, 24, 3, 512)
    assert (args.clusters, args.pretrain_steps, args.finetune_steps, len(args.seeds)) == (10, 500, [200, 700], 3)
    assert (args.crop_size, args.batch_size, args.learning_rate, args.seed0) == (256, 8, 1e-3, 900_000)
    assert args.overrides["hidden_sizes"] == [16, 32, 64, 128]
    jobs = {j.name: j for j in bench.finetune_jobs(args, Path("out"), Path("out"))}
    assert len(jobs) == 2 * 3 * 3
    gt = jobs["finetune-200-1-gt"]
    assert "--init" in gt.cmd and "--model-config-overrides" not in gt.cmd and gt.deps == ("labeled-validation", "pretrain-gt")
    scratch = jobs["finetune-200-1-scratch"].cmd
    assert scratch[scratch.index("--seed") + 1] == "1" and scratch[scratch.index("--train-samples") + 1] == "3"
    assert scratch[scratch.index("--backbone-learning-rate") + 1] == "0.001"  # the encoder gets the full rate


def test_collect_pairs_seeds_and_gives_the_ratio(tmp_path):
    bench = _load()
    args = bench.parse_args(["--output", str(tmp_path), "--seeds", "0", "1", "--finetune-steps", "5"])
    miou = {"scratch": [0.40, 0.50], "alps": [0.45, 0.52], "gt": [0.60, 0.70]}
    for start, values in miou.items():
        for seed, value in zip(args.seeds, values, strict=True):
            folder = bench.finetune_dir(tmp_path, 5, seed, start)
            folder.mkdir(parents=True)
            (folder / "metrics.json").write_text(json.dumps({"eval": {"mean_iou": value, "per_class_iou": {"land": value, "road": None}}}))
    r = bench.collect(args, tmp_path)["5"]
    assert r["mean"]["alps"] == pytest.approx(0.485)
    assert r["paired"]["alps-scratch"]["per_seed"] == pytest.approx([0.05, 0.02])
    assert r["paired"]["alps-scratch"]["all_positive"] is True
    assert r["ratio_alps_over_gt_gain"] == pytest.approx(0.035 / 0.2)
    assert r["per_class_mean"]["gt"]["land"] == pytest.approx(0.65)


@pytest.mark.slow
def test_tiny_run_writes_results(tmp_path):
    first = tmp_path / "first"
    bench = _load()
    assert bench.main(["--output", str(first), "--tiny"]) == 0
    results = json.loads((first / "results.json").read_text())
    assert set(results["finetune"]) == {"2"}
    r = results["finetune"]["2"]
    for start in ("scratch", "alps", "gt"):
        assert len(r["per_seed"][start]) == 3 and all(0 <= v <= 1 for v in r["per_seed"][start])
        assert r["mean"][start] == pytest.approx(sum(r["per_seed"][start]) / 3)
    assert set(r["paired"]) == {"alps-scratch", "gt-scratch"}
    q = results["pseudo_labels"]
    assert 0 <= q["coverage"] <= 1 and set(q["per_class_iou"]) == {"building", "land", "road", "vegetation", "water"}
    assert json.loads((first / "score.json").read_text())["images"] == 3
    assert (first / "benchmark_pseudo_labels.png").stat().st_size > 1000
    assert "fine-tune 2 steps: validation mIoU" in (first / "results.md").read_text()
    # a rerun skips every finished step and writes the same table
    assert bench.main(["--output", str(first), "--tiny"]) == 0
    again = json.loads((first / "results.json").read_text())
    assert again["finetune"] == results["finetune"] and again["job_seconds"] == {}
    # a second labeling variant reuses the first run's scenes and scratch / GT runs: only its own steps run
    paper = tmp_path / "paper"
    assert bench.main(["--output", str(paper), "--tiny", "--label-args", "--preset alps-paper",
                       "--baselines-from", str(first)]) == 0
    variant = json.loads((paper / "results.json").read_text())
    assert set(variant["job_seconds"]) == {"label", "score", "pretrain-alps", "finetune-2-0-alps", "finetune-2-1-alps",
                                           "finetune-2-2-alps"}
    assert not (paper / "scenes").exists() and not (paper / "finetune" / "steps2" / "seed0" / "scratch").exists()
    for start in ("scratch", "gt"):
        assert variant["finetune"]["2"]["per_seed"][start] == results["finetune"]["2"]["per_seed"][start]
    assert variant["settings"]["label_args"].endswith("--preset alps-paper")
    assert json.loads((paper / "pseudo" / "label_config.json").read_text())["preset"] == "alps-paper"
