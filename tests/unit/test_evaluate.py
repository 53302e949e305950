import numpy as np
import pytest
from sklearn.metrics import f1_score, roc_auc_score

from healthpredict.evaluate import choose_threshold, evaluate_model, patient_bootstrap_auc

pytestmark = pytest.mark.unit


@pytest.fixture
def scored() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 2000)
    scores = np.clip(0.5 * y + rng.normal(0.25, 0.25, 2000), 0, 1)
    patients = rng.integers(0, 600, 2000)
    return y, scores, patients


def test_f1_threshold_is_the_best_on_the_given_data(scored: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
    y, scores, _ = scored
    threshold = choose_threshold(y, scores, "f1")
    best = f1_score(y, scores >= threshold)
    for other in np.linspace(0.05, 0.95, 19):
        assert f1_score(y, scores >= other) <= best + 1e-12


def test_youden_threshold_and_unknown_metric(scored: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
    y, scores, _ = scored
    threshold = choose_threshold(y, scores, "youden")
    tpr = ((scores >= threshold) & (y == 1)).sum() / (y == 1).sum()
    fpr = ((scores >= threshold) & (y == 0)).sum() / (y == 0).sum()
    assert tpr - fpr > 0.5
    with pytest.raises(ValueError, match="unknown threshold metric 'accuracy'"):
        choose_threshold(y, scores, "accuracy")


def test_patient_bootstrap_ci_brackets_the_auc_and_is_seeded(scored: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
    y, scores, patients = scored
    low, high = patient_bootstrap_auc(y, scores, patients, rounds=200, seed=1)
    assert low < roc_auc_score(y, scores) < high and high - low < 0.1
    assert (low, high) == patient_bootstrap_auc(y, scores, patients, rounds=200, seed=1)


def test_bootstrapping_patients_widens_the_interval_when_patients_repeat() -> None:
    rng = np.random.default_rng(3)
    patient_y = rng.integers(0, 2, 100)
    patient_score = np.clip(0.2 * patient_y + rng.normal(0.4, 0.3, 100), 0, 1)
    patients = np.repeat(np.arange(100), 20)  # 20 correlated encounters per patient
    y, scores = patient_y[patients], patient_score[patients]
    by_patient = patient_bootstrap_auc(y, scores, patients, rounds=300, seed=0)
    by_row = patient_bootstrap_auc(y, scores, np.arange(len(y)), rounds=300, seed=0)
    assert by_patient[1] - by_patient[0] > 2 * (by_row[1] - by_row[0])


def test_evaluate_model_reports_every_metric(scored: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
    y, scores, patients = scored
    evaluation = evaluate_model(y, scores, 0.5, patients, bootstrap_rounds=50)
    metrics = evaluation.as_metrics()
    assert set(metrics) >= {
        "test_roc_auc", "test_roc_auc_ci_low", "test_roc_auc_ci_high", "test_pr_auc", "test_brier",
        "test_log_loss", "test_precision", "test_recall", "test_f1", "test_threshold",
    }  # fmt: skip
    assert metrics["test_roc_auc"] == pytest.approx(roc_auc_score(y, scores))
    assert metrics["test_f1"] == pytest.approx(f1_score(y, scores >= 0.5))
    assert evaluation.rows == 2000 and 0.4 < evaluation.prevalence < 0.6
