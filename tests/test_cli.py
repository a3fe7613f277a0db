"""The `alps-hf` command line itself (issue 12): mistyped flags, --help, --version, Ctrl-C and SIGTERM.

Everything here runs without a model, except the signal tests, which stop a real `alps-hf label`
subprocess on the tiny random SAM and continue it with the command it printed.
"""

from __future__ import annotations

import dataclasses
import re
import shlex
from importlib.metadata import version

import pytest

from alps_hf.cli import COMMANDS, _load, main, parse, stopped_message


def run(capsys, argv: list[str]) -> tuple[int, str, str]:
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def one_line_error(capsys, argv: list[str]) -> str:
    """Run argv, expect exit code 2 and exactly one line on stderr, no traceback; return that line."""
    code, out, err = run(capsys, argv)
    assert code == 2, (code, err)
    assert "Traceback" not in err and out == ""
    assert len(err.strip().splitlines()) == 1, err
    return err.strip()


# ---- point 4: mistyped flags, abbreviations ------------------------------------------------------


def test_mistyped_flag_names_it_and_the_closest_valid_ones(capsys):
    line = one_line_error(capsys, ["label", "tiles", "--output", "out", "--num-clustrs", "5"])
    assert line.startswith("alps-hf label: error: unknown flag --num-clustrs (did you mean --num-clusters")
    assert "HfArgumentParser" not in line and "Some specified arguments" not in line


def test_abbreviations_are_refused(capsys):
    line = one_line_error(capsys, ["label", "tiles", "--output", "out", "--num-cluster", "5"])
    assert "unknown flag --num-cluster " in line and "--num-clusters" in line
    line = one_line_error(capsys, ["pretrain", "--dataset", "d", "--output", "o", "--from-scr"])
    assert "unknown flag --from-scr (did you mean --from-scratch" in line


def test_every_unknown_flag_is_named_even_with_an_equals_sign(capsys):
    line = one_line_error(capsys, ["label", "tiles", "--outptu=out", "--points-per-sid", "8"])
    assert "unknown flag --outptu (did you mean --output?)" in line
    assert "unknown flag --points-per-sid (did you mean --points-per-side" in line


def test_underscore_spellings_are_gone(capsys):
    # One spelling per flag, the one the README and --help use.
    line = one_line_error(capsys, ["label", "tiles", "--output", "out", "--points_per_side", "8"])
    assert "unknown flag --points_per_side (did you mean --points-per-side" in line


def test_unknown_command_suggests_the_closest(capsys):
    line = one_line_error(capsys, ["lable", "tiles"])
    assert "unknown command 'lable'; did you mean label?" in line and "pretrain" in line


def test_extra_positional_and_missing_required(capsys):
    line = one_line_error(capsys, ["recluster", "a", "b", "--num-clusters", "3"])
    assert "unexpected argument 'b'" in line and "FOLDER" in line
    line = one_line_error(capsys, ["push", "--repo-id", "alps/x"])
    assert line.endswith("required: FOLDER (usage: alps-hf push FOLDER --repo-id REPO_ID [options])")
    line = one_line_error(capsys, ["label", "--output", "out"])
    assert "no input given; pass a folder, image files or a dataset, e.g. `alps-hf label ./tiles`" in line
    _, (cfg,) = parse(["label", "--output", "out", "a", "b"])  # inputs after the flags work too
    assert cfg.inputs == ["a", "b"] and cfg.output == "out"


def test_a_config_error_is_one_line(capsys):
    line = one_line_error(capsys, ["label", "tiles", "--output", "out", "--num-clusters", "1"])
    assert line.startswith("alps-hf label: error: --num-clusters 1 is not allowed")


def test_no_command_prints_the_command_list(capsys):
    code, out, err = run(capsys, [])
    assert code == 2 and all(name in err for name in COMMANDS)
    code, out, _ = run(capsys, ["--help"])
    assert code == 0 and all(name in out for name in COMMANDS)


# ---- parsing: positionals and booleans -----------------------------------------------------------


def test_positional_and_boolean_flags_parse():
    name, (cfg,) = parse(["label", "a", "b", "--output", "out", "--stitch", "--tile-size", "512"])
    assert name == "label" and cfg.inputs == ["a", "b"] and cfg.stitch is True and cfg.tile_size == 512
    _, (cfg,) = parse(["label", "a", "--output", "out", "--bands", "3", "2", "1"])
    assert cfg.bands == [3, 2, 1] and cfg.stitch is False
    _, (train,) = parse(["pretrain", "--dataset", "d", "--output", "o", "--no-flips", "--from-scratch"])
    assert train.flips is False and train.rotations is True and train.from_scratch is True
    _, (push,) = parse(["push", ".", "--repo-id", "alps/x", "--dry-run"])
    assert push.folder == "." and push.dry_run is True and push.private is False


# ---- point 6: --help -------------------------------------------------------------------------------


def help_text(capsys, command: str) -> str:
    code, out, err = run(capsys, [command, "--help"])
    assert code == 0 and err == ""
    return out


@pytest.mark.parametrize("command", list(COMMANDS))
def test_help_explains_every_flag(command, capsys):
    """Moved here from test_label_cli.py and widened to every command."""
    text = help_text(capsys, command)
    positional = COMMANDS[command].positional
    usage = text.splitlines()[0]
    for cls in map(_load, COMMANDS[command].configs):
        for field in dataclasses.fields(cls):
            assert field.metadata.get("help"), f"{field.name} has no help text"
            if field.name == positional:
                assert usage.startswith(f"usage: alps-hf {command} {field.name.upper()}"), usage
                assert f"--{field.name}" not in text
            else:
                assert "--" + field.name.replace("_", "-") in text, field.name
    assert not re.search(r"--[a-z0-9-]+_[a-z0-9_]", text), "underscore spellings in --help"
    assert not re.search(r"\[--[a-z-]+ \[[A-Z_]+\]\]", text) and " [" + "STITCH]" not in text
    assert not re.search(r"\d\.\d{7,}", text), "unrounded float default"


def test_label_help_reads_well(capsys):
    text = help_text(capsys, "label")
    assert text.splitlines()[0] == "usage: alps-hf label INPUTS... [options]"
    assert "--stitch, --no-stitch" in text and "--no_stitch" not in text
    # one default per flag: --device explains its own, so no "(default: None)" is added
    device = text[text.index("--device"):text.index("--dtype")]
    assert device.lower().count("default") == 1
    assert "(default: None)" not in text
    assert "0.341333" in text and "0.3413333333333333" not in text


def test_train_help_booleans_have_their_own_help(capsys):
    text = help_text(capsys, "pretrain")
    flips = text[text.index("--flips, --no-flips"):text.index("--rotations")]
    assert "flips" in flips.lower() and "(default: --flips)" in " ".join(flips.split())
    assert "--no_flips" not in text and text.count("--no-flips") == 1


# ---- point 7: --version --------------------------------------------------------------------------


def test_version(capsys):
    code, out, _ = run(capsys, ["--version"])
    assert code == 0 and out.strip() == f"alps-hf {version('alps_hf')}"


# ---- point 5: what a stopped run says ------------------------------------------------------------


def test_stopped_label_says_what_was_saved_and_how_to_continue(tmp_path):
    out = tmp_path / "out"
    argv = ["label", "tiles dir", "--output", str(out), "--overwrite", "--num-clusters", "3"]
    _, (cfg,) = parse(argv)
    line = stopped_message("label", argv, cfg, "interrupted (Ctrl-C)")
    assert line.startswith("alps-hf label: interrupted (Ctrl-C); nothing was saved yet")
    command = line.split("continue with: ", 1)[1]
    # --overwrite would delete what was saved and contradicts --resume: it goes, --resume comes
    assert shlex.split(command) == ["alps-hf", "label", "tiles dir", "--output", str(out), "--num-clusters", "3",
                                    "--resume"]


def test_stopped_training_points_at_its_checkpoint(tmp_path):
    out = tmp_path / "run"
    argv = ["pretrain", "--dataset", "d", "--output", str(out), "--resume", "checkpoint-3", "--overwrite"]
    _, (cfg,) = parse(argv)
    line = stopped_message("pretrain", argv, cfg, "terminated (SIGTERM)")
    assert "no checkpoint was saved yet" in line
    assert line.endswith(f"start again with: alps-hf pretrain --dataset d --output {out} --overwrite")
    ckpt = out / "checkpoints" / "checkpoint-20"
    ckpt.mkdir(parents=True)
    from alps_hf.training.loop import STATE_FILE

    (ckpt / STATE_FILE).write_text("{}")
    line = stopped_message("pretrain", argv, cfg, "terminated (SIGTERM)")
    assert f"{ckpt} is saved" in line
    assert line.endswith(f"continue with: alps-hf pretrain --dataset d --output {out} --resume latest")


def test_stopped_evaluate_has_nothing_to_keep(tmp_path):
    argv = ["evaluate", "--model", "m", "--dataset", "d"]
    _, (cfg,) = parse(argv)
    assert stopped_message("evaluate", argv, cfg, "interrupted (Ctrl-C)") == (
        "alps-hf evaluate: interrupted (Ctrl-C); nothing is kept; run again with: alps-hf evaluate --model m "
        "--dataset d")


# ---- point 5: a real run stopped by a signal, then continued -------------------------------------

# Runs the CLI with every PIL image open slowed down, so that the run is surely still in pass 1 when the
# test signals it, however fast the machine.
SLOW_LAUNCHER = """
import sys, time
import PIL.Image
from alps_hf.cli import main

opened = PIL.Image.open
def slow_open(*args, **kwargs):
    time.sleep(0.25)
    return opened(*args, **kwargs)
PIL.Image.open = slow_open
sys.exit(main(sys.argv[1:]))
"""
NUM_IMAGES = 24


@pytest.fixture(scope="module")
def noise_dir(tmp_path_factory):
    import numpy as np
    from PIL import Image

    folder = tmp_path_factory.mktemp("noise")
    rng = np.random.default_rng(0)
    for i in range(NUM_IMAGES):
        Image.fromarray(rng.integers(0, 255, (40, 56, 3), dtype=np.uint8)).save(folder / f"img_{i:02d}.png")
    return folder


def stop_label_run(argv: list[str], output, sig: int) -> tuple[int, str]:
    """Start `alps-hf label` in its own session, send `sig` once a pass-1 shard is done; (exit code, stderr)."""
    import os
    import subprocess
    import sys
    import time

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    # Its own session: a background job of a non-interactive shell ignores SIGINT, a session leader does not.
    proc = subprocess.Popen([sys.executable, "-c", SLOW_LAUNCHER, *argv], env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 180
        while not list(output.glob("work/pass1/*.done")):
            assert proc.poll() is None, f"the run ended before it was stopped: {proc.stderr.read()}"
            assert time.monotonic() < deadline, "no pass-1 shard was finished within 180 s"
            time.sleep(0.1)
        os.killpg(proc.pid, sig)  # the whole group, as a terminal's Ctrl-C or a scheduler does
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    return proc.returncode, err


def label_argv(inputs, output, sam) -> list[str]:
    return ["label", str(inputs), "--output", str(output), "--sam", str(sam), "--num-clusters", "3",
            "--shard-size", "2", "--points-per-side", "4", "--pred-iou-thresh", "0", "--stability-score-thresh",
            "0", "--max-area-fraction", "1.0", "--num-workers", "1", "--image-batch-size", "1"]


def test_ctrl_c_saves_shards_and_prints_the_resume_command(noise_dir, tiny_sam_dir, tmp_path, count_generated,
                                                           capsys):
    import signal

    out = tmp_path / "out"
    argv = label_argv(noise_dir, out, tiny_sam_dir)
    code, err = stop_label_run(argv, out, signal.SIGINT)
    assert code == 130, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    (line,) = [x for x in err.splitlines() if x.startswith("alps-hf label: interrupted (Ctrl-C); ")]
    saved = re.search(r"; (\d+) of (\d+) work shards are saved in ", line)
    assert saved and 1 <= int(saved[1]) < int(saved[2]) == NUM_IMAGES // 2, line
    command = shlex.split(line.split("; continue with: ", 1)[1])
    assert command == ["alps-hf", *argv, "--resume"]
    # the printed command works, and does not redo the saved shards
    assert main(command[1:]) == 0
    assert capsys.readouterr().err.count("Traceback") == 0
    assert 0 < len(count_generated) <= NUM_IMAGES - 2 * int(saved[1])
    import pyarrow.parquet as pq

    assert sum(pq.read_table(f).num_rows for f in (out / "data").glob("*.parquet")) == NUM_IMAGES


def test_sigterm_exits_143_with_the_same_one_line(noise_dir, tiny_sam_dir, tmp_path):
    import signal

    out = tmp_path / "out"
    argv = label_argv(noise_dir, out, tiny_sam_dir)
    code, err = stop_label_run(argv, out, signal.SIGTERM)
    assert code == 143, err
    assert "Traceback" not in err
    (line,) = [x for x in err.splitlines() if x.startswith("alps-hf label: terminated (SIGTERM); ")]
    assert line.endswith(shlex.join(["alps-hf", *argv, "--resume"])) and " work shards are saved in " in line


# ---- point 8: the head re-initialisation finetune asked for is one line, not a LOAD REPORT -------


def test_finetune_says_in_one_line_what_was_reinitialised(tmp_path, capfd):
    from train_helpers import seg_args, write_dataset

    pseudo, target = write_dataset(tmp_path / "pseudo", k=4), write_dataset(tmp_path / "target", k=3, seed=1)
    assert main(["pretrain", *seg_args(pseudo, tmp_path / "pre", "--max-steps", "1", "--eval-steps", "0")]) == 0
    capfd.readouterr()
    args = ["--dataset", str(target), "--output", str(tmp_path / "ft"), "--init", str(tmp_path / "pre"),
            "--crop-size", "32", "--batch-size", "2", "--num-workers", "0", "--max-steps", "1", "--eval-steps", "0"]
    assert main(["finetune", *args]) == 0
    out, err = capfd.readouterr()
    for noise in ("LOAD REPORT", "MISMATCH", "\x1b[", "Loading weights"):
        assert noise not in out + err, noise
    (line,) = [x for x in out.splitlines() if x.startswith("--init ")]
    assert line == (f"--init {tmp_path / 'pre'}: the segformer head was re-initialised for the 3 classes of the "
                    "dataset (the checkpoint has 4: cluster_00, cluster_01, cluster_02, ...)")
    from transformers.utils import logging as hf_logging

    assert hf_logging.is_progress_bar_enabled()  # quiet only around that from_pretrained


def headings(text: str) -> list[str]:
    return [line[:-1] for line in text.splitlines() if line.endswith(":") and not line.startswith(" ")]


def test_train_help_is_grouped(capsys):
    text = help_text(capsys, "pretrain")
    assert headings(text) == ["options", "data", "output and checkpoints", "model", "augmentation", "optimisation",
                              "evaluation and logging", "scale"]
    optimisation = text[text.index("\noptimisation:"):text.index("\nevaluation and logging:")]
    assert "--learning-rate X" in optimisation and "--backbone-learning-rate" in optimisation


# ---- point 9: why a model reference cannot be loaded ---------------------------------------------


def load_error(name: str) -> BaseException:
    from transformers import SamConfig

    try:
        SamConfig.from_pretrained(name)
    except OSError as err:
        return err
    raise AssertionError(f"{name} loaded")


def test_unloadable_reason_tells_offline_from_missing_folder(tmp_path):
    from alps_hf.hub.references import unloadable_reason

    text = unloadable_reason("--sam", "facebook/sam-vit-base", load_error("facebook/sam-vit-base"))
    assert text.startswith("--sam 'facebook/sam-vit-base' cannot be reached (HF_HUB_OFFLINE is set) and is not in "
                           "the local cache")
    assert "unknown" not in text and "hf download facebook/sam-vit-base" in text
    missing = str(tmp_path / "no" / "sam")
    text = unloadable_reason("--sam", missing, load_error(missing))
    assert text.startswith(f"--sam {missing!r}: folder not found")
    text = unloadable_reason("--sam", "my-sam", load_error("my-sam"))
    assert text.startswith("--sam 'my-sam' is no folder here and, as a Hub id, cannot be reached")


def test_label_help_is_grouped(capsys):
    text = help_text(capsys, "label")
    assert headings(text) == ["options", "inputs", "SAM", "mask generation", "clustering", "output", "scale"]
    masks = text[text.index("\nmask generation:"):text.index("\nscale:")]
    for flag in ("--pred-iou-thresh", "--stability-score-thresh", "--max-area-fraction", "--max-mask-side"):
        assert flag in masks
    assert "SAM sees 1024 px anyway" not in text and "1024 px for facebook/sam-vit-*" in " ".join(text.split())
    assert "Positional." not in text


# ---- points 8 and 11: label's summary, a resume that skips SAM, and "no masks found" --------------


@pytest.fixture(scope="module")
def three_dir(tmp_path_factory):
    import numpy as np
    from PIL import Image

    folder = tmp_path_factory.mktemp("three")
    rng = np.random.default_rng(1)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(folder / f"img_{i}.png")
    return folder


LOOSE = ["--num-clusters", "2", "--points-per-side", "4", "--pred-iou-thresh", "0", "--stability-score-thresh", "0",
         "--max-area-fraction", "1.0", "--num-workers", "0", "--preview-images", "1"]


def test_stage_seconds_only_with_verbose_and_a_finished_resume_loads_no_sam(three_dir, tiny_sam_dir, tmp_path,
                                                                            capfd, monkeypatch):
    import json

    out = tmp_path / "out"
    argv = ["label", str(three_dir), "--output", str(out), "--sam", str(tiny_sam_dir), *LOOSE]
    assert main(argv) == 0
    stdout, _ = capfd.readouterr()
    assert f"alps-hf: wrote {out}" in stdout and "seconds:" not in stdout
    seconds = json.loads((out / "alps_dataset.json").read_text())["seconds"]
    assert {"load_model", "pass1", "kmeans", "pass2", "finish", "pass1.encoder"} <= set(seconds)
    assert all(isinstance(v, float) and v >= 0 for v in seconds.values())

    # every shard is done: the resume must not load SAM (no "Loading weights" bar), and --verbose prints seconds
    from alps_hf.sam.generator import MaskGenerator

    def refuse(*args, **kwargs):
        raise AssertionError("SAM loaded on a resume with every shard done")

    monkeypatch.setattr(MaskGenerator, "from_pretrained", refuse)
    assert main([*argv, "--resume", "--verbose"]) == 0
    stdout, stderr = capfd.readouterr()
    (line,) = [x for x in stdout.splitlines() if x.startswith("  seconds: ")]
    assert "kmeans" in line and "pass1.encoder" not in line  # no SAM stage ran
    assert "Loading weights" not in stderr
    assert json.loads((out / "alps_dataset.json").read_text())["seconds"].keys() == {
        "load_model", "pass1", "kmeans", "pass2", "finish"}


def test_no_masks_found_says_which_thresholds_to_loosen(three_dir, tiny_sam_dir, tmp_path, capsys):
    out = tmp_path / "out"
    # No predicted IoU exceeds 1: the filters keep nothing (and without fill nothing else makes segments).
    strict = [*LOOSE, "--pred-iou-thresh", "1.0", "--no-fill"]
    code, _, err = run(capsys, ["label", str(three_dir), "--output", str(out), "--sam", str(tiny_sam_dir), *strict])
    assert code == 2 and "Traceback" not in err
    (line,) = [x for x in err.splitlines() if "error" in x]  # the rest are progress bars
    assert "the mask filters kept 0 mask(s) in 3 image(s), too few for any --num-clusters" in line
    assert "--pred-iou-thresh (now 1.0)" in line and "--stability-score-thresh (now 0.0)" in line
    assert "--overwrite" in line and "smaller --num-clusters" not in line and "--resume" not in line


def test_training_model_references_say_why_too(tmp_path, capsys):
    """The siblings of --sam: evaluate --model and finetune --init."""
    from train_helpers import write_dataset

    data = write_dataset(tmp_path / "data", k=3)
    capsys.readouterr()
    missing = str(tmp_path / "no-model")
    line = one_line_error(capsys, ["evaluate", "--model", missing, "--dataset", str(data)])
    assert line.startswith(f"alps-hf evaluate: error: --model {missing!r}: folder not found")
    line = one_line_error(capsys, ["finetune", "--dataset", str(data), "--output", str(tmp_path / "ft"),
                                   "--init", "nvidia/segformer-b0-finetuned-ade-512-512"])
    assert "--init 'nvidia/segformer-b0-finetuned-ade-512-512' cannot be reached (HF_HUB_OFFLINE is set)" in line
    assert not (tmp_path / "ft").exists()
