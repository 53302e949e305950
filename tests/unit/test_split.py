import pandas as pd
import pytest
from conftest import raw_frame

from healthpredict.features import clean_encounters
from healthpredict.schema import coerce_types
from healthpredict.settings import DataSettings
from healthpredict.split import batch_name, split_dataset

pytestmark = pytest.mark.unit


def data_settings(**overrides: object) -> DataSettings:
    return DataSettings(raw_data="x", expected_sha256=None, artifact_uri="y", **overrides)  # type: ignore[arg-type]


@pytest.fixture
def clean() -> pd.DataFrame:
    frame = coerce_types(raw_frame(2000, seed=3, n_patients=700)).sample(frac=1.0, random_state=1)
    return clean_encounters(frame)[0]


def test_initial_parts_are_patient_disjoint(clean: pd.DataFrame) -> None:
    parts = split_dataset(clean, data_settings()).parts
    patients = {name: set(parts[name]["patient_nbr"]) for name in ("train", "val", "test")}
    assert not patients["train"] & patients["val"]
    assert not patients["train"] & patients["test"]
    assert not patients["val"] & patients["test"]
    n = sum(len(p) for p in patients.values())
    assert abs(len(patients["train"]) / n - 0.70) < 0.02
    assert abs(len(patients["test"]) / n - 0.15) < 0.02


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


def test_same_seed_same_split_other_seed_other_split(clean: pd.DataFrame) -> None:
    first = split_dataset(clean, data_settings(seed=7)).parts["test"]
    again = split_dataset(clean, data_settings(seed=7)).parts["test"]
    other = split_dataset(clean, data_settings(seed=8)).parts["test"]
    pd.testing.assert_frame_equal(first, again)
    assert set(first["patient_nbr"]) != set(other["patient_nbr"])
