"""Continuous improvement: walk the future batches in time order, score, check, decide, retrain, deploy.

For each batch, strictly in this order (so scoring is leakage-free):

1. **score** it with the current champion (batch inference; predictions written as Parquet to the artifact store
   at ``<artifact uri>/predictions/<batch>-v<version>.parquet``) — before any training has seen the batch;
2. **check drift** against the champion's training data and **evaluate** the champion on the batch's labels;
3. **decide** (:func:`decide_retraining`): retrain when the drift share reaches ``retrain_drift_share``, when the
   champion's AUC on the batch fell more than ``retrain_auc_drop`` below its own test AUC, when the champion has
   not been trained on the last ``retrain_every`` labelled batches (the schedule; 0 turns it off), or when forced;
4. **retrain** on the training window (:func:`training_window`: ``all`` data so far, or the last N batches),
   with a patient-disjoint slice of the newest batch held out for the gate and the test metrics
   (:func:`holdout_split`); the rest of the window is split patient-disjoint into train/val;
5. **gate and deploy** through :func:`healthpredict.promote.promote` (``deploy=True``): ``champion`` moves only
   when the challenger is not worse on the holdout and the deployment target verified it live.

Every decision becomes one MLflow run in the improvement experiment and one :class:`BatchDecision`. A batch
that cannot be read stops the loop with :class:`ImprovementError`; it is never treated as "no drift".

AUC definitions (also on the simulation report):

- ``auc_before``: the champion in force when the batch arrived, on the whole batch (prequential, out of sample).
- ``frozen_auc``: the initial champion (never replaced), on the whole batch — the comparison curve.
- ``auc_after``: only when a retrain ran: the champion in force after the decision, on the batch's held-out
  patient slice (the gate's number: the new version if promoted, else the unchanged champion). How the new
  champion does on *unseen* data is the next batch's ``auc_before``.
"""

from healthpredict.improve.loop import (
    PREDICTIONS_DIR,
    ImprovementError,
    ImprovementOptions,
    improve,
)
from healthpredict.improve.policy import Trigger, decide_retraining, holdout_split, is_forced, training_window
from healthpredict.improve.records import BatchDecision, ImprovementResult, plot_simulation

__all__ = [
    "PREDICTIONS_DIR",
    "BatchDecision",
    "ImprovementError",
    "ImprovementOptions",
    "ImprovementResult",
    "Trigger",
    "decide_retraining",
    "holdout_split",
    "improve",
    "is_forced",
    "plot_simulation",
    "training_window",
]
