"""Publish an alps_hf dataset folder or model folder to the Hugging Face Hub.

`push_to_hub(folder, repo_id)` recognises the kind of folder, stages exactly what will be sent
into a temporary folder (the card re-rendered for `repo_id`; `work/`, `checkpoints/`,
`checkpoint-*` and temporary files left out), validates the staged folder (shard names and counts
against `alps_dataset.json` and the card's `configs`; model weights loaded with
`from_pretrained`), and only then talks to the Hub: `create_repo(exist_ok=True)`, the branch
for `revision`, and ONE `upload_folder` commit. The local folder is only read, never changed, so
a failed upload can simply be retried.

A README.md on the Hub that was edited by hand (its alps_hf digest marker no longer matches) is
kept unless `overwrite_card=True`.

The token comes from huggingface_hub's usual sources (`HF_TOKEN`, `hf auth login`); it is never
passed around, printed or written by this module.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from alps_hf import __version__
from alps_hf.config_utils import arg
from alps_hf.core import atomic_write_text
from alps_hf.errors import ConfigError, PublishError
from alps_hf.hub.cards import (
    HISTOGRAM_FILE,
    REPO_ID_RULE,
    card_is_generated,
    dataset_card_of,
    public_name,
    read_json,
    render_class_histogram,
    render_model_card,
    repo_id_problem,
)

Kind = Literal["dataset", "model"]

DATASET_MARKER = "alps_dataset.json"
MODEL_WEIGHTS = ("model.safetensors", "model.safetensors.index.json")
LOGIN_HELP = (
    "log in with `hf auth login` (or set the HF_TOKEN environment variable) using a token with write "
    "access to that namespace"
)

# Never uploaded: pass-1 intermediates, training checkpoints, temporary and hidden files. These are
# `upload_folder(ignore_patterns=...)` patterns (fnmatch on the path relative to the folder, where
# `*` also matches `/`), applied with huggingface_hub's own `filter_repo_objects`, so the staged
# folder, the dry-run list and the commit all follow one rule.
IGNORE_PATTERNS = (
    "work/*",
    "checkpoints/*",
    "runs/*",
    "checkpoint-*",
    "*/checkpoint-*",
    "*__pycache__/*",
    ".*",
    "*/.*",
    "*.tmp",
    "*.tmp.*",
    "*.partial",
    "*.lock",
    "*~",
)

_SHARD = re.compile(r"^data/(?P<split>[A-Za-z0-9_.]+?)-(?P<index>\d{5})-of-(?P<count>\d{5})\.parquet$")

@dataclass
class PushConfig:
    """Flags of `alps-hf push`."""

    folder: str = arg(
        help="Dataset folder written by `alps-hf label` or model folder written by `alps-hf pretrain`/`finetune`."
    )
    repo_id: str = arg(help="Hub repo to create or update, as 'namespace/name' (e.g. alps/isaid-pseudo).")
    private: bool = arg(False, help="Create the repo as private (an existing repo keeps its visibility).")
    revision: str | None = arg(
        None, help="Branch to commit to; created from main when missing. Default: main."
    )
    overwrite_card: bool = arg(False, help="Replace a README.md that was edited by hand on the Hub.")
    commit_message: str | None = arg(None, help="Commit message. Default: a summary of the dataset or model.")
    dry_run: bool = arg(False, help="Stage and validate, list the files, but send nothing (no token needed).")

    def __post_init__(self):
        check_repo_id(self.repo_id)
        if not Path(self.folder).is_dir():
            raise ConfigError(
                f"folder {self.folder!r} does not exist or is not a directory; pass the output folder of `alps-hf label` or `alps-hf pretrain`"
            )


@dataclass
class PushResult:
    """What `push_to_hub` did (or, with dry_run, would do)."""

    kind: Kind
    repo_id: str
    url: str
    files: list[str]  # paths relative to the repo root, sorted, exactly what was (or would be) uploaded
    commit_message: str
    card: Literal["uploaded", "kept-hub-card", "kept-local-card"] = "uploaded"
    commit_url: str | None = None
    excluded: list[str] = field(default_factory=list)  # top-level entries of the folder left out


def check_repo_id(repo_id: str) -> str:
    """Check a push target against the Hub's naming rule (`huggingface_hub.utils.validate_repo_id`).

    Args:
        repo_id: the `--repo-id` value.

    Returns:
        `repo_id` unchanged.

    Raises:
        PublishError: naming the value, the rule and the flag.
    """
    problem = repo_id_problem(repo_id)
    if problem is not None:
        raise PublishError(
            f"invalid repo id {repo_id!r}: a Hub repo id is {REPO_ID_RULE} ({problem}); fix --repo-id"
        )
    return repo_id


def detect_kind(folder: str | Path) -> Kind:
    """'dataset' for an `alps-hf label` folder, 'model' for a `save_pretrained` folder.

    Args:
        folder: the folder to publish.

    Returns:
        The kind of folder.

    Raises:
        PublishError: naming what each kind needs and what the folder lacks.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise PublishError(
            f"{folder} is not a directory; pass the folder written by `alps-hf label` or `alps-hf pretrain`"
        )
    if (folder / DATASET_MARKER).is_file():
        return "dataset"
    has_config = (folder / "config.json").is_file()
    has_weights = any((folder / w).is_file() for w in MODEL_WEIGHTS)
    if has_config and has_weights:
        return "model"
    if has_config or has_weights:
        missing = "model.safetensors" if has_config else "config.json"
        raise PublishError(
            f"{folder} looks like a model folder but has no {missing}; save it with `model.save_pretrained(folder)`"
        )
    present = sorted(p.name for p in folder.iterdir())[:12]
    raise PublishError(
        f"{folder} is neither an alps_hf dataset folder (needs {DATASET_MARKER} and data/*.parquet, "
        f"written by `alps-hf label`) nor a model folder (needs config.json and model.safetensors, written "
        f"by `alps-hf pretrain`); it holds: {present or 'nothing'}"
    )


def _all_files(folder: Path) -> list[str]:
    """Every file under `folder` (symlinks to files followed), relative POSIX paths, sorted."""
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def upload_files(folder: str | Path) -> list[str]:
    """Files of `folder` that belong in the repo: relative POSIX paths, sorted.

    Args:
        folder: a dataset or model folder.

    Returns:
        The paths that `upload_folder(ignore_patterns=IGNORE_PATTERNS)` would send.
    """
    from huggingface_hub.utils import filter_repo_objects

    return list(filter_repo_objects(_all_files(Path(folder)), ignore_patterns=list(IGNORE_PATTERNS)))


def left_out(folder: str | Path, kept: list[str]) -> list[str]:
    """Top-level entries of `folder` none of whose files are uploaded (e.g. `work`, `checkpoints`).

    Args:
        folder: the folder to publish.
        kept: its files that are uploaded (`upload_files(folder)`).

    Returns:
        Sorted top-level names, for the "left out" line of `alps-hf push`.
    """
    tops: dict[str, bool] = {}
    kept_set = set(kept)
    for rel in _all_files(Path(folder)):
        top = rel.split("/", 1)[0]
        tops[top] = tops.get(top, False) or rel in kept_set
    return sorted(top for top, any_kept in tops.items() if not any_kept)


def _link_or_copy(src: Path, dst: Path) -> None:
    # A hard link stages gigabytes of shards for free; staged files are never written through
    # (a staged README is unlinked first), so the source stays untouched.
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src.resolve(), dst)
    except OSError:
        shutil.copy2(src, dst)


def _write_staged(path: Path, text: str) -> None:
    if path.exists():
        path.unlink()  # break a hard link to the source folder before writing
    atomic_write_text(path, text)


def stage(
    folder: str | Path, dest: str | Path, repo_id: str | None = None, kind: Kind | None = None
) -> tuple[Kind, str]:
    """Build in `dest` exactly the folder that will be uploaded; `folder` is only read.

    The card is re-rendered for `repo_id` when the local README.md is missing or was generated
    by alps_hf and not edited since; a README.md edited by hand is kept as it is. A dataset
    also gets `class_histogram.png` when it lacks one.

    Args:
        folder: the folder to publish.
        dest: an empty staging folder.
        repo_id: the Hub id, for the card's snippets.
        kind: the folder's kind when already known.

    Returns:
        (kind, card) with card "uploaded" (re-rendered) or "kept-local-card".
    """
    folder, dest = Path(folder), Path(dest)
    kind = kind or detect_kind(folder)
    for rel in upload_files(folder):
        _link_or_copy(folder / rel, dest / rel)
    readme = folder / "README.md"
    local_text = readme.read_text(encoding="utf-8") if readme.is_file() else None
    card = "uploaded"
    if local_text is not None and not card_is_generated(local_text):
        card = "kept-local-card"
    elif kind == "dataset":
        _write_staged(dest / "README.md", str(dataset_card_of(folder, repo_id=repo_id)))
    else:
        _write_staged(dest / "README.md", str(render_model_card(folder, repo_id=repo_id)))
    if kind == "dataset" and not (dest / HISTOGRAM_FILE).is_file():
        render_class_histogram(read_json(folder / DATASET_MARKER), dest / HISTOGRAM_FILE)
    for path in sorted(dest.glob("*.json")):
        _strip_local_paths(path)
    return kind, card


def _public_value(value: Any) -> Any:
    """`value` with every absolute (or ~) path reduced to `public_name`, in lists and dicts too.

    Relative paths stay: they say nothing about this machine, and the folder's own files are listed
    relative to it (`data/train-00000-of-00001.parquet`).
    """
    if isinstance(value, dict):
        return {k: _public_value(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_public_value(v) for v in value]
    if isinstance(value, str) and (value.startswith("~") or Path(value).is_absolute()):
        return public_name(value)
    return value


def _strip_local_paths(path: Path) -> None:
    """Rewrite a staged JSON file (label_config.json, alps_dataset.json, ...) without this machine's paths.

    The local folder keeps its files as they are (`--resume` and `recluster` read them); only the copy
    that is uploaded names local folders by their last component, as the cards and commit message do.
    """
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return  # not JSON alps_hf wrote: uploaded as it is
    public = _public_value(data)
    if public != data:
        _write_staged(path, json.dumps(public, indent=2) + "\n")


# ---------------------------------------------------------------------------------------------
# validation (on the staged folder, before anything is sent)


def _check_shard_names(split: str, files: list[str]) -> None:
    """Shards of a split are named data/<split>-NNNNN-of-NNNNN.parquet with indices 0..N-1."""
    if not files:
        raise PublishError(f"split {split!r} in {DATASET_MARKER} lists no shard files")
    for path in files:
        match = _SHARD.match(path)
        if not match or match.group("split") != split:
            raise PublishError(
                f"shard {path!r} of split {split!r} is not named data/{split}-NNNNN-of-NNNNN.parquet; "
                "re-run `alps-hf label` rather than renaming shards by hand"
            )
    expected = [f"data/{split}-{i:05d}-of-{len(files):05d}.parquet" for i in range(len(files))]
    if sorted(files) != expected:
        raise PublishError(
            f"split {split!r} lists {len(files)} shard(s) {sorted(files)} but expects {expected}: "
            "shard numbering or count is inconsistent"
        )


def _count_shard_rows(folder: Path, split: str, files: list[str], columns: list[str]) -> int:
    """Rows in a split's shards, each shard checked to exist, to parse and to hold `columns`."""
    import pyarrow.parquet as pq

    rows = 0
    for path in files:
        if not (folder / path).is_file():
            raise PublishError(
                f"shard {path} of split {split!r} is listed in {DATASET_MARKER} but missing from the folder"
            )
        try:
            meta = pq.read_metadata(folder / path)
        except Exception as err:  # pyarrow raises several types for a damaged file
            raise PublishError(f"shard {path} is not a readable parquet file: {err}") from err
        rows += meta.num_rows
        found = list(meta.schema.to_arrow_schema().names)
        # Order is not compared: alps_dataset.json may be written with sorted keys.
        if columns and sorted(found) != sorted(columns):
            raise PublishError(f"shard {path} has columns {found}, {DATASET_MARKER} features say {columns}")
    return rows


def _check_splits(folder: Path, splits: dict[str, Any], columns: list[str]) -> None:
    """Every split's shards are well named, present, readable, and hold the rows alps_dataset.json says."""
    for split, entry in splits.items():
        files = list(entry.get("files") or [])
        _check_shard_names(split, files)
        rows = _count_shard_rows(folder, split, files, columns)
        if "num_rows" in entry and rows != int(entry["num_rows"]):
            raise PublishError(
                f"split {split!r}: shards hold {rows} rows, {DATASET_MARKER} says {entry['num_rows']}; "
                "the folder was changed after labeling, re-run `alps-hf label`"
            )
    listed = {f for entry in splits.values() for f in entry["files"]}
    on_disk = {p.relative_to(folder).as_posix() for p in folder.glob("data/**/*.parquet")}
    extra = sorted(on_disk - listed)
    if extra:
        raise PublishError(
            f"parquet files {extra} are under data/ but not listed in {DATASET_MARKER}; remove them or re-run "
            "`alps-hf label`"
        )


def _check_card_data_files(folder: Path, splits: dict[str, Any]) -> None:
    """The data files `datasets` resolves for the folder (card `configs` or its defaults) are the shards."""
    import datasets

    with tempfile.TemporaryDirectory(prefix="alps-hf-validate-") as cache:
        try:
            builder = datasets.load_dataset_builder(str(folder), cache_dir=cache)
        except Exception as err:  # datasets raises many types for a bad card or layout
            raise PublishError(
                f"`datasets` cannot read the folder as a dataset ({type(err).__name__}: {err}); fix README.md's "
                "YAML or delete README.md to regenerate it"
            ) from err
    resolved = {
        split: sorted(Path(f).resolve().relative_to(folder.resolve()).as_posix() for f in files)
        for split, files in (builder.config.data_files or {}).items()
    }
    if set(resolved) != set(splits):
        raise PublishError(
            f"README.md configs name splits {sorted(resolved)}, {DATASET_MARKER} has {sorted(splits)}"
        )
    for split, entry in splits.items():
        if resolved[split] != sorted(entry["files"]):
            raise PublishError(
                f"README.md configs select {resolved[split]} for split {split!r}, {DATASET_MARKER} lists "
                f"{sorted(entry['files'])}; pass --overwrite-card or fix the card's data_files"
            )


def _check_id2label(folder: Path, info: dict[str, Any]) -> None:
    """id2label.json exists and has num_clusters entries."""
    if not (folder / "id2label.json").is_file():
        raise PublishError("id2label.json is missing from the dataset folder; re-run `alps-hf label`")
    id2label = read_json(folder / "id2label.json")
    k = info.get("num_clusters")
    if k is not None and len(id2label) != int(k):
        raise PublishError(f"id2label.json has {len(id2label)} classes, {DATASET_MARKER} says num_clusters={k}")


def validate_dataset(folder: str | Path) -> dict[str, Any]:
    """Check a (staged) dataset folder before upload; return its alps_dataset.json dict.

    Checks: every split's shards exist and are named `data/<split>-NNNNN-of-NNNNN.parquet` with
    indices 0..N-1 and N equal to the number of files listed; no unlisted parquet under `data/`;
    row counts and columns agree with alps_dataset.json; the data files `datasets` resolves for the
    folder (the card's `configs`) are exactly these shards per split; id2label.json has K entries.

    Args:
        folder: the staged dataset folder.

    Returns:
        The alps_dataset.json dict.

    Raises:
        PublishError: naming the first inconsistency and how to fix it.
    """
    folder = Path(folder)
    info = read_json(folder / DATASET_MARKER)
    splits = info.get("splits")
    if not isinstance(splits, dict) or not splits:
        raise PublishError(f"{DATASET_MARKER} lists no splits; re-run `alps-hf label` to rewrite the folder")
    _check_splits(folder, splits, list((info.get("features") or {}).keys()))
    _check_card_data_files(folder, splits)
    _check_id2label(folder, info)
    return info


def validate_model(folder: str | Path, name: str | None = None) -> dict[str, Any]:
    """Check a (staged) model folder loads with `from_pretrained`; return its config.json dict.

    Args:
        folder: the staged model folder.
        name: the user's folder name for messages (default: `folder`'s name).

    Returns:
        The config.json dict.

    Raises:
        PublishError: config.json unusable, preprocessor_config.json missing, weights that do not
            load or leave parameters missing / of the wrong shape, or id2label.json disagreeing.
    """
    import transformers

    folder = Path(folder)
    name = name or folder.name  # the user's folder name, not the staging folder's
    config = read_json(folder / "config.json")
    if not (folder / "preprocessor_config.json").is_file():
        raise PublishError(
            f"{name} has no preprocessor_config.json, so `AutoImageProcessor.from_pretrained` would fail "
            "on the Hub; save the image processor with `processor.save_pretrained(folder)`"
        )
    read_json(folder / "preprocessor_config.json")
    architecture = (config.get("architectures") or [None])[0]
    cls = getattr(transformers, architecture, None) if architecture else None
    if cls is None:
        raise PublishError(
            f"config.json names architecture {architecture!r}, which transformers {transformers.__version__} does not have"
        )
    try:
        _, loading = cls.from_pretrained(folder, output_loading_info=True)
    except Exception as err:
        raise PublishError(
            f"the weights in {name} do not load with {architecture}.from_pretrained: {err}"
        ) from err
    problems = {k: loading.get(k) for k in ("missing_keys", "mismatched_keys") if loading.get(k)}
    if problems:
        raise PublishError(
            f"{architecture}.from_pretrained({name}) left parameters uninitialised or mismatched "
            f"({ {k: sorted(map(str, v))[:5] for k, v in problems.items()} }); re-save with `model.save_pretrained`"
        )
    if (folder / "id2label.json").is_file():
        id2label = read_json(folder / "id2label.json")
        if len(id2label) != int(config.get("num_labels", len(config.get("id2label") or {}))):
            raise PublishError(
                f"id2label.json has {len(id2label)} classes, config.json has {len(config.get('id2label') or {})}"
            )
    return config


# ---------------------------------------------------------------------------------------------
# upload


def _default_message(kind: Kind, folder: Path, info: dict[str, Any]) -> str:
    if kind == "dataset":
        rows = sum(int(s.get("num_rows", 0)) for s in info["splits"].values())
        return (
            f"Upload ALPS pseudo-labeled dataset: {rows} images, K={info.get('num_clusters')} pseudo-classes, "
            f"SAM {public_name(info.get('sam_model'))} (alps_hf {info.get('alps_hf_version') or __version__})"
        )
    training = (
        read_json(folder / "training_config.json") if (folder / "training_config.json").is_file() else {}
    )
    metrics = read_json(folder / "metrics.json") if (folder / "metrics.json").is_file() else {}
    arch = (info.get("architectures") or ["model"])[0]
    parts = [
        f"Upload {arch}",
        f"{training.get('task') or 'trained'} on {public_name(training.get('dataset')) or 'unrecorded data'}",
    ]
    if metrics.get("step") is not None:
        parts.append(f"step {metrics['step']}")
    miou = (metrics.get("eval") or {}).get("mean_iou")
    if isinstance(miou, (int, float)):
        parts.append(f"mean IoU {miou:.4f}")
    return ", ".join(parts) + f" (alps_hf {training.get('alps_hf_version') or __version__})"


def repo_url(repo_id: str, kind: Kind, revision: str | None = None) -> str:
    """The web address of the repo (and of the branch when `revision` is set).

    Args:
        repo_id: 'namespace/name'.
        kind: 'dataset' or 'model'.
        revision: the branch, or None for main.

    Returns:
        The URL on the configured Hub endpoint.
    """
    from huggingface_hub import constants

    base = f"{constants.ENDPOINT}/{'datasets/' if kind == 'dataset' else ''}{repo_id}"
    return f"{base}/tree/{revision}" if revision and revision != "main" else base


def _token(api) -> str | None:
    from huggingface_hub import get_token

    return getattr(api, "token", None) or get_token()


def _scrub(message: str, token: str | None) -> str:
    return message.replace(token, "***") if token else message


def _is_auth_error(err: Exception) -> bool:
    """True for the Hub's "who are you / not yours" answers: no token, 401, 403, or no such repo for you."""
    from huggingface_hub.errors import HfHubHTTPError, LocalTokenNotFoundError, RepositoryNotFoundError

    if isinstance(err, (LocalTokenNotFoundError, RepositoryNotFoundError)):
        return True
    response = getattr(err, "response", None) if isinstance(err, HfHubHTTPError) else None
    return getattr(response, "status_code", None) in (401, 403)


def _hub_readme(api, repo_id: str, repo_type: str, revision: str | None, tmp: Path) -> str | None:
    """The README.md currently on the Hub at `revision`, or None when there is none."""
    from huggingface_hub.errors import EntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError

    try:
        path = api.hf_hub_download(
            repo_id=repo_id, filename="README.md", repo_type=repo_type, revision=revision, local_dir=tmp
        )
    except (EntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError, FileNotFoundError):
        return None
    return Path(path).read_text(encoding="utf-8")


def default_api():
    """The `HfApi` used when none is passed (a seam for tests and for custom endpoints)."""
    from huggingface_hub import HfApi

    return HfApi()


def push_to_hub(
    folder: str | Path,
    repo_id: str,
    *,
    private: bool = False,
    revision: str | None = None,
    overwrite_card: bool = False,
    commit_message: str | None = None,
    dry_run: bool = False,
    api=None,
) -> PushResult:
    """Publish an alps_hf dataset or model folder to the Hub in one commit.

    Args:
        folder: output folder of `alps-hf label` (dataset) or `alps-hf pretrain`/`finetune` (model).
        repo_id: 'namespace/name'.
        private: create the repo as private.
        revision: branch to commit to (created from main when missing); None = main.
        overwrite_card: replace a README.md edited by hand on the Hub.
        commit_message: default summarises the dataset / model.
        dry_run: stage and validate only; nothing is sent and no token is needed.
        api: an `HfApi` (or a stand-in with the same methods); default `HfApi()`.

    Returns:
        PushResult with the repo URL and the exact list of uploaded files.

    Raises:
        PublishError: invalid repo id, unrecognised folder, inconsistent shards, weights that do
            not load (all before anything is sent); missing token or refused write (with how to
            log in); a failed upload (the local folder is unchanged; run again to retry).
    """
    check_repo_id(repo_id)
    folder = Path(folder)
    with tempfile.TemporaryDirectory(prefix="alps-hf-push-") as tmp:
        staged = Path(tmp) / "repo"
        result = _stage_and_validate(folder, staged, repo_id, revision, commit_message)
        if not dry_run:
            _send(api or default_api(), result, staged, Path(tmp) / "hub", private, revision, overwrite_card)
    return result


def _stage_and_validate(
    folder: Path, staged: Path, repo_id: str, revision: str | None, commit_message: str | None
) -> PushResult:
    """Step 1 of a push: stage exactly what will be sent, validate it, and say what it is."""
    kind = detect_kind(folder)
    staged.mkdir()
    _, card = stage(folder, staged, repo_id=repo_id, kind=kind)
    info = validate_dataset(staged) if kind == "dataset" else validate_model(staged, name=folder.name)
    files = upload_files(staged)
    return PushResult(
        kind,
        repo_id,
        repo_url(repo_id, kind, revision),
        files,
        commit_message or _default_message(kind, folder, info),
        card,
        excluded=left_out(folder, upload_files(folder)),
    )


def _keep_hub_card(api, result: PushResult, staged: Path, hub_dir: Path, revision: str | None) -> None:
    """Leave a README.md edited by hand on the Hub alone: drop the staged card so the commit skips it."""
    hub_card = _hub_readme(api, result.repo_id, result.kind, revision, hub_dir)
    if hub_card is None or card_is_generated(hub_card):
        return
    if hub_card != (staged / "README.md").read_text(encoding="utf-8"):
        (staged / "README.md").unlink()
        result.card = "kept-hub-card"
        result.files = [f for f in result.files if f != "README.md"]


def _send(
    api, result: PushResult, staged: Path, hub_dir: Path, private: bool, revision: str | None, overwrite_card: bool
) -> None:
    """Step 2 of a push: repo, branch, the Hub's card, then ONE upload_folder commit (fills result.commit_url)."""
    token = _token(api)
    if not token:
        raise PublishError(f"no Hugging Face token found to push {result.repo_id}: {LOGIN_HELP}")
    repo_type = result.kind
    sent_anything = False
    try:
        api.create_repo(result.repo_id, repo_type=repo_type, private=private, exist_ok=True)
        if revision and revision != "main":
            api.create_branch(result.repo_id, branch=revision, repo_type=repo_type, exist_ok=True)
        if not overwrite_card:
            _keep_hub_card(api, result, staged, hub_dir, revision)
        sent_anything = True
        commit = api.upload_folder(
            repo_id=result.repo_id,
            folder_path=str(staged),
            repo_type=repo_type,
            revision=revision,
            commit_message=result.commit_message,
            ignore_patterns=list(IGNORE_PATTERNS),  # the staged folder already follows them; one rule
        )
    except Exception as err:
        raise _hub_failure(err, result.repo_id, token, sent_anything) from None
    result.commit_url = getattr(commit, "commit_url", None)


def _hub_failure(err: Exception, repo_id: str, token: str, sent_anything: bool) -> PublishError:
    """The PublishError for an exception raised while talking to the Hub (token scrubbed from it)."""
    if isinstance(err, PublishError):
        return err
    detail = _scrub(f"{type(err).__name__}: {err}", token)
    if _is_auth_error(err):
        return PublishError(f"the Hub refused to write to {repo_id} ({detail}); {LOGIN_HELP}")
    stage_text = "upload" if sent_anything else "repo creation"
    return PublishError(
        f"{stage_text} to {repo_id} failed ({detail}); the local folder is unchanged, "
        "run the same command again to retry"
    )


def run_push(config: PushConfig, api=None) -> int:
    """CLI target of `alps-hf push`: publish, then print what was sent (with --dry-run: each file) and the URL.

    Args:
        config: the parsed flags.
        api: an `HfApi` stand-in (tests); default `HfApi()`.

    Returns:
        The exit code, 0.

    Raises:
        PublishError: as `push_to_hub`.
    """
    result = push_to_hub(
        config.folder,
        config.repo_id,
        private=config.private,
        revision=config.revision,
        overwrite_card=config.overwrite_card,
        commit_message=config.commit_message,
        dry_run=config.dry_run,
        api=api,
    )
    verb = "would upload" if config.dry_run else "uploaded"
    print(
        f"{result.kind} folder {config.folder}: {verb} {len(result.files)} files in one commit: {result.commit_message!r}"
    )
    if config.dry_run:
        for name in result.files:  # what --dry-run promises: the exact list that would be sent
            print(f"  {name}")
    if result.excluded:
        print(f"left out: {', '.join(result.excluded)}")
    if result.card == "kept-hub-card":
        print("README.md on the Hub was edited by hand and was kept; pass --overwrite-card to replace it")
    elif result.card == "kept-local-card":
        print("README.md was edited locally and was uploaded as it is (delete it to regenerate the card)")
    print(result.url if not config.dry_run else f"dry run, nothing sent; target: {result.url}")
    return 0
