import numpy as np
import pandas as pd
import pytest
from conftest import raw_frame, raw_record

from healthpredict.features import (
    CATEGORICAL_FEATURES,
    EXCLUDED_DISCHARGE_IDS,
    MISSING_CATEGORY,
    MODEL_INPUT_COLUMNS,
    NUMERIC_FEATURES,
    FeatureEngineer,
    build_preprocessor,
    clean_encounters,
    engineer_features,
    icd9_chapter,
    icd9_group,
)
from healthpredict.schema import TARGET_COLUMN, coerce_types

pytestmark = pytest.mark.unit


def typed(*records: dict[str, object]) -> pd.DataFrame:
    return coerce_types(pd.DataFrame(records))


def test_hospice_and_death_are_excluded() -> None:
    assert frozenset({11, 13, 14, 19, 20, 21}) == EXCLUDED_DISCHARGE_IDS
    frame = typed(
        *(
            raw_record(encounter_id=str(i), discharge_disposition_id=str(d))
            for i, d in enumerate([1, 11, 13, 14, 19, 20, 21, 3])
        )
    )
    clean, report = clean_encounters(frame)
    assert list(clean["discharge_disposition_id"]) == [1, 3]
    assert report.excluded_hospice_or_death == 6 and report.output_rows == 2


def test_invalid_gender_is_excluded_and_counted_once() -> None:
    frame = typed(
        raw_record(encounter_id="1", gender="Unknown/Invalid"),
        raw_record(encounter_id="2", gender="Unknown/Invalid", discharge_disposition_id="11"),
        raw_record(encounter_id="3", gender="Male"),
    )
    clean, report = clean_encounters(frame)
    assert list(clean["encounter_id"]) == [3]
    assert (report.excluded_hospice_or_death, report.excluded_invalid_gender) == (1, 1)


@pytest.mark.parametrize(("target", "expected"), [("any", [0, 1, 1]), ("30d", [0, 0, 1])])
def test_target_any_or_thirty_day(target: str, expected: list[int]) -> None:
    frame = typed(*(raw_record(encounter_id=str(i), readmitted=r) for i, r in enumerate(["NO", ">30", "<30"])))
    clean, report = clean_encounters(frame, target)
    assert list(clean[TARGET_COLUMN]) == expected
    assert report.positives == sum(expected)


def test_weight_payer_and_ids_are_not_features() -> None:
    clean, _ = clean_encounters(typed(raw_record()))
    assert "weight" not in clean and "payer_code" not in clean
    for column in ("encounter_id", "patient_nbr", "weight", "payer_code", "readmitted"):
        assert column not in MODEL_INPUT_COLUMNS
    features = engineer_features(clean)
    assert not {"encounter_id", "patient_nbr", TARGET_COLUMN} & set(features.columns)


@pytest.mark.parametrize(
    ("code", "group"),
    [
        ("428", "circulatory"), ("390", "circulatory"), ("459.9", "circulatory"), ("785", "circulatory"),
        ("486", "respiratory"), ("786", "respiratory"), ("519", "respiratory"),
        ("530", "digestive"), ("787", "digestive"),
        ("250", "diabetes"), ("250.83", "diabetes"), ("250.01", "diabetes"),
        ("820", "injury"), ("999", "injury"), ("715", "musculoskeletal"), ("739", "musculoskeletal"),
        ("599", "genitourinary"), ("788", "genitourinary"), ("153", "neoplasms"), ("239", "neoplasms"),
        ("V45", "external_v_e"), ("E909", "external_v_e"), ("276", "other"), ("251", "other"),
        (None, "missing"), ("junk", "other"),
    ],
)  # fmt: skip
def test_icd9_chapter_groups(code: str | None, group: str) -> None:
    assert icd9_group(pd.Series([code], dtype=object)).iloc[0] == group


def test_age_ordinal_ids_categorical_and_summaries() -> None:
    record = raw_record(
        age="[0-10)", metformin="Up", insulin="Down", glipizide="Steady",
        number_outpatient="2", number_emergency="1", number_inpatient="3", admission_type_id="6",
    )  # fmt: skip
    features = engineer_features(typed(record, raw_record(age="[90-100)")))
    first = features.iloc[0]
    assert list(features["age_ordinal"]) == [0.0, 9.0]
    assert first["n_meds_changed"] == 2 and first["n_meds_active"] == 3 and first["prior_visits"] == 6
    assert first["admission_type_id"] == "6" and isinstance(first["discharge_disposition_id"], str)
    assert list(features.columns) == [*NUMERIC_FEATURES, *CATEGORICAL_FEATURES]


def test_missing_categoricals_become_a_category() -> None:
    features = engineer_features(typed(raw_record(race=None, medical_specialty=None, diag_3=None)))
    row = features.iloc[0]
    assert (row["race"], row["medical_specialty"], row["diag_3_group"]) == ("missing", "missing", "missing")


def test_preprocessor_one_hots_and_ignores_unknown_categories() -> None:
    clean, _ = clean_encounters(coerce_types(raw_frame(30)))
    encoder = build_preprocessor(scale_numeric=True).fit(FeatureEngineer().transform(clean))
    unseen = clean.head(1).assign(medical_specialty="Astrology")
    encoded = encoder.transform(engineer_features(unseen))
    assert encoded.shape == (1, len(encoder.get_feature_names_out()))
    assert np.isfinite(encoded).all()
    scaled = encoder.transform(engineer_features(clean))[:, : len(NUMERIC_FEATURES)]
    assert np.allclose(scaled[:, list(NUMERIC_FEATURES).index("time_in_hospital")].mean(), 0.0, atol=1e-9)


def test_missing_model_column_is_named() -> None:
    with pytest.raises(KeyError, match="insulin"):
        engineer_features(typed(raw_record()).drop(columns=["insulin"]))


def test_icd9_chapters_one_code_at_a_time_and_as_a_column() -> None:
    cases = {
        "250.01": "diabetes", "250": "diabetes", " 428 ": "circulatory", "785.5": "circulatory",
        "486": "respiratory", "786.05": "respiratory", "535": "digestive", "787": "digestive",
        "820": "injury", "999.9": "injury", "715": "musculoskeletal", "599": "genitourinary", "788.1": "genitourinary",
        "174": "neoplasms", "V45": "external_v_e", "e888": "external_v_e", "780": "other", "1000": "other",
        "abc": "other", "nan": "other", "": MISSING_CATEGORY, "   ": MISSING_CATEGORY, None: MISSING_CATEGORY,
        float("nan"): MISSING_CATEGORY, 428: "circulatory",
    }  # fmt: skip
    assert {code: icd9_chapter(code) for code in cases} == cases
    column = pd.Series(list(cases), dtype=object)
    assert icd9_group(column).tolist() == list(cases.values())


def test_icd9_group_takes_distinct_nan_objects_as_missing() -> None:
    # NaN is not equal to itself, so two NaN objects are two different dictionary keys; pandas.unique keeps one.
    column = pd.Series(np.array(["250.1", float("nan"), float("nan"), None, pd.NA, "428"], dtype=object))
    assert icd9_group(column).tolist() == ["diabetes", *[MISSING_CATEGORY] * 4, "circulatory"]
