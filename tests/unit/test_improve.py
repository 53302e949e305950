"""Rules of the continuous-improvement loop on small synthetic frames: trigger, window, holdout, options."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest
from conftest import raw_frame

from healthpredict.features import SAMPLE_WEIGHT_COLUMN, sample_weights
from healthpredict.improve import (
    BatchDecision,
    decide_retraining,
    holdout_split,
    is_forced,
    plot_simulation,
    training_window,
)
from healthpredict.settings import ImprovementSettings

pytestmark = pytest.mark.unit

POLICY = ImprovementSettings(retrain_drift_share=0.3, retrain_auc_drop=0.02)


def test_no_retrain_within_thresholds() -> None:
    trigger = decide_retraining(0.29, auc_before=0.66, baseline_auc=0.67, policy=POLICY)
    assert not trigger.retrain
    assert "drift share 0.290 < 0.3" in trigger.reason and "AUC drop 0.010 <= 0.02" in trigger.reason


def test_drift_share_at_threshold_triggers() -> None:
    trigger = decide_retraining(0.3, auc_before=0.67, baseline_auc=0.67, policy=POLICY)
    assert trigger.retrain and trigger.reason == "drift share 0.300 >= 0.3"


def test_auc_drop_triggers_only_beyond_the_allowed_drop() -> None:
    policy = ImprovementSettings(retrain_drift_share=0.3, retrain_auc_drop=0.125)  # exact in binary
    assert not decide_retraining(0.1, auc_before=0.625, baseline_auc=0.75, policy=policy).retrain  # drop == 0.125
    trigger = decide_retraining(0.1, auc_before=0.62, baseline_auc=0.75, policy=policy)
    assert trigger.retrain and trigger.reason.startswith("AUC drop 0.130 > 0.125")


def test_forced_retrains_whatever_the_numbers_and_reasons_accumulate() -> None:
    calm = decide_retraining(0.0, auc_before=0.9, baseline_auc=0.6, policy=POLICY)  # nothing would trigger
    forced = decide_retraining(0.0, auc_before=0.9, baseline_auc=0.6, policy=POLICY, forced=True)
    assert not calm.retrain and forced.retrain and forced.reason == "forced"
    trigger = decide_retraining(0.5, auc_before=0.5, baseline_auc=0.7, policy=POLICY, forced=True)
    assert trigger.retrain
    assert trigger.reason.split("; ")[0] == "forced" and len(trigger.reason.split("; ")) == 3


def test_schedule_retrains_once_the_champion_is_enough_batches_behind() -> None:
    every_two = ImprovementSettings(retrain_drift_share=0.3, retrain_auc_drop=0.02, retrain_every=2)
    waiting = decide_retraining(0.1, auc_before=0.67, baseline_auc=0.67, policy=every_two, batches_behind=1)
    assert not waiting.retrain and waiting.reason.startswith("champion 1 batch(es) behind (< 2)")
    due = decide_retraining(0.1, auc_before=0.67, baseline_auc=0.67, policy=every_two, batches_behind=2)
    assert due.retrain and due.reason == "scheduled: champion 2 batch(es) behind (every 2)"
    off = replace(every_two, retrain_every=0)
    assert not decide_retraining(0.1, auc_before=0.67, baseline_auc=0.67, policy=off, batches_behind=50).retrain


def test_unmeasurable_auc_cannot_trigger() -> None:
    trigger = decide_retraining(0.1, auc_before=None, baseline_auc=0.7, policy=POLICY)
    assert not trigger.retrain and "not measurable" in trigger.reason
    assert not decide_retraining(0.1, auc_before=0.4, baseline_auc=None, policy=POLICY).retrain


def _parts() -> tuple[dict[str, pd.DataFrame], list[pd.DataFrame]]:
    initial = {name: raw_frame(10, seed=i).assign(part=name) for i, name in enumerate(("train", "val", "test"))}
    batches = [raw_frame(20 + i, seed=10 + i).assign(part=f"batch_{i + 1:02d}") for i in range(4)]
    return initial, batches


def test_window_all_takes_the_initial_window_and_every_batch_so_far() -> None:
    initial, batches = _parts()
    window = training_window(initial, batches[:3], "all")
    assert len(window) == 30 + 20 + 21 + 22
    assert window["part"].unique().tolist() == ["train", "val", "test", "batch_01", "batch_02", "batch_03"]


def test_window_last_n_takes_only_the_newest_batches() -> None:
    initial, batches = _parts()
    window = training_window(initial, batches, 2)
    assert window["part"].unique().tolist() == ["batch_03", "batch_04"] and len(window) == 22 + 23
    assert training_window(initial, batches[:1], 5)["part"].unique().tolist() == ["batch_01"]  # fewer than N so far
    with pytest.raises(ValueError, match="newest batch"):
        training_window(initial, [], "all")


def test_recency_weights_halve_per_half_life_back_from_the_newest_batch() -> None:
    initial, batches = _parts()
    window = training_window(initial, batches[:3], "all", half_life=1.0)
    by_part = window.groupby("part", sort=False)[SAMPLE_WEIGHT_COLUMN].unique().map(list).to_dict()
    assert by_part == {"train": [0.125], "val": [0.125], "test": [0.125], "batch_01": [0.25], "batch_02": [0.5],
                       "batch_03": [1.0]}  # fmt: skip
    slower = training_window(initial, batches[:3], 2, half_life=2.0)
    assert slower[SAMPLE_WEIGHT_COLUMN].unique().tolist() == [pytest.approx(0.5**0.5), 1.0]
    assert SAMPLE_WEIGHT_COLUMN not in training_window(initial, batches[:3], "all").columns  # unweighted
    assert sample_weights(window) is not None and sample_weights(batches[0]) is None


def test_sample_weights_must_be_positive_and_finite() -> None:
    frame = raw_frame(3, seed=0)
    for bad in ([1.0, 0.0, 1.0], [1.0, float("nan"), 1.0], [1.0, -2.0, 1.0]):
        with pytest.raises(ValueError, match=SAMPLE_WEIGHT_COLUMN):
            sample_weights(frame.assign(**{SAMPLE_WEIGHT_COLUMN: bad}))


def test_holdout_is_a_patient_disjoint_slice_of_the_newest_batch() -> None:
    older = raw_frame(200, seed=1, n_patients=60).assign(part="older")
    newest = raw_frame(200, seed=2, n_patients=60).assign(part="newest")  # same patient ids recur in both
    window = pd.concat([older, newest], ignore_index=True)
    parts = holdout_split(window, newest, holdout_fraction=0.3, val_fraction=0.2, seed=7)
    holdout, train, val = parts["test"], parts["train"], parts["val"]
    assert set(holdout["part"]) == {"newest"}
    held = set(holdout["patient_nbr"])
    assert len(held) == round(newest["patient_nbr"].nunique() * 0.3)
    assert held.isdisjoint(train["patient_nbr"]) and held.isdisjoint(val["patient_nbr"])
    assert set(train["patient_nbr"]).isdisjoint(val["patient_nbr"])
    # every window row is either held out, or in train/val, or dropped because its patient is held out
    dropped = window.loc[window["patient_nbr"].isin(held) & (window["part"] == "older")]
    assert len(holdout) + len(train) + len(val) + len(dropped) == len(window)
    again = holdout_split(window, newest, 0.3, 0.2, seed=7)
    for name in ("test", "train", "val"):  # seeded: the same rows, fresh 0..n-1 indexes, the window's columns
        assert again[name]["encounter_id"].tolist() == parts[name]["encounter_id"].tolist()
        assert parts[name].index.equals(pd.RangeIndex(len(parts[name])))
        assert parts[name].columns.tolist() == window.columns.tolist()


def test_a_small_newest_batch_still_holds_out_one_patient() -> None:
    newest = raw_frame(6, seed=3, n_patients=3)
    window = pd.concat([raw_frame(100, seed=4, n_patients=40), newest], ignore_index=True)
    parts = holdout_split(window, newest, holdout_fraction=0.1, val_fraction=0.2, seed=1)
    assert parts["test"]["patient_nbr"].nunique() == 1  # round(3 x 0.1) is 0: at least one patient


def test_the_window_is_one_frame_with_a_fresh_index() -> None:
    initial, batches = _parts()
    window = training_window(initial, batches[:2], "all", half_life=1.0)
    assert window.index.equals(pd.RangeIndex(30 + 20 + 21))
    with pytest.raises(ValueError, match=r"^the training window needs at least the newest batch$"):
        training_window(initial, [], 2)


def test_the_reasons_for_keeping_say_what_was_measured() -> None:
    kept = decide_retraining(0.1, auc_before=None, baseline_auc=0.7, policy=POLICY)
    behind = "champion 0 batch(es) behind (< 1)"  # the default schedule: every labelled batch
    assert kept.retrain is False and kept.reason == f"{behind}; drift share 0.100 < 0.3; AUC drop not measurable"
    measured = decide_retraining(0.1, auc_before=0.69, baseline_auc=0.7, policy=POLICY)
    assert measured.reason == f"{behind}; drift share 0.100 < 0.3; AUC drop 0.010 <= 0.02"


def test_an_estimated_drop_equal_to_the_allowed_drop_does_not_trigger() -> None:
    policy = replace(POLICY, retrain_auc_drop=0.25)  # 0.75 - 0.5 and 0.75 - 0.25 are exact in binary
    assert not decide_retraining(0.1, None, 0.75, policy, estimated_auc=0.5).retrain
    assert decide_retraining(0.1, None, 0.75, policy, estimated_auc=0.25).retrain


def test_force_names_numbers_and_all() -> None:
    assert is_forced("batch_02", ["2"]) and is_forced("batch_02", ["batch_02"]) and is_forced("batch_05", ["all"])
    assert not is_forced("batch_01", ["2"]) and not is_forced("batch_01", [])


def test_simulation_report_is_a_png(tmp_path: Path) -> None:
    decisions = [
        BatchDecision("batch_01", 100, "keep", "r", "1", "1", 0.1, False, 0.66, 0.67, 0.66),
        BatchDecision("batch_02", 100, "promoted", "r", "1", "2", 0.4, True, 0.64, 0.67, 0.64, auc_after=0.7),
        BatchDecision("batch_03", 100, "refused", "r", "2", "2", 0.2, False, None, 0.70, 0.63, auc_after=0.6),
    ]
    path = plot_simulation(decisions, POLICY, tmp_path / "r" / "report.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000


def test_summary_means_are_prequential_and_skip_unmeasurable_batches(tmp_path: Path) -> None:
    from healthpredict.improve import ImprovementResult

    decisions = [
        BatchDecision("batch_01", 100, "keep", "within", "1", "1", 0.1, False, 0.60, 0.67, 0.60),
        BatchDecision(
            "batch_02",
            100,
            "promoted",
            "forced",
            "1",
            "2",
            0.4,
            True,
            0.64,
            0.67,
            0.62,
            auc_after=0.7,
            estimated_auc=0.66,
            labelled_batch="batch_01",
        ),
        BatchDecision("batch_03", 100, "keep", "within", "2", "2", 0.2, False, None, 0.70, None),
    ]
    result = ImprovementResult(decisions, tmp_path / "r.png", "1", "run", 1.0)
    assert result.mean_auc == pytest.approx(0.62) and result.mean_frozen_auc == pytest.approx(0.61)
    text = result.summary_markdown()
    assert (
        "| batch_02 | 100 | 0.4000 | 0.6600 | 0.6400 | 0.6200 | batch_01 | promoted | forced | 0.7000 | v1 → v2 |"
        in text
    )
    assert "| batch_01 | 100 | 0.1000 |  | 0.6000 | 0.6000 | none yet | keep |" in text
    assert result.estimate_mae == pytest.approx(0.02)  # only batch_02 has both an estimate and a realised AUC
    assert "mean absolute error 0.0200" in text
    assert "(Δ +0.0100)" in text
    assert [d.retrained for d in decisions] == [False, True, False]


def test_an_estimated_auc_drop_triggers_before_labels_arrive() -> None:
    policy = ImprovementSettings(retrain_drift_share=0.3, retrain_auc_drop=0.02, retrain_every=0)
    waiting = decide_retraining(0.1, auc_before=None, baseline_auc=0.70, policy=policy, estimated_auc=0.69)
    assert not waiting.retrain and "AUC drop not measurable" in waiting.reason
    early = decide_retraining(0.1, auc_before=None, baseline_auc=0.70, policy=policy, estimated_auc=0.65)
    assert early.retrain and early.reason == "estimated AUC drop 0.050 > 0.02 (test 0.700 → estimated 0.650)"
