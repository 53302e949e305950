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
    GroupResult,
    SubgroupAudit,
    calibration_bins,
    gap_samples,
    patient_weights,
    sensitive_groups,
    subgroup_audit,
    subgroup_figure,
    weighted_calibration_error,
    weighted_metrics,
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


def test_unknown_races_and_unparsable_ages_have_their_own_group() -> None:
    """A race outside the documented list counts as Other; an age that is not a ``[a-b)`` band is missing. Each
    age band starts where the previous one ends, and categorical columns group like plain strings."""
    frame = pd.DataFrame(
        {
            "race": ["Martian", "AfricanAmerican", "Caucasian", None, "Other", "Asian", "Caucasian", "Hispanic"],
            "gender": ["Female", "Male", "Unknown/Invalid", "Female", None, "Male", "Female", "Male"],
            "age": ["?", None, "[0-10)", "[50-60)", "[60-70)", "[80-90)", "[20-30)", "[39-40)"],
        }
    )
    expected = {
        "race": ["Other", "AfricanAmerican", "Caucasian", "missing", "Other", "Other", "Caucasian", "Other"],
        "gender": ["Female", "Male", "Unknown/Invalid", "Female", "missing", "Male", "Female", "Male"],
        "age_band": ["missing", "missing", "<40", "40-59", "60-79", "80+", "<40", "<40"],
    }
    for columns in (frame, frame.astype("category")):
        groups = sensitive_groups(columns)
        assert list(groups) == ["race", "gender", "age_band"]
        assert {attribute: series.tolist() for attribute, series in groups.items()} == expected
        assert all(series.dtype == object for series in groups.values())
        assert all(series.index.equals(frame.index) for series in groups.values())


def test_calibration_bins_hold_equal_counts_and_put_a_score_on_an_edge_above_it() -> None:
    # 100 distinct scores: 10 bins of 10 consecutive scores each
    scores = np.arange(100) / 100
    assert calibration_bins(scores).tolist() == np.repeat(np.arange(10), 10).tolist()
    # quantile edges of 0..4 in 4 bins are exactly 1, 2, 3: a score equal to an edge opens the next bin
    assert calibration_bins(np.arange(5.0), bins=4).tolist() == [0, 1, 2, 3, 3]
    assert calibration_bins(np.arange(8.0)[::-1], bins=2).tolist() == [1, 1, 1, 1, 0, 0, 0, 0]
    # tied scores share a bin (edges 0.2, 0.35, 0.55: the ties at 0.2 all above the first edge)
    tied = calibration_bins(np.array([0.2, 0.2, 0.2, 0.2, 0.5, 0.5, 0.7, 0.9]), bins=4)
    assert tied.tolist() == [1, 1, 1, 1, 2, 2, 3, 3]


#: Four rows (labels 1, 1, 0, 0; scores 0.8, 0.5, 0.5, 0.2, threshold 0.5: the three top rows flagged) and four
#: weight rows: all ones; row 0 twice and row 2 absent; only the negatives; none at all.
SMALL_LABELS = np.array([1, 1, 0, 0])
SMALL_SCORES = np.array([0.8, 0.5, 0.5, 0.2])
SMALL_WEIGHTS = np.array([[1, 1, 1, 1], [2, 1, 0, 1], [0, 0, 1, 1], [0, 0, 0, 0]])
NAN = float("nan")
SMALL_EXPECTED = {
    "prevalence": [2 / 4, 3 / 4, 0 / 2, NAN],
    "selection_rate": [3 / 4, 3 / 4, 1 / 2, NAN],  # a score equal to the threshold is flagged
    "false_negative_rate": [0 / 2, 0 / 3, NAN, NAN],
    "false_positive_rate": [1 / 2, 0 / 1, 1 / 2, NAN],
    "brier": [(0.04 + 0.25 + 0.25 + 0.04) / 4, (2 * 0.04 + 0.25 + 0.04) / 4, (0.25 + 0.04) / 2, NAN],
    # quantile bins: {0.2}, {0.5, 0.5}, {0.8}; |positives - sum of scores| per bin over the weight
    "calibration_error": [(0.2 + 0 + 0.2) / 4, (0.2 + 0.5 + 0.4) / 4, (0.2 + 0.5 + 0) / 2, NAN],
    # pairs (0.8, 0.5) (0.8, 0.2) (0.5, 0.5: a tie, half) (0.5, 0.2); weighted: every positive above the negative
    "roc_auc": [3.5 / 4, 1.0, NAN, NAN],
}


@pytest.mark.filterwarnings("error")
def test_weighted_metrics_equal_a_hand_computation_and_are_nan_where_undefined() -> None:
    got = weighted_metrics(SMALL_WEIGHTS, SMALL_LABELS, SMALL_SCORES, threshold=0.5)
    assert set(got) == set(METRICS)
    for metric, expected in SMALL_EXPECTED.items():
        assert got[metric].tolist() == pytest.approx(expected, nan_ok=True), metric
    above = weighted_metrics(SMALL_WEIGHTS[:1], SMALL_LABELS, SMALL_SCORES, threshold=0.51)
    assert above["selection_rate"].tolist() == [1 / 4] and above["false_negative_rate"].tolist() == [1 / 2]


def brute_force_auc(weights: np.ndarray, labels: np.ndarray, scores: np.ndarray) -> float:
    """Weighted share of (positive, negative) pairs ranked right, ties half, by looping over every pair."""
    right = pairs = 0.0
    for i in np.flatnonzero(labels == 1):
        for j in np.flatnonzero(labels == 0):
            pair = weights[i] * weights[j]
            pairs += pair
            right += pair * (1.0 if scores[i] > scores[j] else 0.5 if scores[i] == scores[j] else 0.0)
    return right / pairs


def test_weighted_auc_of_each_round_equals_a_pairwise_count() -> None:
    rng = np.random.default_rng(4)
    labels = rng.integers(0, 2, 60)
    scores = rng.choice([0.1, 0.2, 0.3, 0.4, 0.6, 0.9], 60)  # many ties
    weights = rng.integers(0, 4, (5, 60)).astype(float)
    got = weighted_metrics(weights, labels, scores, 0.5)["roc_auc"]
    assert got.tolist() == pytest.approx([brute_force_auc(w, labels, scores) for w in weights])
    assert got[0] == pytest.approx(roc_auc_score(labels, scores, sample_weight=weights[0]))


def test_one_positive_and_one_negative_make_an_auc() -> None:
    """A round whose only pair is one positive and one negative has an AUC (1, 0.5 or 0), not NaN; a round without a
    positive has none."""
    labels, scores = np.array([1, 0, 0]), np.array([0.8, 0.3, 0.6])
    weights = np.array([[1.0, 1.0, 0.0], [1.0, 0.0, 1.0], [0.0, 1.0, 1.0], [0.5, 1.0, 0.0]])
    assert weighted_metrics(weights, labels, scores, 0.5)["roc_auc"].tolist() == pytest.approx(
        [1.0, 1.0, NAN, 1.0], nan_ok=True
    )
    tied = weighted_metrics(np.ones((1, 2)), np.array([1, 0]), np.array([0.4, 0.4]), 0.5)["roc_auc"]
    assert tied.tolist() == [0.5]


def test_patient_weights_draw_as_many_patients_as_there_are_each_round() -> None:
    patients = np.array(["p7", "p3", "p7", "p9", "p1", "p3", "p3", "p5"])  # 5 patients, any ids
    weights = patient_weights(patients, rounds=300, seed=1)
    assert weights.shape == (300, 8) and weights.dtype == np.float64
    first_row = [list(patients).index(p) for p in ("p1", "p3", "p5", "p7", "p9")]
    drawn = weights[:, first_row]  # times each patient was drawn, per round
    assert (drawn.sum(axis=1) == 5).all()
    assert (drawn > 0).any(axis=0).all()  # every patient can be drawn, the first and the last included
    assert drawn.mean() == pytest.approx(1.0, abs=0.1)
    assert (weights[:, 1] == weights[:, 5]).all() and (weights[:, 1] == weights[:, 6]).all()
    assert np.array_equal(patient_weights(patients, rounds=300, seed=1), weights)
    assert not np.array_equal(patient_weights(patients, rounds=300, seed=2), weights)
    single = patient_weights(np.array([4, 4, 4]), rounds=3, seed=0)
    assert single.tolist() == [[1.0, 1.0, 1.0]] * 3  # one patient, drawn once a round


def group_result(attribute: str, group: str, rows: int, compared: bool, **values: float) -> GroupResult:
    filled = {metric: values.get(metric, NAN) for metric in METRICS}
    low = {metric: value - 0.1 for metric, value in filled.items()}
    high = {metric: value + 0.2 for metric, value in filled.items()}
    return GroupResult(attribute, group, rows, compared, filled, low, high)


def made_audit() -> SubgroupAudit:
    return SubgroupAudit(
        threshold=0.4,
        rows=400,
        rounds=20,
        min_group_rows=50,
        groups=[
            group_result("race", "Caucasian", 200, True, false_negative_rate=0.3, roc_auc=0.7, prevalence=0.0),
            group_result("race", "AfricanAmerican", 120, True, false_negative_rate=0.45, roc_auc=0.6, prevalence=0),
            group_result("race", "missing", 10, False, false_negative_rate=0.9, roc_auc=0.2),
            group_result("race", "Other", 70, True, false_negative_rate=0.4, roc_auc=NAN, prevalence=0.0),
            group_result("gender", "Female", 250, True, false_negative_rate=0.2, brier=0.1),
            group_result("gender", "Male", 150, True, false_negative_rate=NAN, brier=0.25),
            group_result("age_band", "60-79", 400, True, false_negative_rate=0.5),
        ],
    )


def test_gaps_compare_defined_values_of_compared_groups_and_name_the_extremes() -> None:
    gaps = made_audit().gaps()
    assert [(g.attribute, g.metric) for g in gaps] == [
        ("race", "prevalence"),
        ("race", "roc_auc"),
        ("race", "false_negative_rate"),
        ("gender", "brier"),
    ]
    by_key = {(g.attribute, g.metric): g for g in gaps}
    fnr = by_key["race", "false_negative_rate"]  # 0.3 .. 0.45; the small group's 0.9 is shown, not compared
    assert fnr.largest_gap == pytest.approx(0.15) and fnr.smallest_ratio == pytest.approx(0.3 / 0.45)
    assert fnr.groups == ("Caucasian", "AfricanAmerican")
    auc = by_key["race", "roc_auc"]  # Other's NaN is left out
    assert auc.largest_gap == pytest.approx(0.1) and auc.groups == ("AfricanAmerican", "Caucasian")
    prevalence = by_key["race", "prevalence"]  # all zero: no gap, and no ratio of zeros
    assert prevalence.largest_gap == 0.0 and np.isnan(prevalence.smallest_ratio)
    brier = by_key["gender", "brier"]
    assert brier.largest_gap == pytest.approx(0.15) and brier.smallest_ratio == pytest.approx(0.4)
    assert brier.groups == ("Female", "Male")


def test_metrics_name_each_gap_and_ratio_with_the_prefix() -> None:
    metrics = made_audit().as_metrics("test_")
    assert metrics == pytest.approx(
        {
            "test_race_prevalence_gap": 0.0,
            "test_race_roc_auc_gap": 0.1,
            "test_race_roc_auc_ratio": 0.6 / 0.7,
            "test_race_false_negative_rate_gap": 0.15,
            "test_race_false_negative_rate_ratio": 0.3 / 0.45,
            "test_gender_brier_gap": 0.15,
            "test_gender_brier_ratio": 0.4,
        }
    )
    assert "batch_gender_brier_gap" in made_audit().as_metrics("batch_")


def test_records_hold_one_flat_row_per_group_with_every_metric_and_interval() -> None:
    audit = made_audit()
    records = audit.as_records()
    assert len(records) == len(audit.groups)
    first = records[0]
    assert list(first)[:4] == ["attribute", "group", "rows", "compared"]
    assert list(first)[4:] == [name for metric in METRICS for name in (metric, f"{metric}_ci_low", f"{metric}_ci_high")]
    assert (first["attribute"], first["group"], first["rows"], first["compared"]) == ("race", "Caucasian", 200, True)
    assert (first["false_negative_rate"], first["false_negative_rate_ci_low"]) == pytest.approx((0.3, 0.2))
    assert first["false_negative_rate_ci_high"] == pytest.approx(0.5)
    assert (first["roc_auc"], first["roc_auc_ci_low"], first["roc_auc_ci_high"]) == pytest.approx((0.7, 0.6, 0.9))
    small = records[2]
    assert (small["group"], small["rows"], small["compared"]) == ("missing", 10, False)
    assert np.isnan(small["brier"]) and np.isnan(small["brier_ci_low"]) and np.isnan(small["brier_ci_high"])
    assert [r["group"] for r in records] == [g.group for g in audit.groups]


def one_positive_frame() -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """Twenty patients, one encounter each, one group; only patient 0 is positive, and the model misses them."""
    frame = pd.DataFrame({"race": "Caucasian", "gender": "Female", "age": "[60-70)", "patient_nbr": np.arange(20)})
    labels = np.r_[1, np.zeros(19, dtype=int)]
    scores = np.r_[0.3, np.linspace(0.1, 0.9, 19)]
    return frame.astype({"race": object}), labels, scores


@pytest.mark.parametrize(
    ("rounds", "seed", "rounds_drawing_the_positive", "reported"),
    [(20, 10, 10, True), (20, 26, 9, False), (31, 15, 15, True), (31, 6, 14, False)],
)
def test_an_interval_needs_the_metric_defined_in_half_the_rounds_and_at_least_ten(
    rounds: int, seed: int, rounds_drawing_the_positive: int, reported: bool
) -> None:
    frame, labels, scores = one_positive_frame()
    drawn = patient_weights(frame["patient_nbr"].to_numpy(), rounds, seed)[:, 0] > 0
    assert drawn.sum() == rounds_drawing_the_positive  # the FNR is defined only in these rounds
    (female,) = (g for g in subgroup_audit(frame, labels, scores, 0.5, rounds=rounds, seed=seed).groups
                 if g.attribute == "gender")  # fmt: skip
    assert female.values["false_negative_rate"] == 1.0
    fnr_interval = (female.ci_low["false_negative_rate"], female.ci_high["false_negative_rate"])
    assert fnr_interval == ((1.0, 1.0) if reported else pytest.approx((NAN, NAN), nan_ok=True))
    assert not np.isnan(female.ci_low["false_positive_rate"])  # defined in every round


def test_intervals_are_the_percentiles_of_the_metric_over_the_drawn_patients() -> None:
    """The 2.5th and 97.5th percentiles of each group's metric, recomputed here from the drawn weights with
    plain numpy; the audit keeps its settings and sizes."""
    frame, labels, scores = make_frame(600, seed=5)
    audit = subgroup_audit(frame, labels, scores, 0.45, rounds=40, seed=8, min_group_rows=80)
    assert (audit.threshold, audit.rows, audit.rounds, audit.min_group_rows) == (0.45, 600, 40, 80)
    weights = patient_weights(frame["patient_nbr"].to_numpy(), 40, 8)
    groups = sensitive_groups(frame)
    assert [(g.attribute, g.group) for g in audit.groups] == [
        (attribute, group) for attribute, series in groups.items() for group in sorted(set(series))
    ]
    for result in audit.groups:
        rows = (groups[result.attribute] == result.group).to_numpy()
        w, y, p = weights[:, rows], labels[rows], scores[rows]
        assert result.rows == rows.sum() and result.compared == (rows.sum() >= 80)
        with np.errstate(invalid="ignore"):
            per_round = {
                "false_negative_rate": (w * (y * (p < 0.45))).sum(axis=1) / (w * y).sum(axis=1),
                "brier": (w * (p - y) ** 2).sum(axis=1) / w.sum(axis=1),
                "selection_rate": (w * (p >= 0.45)).sum(axis=1) / w.sum(axis=1),
            }
        for metric, values in per_round.items():
            finite = values[np.isfinite(values)]
            expected = np.percentile(finite, [2.5, 97.5]) if len(finite) >= 20 else [NAN, NAN]
            got = [result.ci_low[metric], result.ci_high[metric]]
            assert got == pytest.approx(list(expected), nan_ok=True), (result.attribute, result.group, metric)


def test_the_audit_defaults_and_the_size_that_makes_a_group_compared() -> None:
    """200 rounds, seed 0 and 50 rows by default; a group of exactly ``min_group_rows`` rows is compared."""
    n = 99
    frame = pd.DataFrame(
        {
            "race": ["Caucasian"] * 50 + ["AfricanAmerican"] * 49,
            "gender": "Female",
            "age": "[60-70)",
            "patient_nbr": np.arange(n) // 2,
        }
    ).astype({"race": object})
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 2, n)
    scores = rng.uniform(0, 1, n)
    audit = subgroup_audit(frame, labels, scores, 0.5)
    assert (audit.rounds, audit.min_group_rows, audit.rows, audit.threshold) == (200, 50, 99, 0.5)
    assert {g.group: (g.rows, g.compared) for g in audit.groups if g.attribute == "race"} == {
        "Caucasian": (50, True),
        "AfricanAmerican": (49, False),
    }
    assert audit.as_records() == subgroup_audit(frame, labels, scores, 0.5, rounds=200, seed=0).as_records()
    assert audit.as_records() != subgroup_audit(frame, labels, scores, 0.5, rounds=200, seed=1).as_records()
    without = subgroup_audit(frame, labels, scores, 0.5, rounds=0)
    assert without.rounds == 0
    for group in without.groups:
        assert all(np.isnan(list(group.ci_low.values()))) and all(np.isnan(list(group.ci_high.values())))


def test_the_length_error_gives_each_length() -> None:
    frame, labels, scores = make_frame(100)
    with pytest.raises(ValueError, match=r"^audit needs one label and score per row: 100 rows, 100, 98$"):
        subgroup_audit(frame, labels, scores[:-2], 0.5)
    with pytest.raises(ValueError, match=r": 99 rows, 100, 100$"):
        subgroup_audit(frame.iloc[:-1], labels, scores, 0.5)


@pytest.mark.filterwarnings("error")
def test_gap_samples_skip_groups_that_define_no_value_and_take_any_metric() -> None:
    """Groups a and b as in the test above, a0 (2 rows, too small) and d (6 rows, no positive: no FNR, all
    flagged). Groups of exactly ``min_group_rows`` rows are compared; a group without the metric leaves the others'
    gap standing; a round where one group or none defines the metric is NaN, without a warning."""
    groups = pd.Series(["a"] * 6 + ["a0"] * 2 + ["b"] * 6 + ["d"] * 6, dtype=object)
    labels = np.r_[[1, 1, 1, 1, 0, 0], [1, 1], [1, 1, 1, 1, 0, 0], np.zeros(6, dtype=int)]
    scores = np.r_[[0.9, 0.9, 0.1, 0.1, 0.1, 0.9], [0.1, 0.1], [0.9, 0.9, 0.9, 0.1, 0.1, 0.1], np.full(6, 0.9)]
    a_rounds = [[1, 1, 0, 1, 1, 1], [1] * 6, [1] * 6, [0, 0, 0, 0, 1, 1]]
    b_rounds = [[1] * 6, [1, 0, 0, 0, 1, 1], [0, 0, 0, 0, 1, 1], [0, 0, 0, 0, 1, 1]]
    weights = np.array([np.r_[a, [1, 1], b, np.ones(6)] for a, b in zip(a_rounds, b_rounds, strict=True)])
    point, rounds = gap_samples(groups, labels, scores, 0.5, weights, "false_negative_rate", min_group_rows=6)
    assert point == pytest.approx(0.25)  # a 2/4, b 1/4, d undefined, a0 (2/2) too small
    # round 0: a misses 1 of 3 (1/3), b 1/4; round 1: b catches its one positive; round 2: only a defines an FNR;
    # round 3: neither does
    assert rounds.tolist() == pytest.approx([1 / 3 - 1 / 4, 0.5, NAN, NAN], nan_ok=True)
    # selection rate: a 3/6, b 3/6, d 6/6 (a0 1/2 would not change the gap)
    point, rounds = gap_samples(groups, labels, scores, 0.5, weights, "selection_rate", min_group_rows=6)
    assert point == pytest.approx(0.5)
    assert rounds.tolist() == pytest.approx([1 - 1 / 2, 1 - 1 / 3, 1.0, 1.0])  # round 0: a 3/5, b 1/2, d 1


def test_the_figure_layout_colours_and_empty_intervals() -> None:
    """Three panels side by side on one shared y scale, filling a 10 × 3.6 inch figure; compared groups blue; the
    y label once, on the left; without bootstrap rounds the error bars have no length; caps 3 points wide."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    frame, labels, scores = make_frame()
    audit = subgroup_audit(frame, labels, scores, 0.5, rounds=0, min_group_rows=100)
    figure = subgroup_figure(audit, "brier", "no rounds")
    assert tuple(figure.get_size_inches()) == pytest.approx((10, 3.6))
    axes = figure.get_axes()
    assert len(axes) == 3
    positions = [ax.get_position() for ax in axes]
    assert len({(p.y0, p.height) for p in positions}) == 1  # side by side, in a row
    assert positions[0].x1 < positions[1].x0 and positions[1].x1 < positions[2].x0
    assert all(axes[0].get_shared_y_axes().joined(axes[0], ax) for ax in axes[1:])
    assert [ax.get_ylabel() for ax in axes] == ["brier", "", ""]
    assert figure._suptitle is not None
    assert figure._suptitle.get_text() == "brier by group at threshold 0.500 — no rounds"
    renderer = FigureCanvasAgg(figure).get_renderer()
    boxes = [ax.get_tightbbox(renderer) for ax in axes]
    width, height = figure.bbox.width, figure.bbox.height
    assert all(b.x0 >= 0 and b.y0 >= 0 and b.x1 <= width and b.y1 <= height for b in boxes)  # nothing cut off
    assert boxes[0].x0 < 0.05 * width and boxes[-1].x1 > 0.95 * width  # the panels use the whole width
    for ax, attribute in zip(axes, ("race", "gender", "age_band"), strict=True):
        groups = [g for g in audit.groups if g.attribute == attribute]
        assert [b.get_x() + b.get_width() / 2 for b in ax.patches] == pytest.approx(list(range(len(groups))))
        assert [b.get_height() for b in ax.patches] == pytest.approx([g.values["brier"] for g in groups])
        blue = [b.get_facecolor() == pytest.approx((0.122, 0.467, 0.706, 1.0), abs=0.01) for b in ax.patches]
        assert blue == [g.compared for g in groups]
        assert {t.get_fontsize() for t in ax.get_xticklabels()} == {7.0}
        (error_bars,) = [c for c in ax.containers if type(c).__name__ == "ErrorbarContainer"]
        for segment, g in zip(error_bars.lines[2][0].get_segments(), groups, strict=True):
            assert [point[1] for point in segment] == pytest.approx([g.values["brier"]] * 2)
        assert {cap.get_markersize() for cap in error_bars.lines[1]} == {6.0}
