"""scripts/benchmark_dense_labels.py at seconds-long settings: every variant, the then-16 comparison and its JSON."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "benchmark_dense_labels.py"


def _load():
    spec = importlib.util.spec_from_file_location("benchmark_dense_labels", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _has_history(rev: str) -> bool:
    done = subprocess.run(["git", "-C", str(SCRIPT.parents[1]), "cat-file", "-e", f"{rev}^{{commit}}"],
                          capture_output=True)
    return done.returncode == 0


@pytest.mark.slow
def test_one_small_scene_every_variant_and_then16(tmp_path, toy_sam_dir, one_torch_thread):
    bench = _load()
    if not _has_history(bench.ISSUE_10_BASE):
        pytest.skip(f"this checkout has no commit {bench.ISSUE_10_BASE} (shallow clone)")
    out = tmp_path / "d.json"
    assert bench.main(["--sam", str(toy_sam_dir), "--num-images", "1", "--size", "128", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    summary = result["summary"]
    assert set(summary) == {*bench.VARIANTS, "then-16"}
    assert summary["then-16"]["prompts"]["mean"] == summary["paper-16"]["prompts"]["mean"] == 256
    assert summary["paper-32"]["prompts"]["mean"] == 1024
    assert summary["dense"]["segment_coverage"]["mean"] == 1.0
    # the code of the issue's commit and today's paper pipeline label the same segments
    assert result["paired"]["then16_pixels_equal_paper16"]["mean"] == 1.0
    assert result["paired"]["time_dense_over_then16"]["n"] == 1
    assert result["settings"]["then_settings"] == {"points_per_side": 16, "max_area_fraction": 0.3}
    assert "decoder" in result["stage_seconds_per_image"]["then-16"]


def test_an_unknown_then_commit_names_the_fix(tmp_path, toy_sam_dir):
    bench = _load()
    with pytest.raises(SystemExit, match="--then 'no-such-rev'.*--then '' to skip"):
        bench.ThenRunner("no-such-rev", tmp_path, None, None, None)
