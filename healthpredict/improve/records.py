"""What continuous improvement records: one decision per batch, the run's result, its MLflow runs and plot."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from healthpredict.audit import SubgroupAudit
from healthpredict.drift import DriftResult
from healthpredict.reporting import markdown_table
from healthpredict.settings import ImprovementSettings, Settings

Decision = Literal["keep", "promoted", "refused", "below-floor", "deploy-failed"]


@dataclass(frozen=True)
class BatchDecision:
    """What happened to one batch; the flow turns a list of these into its markdown artifact."""

    batch: str
    rows: int
    decision: Decision
    reason: str
    champion_before: str
    champion_after: str
    drift_share: float
    dataset_drift: bool
    auc_before: float | None  # evaluation only: the scores made at arrival against labels seen later
    baseline_auc: float | None
    frozen_auc: float | None
    auc_after: float | None = None
    challenger_version: str | None = None
    training_run_id: str | None = None
    training_rows: int | None = None
    holdout_rows: int | None = None
    predictions_uri: str = ""
    injected: str | None = None
    run_id: str | None = None
    estimated_auc: float | None = None  # from the champion's scores alone, at arrival (no labels)
    labelled_batch: str | None = None  # the batch whose labels arrived with this one (label delay)
    labelled_auc: float | None = None  # the AUC of that batch's scores, the one the decision may use
    labelled_version: str | None = None  # the champion that scored that batch at its arrival
    labelled_baseline_auc: float | None = None  # that champion's test AUC
    labelled_frozen_auc: float | None = None  # the frozen initial model's AUC on that batch
    fnr_gap_race: float | None = None  # the scoring model's largest FNR gap between races on the labelled batch

    @property
    def retrained(self) -> bool:
        return self.decision != "keep"

    def as_record(self) -> dict[str, Any]:
        return {**asdict(self), "retrained": self.retrained}


@dataclass(frozen=True)
class ImprovementResult:
    decisions: list[BatchDecision]
    report_path: Path
    experiment_id: str
    summary_run_id: str
    seconds: float

    @property
    def mean_auc(self) -> float:
        """Mean prequential AUC of the continuously improved champion (``auc_before`` over the batches)."""
        return _mean([d.auc_before for d in self.decisions])

    @property
    def mean_frozen_auc(self) -> float:
        return _mean([d.frozen_auc for d in self.decisions])

    @property
    def estimate_mae(self) -> float:
        """Mean absolute error of the estimated AUC against the AUC realised once labels arrived."""
        pairs = [(d.estimated_auc, d.auc_before) for d in self.decisions]
        return _mean([abs(e - r) for e, r in pairs if e is not None and r is not None])

    def summary_markdown(self) -> str:
        rows = [
            (d.batch + (f" ({d.injected})" if d.injected else ""), d.rows, d.drift_share, d.estimated_auc,
             d.auc_before, d.frozen_auc, d.labelled_batch or "none yet", d.decision, d.reason, d.auc_after,
             f"v{d.champion_before} → v{d.champion_after}")
            for d in self.decisions
        ]  # fmt: skip
        table = markdown_table(
            ("batch", "rows", "drift share", "estimated AUC", "AUC before", "frozen AUC", "labels arrived for",
             "decision", "reason", "AUC after", "champion"),
            rows,
        )  # fmt: skip
        return (
            f"## Continuous improvement\n\n{table}\n\nMean prequential AUC: continuously improved champion "
            f"{self.mean_auc:.4f}, frozen initial model {self.mean_frozen_auc:.4f} "
            f"(Δ {self.mean_auc - self.mean_frozen_auc:+.4f}). Estimated AUC (from the scores, before labels): mean "
            f"absolute error {self.estimate_mae:.4f} against the AUC realised once labels arrived. AUC before = "
            "the champion in force on the whole batch before any training on it (evaluated when its labels "
            "arrive); AUC after = the champion after the decision on held-out patients of the newest labelled "
            f"batch (retrains only). Report: `{self.report_path}`; MLflow summary run `{self.summary_run_id}`."
        )


def _mean(values: list[float | None]) -> float:
    present = [v for v in values if v is not None]
    return float(np.mean(present)) if present else float("nan")


def log_decision(
    settings: Settings,
    experiment_id: str,
    record: BatchDecision,
    drift: DriftResult,
    audit: SubgroupAudit | None = None,
) -> str:
    """One MLflow run per batch: the decision, drift, the champion's AUC and its subgroup audit on the batch."""
    import mlflow
    import pandas as pd

    with mlflow.start_run(experiment_id=experiment_id, run_name=f"improve-{record.batch}") as run:
        mlflow.set_tags({
            "kind": "improvement", "batch": record.batch, "decision": record.decision, "reason": record.reason[:500],
            "champion_version_before": record.champion_before, "champion_version_after": record.champion_after,
            "challenger_version": record.challenger_version or "", "training_run_id": record.training_run_id or "",
            "predictions_uri": record.predictions_uri, "injected": record.injected or "",
            "labelled_batch": record.labelled_batch or "", "labelled_version": record.labelled_version or "",
            "drifted_features": ",".join(drift.drifted_features),
        })  # fmt: skip
        metrics = {
            "drift_share": record.drift_share, "auc_before": record.auc_before, "auc_after": record.auc_after,
            "frozen_auc": record.frozen_auc, "baseline_auc": record.baseline_auc, "rows": float(record.rows),
            "estimated_auc": record.estimated_auc, "labelled_auc": record.labelled_auc,
            "retrained": float(record.retrained), "dataset_drift": float(record.dataset_drift),
            "prediction_drift": drift.prediction.statistic if drift.prediction else None,
        }  # fmt: skip
        mlflow.log_metrics({k: float(v) for k, v in metrics.items() if v is not None})
        if audit is not None:
            mlflow.log_metrics(audit.as_metrics("batch_"))
            mlflow.log_table(pd.DataFrame(audit.as_records()), "audit/batch_subgroups.json")
        return str(run.info.run_id)


def plot_simulation(decisions: list[BatchDecision], policy: ImprovementSettings, path: Path) -> Path:
    """Per batch: drift share, champion AUC before, decision, AUC after, and the frozen model's curve."""
    from matplotlib.figure import Figure

    x = np.arange(len(decisions))
    labels = [d.batch.replace("batch_", "b") for d in decisions]
    fig = Figure(figsize=(10, 7))
    top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1.4]})

    def series(values: list[float | None]) -> np.ndarray:
        return np.array([np.nan if v is None else v for v in values], dtype=float)

    frozen, before = series([d.frozen_auc for d in decisions]), series([d.auc_before for d in decisions])
    after, estimated = series([d.auc_after for d in decisions]), series([d.estimated_auc for d in decisions])
    top.plot(x, frozen, "o--", color="grey", label=f"frozen initial model (mean {np.nanmean(frozen):.3f})")
    top.plot(x, before, "o-", color="tab:blue", label=f"champion, realised (mean {np.nanmean(before):.3f})")
    if np.isfinite(estimated).any():
        mae = np.nanmean(np.abs(estimated - before))
        top.plot(x, estimated, "x:", color="tab:purple", label=f"champion, estimated before labels (MAE {mae:.3f})")
    top.plot(x, after, "D", color="tab:green", label="AUC after (held-out patients of the batch)")
    for i, d in enumerate(decisions):
        if d.retrained:
            colour = "tab:green" if d.decision == "promoted" else "tab:red"
            top.annotate(d.decision, (i, before[i]), textcoords="offset points", xytext=(0, -16), ha="center",
                         fontsize=8, color=colour)  # fmt: skip
    top.set_ylabel("ROC-AUC")
    top.set_title("Continuous improvement: prequential AUC per future batch")
    top.legend(fontsize=8, loc="lower left")
    top.grid(alpha=0.3)
    colours = ["tab:orange" if d.retrained else "tab:grey" for d in decisions]
    bottom.bar(x, [d.drift_share for d in decisions], color=colours)
    bottom.axhline(policy.retrain_drift_share, color="tab:red", linestyle=":", label="retrain drift share")
    bottom.set_ylabel("drift share")
    bottom.set_xticks(x, labels)
    bottom.set_xlabel("future batch (orange: retrained)")
    bottom.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path
