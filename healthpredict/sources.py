"""Where raw data comes from, and its errors; nothing heavy is imported, so a command checks a local source in a
fraction of a second, before it loads pandas or starts Prefect."""

from __future__ import annotations

from pathlib import Path

from healthpredict.errors import PermanentError


class RawDataError(ValueError):
    """Raw data cannot be used; the message names the file, column and affected rows. This base class is for
    failures that may heal (a download or a remote store that did not answer); see :class:`UnusableRawData`."""


class UnusableRawData(PermanentError, RawDataError):
    """Raw data that is missing (a local path that is no file), differs from its published checksum or fails its
    schema: reading it again gives the same answer, so it is never retried."""


def is_remote_source(source: str) -> bool:
    """A URL or an fsspec URI (``s3://``): reading it can fail for a while and then work."""
    return "://" in source


def local_source_file(source: str) -> Path:
    """The file a local source names, or :class:`UnusableRawData` naming the path and the setting."""
    path = Path(source).expanduser()
    if not path.is_file():
        raise UnusableRawData(
            f"{source}: no such file (set HEALTHPREDICT_RAW_DATA or --source to the UCI zip or csv, a URL or an "
            "s3:// URI)"
        )
    return path
