"""The `alps-hf` command line: one argparse sub-command per stage, flags made by `HfArgumentParser`.

Each sub-command is a list of config dataclasses plus the library function that takes them.
Only this module (and `scripts/`) reads argv. Tests call `main([...])` in-process.
Works as `alps-hf ...`, `python -m alps_hf.cli ...` and `accelerate launch -m alps_hf.cli ...`.

Exit codes: 0 done, 2 a usage or configuration error (one line, no traceback), 130 after Ctrl-C,
143 after SIGTERM (both with one line saying what was saved and the command that continues).
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import importlib
import shlex
import signal
import sys
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

from transformers import HfArgumentParser
from transformers.hf_argparser import string_to_bool

from alps_hf import __version__
from alps_hf.errors import AlpsError

# How a stopped run is continued: label's pass-1 shards (`--resume`), training's checkpoints
# (`--resume latest`), or nothing kept (run the command again).
RESUME_SHARDS = "shards"
RESUME_CHECKPOINTS = "checkpoints"


@dataclass(frozen=True)
class Command:
    """One sub-command: what it calls, which config dataclasses its flags come from, how it resumes."""

    target: str  # "module:function" called with the parsed config objects, returns an exit code or None
    configs: tuple[str, ...]  # "module:Class" of each config dataclass, parsed in order
    help: str
    positional: str | None = None  # the config field taken as the positional argument(s)
    resume: str | None = None  # RESUME_SHARDS, RESUME_CHECKPOINTS or None


COMMANDS: dict[str, Command] = {
    "label": Command(
        "alps_hf.labeling.run:run_label",
        ("alps_hf.labeling.config:LabelConfig",),
        "Auto-label images with SAM + online K-means into a Hub-layout dataset folder.",
        positional="inputs",
        resume=RESUME_SHARDS,
    ),
    "recluster": Command(
        "alps_hf.labeling.run:run_recluster",
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
        resume=RESUME_CHECKPOINTS,
    ),
    "finetune": Command(
        "alps_hf.training.loop:run_finetune",
        ("alps_hf.training.config:TrainConfig",),
        "Fine-tune a (pre-trained) model on labeled data; --train-fraction for label-scarce runs.",
        resume=RESUME_CHECKPOINTS,
    ),
    "evaluate": Command(
        "alps_hf.training.loop:run_evaluate",
        ("alps_hf.training.config:EvaluateConfig",),
        "Score a trained model on a labeled split (mIoU, accuracies, per-class IoU); prints and writes JSON.",
    ),
}


def _load(spec: str) -> Any:
    module, _, name = spec.partition(":")
    return getattr(importlib.import_module(module), name)


# ---- the parser ----------------------------------------------------------------------------------


def _show_default(value: Any, action: argparse.Action) -> str:
    if isinstance(value, bool):  # name the flag that is in effect: clearer than True / False
        return action.option_strings[0 if value else -1]
    if isinstance(value, float):
        return f"{value:.6g}"  # 512 / 1500 reads 0.341333, not 0.3413333333333333
    if isinstance(value, (list, tuple)):
        return " ".join(map(str, value))
    return str(value)


_METAVARS = {int: "N", float: "X"}
_ARGPARSE_KEYS = {"action", "nargs", "const", "default", "type", "choices", "required", "help", "metavar", "dest"}


class HelpFormatter(argparse.HelpFormatter):
    """Shows each default once: not where the help text already explains it, and not when it is None."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (not action.option_strings or default is None or default is argparse.SUPPRESS or default == []
                or "default" in text.lower()):
            return text
        # argparse %-formats the help text: a literal % in a default must survive that.
        return f"{text} (default: {_show_default(default, action).replace('%', '%%')})"


class _FieldAdder:
    """Stands in for the parser while `HfArgumentParser` turns one dataclass field into `add_argument` calls.

    HfArgumentParser decides type, nargs, default and choices from the field's type hint; this rewrites only
    how the flag is spelled and shown: dashed name only (`--points-per-side`), booleans as one
    `--stitch / --no-stitch` pair (argparse's BooleanOptionalAction) instead of `--stitch [STITCH]` plus a
    separate `--no_stitch`, the command's positional field as a real positional, and the flag put in the
    argument group named by the field's `group` metadata.
    """

    def __init__(self, parser: AlpsArgumentParser, target: Any, field: dataclasses.Field, positional: bool):
        self.parser, self.target, self.field, self.positional = parser, target, field, positional

    def add_argument(self, *names: str, **kwargs: Any) -> argparse.Action | None:
        # HfArgumentParser passes the whole field metadata on; keys of our own (group, pass1, ...) are not
        # argparse's.
        kwargs = {k: v for k, v in kwargs.items() if k in _ARGPARSE_KEYS}
        if kwargs.get("action") == "store_false":
            return None  # HfArgumentParser's `--no_x` complement: the BooleanOptionalAction below has `--no-x`
        if self.positional:
            kwargs.pop("required", None)  # a single positional is required by nature
            if kwargs.get("nargs") == "+":
                kwargs["nargs"] = "*"  # none given: the config's own message says what to pass, with an example
            return self.target.add_argument(self.field.name, metavar=self.field.name.upper(), **kwargs)
        names = tuple(n for n in names if "_" not in n) or names
        # `--points-per-side N` rather than `--points-per-side POINTS_PER_SIDE`: half the help wraps less.
        kwargs.setdefault("metavar", _METAVARS.get(kwargs.get("type")))
        if kwargs.get("type") is string_to_bool:
            for key in ("type", "nargs", "const"):
                kwargs.pop(key, None)
            text = kwargs.get("help")
            action = self.target.add_argument(*names, action=argparse.BooleanOptionalAction, **kwargs)
            action.help = text  # Python 3.11's BooleanOptionalAction appends its own default; HelpFormatter does
        else:
            action = self.target.add_argument(*names, **kwargs)
        self.parser.flags.extend(action.option_strings)
        return action


class AlpsArgumentParser(HfArgumentParser):
    """`HfArgumentParser` with readable help, flag groups, one-line errors and no abbreviations.

    Args:
        dataclass_types: the config dataclasses whose fields become flags.
        positional: the field taken as positional argument(s) instead of a flag.
        **kwargs: passed to `argparse.ArgumentParser` (prog, description, ...).
    """

    def __init__(self, dataclass_types: Any = None, *, positional: str | None = None, **kwargs: Any):
        self.positional = positional
        self.flags: list[str] = ["-h", "--help"]
        self.subcommands: dict[str, AlpsArgumentParser] = {}  # filled by build_parser on the top-level parser
        self._groups: dict[str, argparse._ArgumentGroup] = {}
        kwargs.setdefault("formatter_class", HelpFormatter)
        # `--num-cluster 5` must be an error, not silently `--num-clusters 5`.
        kwargs["allow_abbrev"] = False
        super().__init__(dataclass_types, **kwargs)

    def _add_dataclass_arguments(self, dtype: Any) -> None:
        # argparse lists groups in creation order: create the config's declared headings first.
        for title in getattr(dtype, "flag_groups", ()):
            self._group(title)
        super()._add_dataclass_arguments(dtype)

    def _group(self, title: str) -> argparse._ArgumentGroup:
        if title not in self._groups:
            self._groups[title] = self.add_argument_group(title)
        return self._groups[title]

    def _parse_dataclass_field(self, parser: Any, field: dataclasses.Field) -> None:
        # An instance method where HfArgumentParser has a staticmethod: it is called as self._parse_...
        title = field.metadata.get("group")
        target = self._group(title) if title is not None else parser
        adder = _FieldAdder(self, target, field, positional=field.name == self.positional)
        HfArgumentParser._parse_dataclass_field(adder, field)

    def error(self, message: str) -> NoReturn:
        """Print one line (no usage block, no traceback) and exit with code 2."""
        hint = f"usage: {self.usage}" if self.usage and message.startswith("the following arguments") else ""
        self.exit(2, f"{self.prog}: error: {message} ({hint or f'see `{self.prog} --help`'})\n")

    def unknown_message(self, extras: Sequence[str]) -> str:
        """The error for arguments no flag took: each unknown flag with the closest valid ones (difflib).

        Args:
            extras: the strings `parse_known_args` left over.

        Returns:
            One line naming every unknown flag, or the first unexpected value.
        """
        unknown = [e.split("=", 1)[0] for e in extras if e.startswith("-")]
        if not unknown:
            where = f" ({self.positional.upper()} goes right after the command name)" if self.positional else ""
            return f"unexpected argument {extras[0]!r}{where}"
        parts = []
        for flag in unknown:
            close = difflib.get_close_matches(flag, self.flags, n=3, cutoff=0.6)
            hint = f"did you mean {' or '.join(close)}?" if close else "no flag is close"
            parts.append(f"unknown flag {flag} ({hint})")
        return "; ".join(parts)


def _usage(name: str, parser: AlpsArgumentParser) -> str:
    # The generated usage lists all 50 flags of `label`; show what must be given, then [options].
    words = [f"alps-hf {name}"]
    for action in parser._actions:
        if not action.option_strings:
            words.append(action.metavar + ("..." if action.nargs in ("+", "*") else ""))
        elif action.required:
            words.append(f"{action.option_strings[0]} {action.metavar or action.dest.upper()}")
    return " ".join([*words, "[options]"])


def build_parser() -> AlpsArgumentParser:
    """The `alps-hf` parser: `--version`, and one sub-parser per entry of `COMMANDS`.

    Returns:
        The top-level parser; `parse_known_args` on it sets `command` and the chosen command's fields.
    """
    top = AlpsArgumentParser(
        prog="alps-hf",
        description="ALPS auto-labeling and pre-training, the Hugging Face way.",
        epilog="`alps-hf <command> --help` lists the flags of a command.",
    )
    top.add_argument("--version", action="version", version=f"alps-hf {__version__}")
    commands = top.add_subparsers(dest="command", title="commands", metavar="<command>")
    for name, command in COMMANDS.items():
        sub = commands.add_parser(name, help=command.help, description=command.help,
                                  dataclass_types=[_load(c) for c in command.configs],
                                  positional=command.positional)
        sub.usage = _usage(name, sub)
        top.subcommands[name] = sub
    return top


def parse(argv: Sequence[str]) -> tuple[str, tuple[Any, ...]]:
    """Parse a full `alps-hf` command line into the command name and its config objects.

    Args:
        argv: the arguments after `alps-hf`, the command name first.

    Returns:
        The command name and its config dataclasses (validated by their `__post_init__`).

    Raises:
        SystemExit: after `--help` / `--version` (code 0) or a usage error (code 2, one line printed).
        AlpsError: a config value is invalid.
    """
    top = build_parser()
    if argv and not argv[0].startswith("-") and argv[0] not in COMMANDS:
        close = difflib.get_close_matches(argv[0], COMMANDS, n=2, cutoff=0.5)
        hint = f"did you mean {' or '.join(close)}? " if close else ""
        top.error(f"unknown command {argv[0]!r}; {hint}commands: {', '.join(COMMANDS)}")
    namespace, extras = top.parse_known_args(list(argv))
    if namespace.command is None:
        top.print_help(sys.stderr)
        top.exit(2)
    sub = top.subcommands[namespace.command]
    if extras:
        sub.error(sub.unknown_message(extras))
    values = vars(namespace)
    configs = tuple(dtype(**{f.name: values[f.name] for f in dataclasses.fields(dtype) if f.init})
                    for dtype in sub.dataclass_types)
    return namespace.command, configs


# ---- stopping: Ctrl-C and SIGTERM ----------------------------------------------------------------


class Terminated(BaseException):
    """Raised in the main thread on SIGTERM, so that the run unwinds as after Ctrl-C.

    A BaseException, as KeyboardInterrupt is: the per-image `except Exception` of labeling must not
    record it as a bad image and go on.
    """


def _raise_terminated(signum: int, frame: Any) -> NoReturn:
    raise Terminated


@contextmanager
def _sigterm_raises() -> Iterator[None]:
    # signal.signal works in the main thread only; a caller on another thread keeps the default.
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _drop_flag(argv: list[str], flag: str, takes_value: bool) -> list[str]:
    out, skip = [], False
    for word in argv:
        if skip:
            skip = False
        elif word == flag:
            skip = takes_value
        elif not word.startswith(flag + "="):
            out.append(word)
    return out


def _saved_shards(output: Path) -> str:
    from alps_hf.labeling.workdir import WorkDir

    work = WorkDir(output / "work")
    manifest = work.read_manifest() if work.manifest_path.is_file() else None
    if not manifest:
        return f"nothing was saved yet in {output}"
    total = int(manifest.get("num_shards", 0))
    done = sum(work.is_done(shard) for shard in range(total))
    return f"{done} of {total} work shards are saved in {work.root}"


def stopped_message(name: str, argv: Sequence[str], config: Any, how: str) -> str:
    """The one line printed when a run is stopped: what was saved, and the command that continues it.

    Args:
        name: the command (`label`, `pretrain`, ...).
        argv: the arguments after `alps-hf`, as given.
        config: the command's first config object (its `output` says where the run wrote).
        how: what stopped the run, e.g. "interrupted (Ctrl-C)".

    Returns:
        `alps-hf NAME: HOW; SAVED; continue with: COMMAND`.
    """
    resume, args = COMMANDS[name].resume, list(argv)
    output = Path(config.output) if getattr(config, "output", None) else None
    if resume == RESUME_SHARDS and output is not None:
        saved = _saved_shards(output)
        args = [*_drop_flag(_drop_flag(args, "--overwrite", False), "--resume", False), "--resume"]
        verb = "continue with"
    elif resume == RESUME_CHECKPOINTS and output is not None:
        from alps_hf.training.loop import list_checkpoints

        found = list_checkpoints(output) if output.is_dir() else []
        args = _drop_flag(args, "--resume", True)
        if found:
            saved, verb = f"{found[-1]} is saved", "continue with"
            args = [*_drop_flag(args, "--overwrite", False), "--resume", "latest"]
        else:
            saved, verb = "no checkpoint was saved yet (one is saved every --checkpointing-steps)", "start again with"
            if output.is_dir() and any(output.iterdir()) and "--overwrite" not in args:
                args.append("--overwrite")
    else:
        saved, verb = "nothing is kept", "run again with"
    return f"alps-hf {name}: {how}; {saved}; {verb}: {shlex.join(['alps-hf', *args])}"


# ---- main ----------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """Run one `alps-hf` command.

    Args:
        argv: the arguments after `alps-hf` (default: `sys.argv[1:]`), the command name first.

    Returns:
        The exit code: 0 done, 2 usage or configuration error, 130 after Ctrl-C, 143 after SIGTERM.
        Errors of alps_hf are printed as one line on stderr, never as a traceback.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    name = argv[0] if argv else "alps-hf"
    try:
        name, configs = parse(argv)
    except SystemExit as stop:  # --help, --version, or a usage error already printed in one line
        return stop.code if isinstance(stop.code, int) else 2
    except AlpsError as err:
        print(f"alps-hf {name}: error: {err}", file=sys.stderr)
        return 2
    with _sigterm_raises():
        try:
            result = _load(COMMANDS[name].target)(*configs)
        except AlpsError as err:
            print(f"alps-hf {name}: error: {err}", file=sys.stderr)
            return 2
        # The leading newline ends a progress bar's unfinished line, so the message starts a line of its own.
        except KeyboardInterrupt:
            print("\n" + stopped_message(name, argv, configs[0], "interrupted (Ctrl-C)"), file=sys.stderr)
            return 130
        except Terminated:
            print("\n" + stopped_message(name, argv, configs[0], "terminated (SIGTERM)"), file=sys.stderr)
            return 143
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
