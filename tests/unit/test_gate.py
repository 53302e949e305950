"""The promotion gate's fairness check on a synthetic holdout whose answer is known.

Both models are scored on the same patients and resampled with the same patient draw, as ``gate_challenger``
does. A challenger as fair as the champion but not identical to it (its scores carry noise, so its bootstrap
rounds differ from the champion's) must pass: only noise separates them. A challenger that misses more of one
group's readmissions must be refused, with the attribute named.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from conftest import make_settings, raw_frame
from mlflow import MlflowClient
from sklearn.metrics import roc_auc_score

from healthpredict.audit import patient_weights
from healthpredict.features import clean_encounters, model_inputs
from healthpredict.gate import HoldoutResult, evaluate_on_holdout, fairness_regressions, gate_challenger
from healthpredict.modeling import build_pipeline
from healthpredict.registry import (
    RegistryError,
    configure_tracking,
    log_pipeline,
    register_challenger,
    set_champion,
)
from healthpredict.schema import TARGET_COLUMN, coerce_types
from healthpredict.settings import Settings

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


def test_the_auc_is_the_holdouts_roc_auc(frame: pd.DataFrame, tmp_path_factory: pytest.TempPathFactory) -> None:
    _, noisy, champion = compare(frame, "noisy", 0.0, tmp_path_factory)
    assert champion.auc == pytest.approx(roc_auc_score(frame[TARGET_COLUMN], frame["champion"]))
    assert noisy.auc == pytest.approx(roc_auc_score(frame[TARGET_COLUMN], frame["noisy"]))


def paired(challenger_gap: float, champion_gap: float, differences: np.ndarray) -> tuple[HoldoutResult, HoldoutResult]:
    """Two results whose paired bootstrap differences (challenger − champion) are exactly ``differences``."""
    base = np.full(len(differences), champion_gap)
    return (
        HoldoutResult(0.7, {"gender": challenger_gap}, {"gender": base + differences}),
        HoldoutResult(0.7, {"gender": champion_gap}, {"gender": base}),
    )


def test_the_lower_bound_is_the_5th_percentile_of_the_paired_differences() -> None:
    differences = np.arange(101) / 1000  # 0.000 ... 0.100: the 5th percentile is 0.005, the 6th 0.006
    challenger, champion = paired(0.15, 0.10, differences)
    assert fairness_regressions(challenger, champion, 0.0055) == []
    ((attribute, gap, base, low),) = fairness_regressions(challenger, champion, 0.0045)
    assert (attribute, gap, base) == ("gender", 0.15, 0.10) and low == pytest.approx(0.005)


def test_without_defined_rounds_the_point_difference_decides() -> None:
    challenger, champion = paired(0.30, 0.10, np.full(50, np.nan))  # no round defines both gaps
    assert fairness_regressions(challenger, champion, 0.25) == []  # 0.20 worse: within 0.25
    ((_, _, _, low),) = fairness_regressions(challenger, champion, 0.15)
    assert low == pytest.approx(0.20)


def test_an_attribute_the_champion_cannot_measure_is_skipped_not_the_rest() -> None:
    challenger = HoldoutResult(
        0.7, {"age_band": 0.5, "gender": 0.5}, {"age_band": np.full(20, 0.5), "gender": np.full(20, 0.5)}
    )
    champion = HoldoutResult(0.7, {"gender": 0.1}, {"gender": np.full(20, 0.1)})
    assert [attribute for attribute, *_ in fairness_regressions(challenger, champion, 0.1)] == ["gender"]


# -- the gate on a registry: versions, aliases and the recorded decision -----------------------------------------


def labelled_encounters(n: int, seed: int) -> pd.DataFrame:
    """Typed encounters whose readmission depends on prior inpatient stays and the length of stay."""
    frame, _ = clean_encounters(coerce_types(raw_frame(n, seed=seed)))
    rng = np.random.default_rng(seed)
    signal = frame["number_inpatient"] + frame["time_in_hospital"] / 4 + rng.normal(0, 1, len(frame))
    return frame.assign(
        race=rng.choice(["Caucasian", "AfricanAmerican"], len(frame)),
        gender=rng.choice(["Female", "Male"], len(frame)),
        **{TARGET_COLUMN: (signal > np.median(signal)).astype(int)},
    )


@pytest.fixture
def registry(tmp_path: Path) -> Settings:
    settings = make_settings(tmp_path / "home", HEALTHPREDICT_AUDIT_MIN_GROUP_ROWS="20")
    configure_tracking(settings)
    return settings


def register(settings: Settings, train: pd.DataFrame, shuffled: bool = False) -> str:
    """A logistic regression on ``train`` (on its labels shuffled: no signal), registered as the challenger."""
    labels = train[TARGET_COLUMN].to_numpy()
    labels = np.random.default_rng(1).permutation(labels) if shuffled else labels
    pipeline = build_pipeline("logreg", {"C": 0.5}, seed=0).fit(model_inputs(train), labels)
    with mlflow.start_run():
        info = log_pipeline(pipeline, train.head(20), {"threshold": 0.5, "family": "logreg"})
    return str(register_challenger(settings, info.model_uri, {}).version)


def tags(settings: Settings, version: str) -> dict[str, str]:
    return dict(MlflowClient().get_model_version(settings.tracking.model_name, version).tags)


def test_the_gate_records_its_verdict_and_every_number_on_the_challenger(registry: Settings) -> None:
    settings = registry
    train, holdout = labelled_encounters(800, seed=1), labelled_encounters(600, seed=2)

    first = register(settings, train)
    decision = gate_challenger(settings, holdout)
    assert decision.passed and decision.reason == "no champion yet" and decision.champion_version is None
    recorded = tags(settings, first)
    assert recorded["gate.decision"] == "passed" and recorded["gate.champion_auc"] == ""
    assert recorded["gate.champion_version"] == "" and recorded["gate.reason"] == "no champion yet"
    assert recorded["gate.holdout_rows"] == str(len(holdout)) and recorded["gate.tolerance"] == "0.01"
    set_champion(settings, first)

    again = gate_challenger(settings, holdout)  # the challenger alias still names the champion's version
    assert again.passed and again.reason == "challenger is already the champion"
    assert again.champion_auc == again.challenger_auc

    second = register(settings, train, shuffled=True)
    refused = gate_challenger(settings, holdout)
    assert not refused.passed and refused.challenger_version == second and refused.champion_version == first
    assert refused.champion_auc is not None and refused.champion_auc > refused.challenger_auc + 0.1
    assert refused.reason.startswith(
        f"challenger AUC {refused.challenger_auc:.4f} is worse than champion AUC {refused.champion_auc:.4f} "
        "(tolerance 0.01); its largest false-negative-rate gap by "
    )  # inaccurate and, here, less fair too: both reasons, in that order
    recorded = tags(settings, second)
    assert recorded["gate.decision"] == "refused" and recorded["gate.reason"] == refused.reason
    assert recorded["gate.challenger_auc"] == f"{refused.challenger_auc:.6f}"
    assert recorded["gate.champion_auc"] == f"{refused.champion_auc:.6f}" and recorded["gate.champion_version"] == first
    assert recorded["gate.fnr_gap_tolerance"] == str(settings.gates.fnr_gap_tolerance)
    for attribute in ("race", "gender", "age_band"):
        assert recorded[f"gate.challenger_fnr_gap.{attribute}"] == f"{refused.challenger_fnr_gaps[attribute]:.6f}"
        assert recorded[f"gate.champion_fnr_gap.{attribute}"] == f"{refused.champion_fnr_gaps[attribute]:.6f}"
    assert "gate.decision" not in tags(settings, first) or tags(settings, first)["gate.decision"] == "passed"
    assert gate_challenger(settings, holdout).reason == refused.reason, "the bootstrap is seeded: same verdict"
    lenient = replace(settings, gates=replace(settings.gates, fnr_gap_tolerance=1.0))
    inaccurate_only = gate_challenger(lenient, holdout)
    assert not inaccurate_only.passed and "false-negative-rate" not in inaccurate_only.reason

    third = register(settings, train)  # the champion's model again: exactly as accurate, as fair
    strict = replace(settings, gates=replace(settings.gates, tolerance=0.0, fnr_gap_tolerance=0.0))
    passed = gate_challenger(strict, holdout)
    assert passed.passed and passed.challenger_version == third and passed.challenger_auc == passed.champion_auc
    assert passed.reason == (
        f"challenger AUC {passed.challenger_auc:.4f} is within tolerance of or better than champion AUC "
        f"{passed.champion_auc:.4f} (tolerance 0.0)"
    )


def test_the_gate_needs_a_challenger(registry: Settings) -> None:
    with pytest.raises(RegistryError, match="has no 'challenger' alias"):
        gate_challenger(registry, labelled_encounters(50, seed=3))
