"""Bad raw input: each case is a clear error naming the thing, and nothing is cached or written."""

import zipfile
from pathlib import Path

import pytest
from conftest import make_settings, raw_frame, write_raw_csv

from healthpredict.data import fetch_raw_data, load_raw
from healthpredict.schema import RawDataError
from healthpredict.split import run_split

pytestmark = pytest.mark.unit


def written_files(home: Path) -> list[Path]:
    return [p for p in home.rglob("*") if p.is_file()] if home.exists() else []


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


def test_valid_csv_is_cached_and_loaded(tmp_path: Path, home: Path) -> None:
    csv = write_raw_csv(raw_frame(12), tmp_path / "diabetic_data.csv")
    settings = make_settings(home, HEALTHPREDICT_RAW_SHA256="none")
    raw = fetch_raw_data(settings, str(csv))
    assert raw.path.parent == settings.raw_cache_dir and raw.path.read_bytes() == csv.read_bytes()
    frame = load_raw(raw)
    assert len(frame) == 12 and frame["time_in_hospital"].dtype == "int64"


def test_zip_is_searched_for_the_csv(tmp_path: Path, home: Path) -> None:
    csv = write_raw_csv(raw_frame(5), tmp_path / "diabetic_data.csv")
    archive = tmp_path / "bundle.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.write(csv, "nested/folder/diabetic_data.csv")
        zf.writestr("nested/IDs_mapping.csv", "x")
    raw = fetch_raw_data(make_settings(home, HEALTHPREDICT_RAW_SHA256="none"), str(archive))
    assert raw.path.read_bytes() == csv.read_bytes()


def test_zip_without_the_csv(tmp_path: Path, home: Path) -> None:
    archive = tmp_path / "other.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("IDs_mapping.csv", "x")
    with pytest.raises(RawDataError, match=r"other\.zip: the zip holds no diabetic_data\.csv"):
        fetch_raw_data(make_settings(home), str(archive))
    assert written_files(home) == []


def test_wrong_checksum_is_named_and_nothing_cached(tmp_path: Path, home: Path) -> None:
    csv = write_raw_csv(raw_frame(5), tmp_path / "diabetic_data.csv")
    with pytest.raises(RawDataError, match=r"sha256 [0-9a-f]{64}, expected 0689e7ec"):
        fetch_raw_data(make_settings(home), str(csv))
    assert written_files(home) == []


def test_csv_missing_readmitted(tmp_path: Path, home: Path) -> None:
    csv = write_raw_csv(raw_frame(5).drop(columns=["readmitted"]), tmp_path / "d.csv")
    with pytest.raises(RawDataError, match="'readmitted': expected column is missing in 5 row"):
        run_split(make_settings(home, HEALTHPREDICT_RAW_SHA256="none"), str(csv))
    assert written_files(home) == []


def test_truncated_csv(tmp_path: Path, home: Path) -> None:
    csv = write_raw_csv(raw_frame(8), tmp_path / "d.csv")
    text = csv.read_text()
    csv.write_text(text[: len(text) - 60])  # cut inside the last record
    with pytest.raises(RawDataError, match=r"missing value in 1 row"):
        run_split(make_settings(home, HEALTHPREDICT_RAW_SHA256="none"), str(csv))
    assert written_files(home) == []


def test_not_a_csv(tmp_path: Path, home: Path) -> None:
    junk = tmp_path / "d.csv"
    junk.write_bytes(b"\x00\x01binary")
    with pytest.raises(RawDataError, match=r"d\.csv"):
        fetch_raw_data(make_settings(home, HEALTHPREDICT_RAW_SHA256="none"), str(junk))
    assert written_files(home) == []


def test_missing_file_says_what_to_set(home: Path) -> None:
    with pytest.raises(RawDataError, match=r"/nope\.zip: no such file \(set HEALTHPREDICT_RAW_DATA"):
        fetch_raw_data(make_settings(home), "/nope.zip")


def test_failed_download_says_to_pass_a_path(home: Path) -> None:
    # port 9 (discard) on loopback: the connection is refused immediately
    with pytest.raises(RawDataError, match="pass its path"):
        fetch_raw_data(make_settings(home), "http://127.0.0.1:9/dataset.zip")
    assert not any(p.suffix == ".partial" for p in written_files(home))


def test_unreadable_uri(home: Path) -> None:
    with pytest.raises(RawDataError, match=r"memory://nowhere/d\.csv"):
        fetch_raw_data(make_settings(home), "memory://nowhere/d.csv")
