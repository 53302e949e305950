"""The leakage-free split: patient-disjoint train/val/test, ordered future batches, a manifest that describes and
checks every part, and a reader that refuses a missing or changed file, naming it."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from conftest import create_bucket, make_settings, raw_frame, write_raw_csv

from healthpredict.data import RawData, sha256_file
from healthpredict.features import CleaningReport, clean_encounters
from healthpredict.schema import TARGET_COLUMN, coerce_types
from healthpredict.settings import DataSettings, Settings
from healthpredict.split import (
    CURRENT_POINTER,
    MANIFEST_NAME,
    SPLIT_DIR,
    SplitError,
    SplitReader,
    batch_name,
    describe_part,
    patient_disjoint_split,
    run_split,
    split_dataset,
    split_exists,
    split_id_for,
    write_split,
)

pytestmark = pytest.mark.unit

ROWS = 2000
SOURCE_SHA = "ab" * 32


def data_settings(**overrides: object) -> DataSettings:
    return DataSettings(raw_data="x", expected_sha256=None, artifact_uri="y", **overrides)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def raw() -> pd.DataFrame:
    return raw_frame(ROWS, seed=3, n_patients=700)


@pytest.fixture(scope="module")
def clean(raw: pd.DataFrame) -> pd.DataFrame:
    return clean_encounters(coerce_types(raw).sample(frac=1.0, random_state=1))[0]


@pytest.fixture  # per test: mutation testing sees which tests write a split only when each test writes its own
def split_home(raw: pd.DataFrame, tmp_path_factory: pytest.TempPathFactory) -> tuple[Settings, dict[str, Any]]:
    """A split written by ``healthpredict split`` from a CSV of the raw rows (settings, returned manifest)."""
    home = tmp_path_factory.mktemp("split-home")  # a fresh folder per test
    frame = raw.copy()
    frame.loc[:9, "discharge_disposition_id"] = "11"  # died: outside the model's scope, cleaned away
    csv = write_raw_csv(frame, home / "diabetic_data.csv")
    settings = make_settings(home, HEALTHPREDICT_RAW_SHA256="none", HEALTHPREDICT_N_BATCHES="4")
    return settings, run_split(settings, str(csv))


def written_split(home: Path, clean: pd.DataFrame, **env: str) -> tuple[Settings, dict[str, Any]]:
    """A split of ``clean`` written to ``home`` by :func:`write_split` (for tests that damage its files)."""
    settings = make_settings(home, HEALTHPREDICT_RAW_SHA256="none", **env)
    report = CleaningReport(input_rows=len(clean), excluded_hospice_or_death=0, excluded_invalid_gender=0,
                            output_rows=len(clean), positives=int(clean[TARGET_COLUMN].sum()))  # fmt: skip
    source = RawData(path=home / "in.csv", sha256=SOURCE_SHA, source="s3://bucket/raw/diabetic_data.csv")
    return settings, write_split(split_dataset(clean, settings.data), report, source, settings)


def split_folder(settings: Settings, split_id: str) -> Path:
    return Path(settings.data.artifact_uri) / SPLIT_DIR / split_id


# -- splitting ---------------------------------------------------------------------------------------------------


def test_initial_parts_are_patient_disjoint(clean: pd.DataFrame) -> None:
    parts = split_dataset(clean, data_settings()).parts
    patients = {name: set(parts[name]["patient_nbr"]) for name in ("train", "val", "test")}
    assert not patients["train"] & patients["val"]
    assert not patients["train"] & patients["test"]
    assert not patients["val"] & patients["test"]
    n = sum(len(p) for p in patients.values())
    assert abs(len(patients["train"]) / n - 0.70) < 0.02
    assert abs(len(patients["test"]) / n - 0.15) < 0.02


def test_patient_fractions_are_rounded_counts_of_patients() -> None:
    frame = pd.DataFrame({"patient_nbr": np.repeat(np.arange(1, 41), 2), "encounter_id": np.arange(80)})
    parts = patient_disjoint_split(frame, val_fraction=0.2, test_fraction=0.1, seed=0)
    counts = {name: part["patient_nbr"].nunique() for name, part in parts.items()}
    assert counts == {"train": 28, "val": 8, "test": 4}
    assert list(parts) == ["train", "val", "test"]
    for part in parts.values():  # whole patients, rows in their original (time) order, a fresh index
        assert (part.groupby("patient_nbr").size() == 2).all()
        assert part["encounter_id"].is_monotonic_increasing
        assert list(part.index) == list(range(len(part)))


def test_the_split_of_patients_depends_on_the_seed_not_on_the_row_order() -> None:
    frame = pd.DataFrame({"patient_nbr": np.arange(100, 300), "encounter_id": np.arange(200)})
    first = patient_disjoint_split(frame, 0.15, 0.15, seed=5)
    reordered = patient_disjoint_split(frame.iloc[::-1].reset_index(drop=True), 0.15, 0.15, seed=5)
    for name in ("train", "val", "test"):
        assert set(first[name]["patient_nbr"]) == set(reordered[name]["patient_nbr"])


def test_every_row_is_used_once_and_batches_are_ordered(clean: pd.DataFrame) -> None:
    frames = split_dataset(clean, data_settings(n_batches=5))
    assert frames.batch_names == [batch_name(i) for i in range(1, 6)]
    ids = pd.concat([p["encounter_id"] for p in frames.parts.values()])
    assert len(ids) == len(clean) and ids.is_unique
    initial_max = max(frames.parts[n]["encounter_id"].max() for n in ("train", "val", "test"))
    previous = initial_max
    for name in frames.batch_names:
        batch = frames.parts[name]["encounter_id"]
        assert batch.is_monotonic_increasing and batch.min() > previous
        previous = batch.max()
    assert sum(len(frames.parts[n]) for n in ("train", "val", "test")) == 400  # ceil(20% of 2000)


def test_batches_are_numbered_from_one_and_as_equal_as_rows_allow(clean: pd.DataFrame) -> None:
    frames = split_dataset(clean, data_settings(n_batches=3, initial_fraction=0.2001))
    assert list(frames.parts) == ["train", "val", "test", "batch_01", "batch_02", "batch_03"]
    assert sum(len(frames.parts[n]) for n in ("train", "val", "test")) == 401  # the initial share rounds up
    assert [len(frames.parts[n]) for n in frames.batch_names] == [533, 533, 533]  # 1599 rows
    even = split_dataset(clean, data_settings(n_batches=3))
    assert [len(even.parts[n]) for n in even.batch_names] == [533, 534, 533]  # 1600 rows
    assert all(list(frames.parts[n].index) == list(range(533)) for n in frames.batch_names)
    assert batch_name(12) == "batch_12"


def test_no_future_rows_no_batches(clean: pd.DataFrame) -> None:
    frames = split_dataset(clean, data_settings(initial_fraction=1.0, n_batches=4))
    assert frames.batch_names == [] and list(frames.parts) == ["train", "val", "test"]
    assert sum(len(p) for p in frames.parts.values()) == len(clean)


@pytest.mark.parametrize(("val", "test"), [(0.5, 0.5), (0.6, 0.4)])
def test_val_and_test_cannot_take_the_whole_initial_part(clean: pd.DataFrame, val: float, test: float) -> None:
    with pytest.raises(ValueError, match=r"^val_fraction \+ test_fraction must be < 1$"):
        split_dataset(clean, data_settings(val_fraction=val, test_fraction=test))


def test_same_seed_same_split_other_seed_other_split(clean: pd.DataFrame) -> None:
    first = split_dataset(clean, data_settings(seed=7)).parts["test"]
    again = split_dataset(clean, data_settings(seed=7)).parts["test"]
    other = split_dataset(clean, data_settings(seed=8)).parts["test"]
    pd.testing.assert_frame_equal(first, again)
    assert set(first["patient_nbr"]) != set(other["patient_nbr"])


# -- describing a part and naming a split ------------------------------------------------------------------------


def test_a_part_is_described_by_rows_positives_patients_and_time_range() -> None:
    part = pd.DataFrame({"encounter_id": [30, 10, 20], "patient_nbr": [7, 7, 9], TARGET_COLUMN: [1, 0, 0]})
    assert describe_part(part) == {
        "rows": 3, "positives": 1, "prevalence": 0.333333, "patients": 2,
        "first_encounter_id": 10, "last_encounter_id": 30,
    }  # fmt: skip
    assert describe_part(part.iloc[:0]) == {
        "rows": 0, "positives": 0, "prevalence": None, "patients": 0,
        "first_encounter_id": None, "last_encounter_id": None,
    }  # fmt: skip


def test_the_split_id_addresses_the_source_and_the_split_settings_only() -> None:
    base = split_id_for(SOURCE_SHA, data_settings())
    assert base == "9b308bd8bf6540db"  # the id of a split written by earlier versions: it must find that split again
    assert split_id_for(SOURCE_SHA, data_settings()) == base
    assert split_id_for(SOURCE_SHA, DataSettings(raw_data="z", expected_sha256="c" * 64, artifact_uri="w")) == base
    others = [
        split_id_for("cd" * 32, data_settings()),
        *(
            split_id_for(SOURCE_SHA, data_settings(**{key: value}))
            for key, value in (("target", "30d"), ("seed", 1), ("initial_fraction", 0.3), ("val_fraction", 0.1),
                               ("test_fraction", 0.1), ("n_batches", 3))
        ),
    ]  # fmt: skip
    assert len({base, *others}) == len(others) + 1


# -- writing: `healthpredict split` ------------------------------------------------------------------------------


def test_the_split_command_writes_every_part_and_a_manifest_that_describes_them(
    split_home: tuple[Settings, dict[str, Any]], raw: pd.DataFrame
) -> None:
    settings, manifest = split_home
    folder = split_folder(settings, manifest["split_id"])
    assert json.loads((folder / MANIFEST_NAME).read_text()) == manifest
    assert (folder.parent / CURRENT_POINTER).read_text() == manifest["split_id"]
    assert manifest["batches"] == ["batch_01", "batch_02", "batch_03", "batch_04"]
    assert list(manifest["parts"]) == ["train", "val", "test", *manifest["batches"]]
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        [MANIFEST_NAME, *(f"{name}.parquet" for name in manifest["parts"])]
    )
    assert manifest["cleaning"] == {
        "input_rows": ROWS, "excluded_hospice_or_death": 10, "excluded_invalid_gender": 0, "output_rows": ROWS - 10,
        "positives": manifest["cleaning"]["positives"],
    }  # fmt: skip
    assert manifest["cleaning"]["positives"] == sum(e["positives"] for e in manifest["parts"].values())
    kept = raw.iloc[10:]  # the default target: any readmission, within 30 days or later
    assert manifest["cleaning"]["positives"] == int(kept["readmitted"].isin(["<30", ">30"]).sum())
    assert manifest["source"]["name"] == "diabetic_data.csv" and len(manifest["source"]["sha256"]) == 64
    assert manifest["settings"] == {
        "target": "any", "seed": 42, "initial_fraction": 0.2, "val_fraction": 0.15, "test_fraction": 0.15,
        "n_batches": 4,
    }  # fmt: skip
    assert manifest["split_id"] == split_id_for(manifest["source"]["sha256"], settings.data)
    for name, entry in manifest["parts"].items():
        path = folder / f"{name}.parquet"
        frame = pd.read_parquet(path)
        assert entry == {"file": path.name, "sha256": sha256_file(path), **describe_part(frame)}
        assert list(frame.columns)[:2] == ["encounter_id", "patient_nbr"] and TARGET_COLUMN in frame.columns
    assert sum(e["rows"] for e in manifest["parts"].values()) == ROWS - 10


def test_the_manifest_file_is_stable_text(split_home: tuple[Settings, dict[str, Any]]) -> None:
    """Sorted keys, indented, one line per value and a final newline: two manifests diff line by line."""
    settings, manifest = split_home
    text = (split_folder(settings, manifest["split_id"]) / MANIFEST_NAME).read_text()
    assert text == json.dumps(manifest, indent=2, sort_keys=True) + "\n"


def test_the_same_source_and_settings_give_the_same_split(
    split_home: tuple[Settings, dict[str, Any]], tmp_path: Path
) -> None:
    settings, manifest = split_home
    again = run_split(make_settings(tmp_path, HEALTHPREDICT_RAW_SHA256="none", HEALTHPREDICT_N_BATCHES="4"),
                      str(Path(settings.home) / "diabetic_data.csv"))  # fmt: skip
    assert again == manifest


def test_split_exists_once_its_manifest_is_written(split_home: tuple[Settings, dict[str, Any]], tmp_path: Path) -> None:
    settings, manifest = split_home
    assert split_exists(settings, manifest["split_id"])
    assert not split_exists(settings, "0" * 16)
    assert not split_exists(make_settings(tmp_path), manifest["split_id"])
    (split_folder(settings, manifest["split_id"]) / MANIFEST_NAME).unlink()  # the manifest is written last
    assert not split_exists(settings, manifest["split_id"]), "a split without its manifest is incomplete"


def test_the_target_setting_decides_which_readmissions_are_positive(raw: pd.DataFrame, tmp_path: Path) -> None:
    csv = write_raw_csv(raw, tmp_path / "diabetic_data.csv")
    settings = make_settings(tmp_path / "home", HEALTHPREDICT_RAW_SHA256="none", HEALTHPREDICT_TARGET="30d")
    manifest = run_split(settings, str(csv))
    assert manifest["settings"]["target"] == "30d"
    assert manifest["cleaning"]["positives"] == int((raw["readmitted"] == "<30").sum())
    train = SplitReader(settings).read("train")
    assert train[TARGET_COLUMN].tolist() == (train["readmitted"] == "<30").astype(int).tolist()


def test_parts_hold_only_the_datasets_columns(split_home: tuple[Settings, dict[str, Any]]) -> None:
    """Any Parquet reader (pyarrow, DuckDB, Spark) sees the columns, and no pandas index column."""
    import pyarrow.parquet as pq

    settings, manifest = split_home
    folder = split_folder(settings, manifest["split_id"])
    for name in manifest["parts"]:
        path = folder / f"{name}.parquet"
        assert pq.read_schema(path).names == list(pd.read_parquet(path).columns)
        assert "__index_level_0__" not in pq.read_schema(path).names


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_writing_shows_progress_on_a_terminal_only(
    clean: pd.DataFrame, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    written_split(tmp_path / "quiet", clean, HEALTHPREDICT_N_BATCHES="2")
    assert capsys.readouterr().err == ""  # not a terminal: logs stay free of progress bars
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    written_split(tmp_path / "shown", clean, HEALTHPREDICT_N_BATCHES="2")
    assert "write split: 100%" in terminal.getvalue() and "5/5 [" in terminal.getvalue()
    assert "part/s]" in terminal.getvalue()


def test_a_split_on_s3_is_written_and_read_through_the_configured_endpoint(
    moto_endpoint: str, clean: pd.DataFrame, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The endpoint comes from the settings only (not from the process environment, which boto would read)."""
    for name in ("AWS_ENDPOINT_URL", "MLFLOW_S3_ENDPOINT_URL", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    for name, value in (("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing"),
                        ("AWS_DEFAULT_REGION", "us-east-1")):  # fmt: skip
        monkeypatch.setenv(name, value)
    create_bucket(moto_endpoint, "split-bucket")
    settings, manifest = written_split(
        tmp_path, clean.iloc[:300], HEALTHPREDICT_ARTIFACT_URI="s3://split-bucket/hp", AWS_ENDPOINT_URL=moto_endpoint,
        HEALTHPREDICT_N_BATCHES="2",
    )  # fmt: skip
    assert split_exists(settings, manifest["split_id"])
    reader = SplitReader(settings)
    assert reader.manifest == json.loads(json.dumps(manifest))
    assert reader.uri("val") == f"s3://split-bucket/hp/split/{manifest['split_id']}/val.parquet"
    assert len(reader.read("val")) == manifest["parts"]["val"]["rows"]


# -- reading back ------------------------------------------------------------------------------------------------


def test_the_reader_gives_back_each_part_of_the_current_split(
    split_home: tuple[Settings, dict[str, Any]], clean: pd.DataFrame
) -> None:
    settings, manifest = split_home
    reader = SplitReader(settings)
    assert reader.split_id == manifest["split_id"] and reader.manifest == manifest
    assert reader.batch_names == manifest["batches"]
    folder = split_folder(settings, manifest["split_id"])
    for name in manifest["parts"]:
        pd.testing.assert_frame_equal(reader.read(name), pd.read_parquet(folder / f"{name}.parquet"))
        assert reader.uri(name) == f"{settings.data.artifact_uri}/split/{manifest['split_id']}/{name}.parquet"
    train = reader.read("train")
    assert len(train) == manifest["parts"]["train"]["rows"] and train["encounter_id"].is_monotonic_increasing
    expected = hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()
    assert reader.manifest_sha256 == expected == SplitReader(settings, manifest["split_id"]).manifest_sha256


def test_the_reader_reads_the_split_it_is_given_not_only_the_current_one(clean: pd.DataFrame, tmp_path: Path) -> None:
    _, old = written_split(tmp_path, clean, HEALTHPREDICT_SEED="1")
    settings, new = written_split(tmp_path, clean, HEALTHPREDICT_SEED="2")
    assert old["split_id"] != new["split_id"]
    assert SplitReader(settings).split_id == new["split_id"]
    reader = SplitReader(settings, old["split_id"])
    assert reader.manifest == old and reader.manifest["settings"]["seed"] == 1
    assert old["source"] == {"sha256": SOURCE_SHA, "name": "diabetic_data.csv"}
    assert len(reader.read("test")) == old["parts"]["test"]["rows"]


def test_no_split_names_the_store_and_the_command_to_run(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    with pytest.raises(SplitError, match="run `healthpredict split` first") as caught:
        SplitReader(settings)
    assert f"no split found in {settings.data.artifact_uri} (" in str(caught.value)
    assert f"{settings.data.artifact_uri}/split/CURRENT: not found" in str(caught.value)
    with pytest.raises(SplitError, match=f"split/{'0' * 16}/manifest.json: not found"):
        SplitReader(settings, "0" * 16)


def test_an_unknown_part_is_named_with_the_parts_there_are(split_home: tuple[Settings, dict[str, Any]]) -> None:
    settings, manifest = split_home
    with pytest.raises(SplitError) as caught:
        SplitReader(settings).read("batch_09")
    assert str(caught.value) == (
        f"split {manifest['split_id']} has no part 'batch_09' "
        "(has: batch_01, batch_02, batch_03, batch_04, test, train, val)"  # the manifest's order
    )


def test_a_missing_or_changed_part_file_is_refused_naming_it(clean: pd.DataFrame, tmp_path: Path) -> None:
    settings, manifest = written_split(tmp_path, clean)
    reader = SplitReader(settings)
    folder = split_folder(settings, manifest["split_id"])
    (folder / "val.parquet").unlink()
    with pytest.raises(SplitError) as missing:
        reader.read("val")
    assert str(missing.value) == f"{reader.uri('val')}: file is missing"
    shutil.copyfile(folder / "train.parquet", folder / "test.parquet")
    with pytest.raises(SplitError) as corrupt:
        reader.read("test")
    assert str(corrupt.value) == (
        f"{reader.uri('test')}: corrupt (sha256 {sha256_file(folder / 'train.parquet')}, "
        f"manifest says {manifest['parts']['test']['sha256']})"
    )
    assert len(reader.read("train")) == manifest["parts"]["train"]["rows"]  # the untouched part still reads
