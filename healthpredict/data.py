"""Raw data acquisition: the UCI download, a local zip or csv, or any fsspec URI such as ``s3://``.

The CSV is verified against its published sha256 and cached under ``HEALTHPREDICT_HOME/raw`` so later
steps never download twice. Raw data is immutable: the cache is written once, atomically.
"""

from __future__ import annotations

import hashlib
import io
import os
import tempfile
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path
from urllib.error import URLError

import fsspec
import pandas as pd
from tqdm.auto import tqdm

from healthpredict.schema import MISSING_MARKER, coerce_types, validate_raw
from healthpredict.settings import DataSettings, Settings
from healthpredict.sources import RawDataError, UnusableRawData, is_remote_source, local_source_file

CSV_NAME = "diabetic_data.csv"


@dataclass(frozen=True)
class RawData:
    """The verified raw CSV in the local cache."""

    path: Path
    sha256: str
    source: str


def sha256_bytes(payload: bytes) -> str:
    return hashlib.sha256(payload).hexdigest()


def sha256_file(path: Path | str, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _is_url(source: str) -> bool:
    return source.startswith(("http://", "https://"))


def _download(url: str, destination: Path, timeout: float = 60.0) -> None:
    """Stream a URL to a file with a progress bar; the partial file never survives a failure."""
    partial = destination.with_suffix(destination.suffix + ".partial")
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            total = int(response.headers.get("Content-Length") or 0) or None
            with (
                open(partial, "wb") as out,
                tqdm(
                    total=total, unit="B", unit_scale=True, desc=f"download {Path(url).name[:40]}", disable=None
                ) as bar,
            ):
                while block := response.read(1 << 16):
                    out.write(block)
                    bar.update(len(block))
        os.replace(partial, destination)
    except (URLError, OSError, TimeoutError) as exc:
        partial.unlink(missing_ok=True)
        raise RawDataError(
            f"could not download {url}: {exc}. Without internet access, download the UCI dataset 296 zip "
            "elsewhere and pass its path (or an s3:// URI) with HEALTHPREDICT_RAW_DATA or --source."
        ) from exc


def _read_source_bytes(source: str, cache_dir: Path, settings: Settings | None) -> bytes:
    """The bytes of the zip or csv named by ``source`` (downloading URLs into the cache first)."""
    if _is_url(source):
        archive = cache_dir / "uci-diabetes-296.zip"
        if not archive.exists():
            cache_dir.mkdir(parents=True, exist_ok=True)
            _download(source, archive)
        return archive.read_bytes()
    if is_remote_source(source):
        try:
            storage_options = fsspec_options(source, settings)
            with fsspec.open(source, "rb", **storage_options) as handle:
                return handle.read()
        except FileNotFoundError as exc:
            raise RawDataError(f"{source}: no such object") from exc
        except Exception as exc:
            raise RawDataError(f"{source}: cannot be read ({type(exc).__name__}: {exc})") from exc
    return local_source_file(source).read_bytes()


def _extract_csv(payload: bytes, source: str) -> bytes:
    """Return the CSV bytes: the payload itself, or ``diabetic_data.csv`` found anywhere in a zip."""
    if not zipfile.is_zipfile(io.BytesIO(payload)):
        return payload
    with zipfile.ZipFile(io.BytesIO(payload)) as archive:
        matches = [name for name in archive.namelist() if Path(name).name == CSV_NAME]
        if not matches:
            raise UnusableRawData(f"{source}: the zip holds no {CSV_NAME} (found: {', '.join(archive.namelist())})")
        return archive.read(matches[0])


def fsspec_options(uri: str, settings: Settings | None) -> dict[str, object]:
    """Storage options for an fsspec URI; S3 honours a custom endpoint (moto, minio)."""
    if uri.startswith("s3://") and settings is not None and settings.aws.endpoint_url:
        return {"client_kwargs": {"endpoint_url": settings.aws.endpoint_url}}
    return {}


def fetch_raw_data(settings: Settings, source: str | None = None) -> RawData:
    """Resolve the raw data source, verify its checksum, validate it and cache the CSV.

    A checksum mismatch is an error unless ``HEALTHPREDICT_RAW_SHA256=none``; a file that fails either
    check is never cached.
    """
    data: DataSettings = settings.data
    source = source or data.raw_data
    cache_dir = settings.raw_cache_dir
    payload = _extract_csv(_read_source_bytes(source, cache_dir, settings), source)
    digest = sha256_bytes(payload)
    if data.expected_sha256 and digest != data.expected_sha256:
        raise UnusableRawData(
            f"{source}: {CSV_NAME} has sha256 {digest}, expected {data.expected_sha256}. The file differs "
            "from the published UCI dataset; set HEALTHPREDICT_RAW_SHA256=none to use it anyway."
        )
    cache_dir.mkdir(parents=True, exist_ok=True)
    target = cache_dir / f"{digest[:16]}-{CSV_NAME}"
    if not target.exists():
        with tempfile.NamedTemporaryFile(dir=cache_dir, delete=False, suffix=".partial") as tmp:
            tmp.write(payload)
        try:
            validate_raw(read_raw_csv(tmp.name)).raise_for_issues(source)
        except RawDataError:
            os.unlink(tmp.name)
            raise
        os.replace(tmp.name, target)
    return RawData(path=target, sha256=digest, source=source)


def read_raw_csv(path: Path | str) -> pd.DataFrame:
    """Read the raw CSV as text (``?`` = missing) so validation sees exactly what the file says."""
    try:
        return pd.read_csv(path, dtype=str, na_values=[MISSING_MARKER, ""], keep_default_na=False, on_bad_lines="error")
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise UnusableRawData(f"{path}: not a readable CSV ({exc})") from exc


def load_raw(raw: RawData) -> pd.DataFrame:
    """Read, validate and type the cached raw CSV; any validation issue raises naming the column."""
    frame = read_raw_csv(raw.path)
    validate_raw(frame).raise_for_issues(raw.source)
    return coerce_types(frame)
