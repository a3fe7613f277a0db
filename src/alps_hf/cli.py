"""The `alps-hf` command line: one subcommand per stage, configs parsed with `HfArgumentParser`.

Each subcommand is a list of config dataclasses plus the library function that takes them.
Only this module (and `scripts/`) reads argv. Tests call `main([...])` in-process.
Works as `alps-hf ...`, `python -m alps_hf.cli ...` and `accelerate launch -m alps_hf.cli ...`.
"""

from __future__ import annotations

import dataclasses
import importlib
import sys
from dataclasses import dataclass

from alps_hf.errors import AlpsError


@dataclass(frozen=True)
class Command:
    target: str  # "module:function" called with the parsed config objects, returns an exit code or None
    configs: tuple[str, ...]  # "module:Class" of each config dataclass, parsed in order
    help: str
    positional: str | None = None  # a config field that also takes the leading positional arguments


COMMANDS: dict[str, Command] = {
    "label": Command(
        "alps_hf.labeling.pipeline:run_label",
        ("alps_hf.labeling.config:LabelConfig",),
        "Auto-label images with SAM + online K-means into a Hub-layout dataset folder.",
        positional="inputs",
    ),
    "recluster": Command(
        "alps_hf.labeling.pipeline:run_recluster",
        ("alps_hf.labeling.config:ReclusterConfig",),
        "Re-cluster an existing labeled folder with another K, without re-running SAM.",
        positional="folder",
    ),
    "score": Command(
        "alps_hf.labeling.score:run_score",
        ("alps_hf.labeling.score:ScoreConfig",),
        "Score pseudo-labels against ground truth: coverage, majority / Hungarian mIoU, cluster -> class table.",
        positional="pseudo",
    ),
    "make-dataset": Command(
        "alps_hf.labeled.make_dataset:run_make_dataset",
        ("alps_hf.labeled.make_dataset:MakeDatasetConfig",),
        "Turn an images/ + labels/ folder pair into a labeled Hub-layout dataset for finetune / evaluate.",
        positional="folders",
    ),
    "push": Command(
        "alps_hf.hub.publish:run_push",
        ("alps_hf.hub.publish:PushConfig",),
        "Publish a labeled dataset folder or a trained model folder to the Hugging Face Hub.",
        positional="folder",
    ),
    "pretrain": Command(
        "alps_hf.training.loop:run_pretrain",
        ("alps_hf.training.config:TrainConfig",),
        "Pre-train SegFormer / Mask2Former on pseudo-labels with Accelerate (works under accelerate launch).",
    ),
    "finetune": Command(
        "alps_hf.training.loop:run_finetune",
        ("alps_hf.training.config:TrainConfig",),
        "Fine-tune a (pre-trained) model on labeled data; --train-fraction for label-scarce runs.",
    ),
    "evaluate": Command(
        "alps_hf.training.loop:run_evaluate",
        ("alps_hf.training.config:EvaluateConfig",),
        "Score a trained model on a labeled split (mIoU, accuracies, per-class IoU); prints and writes JSON.",
    ),
}


def _load(spec: str):
    module, _, name = spec.partition(":")
    return getattr(importlib.import_module(module), name)


def _fold_positionals(argv: list[str], cls, field_name: str) -> list[str]:
    """Turn leading positional arguments into `--field_name ...` for HfArgumentParser."""
    lead = []
    while len(lead) < len(argv) and not argv[len(lead)].startswith("-"):
        lead.append(argv[len(lead)])
    if not lead:
        return argv
    field = {f.name: f for f in dataclasses.fields(cls)}[field_name]
    is_list = "list" in str(field.type).lower()
    if not is_list and len(lead) > 1:
        raise AlpsError(f"expected one positional argument for {field_name}, got {len(lead)}: {lead}")
    return [f"--{field_name}", *lead, *argv[len(lead):]]


def build_parser(name: str):
    from transformers import HfArgumentParser

    command = COMMANDS[name]
    classes = [_load(c) for c in command.configs]
    parser = HfArgumentParser(classes, prog=f"alps-hf {name}", description=command.help)
    return parser, classes


def parse(name: str, argv: list[str]):
    """Parse argv for subcommand `name` into its config objects (validated by their __post_init__)."""
    parser, classes = build_parser(name)
    command = COMMANDS[name]
    if command.positional:
        argv = _fold_positionals(list(argv), classes[0], command.positional)
    return parser.parse_args_into_dataclasses(args=argv)


def _usage() -> str:
    width = max(len(n) for n in COMMANDS)
    lines = ["usage: alps-hf <command> [options]   (alps-hf <command> --help for its flags)", "", "commands:"]
    lines += [f"  {n.ljust(width)}  {c.help}" for n, c in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"alps-hf: error: unknown command {name!r}; choose one of {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    try:
        configs = parse(name, rest)
        result = _load(COMMANDS[name].target)(*configs)
    except AlpsError as err:
        print(f"alps-hf {name}: error: {err}", file=sys.stderr)
        return 2
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
