"""The subgroup audit: point estimates equal fairlearn's MetricFrame and scikit-learn, the patient bootstrap
resamples patients, gaps compare only groups large enough."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from fairlearn.metrics import MetricFrame, false_negative_rate, false_positive_rate, selection_rate
from sklearn.metrics import brier_score_loss, roc_auc_score

from healthpredict.audit import (
    METRICS,
    gap_samples,
    patient_weights,
    sensitive_groups,
    subgroup_audit,
    subgroup_figure,
    weighted_calibration_error,
)
from healthpredict.evaluate import calibration_error

pytestmark = pytest.mark.unit


def make_frame(n: int = 3000, seed: int = 1) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    race = rng.choice(["Caucasian", "AfricanAmerican", "Hispanic", "Asian", "Other", None], n,
                      p=[0.7, 0.18, 0.04, 0.02, 0.03, 0.03])  # fmt: skip
    frame = pd.DataFrame(
        {
            "race": pd.Series(race, dtype=object),
            "gender": rng.choice(["Female", "Male"], n),
            "age": rng.choice([f"[{a}-{a + 10})" for a in range(0, 100, 10)], n),
            "patient_nbr": rng.integers(0, n // 2, n),  # about two encounters per patient
        }
    )
    labels = rng.integers(0, 2, n)
    scores = np.clip(0.35 * labels + rng.normal(0.35, 0.2, n), 0.001, 0.999).round(3)  # ties on purpose
    return frame, labels, scores


def test_groups_follow_the_documented_rules() -> None:
    frame = pd.DataFrame(
        {
            "race": [None, "Hispanic", "Asian", "Caucasian"],
            "gender": ["Male", "Female", None, "Male"],
            "age": ["[30-40)", "[40-50)", "[70-80)", "[90-100)"],
        }
    )
    groups = sensitive_groups(frame)
    assert groups["race"].tolist() == ["missing", "Other", "Other", "Caucasian"]
    assert groups["gender"].tolist() == ["Male", "Female", "missing", "Male"]
    assert groups["age_band"].tolist() == ["<40", "40-59", "60-79", "80+"]


def test_point_estimates_equal_fairlearn_and_sklearn() -> None:
    frame, labels, scores = make_frame()
    threshold = 0.5
    audit = subgroup_audit(frame, labels, scores, threshold, rounds=0)
    flagged = (scores >= threshold).astype(int)
    for attribute, groups in sensitive_groups(frame).items():
        frame_metrics = MetricFrame(
            metrics={
                "selection_rate": selection_rate,
                "false_negative_rate": false_negative_rate,
                "false_positive_rate": false_positive_rate,
            },
            y_true=labels,
            y_pred=flagged,
            sensitive_features=groups.to_numpy(dtype=str),
        )
        by_group = frame_metrics.by_group
        for result in (g for g in audit.groups if g.attribute == attribute):
            expected = by_group.loc[result.group]
            for metric in ("selection_rate", "false_negative_rate", "false_positive_rate"):
                assert result.values[metric] == pytest.approx(expected[metric], abs=1e-12), (attribute, metric)
            rows = (groups == result.group).to_numpy()
            assert result.rows == rows.sum()
            assert result.values["roc_auc"] == pytest.approx(roc_auc_score(labels[rows], scores[rows]), abs=1e-12)
            assert result.values["brier"] == pytest.approx(brier_score_loss(labels[rows], scores[rows]), abs=1e-12)
            assert result.values["prevalence"] == pytest.approx(labels[rows].mean())
    gap = next(g for g in audit.gaps() if (g.attribute, g.metric) == ("race", "false_negative_rate"))
    fnr = frame_metrics_for(frame, labels, flagged, "race")
    assert gap.largest_gap == pytest.approx(fnr.max() - fnr.min())
    assert gap.smallest_ratio == pytest.approx(fnr.min() / fnr.max())


def frame_metrics_for(frame: pd.DataFrame, labels: np.ndarray, flagged: np.ndarray, attribute: str) -> pd.Series:
    groups = sensitive_groups(frame)[attribute].to_numpy(dtype=str)
    return MetricFrame(metrics=false_negative_rate, y_true=labels, y_pred=flagged, sensitive_features=groups).by_group


def test_calibration_error_by_hand() -> None:
    scores = np.repeat(np.linspace(0.05, 0.95, 10), 10)
    labels = np.zeros(100)
    labels[::10] = 1  # 10% positives in every bin
    expected = np.mean(np.abs(np.linspace(0.05, 0.95, 10) - 0.1))
    assert calibration_error(labels, scores) == pytest.approx(expected)
    perfect = np.r_[np.zeros(50), np.ones(50)]
    assert calibration_error(perfect, perfect) == pytest.approx(0.0)
    # integer weights equal repeated rows
    w = np.arange(1, 101, dtype=float)[None, :] % 3 + 1
    repeated = np.repeat(np.arange(100), w[0].astype(int))
    weighted = weighted_calibration_error(w, labels, scores)[0]
    assert weighted == pytest.approx(calibration_error(labels[repeated], scores[repeated]), abs=0.02)


def test_bootstrap_resamples_whole_patients_and_brackets_the_estimate() -> None:
    frame, labels, scores = make_frame()
    weights = patient_weights(frame["patient_nbr"].to_numpy(), rounds=50, seed=3)
    same_patient = frame.groupby("patient_nbr").indices
    for rows in list(same_patient.values())[:200]:
        assert (weights[:, rows] == weights[:, rows[:1]]).all()  # a patient's encounters are drawn together
    assert np.allclose(weights.sum(axis=1) / len(frame), 1.0, atol=0.1)
    audit = subgroup_audit(frame, labels, scores, 0.5, rounds=200, seed=0)
    again = subgroup_audit(frame, labels, scores, 0.5, rounds=200, seed=0)
    assert audit.as_records() == again.as_records()  # seeded
    for group in audit.groups:
        if group.rows >= 300:
            for metric in METRICS:
                assert group.ci_low[metric] <= group.values[metric] <= group.ci_high[metric], (group.group, metric)


def test_small_groups_are_shown_but_not_compared() -> None:
    frame, labels, scores = make_frame()
    audit = subgroup_audit(frame, labels, scores, 0.5, rounds=0, min_group_rows=100)
    small = {g.group for g in audit.groups if g.attribute == "race" and not g.compared}
    assert small == {"missing"}  # about 3% of 3000 rows
    gap = next(g for g in audit.gaps() if (g.attribute, g.metric) == ("race", "false_negative_rate"))
    assert "missing" not in gap.groups
    metrics = audit.as_metrics("test_")
    assert metrics["test_race_false_negative_rate_gap"] == gap.largest_gap


def test_mismatched_lengths_are_refused() -> None:
    frame, labels, scores = make_frame(100)
    with pytest.raises(ValueError, match="one label and score per row"):
        subgroup_audit(frame, labels[:-1], scores, 0.5)


def clustered_frame(rng: np.random.Generator, patients: int) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """Synthetic encounters with a known false-negative rate in each gender: 1 to 3 encounters per patient, a
    patient's encounters sharing their label and, for a positive, whether the model misses them (so rows are
    correlated within a patient, which only a patient bootstrap accounts for). Positives are missed with
    probability 0.3 for Female and 0.2 for Male."""
    visits = rng.integers(1, 4, patients)
    patient = np.repeat(np.arange(patients), visits)
    gender = np.repeat(rng.choice(["Female", "Male"], patients), visits)
    label = np.repeat(rng.random(patients) < 0.4, visits).astype(int)
    miss_rate = np.where(gender == "Female", 0.3, 0.2)
    missed = np.repeat(rng.random(patients), visits) < miss_rate
    scores = np.where(label & ~missed, rng.uniform(0.55, 1.0, len(patient)), rng.uniform(0.0, 0.45, len(patient)))
    frame = pd.DataFrame({"race": "Caucasian", "gender": gender, "age": "[60-70)", "patient_nbr": patient}).astype(
        {"race": object}
    )
    return frame, label, scores


def independent_patient_bootstrap(
    frame: pd.DataFrame, labels: np.ndarray, scores: np.ndarray, group: str, rng: np.random.Generator, rounds: int
) -> tuple[float, float]:
    """The 95% percentile interval of one gender's FNR, resampling patients with plain numpy (no project code)."""
    rows_of = frame.groupby("patient_nbr").indices
    patients = np.array(list(rows_of))
    values = []
    for _ in range(rounds):
        rows = np.concatenate([rows_of[p] for p in rng.choice(patients, len(patients))])
        rows = rows[frame["gender"].to_numpy()[rows] == group]
        positive = labels[rows] == 1
        values.append(float(np.mean(scores[rows][positive] < 0.5)))
    low, high = np.percentile(values, [2.5, 97.5])
    return float(low), float(high)


def test_intervals_cover_the_known_rate_and_match_an_independent_patient_bootstrap() -> None:
    """95% intervals: they cover the true FNR about 95% of the time over repeated synthetic holdouts, and are as
    wide as a patient bootstrap written independently of the project's code."""
    rng = np.random.default_rng(2026)
    truth = {"Female": 0.3, "Male": 0.2}
    covered, datasets = {g: 0 for g in truth}, 80
    for index in range(datasets):
        frame, labels, scores = clustered_frame(rng, patients=400)
        audit = subgroup_audit(frame, labels, scores, 0.5, rounds=200, seed=index, min_group_rows=10)
        for group in audit.groups:
            if group.attribute == "gender":
                low, high = group.ci_low["false_negative_rate"], group.ci_high["false_negative_rate"]
                covered[group.group] += low <= truth[group.group] <= high
    for group, hits in covered.items():
        assert 0.88 <= hits / datasets <= 1.0, f"{group}: the 95% interval covered the true FNR {hits}/{datasets}"

    frame, labels, scores = clustered_frame(np.random.default_rng(7), patients=1500)
    audit = subgroup_audit(frame, labels, scores, 0.5, rounds=400, seed=1, min_group_rows=10)
    for group in audit.groups:
        if group.attribute != "gender":
            continue
        low, high = group.ci_low["false_negative_rate"], group.ci_high["false_negative_rate"]
        ref_low, ref_high = independent_patient_bootstrap(
            frame, labels, scores, group.group, np.random.default_rng(11), rounds=400
        )
        assert abs((high - low) / (ref_high - ref_low) - 1) < 0.2, (group.group, (low, high), (ref_low, ref_high))
        assert abs(low - ref_low) < 0.02 and abs(high - ref_high) < 0.02, (group.group, (low, high))


def test_gap_samples_compare_only_large_groups_round_by_round() -> None:
    """The largest gap between groups of at least ``min_group_rows`` rows, as a point estimate and per round of the
    shared draw; a round where fewer than two groups define the metric is NaN, and so is everything when fewer
    than two groups are large enough."""
    groups = pd.Series(["a"] * 6 + ["b"] * 6 + ["c"] * 2, dtype=object)
    labels = np.array([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 0, 0], [1, 1]], dtype=object)
    labels = np.concatenate(labels).astype(int)  # groups a, b, c
    scores = np.concatenate([[0.9, 0.9, 0.1, 0.1, 0.1, 0.9], [0.9, 0.9, 0.9, 0.1, 0.1, 0.1], [0.1, 0.1]])
    # FNR: a misses 2 of 4 positives (0.5), b 1 of 4 (0.25), c (too small) 2 of 2.
    weights = np.vstack([np.ones(14), np.r_[np.ones(6), [1, 0, 0, 0, 1, 1], np.ones(2)], np.r_[np.ones(12), 0, 0]])
    point, rounds = gap_samples(groups, labels, scores, 0.5, weights, "false_negative_rate", min_group_rows=3)
    assert point == pytest.approx(0.25)
    # round 0: as the point; round 1: b keeps one positive, which it catches (FNR 0), gap 0.5; round 2: as round 0
    assert rounds.tolist() == pytest.approx([0.25, 0.5, 0.25])
    with_c, _ = gap_samples(groups, labels, scores, 0.5, weights, "false_negative_rate", min_group_rows=2)
    assert with_c == pytest.approx(0.75)  # c (FNR 1.0) now compared
    no_b_positive = np.vstack([np.r_[np.ones(6), [0, 0, 0, 0, 1, 1], np.ones(2)]])
    _, undefined = gap_samples(groups, labels, scores, 0.5, no_b_positive, "false_negative_rate", 3)
    assert np.isnan(undefined).all()  # b defines no FNR in that round: one group is no gap
    alone, none = gap_samples(groups, labels, scores, 0.5, weights, "false_negative_rate", min_group_rows=7)
    assert np.isnan(alone) and none.shape == (3,) and np.isnan(none).all()


def test_the_gap_of_an_attribute_and_metric_is_looked_up() -> None:
    frame, labels, scores = make_frame()
    audit = subgroup_audit(frame, labels, scores, 0.5, rounds=0, min_group_rows=100)
    for gap in audit.gaps():
        assert audit.gap(gap.attribute, gap.metric) == gap.largest_gap
    gender = [g for g in audit.groups if g.attribute == "gender"]
    fnr = [g.values["false_negative_rate"] for g in gender]
    assert audit.gap("gender", "false_negative_rate") == pytest.approx(max(fnr) - min(fnr))
    assert audit.gap("gender", "no_such_metric") is None


def test_the_figure_shows_each_group_with_its_interval() -> None:
    frame, labels, scores = make_frame()
    audit = subgroup_audit(frame, labels, scores, 0.5, rounds=50, seed=0, min_group_rows=100)
    figure = subgroup_figure(audit, "false_negative_rate", "test split")
    axes = figure.get_axes()
    assert [ax.get_title() for ax in axes] == ["race", "gender", "age_band"]
    assert axes[0].get_ylabel() == "false negative rate"
    assert figure._suptitle is not None
    assert figure._suptitle.get_text() == "false negative rate by group at threshold 0.500 — test split"
    for ax, attribute in zip(axes, ("race", "gender", "age_band"), strict=True):
        groups = [g for g in audit.groups if g.attribute == attribute]
        bars = ax.patches
        assert [b.get_height() for b in bars] == pytest.approx([g.values["false_negative_rate"] for g in groups])
        grey = [b.get_facecolor() == pytest.approx((0.498, 0.498, 0.498, 1.0), abs=0.01) for b in bars]
        assert grey == [not g.compared for g in groups]
        labels_shown = [t.get_text() for t in ax.get_xticklabels()]
        assert labels_shown == [f"{g.group}\n({g.rows})" for g in groups]
        (error_bars,) = [c for c in ax.containers if type(c).__name__ == "ErrorbarContainer"]
        segments = error_bars.lines[2][0].get_segments()
        for segment, g in zip(segments, groups, strict=True):
            low, high = sorted(point[1] for point in segment)
            assert low == pytest.approx(g.ci_low["false_negative_rate"]) and high == pytest.approx(
                g.ci_high["false_negative_rate"]
            )
