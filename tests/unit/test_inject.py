"""Drift-injection scenarios change what they claim, are seeded, and never touch their input."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from conftest import raw_frame

from healthpredict.features import age_ordinal, clean_encounters, target_from_readmitted
from healthpredict.inject import NEW_ADMISSION_SOURCE_ID, NEW_SPECIALTY, SCENARIOS, ScenarioError, inject
from healthpredict.schema import COUNT_RANGES, TARGET_COLUMN, TARGET_SOURCE_COLUMN, coerce_types

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def batch() -> pd.DataFrame:
    frame, _ = clean_encounters(coerce_types(raw_frame(800, seed=11)))
    rng = np.random.default_rng(11)
    return frame.assign(
        number_emergency=rng.integers(0, 3, len(frame)),
        number_outpatient=rng.integers(0, 3, len(frame)),
        max_glu_serum=rng.choice(["None", "Norm", ">200"], len(frame)),
    )


def test_covariate_shift_makes_patients_older_and_heavier_users(batch: pd.DataFrame) -> None:
    shifted = inject(batch, "covariate_shift", severity=0.5, seed=0)
    moved = age_ordinal(shifted["age"]) - age_ordinal(batch["age"])
    assert set(moved.unique()) <= {0.0, 1.0, 2.0} and (moved > 0).mean() > 0.4
    assert age_ordinal(shifted["age"]).mean() > age_ordinal(batch["age"]).mean() + 0.8
    for column in ("number_inpatient", "number_emergency", "number_outpatient"):
        assert shifted[column].sum() == pytest.approx(2 * batch[column].sum(), rel=0.05), column
        assert shifted[column].max() <= COUNT_RANGES[column][1]
        assert shifted[column].dtype == batch[column].dtype


def test_lab_missingness_raises_missing_results_and_lowers_lab_counts(batch: pd.DataFrame) -> None:
    shifted = inject(batch, "lab_missingness", severity=0.6, seed=0)
    for column in ("max_glu_serum", "A1Cresult"):
        assert batch[column].isna().mean() == 0.0
        assert shifted[column].isna().mean() == pytest.approx(0.6, abs=0.01), column
    assert shifted["num_lab_procedures"].mean() == pytest.approx(0.7 * batch["num_lab_procedures"].mean(), rel=0.02)


def test_label_prior_shift_raises_prevalence_with_consistent_labels(batch: pd.DataFrame) -> None:
    before = batch[TARGET_COLUMN].mean()
    shifted = inject(batch, "label_prior_shift", severity=0.5, seed=0)
    assert shifted[TARGET_COLUMN].mean() == pytest.approx(before + 0.5 * (1 - before), abs=0.01)
    assert (shifted[TARGET_COLUMN] == target_from_readmitted(shifted[TARGET_SOURCE_COLUMN], "any")).all()
    assert shifted["encounter_id"].is_unique and set(shifted["encounter_id"]) <= set(batch["encounter_id"])
    assert shifted[TARGET_COLUMN].sum() == batch[TARGET_COLUMN].sum()  # every positive kept, negatives dropped


def test_new_category_appears_on_the_requested_fraction(batch: pd.DataFrame) -> None:
    shifted = inject(batch, "new_category", severity=0.25, seed=0)
    assert NEW_SPECIALTY not in set(batch["medical_specialty"])
    assert (shifted["medical_specialty"] == NEW_SPECIALTY).mean() == pytest.approx(0.25)
    assert (
        (shifted["admission_source_id"] == NEW_ADMISSION_SOURCE_ID) == (shifted["medical_specialty"] == NEW_SPECIALTY)
    ).all()


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_scenarios_are_seeded_and_pure(batch: pd.DataFrame, scenario: str) -> None:
    original = batch.copy()
    first = inject(batch, scenario, severity=0.4, seed=3)
    pd.testing.assert_frame_equal(first, inject(batch, scenario, severity=0.4, seed=3))
    pd.testing.assert_frame_equal(batch, original)
    assert not first.equals(batch)
    assert SCENARIOS[scenario].expected


def test_unknown_scenario_lists_the_valid_ones(batch: pd.DataFrame) -> None:
    with pytest.raises(ScenarioError, match="unknown drift scenario 'snow'; valid: covariate_shift, lab_missingness"):
        inject(batch, "snow")


def test_severity_and_columns_are_checked(batch: pd.DataFrame) -> None:
    with pytest.raises(ScenarioError, match=r"severity 1.5 .* must lie in \(0, 1\]"):
        inject(batch, "new_category", severity=1.5)
    with pytest.raises(ScenarioError, match="needs column"):
        inject(batch.drop(columns=[TARGET_COLUMN]), "label_prior_shift")
