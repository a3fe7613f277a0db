"""The few exception classes of alps_hf.

Every message names the offending value, what is allowed, and the flag or step that fixes it.
The CLI turns any `AlpsError` into a one-line message and exit code 2, without a traceback.
"""


class AlpsError(Exception):
    """Base class of every error alps_hf raises on purpose."""


class ConfigError(AlpsError, ValueError):
    """A configuration value is invalid (raised before any model loads)."""


class InputError(AlpsError):
    """An input path, dataset or column cannot be used."""


class ImageError(AlpsError):
    """One image cannot be decoded; recorded in failures.jsonl, never fatal to a run."""


class ClusterModelError(AlpsError):
    """A saved cluster model is unreadable or does not fit the features it is asked to label."""


class DatasetFormatError(AlpsError):
    """A dataset folder does not follow the alps_hf / Hub layout, or its values are out of range."""


class CheckpointError(AlpsError):
    """A model checkpoint is missing, unreadable, or of another architecture."""


class PublishError(AlpsError):
    """A folder cannot be published to the Hub (refused before anything is sent)."""
