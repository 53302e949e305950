"""Drift and performance results as Prometheus metrics, pushed to a Pushgateway.

A drift check or a pass of the continuous-improvement loop ends before Prometheus could scrape it, so each one
pushes its latest result to the Pushgateway named by ``HEALTHPREDICT_PUSHGATEWAY_URL``, which Prometheus scrapes
(with ``honor_labels``). Each source pushes under its own job and replaces its whole group on every push: the
Pushgateway holds the **latest batch** of each source, so dashboards and alert rules read "the latest batch"
without filtering, and Prometheus keeps the history of earlier batches. Every series carries the ``batch`` and
the ``model_version`` (the champion that scored the batch) as labels.

Labels that arrive late (``HEALTHPREDICT_LABEL_DELAY_BATCHES``): the loop's push for batch k carries batch k's
drift and estimated AUC, and the realised AUC of the batch whose labels arrived with it, under *that* batch's
labels (and the version that scored it, with its test AUC and the tolerance), so the AUC-drop alert reads it.

The numbers are the ones the checks computed (:class:`healthpredict.drift.DriftResult`,
:class:`healthpredict.improve.BatchDecision`); nothing is recomputed here. The AUC-drop tolerance of the retrain
policy is pushed beside the AUCs, so the alert rule compares with the same value the loop uses instead of a copy.

A push that fails (Pushgateway down, timeout) is logged as a warning naming the URL and returns ``False``: the
result is already recorded in MLflow, and a monitoring outage must not stop a drift check or a retraining run.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Gauge, push_to_gateway

from healthpredict.settings import Settings

if TYPE_CHECKING:  # types only: the drift check and the loop import this module
    from healthpredict.drift import DriftResult
    from healthpredict.improve.records import BatchDecision

log = logging.getLogger(__name__)

#: Pushgateway jobs (grouping keys): the drift check (``monitor-drift`` flow, ``healthpredict drift``) and the
#: continuous-improvement loop.
DRIFT_JOB = "healthpredict_drift"
IMPROVEMENT_JOB = "healthpredict_improvement"

#: Per-batch gauges: name → help. Optional ones are pushed only when the check knows them.
BATCH_GAUGES: dict[str, str] = {
    "healthpredict_batch_rows": "Rows in the batch",
    "healthpredict_batch_drift_share": "Share of model features that drifted against the champion's training data",
    "healthpredict_batch_drift_share_threshold": "Drift share at which the batch counts as dataset drift",
    "healthpredict_batch_dataset_drift": "1 when the drift share reached its threshold (dataset drift)",
    "healthpredict_batch_drift_alert": "1 on dataset drift, prediction drift or label drift",
    "healthpredict_batch_drifted_features": "Number of model features that drifted",
    "healthpredict_batch_prediction_drift_score": "Drift of the champion's scores (normed Wasserstein distance)",
    "healthpredict_batch_label_drift_score": "Drift of the label (Jensen-Shannon distance); labelled batches only",
    "healthpredict_batch_roc_auc": "ROC-AUC of the champion on the labelled batch",
    "healthpredict_batch_estimated_roc_auc": "ROC-AUC of the champion estimated from its scores alone (no labels)",
    "healthpredict_batch_brier": "Brier score of the champion on the labelled batch",
    "healthpredict_batch_ece": "Expected calibration error of the champion on the labelled batch",
    "healthpredict_model_test_roc_auc": "The champion's own test ROC-AUC, the yardstick of an AUC drop",
    "healthpredict_auc_drop_tolerance": "AUC drop below the test AUC that the retrain policy tolerates",
}
FEATURE_GAUGES: dict[str, str] = {
    "healthpredict_feature_drift_score": "Drift statistic of one model feature (Wasserstein or Jensen-Shannon)",
    "healthpredict_feature_drifted": "1 when the feature's statistic reached its threshold",
}
IMPROVEMENT_GAUGES: dict[str, str] = {
    "healthpredict_improvement_retrained": "1 when the batch triggered a retrain",
    "healthpredict_improvement_decision": "1 for the decision taken on the batch (label: decision, champion_after)",
    "healthpredict_batch_frozen_roc_auc": "ROC-AUC of the initial champion (never replaced) on the batch",
    "healthpredict_batch_auc_after": "ROC-AUC of the champion after the decision, on the batch's held-out patients",
}
#: Every metric name a push can carry (the dashboard and the alert rules may use these).
PUSHED_METRICS = frozenset((*BATCH_GAUGES, *FEATURE_GAUGES, *IMPROVEMENT_GAUGES))
_HELP = {**BATCH_GAUGES, **FEATURE_GAUGES, **IMPROVEMENT_GAUGES}


def _batch_values(result: DriftResult, auc_drop_tolerance: float) -> dict[str, float | None]:
    performance = result.performance
    return {
        "healthpredict_batch_rows": float(result.rows),
        "healthpredict_batch_drift_share": result.drift_share,
        "healthpredict_batch_drift_share_threshold": result.thresholds.drift_share,
        "healthpredict_batch_dataset_drift": float(result.dataset_drift),
        "healthpredict_batch_drift_alert": float(result.alert),
        "healthpredict_batch_drifted_features": float(len(result.drifted_features)),
        "healthpredict_batch_prediction_drift_score": result.prediction.statistic if result.prediction else None,
        "healthpredict_batch_label_drift_score": result.target.statistic if result.target else None,
        "healthpredict_batch_roc_auc": performance.roc_auc if performance else None,
        "healthpredict_batch_estimated_roc_auc": result.estimated_roc_auc,
        "healthpredict_batch_brier": performance.brier if performance else None,
        "healthpredict_batch_ece": performance.ece if performance else None,
        "healthpredict_model_test_roc_auc": result.reference_roc_auc,
        "healthpredict_auc_drop_tolerance": auc_drop_tolerance,
    }


def _labels(result: DriftResult) -> dict[str, str]:
    if not result.batch:
        raise ValueError("a drift result needs its batch name to become metrics (DriftResult.batch is empty)")
    return {"batch": result.batch, "model_version": result.model_version or "unknown"}


class _Gauges:
    """The gauges of one push: one :class:`Gauge` per name, set for as many label sets as needed."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._gauges: dict[str, Gauge] = {}

    def set(self, name: str, labels: dict[str, str], value: float | None) -> None:
        """Set ``name`` (one of :data:`PUSHED_METRICS`, its help from the tables above) for ``labels``."""
        if value is None:
            return
        if name not in self._gauges:
            self._gauges[name] = Gauge(name, _HELP[name], tuple(labels), registry=self.registry)
        self._gauges[name].labels(**labels).set(value)


def _drift_gauges(result: DriftResult, auc_drop_tolerance: float) -> _Gauges:
    gauges = _Gauges()
    labels = _labels(result)
    for name, value in _batch_values(result, auc_drop_tolerance).items():
        gauges.set(name, labels, value)
    for row in result.features:
        named = {**labels, "feature": row.feature, "kind": row.kind, "method": row.method}
        gauges.set("healthpredict_feature_drift_score", named, row.statistic)
        gauges.set("healthpredict_feature_drifted", named, float(row.drifted))
    return gauges


def drift_registry(result: DriftResult, auc_drop_tolerance: float) -> CollectorRegistry:
    """The batch's drift and performance as gauges in a fresh registry, labelled with batch and model version."""
    return _drift_gauges(result, auc_drop_tolerance).registry


def decision_registry(record: BatchDecision, drift: DriftResult, auc_drop_tolerance: float) -> CollectorRegistry:
    """The improvement loop's batch: its drift and performance plus the decision and the AUC after a retrain, and
    what the labels that arrived with it tell: the realised AUC of their batch (when that is an earlier batch) and
    the frozen initial model's AUC on it. Nothing here reads the arriving batch's own labels unless they came
    with it (``HEALTHPREDICT_LABEL_DELAY_BATCHES=0``)."""
    if drift.batch is None:
        drift = replace(drift, batch=record.batch)
    gauges = _drift_gauges(drift, auc_drop_tolerance)
    labels = _labels(drift)
    values = {
        "healthpredict_improvement_retrained": float(record.retrained),
        "healthpredict_batch_auc_after": record.auc_after,
    }
    for name, value in values.items():
        gauges.set(name, labels, value)
    decision = {**labels, "decision": record.decision, "champion_after": record.champion_after}
    gauges.set("healthpredict_improvement_decision", decision, 1.0)
    if record.labelled_batch:
        arrived = labels if record.labelled_batch == record.batch else {
            "batch": record.labelled_batch, "model_version": record.labelled_version or "unknown"
        }  # fmt: skip
        gauges.set("healthpredict_batch_frozen_roc_auc", arrived, record.labelled_frozen_auc)
        if arrived is not labels and record.labelled_auc is not None:  # without delay the drift check has it
            gauges.set("healthpredict_batch_roc_auc", arrived, record.labelled_auc)
            gauges.set("healthpredict_model_test_roc_auc", arrived, record.labelled_baseline_auc)
            gauges.set("healthpredict_auc_drop_tolerance", arrived, auc_drop_tolerance)
    return gauges.registry


def push(settings: Settings, job: str, registry: CollectorRegistry) -> bool:
    """Replace the group ``job`` on the Pushgateway with ``registry``; ``False`` (and a warning) when it fails."""
    url = settings.monitoring.pushgateway_url
    if url is None:
        log.debug("HEALTHPREDICT_PUSHGATEWAY_URL is not set; %s metrics not pushed", job)
        return False
    try:
        push_to_gateway(url, job=job, registry=registry, timeout=settings.monitoring.push_timeout_s)
    except OSError as exc:  # urllib's URLError and HTTPError, timeouts, refused connections
        log.warning("metrics of job %s not pushed to the Pushgateway %s: %s", job, url, exc)
        return False
    return True


def publish_drift(settings: Settings, result: DriftResult) -> bool:
    """Push a drift check's result (job :data:`DRIFT_JOB`) when a Pushgateway is configured."""
    return push(settings, DRIFT_JOB, drift_registry(result, settings.improvement.retrain_auc_drop))


def publish_decision(settings: Settings, record: BatchDecision, drift: DriftResult) -> bool:
    """Push one batch of the improvement loop (job :data:`IMPROVEMENT_JOB`) when a Pushgateway is configured."""
    registry = decision_registry(record, drift, settings.improvement.retrain_auc_drop)
    return push(settings, IMPROVEMENT_JOB, registry)
