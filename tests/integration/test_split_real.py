"""The real UCI file through fetch → validate → clean → split, locally and on S3 (moto)."""

import json
from pathlib import Path

import pandas as pd
import pytest
from conftest import create_bucket, make_settings

from healthpredict.split import SPLIT_DIR, SplitError, SplitReader, run_split

pytestmark = pytest.mark.integration


def test_real_counts_and_invariants(real_split_home: Path) -> None:
    reader = SplitReader(make_settings(real_split_home))
    manifest = reader.manifest
    cleaning = manifest["cleaning"]
    assert cleaning["input_rows"] == 101_766
    assert cleaning["excluded_hospice_or_death"] == 2_423
    assert cleaning["excluded_invalid_gender"] == 3
    assert cleaning["output_rows"] == 99_340
    parts = manifest["parts"]
    assert sum(p["rows"] for p in parts.values()) == 99_340
    assert sum(p["positives"] for p in parts.values()) == cleaning["positives"]
    assert reader.batch_names == [f"batch_{i:02d}" for i in range(1, 9)]
    initial_rows = sum(parts[n]["rows"] for n in ("train", "val", "test"))
    assert initial_rows == 19_868  # ceil(20% of 99,340)
    frames = {n: reader.read(n) for n in ("train", "val", "test")}
    patients = {n: set(f["patient_nbr"]) for n, f in frames.items()}
    assert not (patients["train"] & patients["val"] or patients["train"] & patients["test"]
                or patients["val"] & patients["test"])  # fmt: skip
    assert 0.4 < parts["train"]["prevalence"] < 0.55
    last_initial = max(f["encounter_id"].max() for f in frames.values())
    assert parts["batch_01"]["first_encounter_id"] > last_initial


def test_rerun_is_byte_identical(real_split_home: Path, real_data: Path, tmp_path: Path) -> None:
    settings = make_settings(real_split_home, HEALTHPREDICT_RAW_DATA=str(real_data))
    reader = SplitReader(settings)
    folder = real_split_home / "artifacts" / SPLIT_DIR / reader.split_id
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    run_split(settings)
    after = {p.name: p.read_bytes() for p in folder.iterdir()}
    assert before == after
    # a different home gets the same bytes too
    other = make_settings(tmp_path / "other", HEALTHPREDICT_RAW_DATA=str(real_data))
    manifest = run_split(other)
    assert json.dumps(manifest, sort_keys=True) == json.dumps(reader.manifest, sort_keys=True)


def test_corrupt_part_is_refused(real_split_home: Path, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "home"
    shutil.copytree(real_split_home / "artifacts", copy / "artifacts")
    reader = SplitReader(make_settings(copy))
    path = copy / "artifacts" / SPLIT_DIR / reader.split_id / "test.parquet"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(SplitError, match=r"test\.parquet: corrupt"):
        reader.read("test")


def test_s3_round_trip(real_split_home: Path, real_data: Path, aws_env: dict[str, str], tmp_path: Path) -> None:
    create_bucket(aws_env["AWS_ENDPOINT_URL"], "hp-split")
    settings = make_settings(
        tmp_path / "home", HEALTHPREDICT_RAW_DATA=str(real_data),
        HEALTHPREDICT_ARTIFACT_URI="s3://hp-split/team-a", **aws_env,
    )  # fmt: skip
    manifest = run_split(settings)
    local = SplitReader(make_settings(real_split_home))
    assert manifest == local.manifest
    remote = SplitReader(settings)
    assert remote.uri("val") == f"s3://hp-split/team-a/split/{manifest['split_id']}/val.parquet"
    pd.testing.assert_frame_equal(remote.read("val"), local.read("val"))


def test_raw_data_from_s3(real_data: Path, aws_env: dict[str, str], tmp_path: Path) -> None:
    import boto3

    create_bucket(aws_env["AWS_ENDPOINT_URL"], "hp-raw")
    boto3.client("s3", endpoint_url=aws_env["AWS_ENDPOINT_URL"]).upload_file(str(real_data), "hp-raw", "uci.zip")
    from healthpredict.data import fetch_raw_data
    from healthpredict.schema import RawDataError

    settings = make_settings(tmp_path / "home", **aws_env)
    raw = fetch_raw_data(settings, "s3://hp-raw/uci.zip")
    assert raw.sha256 == settings.data.expected_sha256
    with pytest.raises(RawDataError, match=r"s3://hp-raw/missing\.zip"):
        fetch_raw_data(settings, "s3://hp-raw/missing.zip")


def test_missing_split_says_what_to_run(tmp_path: Path) -> None:
    with pytest.raises(SplitError, match="run `healthpredict split` first"):
        SplitReader(make_settings(tmp_path / "empty"))
