"""Why a model reference (`--sam`, `--init`, ...) could not be loaded, in words a user can act on.

transformers turns every failure into an `OSError` whose text blames the id ("not a valid model
identifier") or the network, whatever the cause. The cause is in the exception chain
(huggingface_hub's error classes) and in the name itself: a path that does not exist, a Hub id while
offline and not cached, a Hub id that does not exist or is gated. `unloadable_reason` says which.
"""

from __future__ import annotations

from pathlib import Path

from alps_hf.hub.cards import repo_id_problem


def _chain(err: BaseException) -> list[BaseException]:
    out: list[BaseException] = []
    current: BaseException | None = err
    while current is not None and current not in out:
        out.append(current)
        current = current.__cause__ or current.__context__
    return out


def unloadable_reason(flag: str, name: str, err: BaseException, example: str = "facebook/sam-vit-base") -> str:
    """One sentence naming the value, why it cannot be loaded, and what fixes it.

    Args:
        flag: the flag the value came from, e.g. "--sam".
        name: the value: a local folder or a Hub repo id.
        err: what `from_pretrained` (or a config / processor load) raised.
        example: a valid Hub id for this flag, quoted in the folder-not-found advice.

    Returns:
        The sentence, e.g. "--sam 'facebook/sam-vit-base' cannot be reached: ... is not in the local cache".
    """
    from huggingface_hub import constants
    from huggingface_hub.errors import (
        GatedRepoError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    causes = _chain(err)
    if not Path(name).exists() and (repo_id_problem(name) is not None or name.startswith((".", "/", "~"))):
        return (f"{flag} {name!r}: folder not found (and it is no Hub repo id either); pass an existing "
                f"save_pretrained folder or a Hub id such as {example}")
    if Path(name).exists():
        return f"{flag} {name!r} is a local path but cannot be loaded: {str(err).splitlines()[0][:300]}"
    if any(isinstance(c, GatedRepoError) for c in causes):
        return f"{flag} {name!r} is gated on the Hub: accept its terms on huggingface.co and log in (`hf auth login`)"
    if any(isinstance(c, RevisionNotFoundError) for c in causes):
        return f"{flag} {name!r} has no such revision on the Hub; check the revision flag (branch, tag or commit)"
    if any(isinstance(c, RepositoryNotFoundError) for c in causes):
        return (f"{flag} {name!r} is not a model on the Hub (or it is private: log in with `hf auth login`); "
                "check the id, or pass a local save_pretrained folder")
    if constants.HF_HUB_OFFLINE or any(isinstance(c, (LocalEntryNotFoundError, OfflineModeIsEnabled)) for c in causes):
        why = "HF_HUB_OFFLINE is set" if constants.HF_HUB_OFFLINE else "the Hub cannot be reached"
        # A bare name ("my-sam") may have been meant as a folder: say that none exists.
        local = "" if "/" in name else " is no folder here and, as a Hub id,"
        return (f"{flag} {name!r}{local} cannot be reached ({why}) and is not in the local cache "
                f"({constants.HF_HUB_CACHE}); "
                f"download it once while online (`hf download {name}`), or pass a local save_pretrained folder")
    return f"{flag} {name!r} cannot be loaded: {str(err).splitlines()[0][:300]}"
