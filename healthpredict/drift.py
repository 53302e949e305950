"""Drift of a future batch against the champion's training data, and the champion's performance on it.

What is compared: the **engineered model features** (:func:`healthpredict.features.engineer_features`), i.e.
exactly the columns the champion's preprocessor sees: ``age`` as an ordinal, ICD-9 codes as chapter groups,
missing categoricals as ``"missing"``. Raw ICD-9 codes (hundreds of rare values) would make every batch look
drifted without changing what the model sees; the derived summaries (``prior_visits``, ``n_meds_*``) are
what the model uses, so a shift in them is a shift the model feels.

The reference is the split's ``train`` part (the champion's training data); the current data is one batch.

Statistical tests (Evidently's implementations, chosen explicitly, never auto-selected):

================ ================================ ========= =====================================================
what             method (Evidently name)          threshold why
================ ================================ ========= =====================================================
numeric feature  Wasserstein distance, normed by  0.1       a distance, not a p-value: with ~10k rows every
                 the reference std (wasserstein)            p-value test (KS) flags negligible shifts; 0.1 reads
                                                            "the mass moved 0.1 reference standard deviations".
categorical      Jensen-Shannon distance          0.1       bounded in [0, 1], symmetric, defined when a
feature          (jensenshannon)                            category is new in the batch (PSI/KL are not).
prediction       Wasserstein (normed) on the      0.1       same reading as numerics, on the champion's scores
                 champion's scores                          for reference vs batch.
label            Jensen-Shannon distance on       0.1       prevalence moved (only when the batch has labels).
                 ``readmitted_binary``
================ ================================ ========= =====================================================

A feature drifts when its statistic is ``>=`` its threshold (Evidently's rule for distances). The dataset
drifts when the share of drifted features is ``>=`` :attr:`DriftThresholds.drift_share` (0.3). A batch raises
an **alert** (:attr:`DriftResult.alert`) on dataset drift, prediction drift or label drift. These are
Evidently's default thresholds for both distances; ``docs/DRIFT.md`` shows what they flag on the real
batches (the source data itself changes over 1999-2008, so later untouched batches do drift).

With labels, the champion's performance on the batch is computed with sklearn: ROC-AUC, Brier score,
expected calibration error (equal-width bins) and calibration-in-the-large (mean score minus observed rate).
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import pandas as pd

from healthpredict.features import CATEGORICAL_FEATURES, MODEL_INPUT_COLUMNS, NUMERIC_FEATURES, engineer_features
from healthpredict.monitoring import publish_drift
from healthpredict.performance import Performance, champion_test_auc, estimated_roc_auc, performance_on
from healthpredict.registry import LoadedModel, RegistryError, configure_tracking, ensure_experiment, load_champion
from healthpredict.reporting import markdown_table
from healthpredict.schema import TARGET_COLUMN
from healthpredict.settings import DriftThresholds, FeatureKind, Settings
from healthpredict.split import SplitReader, batch_name

log = logging.getLogger(__name__)

PREDICTION_COLUMN = "prediction"
REFERENCE_PART = "train"
REPORT_FILE = "drift_report.html"


class DriftError(RuntimeError):
    """A batch cannot be checked (unreadable, wrong schema, no champion); never reported as "no drift"."""


@dataclass(frozen=True)
class FeatureDrift:
    """One compared column: its statistic against its threshold, and categories the reference never saw."""

    feature: str
    kind: FeatureKind
    method: str
    statistic: float
    threshold: float
    drifted: bool
    new_values: tuple[str, ...] = ()
    new_share: float = 0.0


@dataclass(frozen=True)
class DriftResult:
    """Everything the check found for one batch; ``summary_markdown`` is the Prefect artifact."""

    features: tuple[FeatureDrift, ...]
    drift_share: float
    dataset_drift: bool
    thresholds: DriftThresholds
    reference_rows: int
    rows: int
    prediction: FeatureDrift | None = None
    target: FeatureDrift | None = None
    performance: Performance | None = None
    estimated_roc_auc: float | None = None  # from the champion's scores alone: :func:`estimated_roc_auc`
    reference_roc_auc: float | None = None  # the champion's own test AUC, the yardstick of an AUC drop
    batch: str | None = None
    model_version: str | None = None
    run_id: str | None = None
    experiment_id: str | None = None

    @property
    def drifted_features(self) -> tuple[str, ...]:
        return tuple(f.feature for f in self.features if f.drifted)

    def feature(self, name: str) -> FeatureDrift:
        for row in self.features:
            if row.feature == name:
                return row
        raise KeyError(f"no drift row for feature {name!r}")

    @property
    def alert(self) -> bool:
        """Needs attention: dataset drift, or the champion's scores or the label distribution moved."""
        return self.dataset_drift or any(r is not None and r.drifted for r in (self.prediction, self.target))

    @property
    def flagged(self) -> frozenset[str]:
        """Names of every drifted signal: features, ``prediction`` and the target column."""
        extra = [r.feature for r in (self.prediction, self.target) if r is not None and r.drifted]
        return frozenset((*self.drifted_features, *extra))

    def as_metrics(self) -> dict[str, float]:
        metrics = {
            "drift_share": self.drift_share,
            "drifted_features": float(len(self.drifted_features)),
            "dataset_drift": float(self.dataset_drift),
            "alert": float(self.alert),
            "rows": float(self.rows),
        }
        if self.prediction is not None:
            metrics["prediction_drift"] = self.prediction.statistic
        if self.target is not None:
            metrics["label_drift"] = self.target.statistic
        if self.performance is not None:
            metrics.update(self.performance.as_metrics())
        if self.estimated_roc_auc is not None:
            metrics["estimated_roc_auc"] = self.estimated_roc_auc
        metrics.update({f"feature.{f.feature}": f.statistic for f in self.features})
        return metrics

    def summary_markdown(self) -> str:
        title = f"## Drift: {self.batch or 'batch'}" + (
            f" vs champion v{self.model_version}" if self.model_version else ""
        )
        verdict = "**dataset drift**" if self.dataset_drift else "no dataset drift"
        if self.alert and not self.dataset_drift:
            verdict += (
                " (**alert**: "
                + ", ".join(r.feature for r in (self.prediction, self.target) if r and r.drifted)
                + " drifted)"
            )
        lines = [
            title,
            "",
            f"{verdict}: {len(self.drifted_features)}/{len(self.features)} features drifted "
            f"(share {self.drift_share:.3f}, threshold {self.thresholds.drift_share}); {self.rows} rows vs "
            f"{self.reference_rows} reference rows.",
        ]
        signals = [r for r in (self.prediction, self.target) if r is not None]
        if signals:
            lines += ["", markdown_table(("signal", "method", "statistic", "threshold", "drifted"), [
                (r.feature, r.method, r.statistic, r.threshold, "yes" if r.drifted else "no") for r in signals
            ])]  # fmt: skip
        if self.performance is not None:
            p = self.performance
            lines += ["", markdown_table(("ROC-AUC", "Brier", "ECE", "mean score − rate", "prevalence"), [
                (p.roc_auc, p.brier, p.ece, p.calibration_in_the_large, p.prevalence)
            ])]  # fmt: skip
        rows = sorted(self.features, key=lambda r: (not r.drifted, -r.statistic))
        lines += ["", markdown_table(("feature", "type", "method", "statistic", "threshold", "drifted", "new values"), [
            (r.feature, r.kind, r.method, r.statistic, r.threshold, "yes" if r.drifted else "no",
             ", ".join(r.new_values[:3]) + (f" ({r.new_share:.1%})" if r.new_values else ""))
            for r in rows
        ])]  # fmt: skip
        if self.run_id:
            lines += ["", f"MLflow run: `{self.run_id}`"]
        return "\n".join(lines)


def _stattest(method: str, kind: FeatureKind) -> Any:
    from evidently.legacy.calculations.stattests.registry import get_registered_stattest
    from evidently.legacy.core import ColumnType

    column_type = ColumnType.Numerical if kind in ("numeric", "prediction") else ColumnType.Categorical
    return get_registered_stattest(method, column_type), column_type


def compare_column(
    name: str, kind: FeatureKind, reference: pd.Series, current: pd.Series, thresholds: DriftThresholds
) -> FeatureDrift:
    """One column through Evidently's statistical test (the same code its report runs), missing values dropped."""
    method, threshold = thresholds.method_for(kind)
    ref, cur = reference.dropna(), current.dropna()
    if ref.empty or cur.empty:
        raise DriftError(f"column {name!r} has no values in the {'reference' if ref.empty else 'batch'}")
    stattest, column_type = _stattest(method, kind)
    if kind in ("numeric", "prediction"):
        ref, cur = ref.astype("float64"), cur.astype("float64")
        new_values: tuple[str, ...] = ()
        new_share = 0.0
    else:
        ref, cur = ref.astype(str), cur.astype(str)
        unseen = ~cur.isin(set(ref.unique()))
        new_values = tuple(str(v) for v in cur[unseen].value_counts().index)
        new_share = float(unseen.mean())
    result = stattest(ref, cur, column_type, threshold)
    return FeatureDrift(
        feature=name, kind=kind, method=method, statistic=float(result.drift_score), threshold=threshold,
        drifted=bool(result.drifted), new_values=new_values, new_share=new_share,
    )  # fmt: skip


def require_model_inputs(frame: pd.DataFrame, what: str) -> None:
    missing = [c for c in MODEL_INPUT_COLUMNS if c not in frame.columns]
    if missing:
        raise DriftError(f"{what} lacks model input column(s): {', '.join(missing)}")
    if frame.empty:
        raise DriftError(f"{what} has no rows")


def _has_labels(frame: pd.DataFrame) -> bool:
    return TARGET_COLUMN in frame.columns and bool(frame[TARGET_COLUMN].notna().all())


def check_drift(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    model: LoadedModel | None = None,
    thresholds: DriftThresholds | None = None,
) -> DriftResult:
    """Compare a batch with the reference per model feature; add prediction drift and performance with a model."""
    thresholds = thresholds or DriftThresholds()
    require_model_inputs(reference, "reference data")
    require_model_inputs(current, "batch")
    ref_features, cur_features = engineer_features(reference), engineer_features(current)
    kinds: list[tuple[str, FeatureKind]] = [
        *((c, "numeric") for c in NUMERIC_FEATURES),
        *((c, "categorical") for c in CATEGORICAL_FEATURES),
    ]
    rows = tuple(compare_column(c, k, ref_features[c], cur_features[c], thresholds) for c, k in kinds)
    share = sum(r.drifted for r in rows) / len(rows)
    labelled = _has_labels(reference) and _has_labels(current)
    target = (
        compare_column(TARGET_COLUMN, "target", reference[TARGET_COLUMN], current[TARGET_COLUMN], thresholds)
        if labelled
        else None
    )
    prediction = performance = estimated = None
    if model is not None:
        ref_scores, cur_scores = model.predict_proba(reference), model.predict_proba(current)
        prediction = compare_column(
            PREDICTION_COLUMN, "prediction", pd.Series(ref_scores), pd.Series(cur_scores), thresholds
        )
        estimated = estimated_roc_auc(cur_scores)
        if _has_labels(current):
            performance = performance_on(current[TARGET_COLUMN].to_numpy(), cur_scores)
    return DriftResult(
        features=rows,
        drift_share=share,
        dataset_drift=share >= thresholds.drift_share,
        thresholds=thresholds,
        reference_rows=len(reference),
        rows=len(current),
        prediction=prediction,
        target=target,
        performance=performance,
        estimated_roc_auc=estimated,
        reference_roc_auc=champion_test_auc(model) if model is not None else None,
        model_version=model.version if model is not None else None,
    )


def drift_report(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    model: LoadedModel | None = None,
    thresholds: DriftThresholds | None = None,
) -> Any:
    """Evidently's report (snapshot) with the same per-type methods and thresholds as :func:`check_drift`."""
    from evidently import DataDefinition, Dataset, Report
    from evidently.metrics import ValueDrift
    from evidently.presets import DataDriftPreset

    thresholds = thresholds or DriftThresholds()
    ref, cur = engineer_features(reference), engineer_features(current)
    numeric, categorical = list(NUMERIC_FEATURES), list(CATEGORICAL_FEATURES)
    metrics: list[Any] = [
        DataDriftPreset(
            columns=[*numeric, *categorical], num_method=thresholds.numeric_method,
            num_threshold=thresholds.numeric_threshold, cat_method=thresholds.categorical_method,
            cat_threshold=thresholds.categorical_threshold, drift_share=thresholds.drift_share,
        )
    ]  # fmt: skip
    if model is not None:
        ref[PREDICTION_COLUMN], cur[PREDICTION_COLUMN] = model.predict_proba(reference), model.predict_proba(current)
        numeric.append(PREDICTION_COLUMN)
        metrics.append(
            ValueDrift(
                column=PREDICTION_COLUMN, method=thresholds.prediction_method, threshold=thresholds.prediction_threshold
            )
        )
    if _has_labels(reference) and _has_labels(current):
        ref[TARGET_COLUMN] = reference[TARGET_COLUMN].astype(int).astype(str).to_numpy()
        cur[TARGET_COLUMN] = current[TARGET_COLUMN].astype(int).astype(str).to_numpy()
        categorical.append(TARGET_COLUMN)
        metrics.append(
            ValueDrift(column=TARGET_COLUMN, method=thresholds.label_method, threshold=thresholds.label_threshold)
        )
    definition = DataDefinition(numerical_columns=numeric, categorical_columns=categorical)
    report = Report(metrics)
    return report.run(
        Dataset.from_pandas(cur, data_definition=definition), Dataset.from_pandas(ref, data_definition=definition)
    )


def write_drift_report_html(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    path: Path,
    model: LoadedModel | None = None,
    thresholds: DriftThresholds | None = None,
) -> Path:
    """Evidently's HTML report for the batch, written to ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    drift_report(reference, current, model, thresholds).save_html(str(path))
    return path


def batch_part_name(batch: str | int) -> str:
    """``3``, ``"3"`` or ``"batch_03"`` → ``"batch_03"``."""
    if isinstance(batch, int) or str(batch).isdigit():
        return batch_name(int(batch))
    return str(batch)


def read_reference_and_batch(settings: Settings, batch: str | int) -> tuple[str, pd.DataFrame, pd.DataFrame]:
    """The champion's training data and one future batch, read and checked; any failure raises."""
    name = batch_part_name(batch)
    reader = SplitReader(settings)
    if name not in reader.batch_names:
        raise DriftError(f"split {reader.split_id} has no future batch {name!r} (has: {', '.join(reader.batch_names)})")
    try:
        reference, current = reader.read(REFERENCE_PART), reader.read(name)
    except (OSError, ValueError) as exc:  # pyarrow raises ArrowInvalid (a ValueError) for a broken file
        raise DriftError(f"{reader.uri(name)}: cannot be read ({exc})") from exc
    require_model_inputs(reference, f"{reader.uri(REFERENCE_PART)}")
    require_model_inputs(current, f"{reader.uri(name)}")
    return name, reference, current


def champion_for_drift(settings: Settings) -> LoadedModel:
    try:
        return load_champion(settings)
    except RegistryError as exc:
        raise DriftError(str(exc)) from exc


def log_drift_run(
    settings: Settings,
    result: DriftResult,
    reference: pd.DataFrame,
    current: pd.DataFrame,
    model: LoadedModel,
    html_report: bool = True,
) -> tuple[str, str]:
    """One MLflow run per batch in the drift experiment: metrics, thresholds, tags and (if asked) the HTML report.

    Evidently's HTML report takes about as long as everything else together (≈ 5 s), so a quick check can
    leave it out.
    """
    import mlflow

    experiment_id = ensure_experiment(settings, settings.tracking.drift_experiment)
    with mlflow.start_run(experiment_id=experiment_id, run_name=f"drift-{result.batch}") as run:
        mlflow.log_params(result.thresholds.as_params())
        mlflow.log_metrics(result.as_metrics())
        mlflow.set_tags({
            "batch": result.batch or "", "champion_version": model.version or "", "champion_uri": model.uri,
            "dataset_drift": str(result.dataset_drift).lower(), "alert": str(result.alert).lower(),
            "drifted_features": ",".join(result.drifted_features),
        })  # fmt: skip
        if html_report:
            with tempfile.TemporaryDirectory(prefix="drift-") as tmp:
                html = write_drift_report_html(reference, current, Path(tmp) / REPORT_FILE, model, result.thresholds)
                mlflow.log_artifact(str(html))
        mlflow.log_text(result.summary_markdown(), "drift_summary.md")
        mlflow.log_dict({"features": [asdict(f) for f in result.features]}, "drift_features.json")
        return str(run.info.experiment_id), str(run.info.run_id)


def monitor_batch(settings: Settings, batch: str | int, html_report: bool = True) -> DriftResult:
    """Check one future batch against the champion's training data and record it in MLflow."""
    name, reference, current = read_reference_and_batch(settings, batch)
    configure_tracking(settings)
    model = champion_for_drift(settings)
    result = replace(check_drift(reference, current, model, settings.drift), batch=name)
    experiment_id, run_id = log_drift_run(settings, result, reference, current, model, html_report)
    log.info("drift %s: share %.3f, dataset drift %s, run %s", name, result.drift_share, result.dataset_drift, run_id)
    result = replace(result, run_id=run_id, experiment_id=experiment_id)
    publish_drift(settings, result)
    return result
