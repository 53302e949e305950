import pandas as pd
import pytest
from conftest import raw_frame

from healthpredict.schema import RAW_COLUMNS, RawDataError, validate_raw

pytestmark = pytest.mark.unit


def issues_by_column(frame: pd.DataFrame) -> dict[str, list[tuple[str, int]]]:
    found: dict[str, list[tuple[str, int]]] = {}
    for issue in validate_raw(frame).issues:
        found.setdefault(issue.column, []).append((issue.problem, issue.rows))
    return found


def test_valid_frame_has_no_issues() -> None:
    report = validate_raw(raw_frame(20))
    assert report.ok and report.rows == 20
    report.raise_for_issues("frame")


def test_schema_has_the_fifty_columns() -> None:
    assert len(RAW_COLUMNS) == 50 and len(set(RAW_COLUMNS)) == 50


def test_missing_and_extra_columns_are_named() -> None:
    frame = raw_frame(5).drop(columns=["readmitted"]).assign(shoe_size="42")
    found = issues_by_column(frame)
    assert found["readmitted"] == [("expected column is missing", 5)]
    assert found["shoe_size"] == [("unexpected column", 5)]


def test_unknown_category_counts_rows() -> None:
    frame = raw_frame(10)
    frame.loc[[1, 4, 7], "metformin"] = "Sometimes"
    frame.loc[2, "readmitted"] = "maybe"
    found = issues_by_column(frame)
    assert found["metformin"] == [("unknown category", 3)]
    assert found["readmitted"] == [("unknown category", 1)]


def test_non_integer_and_out_of_range_counts() -> None:
    frame = raw_frame(6)
    frame.loc[0, "num_medications"] = "twelve"
    frame.loc[[1, 2], "time_in_hospital"] = "15"
    frame.loc[3, "admission_type_id"] = "99"
    found = issues_by_column(frame)
    assert found["num_medications"] == [("not an integer", 1)]
    assert found["time_in_hospital"] == [("outside [1, 14]", 2)]
    assert found["admission_type_id"] == [("unknown code", 1)]


def test_missing_values_only_where_allowed() -> None:
    frame = raw_frame(4)
    frame.loc[0, "race"] = None  # nullable
    frame.loc[[1, 2], "gender"] = None  # required
    found = issues_by_column(frame)
    assert "race" not in found
    assert found["gender"] == [("missing value", 2)]


def test_duplicate_encounter_ids() -> None:
    frame = raw_frame(4)
    frame.loc[3, "encounter_id"] = frame.loc[0, "encounter_id"]
    assert issues_by_column(frame)["encounter_id"] == [("duplicate id", 1)]


def test_raise_names_source_column_and_rows() -> None:
    frame = raw_frame(3)
    frame.loc[0, "A1Cresult"] = ">9"
    with pytest.raises(RawDataError, match=r"(?s)data\.csv.*'A1Cresult': unknown category in 1 row"):
        validate_raw(frame).raise_for_issues("data.csv")
