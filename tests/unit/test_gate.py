"""The promotion gate's fairness check on a synthetic holdout whose answer is known.

Both models are scored on the same patients and resampled with the same patient draw, as ``gate_challenger``
does. A challenger as fair as the champion but not identical to it (its scores carry noise, so its bootstrap
rounds differ from the champion's) must pass: only noise separates them. A challenger that misses more of one
group's readmissions must be refused, with the attribute named.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import pytest
from conftest import make_settings

from healthpredict.audit import patient_weights
from healthpredict.gate import evaluate_on_holdout, fairness_regressions
from healthpredict.schema import TARGET_COLUMN

pytestmark = pytest.mark.unit

THRESHOLD = 0.5


@dataclass(frozen=True)
class Scorer:
    """A model stand-in: its scores are a column of the holdout."""

    column: str
    threshold: float = THRESHOLD

    def predict_proba(self, frame: pd.DataFrame) -> np.ndarray:
        return frame[self.column].to_numpy()


def holdout(seed: int = 5, patients: int = 2500) -> pd.DataFrame:
    """Encounters of ``patients`` (1 to 3 each) with three sets of scores:

    * ``champion``: misses 25% of readmissions in every group;
    * ``noisy``: the champion's decisions with fresh scores, each positive missed with the same 25% chance
      independently of the champion (equal in expectation, different row by row);
    * ``shifted``: the champion, but missing 45% of the readmissions of female patients."""
    rng = np.random.default_rng(seed)
    visits = rng.integers(1, 4, patients)
    n = int(visits.sum())
    frame = pd.DataFrame(
        {
            "patient_nbr": np.repeat(np.arange(patients), visits),
            "race": np.repeat(rng.choice(["Caucasian", "AfricanAmerican"], patients, p=[0.75, 0.25]), visits),
            "gender": np.repeat(rng.choice(["Female", "Male"], patients), visits),
            "age": np.repeat(rng.choice(["[40-50)", "[70-80)"], patients), visits),
            TARGET_COLUMN: np.repeat((rng.random(patients) < 0.4).astype(int), visits),
        }
    ).astype({"race": object, "gender": object, "age": object})
    positive = frame[TARGET_COLUMN].to_numpy() == 1
    female = frame["gender"].to_numpy() == "Female"

    def scores(miss_rate: np.ndarray) -> np.ndarray:
        missed = rng.random(n) < miss_rate
        caught = positive & ~missed
        return np.where(caught, rng.uniform(0.55, 1.0, n), rng.uniform(0.0, 0.45, n))

    frame["champion"] = scores(np.full(n, 0.25))
    frame["noisy"] = scores(np.full(n, 0.25))
    frame["shifted"] = np.where(
        female & positive & (rng.random(n) < 0.2 / 0.75) & (frame["champion"] >= THRESHOLD),
        rng.uniform(0.0, 0.45, n),
        frame["champion"],
    )  # 25% + 75% x 0.2/0.75 = 45% missed among female positives
    return frame


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    return holdout()


def compare(frame: pd.DataFrame, challenger: str, tolerance: float, tmp_path_factory: pytest.TempPathFactory):
    settings = make_settings(tmp_path_factory.mktemp("gate-home"), HEALTHPREDICT_AUDIT_MIN_GROUP_ROWS="50")
    weights = patient_weights(frame["patient_nbr"].to_numpy(), rounds=200, seed=3)
    champion = evaluate_on_holdout(Scorer("champion"), frame, settings, weights)  # type: ignore[arg-type]
    other = evaluate_on_holdout(Scorer(challenger), frame, settings, weights)  # type: ignore[arg-type]
    return fairness_regressions(other, champion, tolerance), other, champion


def test_a_challenger_as_fair_as_the_champion_passes_despite_noise(
    frame: pd.DataFrame, tmp_path_factory: pytest.TempPathFactory
) -> None:
    worse, noisy, champion = compare(frame, "noisy", 0.0, tmp_path_factory)
    assert worse == [], f"refused on noise alone: {worse}"
    # The noise is real: the two models' gaps differ round by round, in both directions.
    difference = noisy.fnr_gap_rounds["gender"] - champion.fnr_gap_rounds["gender"]
    assert (difference > 0.01).mean() > 0.1 and (difference < -0.01).mean() > 0.1


def test_a_challenger_that_misses_more_of_one_group_is_refused(
    frame: pd.DataFrame, tmp_path_factory: pytest.TempPathFactory
) -> None:
    worse, shifted, champion = compare(frame, "shifted", 0.05, tmp_path_factory)
    assert [attribute for attribute, *_ in worse] == ["gender"]
    ((_, gap, base, low),) = worse
    assert gap == pytest.approx(shifted.fnr_gaps["gender"]) and base == pytest.approx(champion.fnr_gaps["gender"])
    assert 0.1 < gap - base < 0.3 and 0.05 < low < gap - base  # about 0.2 worse; the bound is below the estimate
    # Within a tolerance larger than the shift, the same challenger passes.
    assert compare(frame, "shifted", 0.4, tmp_path_factory)[0] == []


def test_a_model_against_itself_passes_at_zero_tolerance(
    frame: pd.DataFrame, tmp_path_factory: pytest.TempPathFactory
) -> None:
    assert compare(frame, "champion", 0.0, tmp_path_factory)[0] == []
