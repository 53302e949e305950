"""Training on the real split: Ray Tune search, MLflow tracking and registry, gates, reproducibility."""

import json
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from conftest import training_env
from mlflow import MlflowClient
from sklearn.metrics import roc_auc_score
from sklearn.pipeline import Pipeline

from healthpredict.gate import gate_challenger
from healthpredict.registry import (
    CHALLENGER,
    CHAMPION,
    RegistryError,
    configure_tracking,
    load_model,
    version_by_alias,
)
from healthpredict.settings import Settings
from healthpredict.split import SplitReader

pytestmark = pytest.mark.integration


def test_search_tracks_every_trial_and_registers_a_challenger(trained_home: Path, real_split_home: Path) -> None:
    settings = Settings.from_env(training_env(trained_home, real_split_home))
    summary = json.loads((trained_home / "training.json").read_text())
    client = configure_tracking(settings)
    parent = client.get_run(summary["parent_run_id"])
    assert parent.data.tags["kind"] == "training" and parent.data.tags["winner_family"] == summary["winner"]
    children = client.search_runs(
        [parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'", max_results=500
    )
    trials = [r for r in children if r.data.tags["kind"] == "trial"]
    bests = [r for r in children if r.data.tags["kind"] == "family-best"]
    assert len(trials) == sum(summary["trials"].values()) >= 3
    assert {r.data.tags["family"] for r in bests} == {"logreg", "random_forest", "xgboost"}
    for run in trials:
        assert 0.5 < run.data.metrics["val_auc"] < 1.0 and any(k.startswith("hp.") for k in run.data.params)
    for run in bests:
        names = {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
        assert names == {
            f"plots/{n}.png"
            for n in ("roc", "pr", "calibration", "confusion_matrix", "feature_importance",
                      "subgroup_false_negative_rate")
        }  # fmt: skip
        for metric in ("test_roc_auc", "test_pr_auc", "test_brier", "test_log_loss", "test_f1", "test_roc_auc_ci_low",
                       "test_calibration_error", "test_race_false_negative_rate_gap"):  # fmt: skip
            assert metric in run.data.metrics
        audit = mlflow.artifacts.load_dict(f"runs:/{run.info.run_id}/audit/test_subgroups.json")
        assert {"race", "gender", "age_band"} == set(audit["data"][i][0] for i in range(len(audit["data"])))
        assert run.data.metrics["test_roc_auc_ci_low"] < run.data.metrics["test_roc_auc"] < run.data.metrics[
            "test_roc_auc_ci_high"]  # fmt: skip
    assert "leaderboard.md" in {a.path for a in client.list_artifacts(parent.info.run_id)}

    challenger = version_by_alias(settings, CHALLENGER)
    assert challenger is not None and str(challenger.version) == "1"
    for tag in ("family", "data_manifest_sha256", "git_commit", "test_auc", "val_auc", "threshold"):
        assert challenger.tags[tag]
    assert challenger.tags["data_manifest_sha256"] == SplitReader(settings).manifest_sha256

    # the registered pipeline reproduces its logged test AUC from raw test rows
    model = load_model(f"models:/{settings.tracking.model_name}@{CHALLENGER}")
    test = SplitReader(settings).read("test")
    auc = roc_auc_score(test["readmitted_binary"], model.predict_proba(test))
    assert auc == pytest.approx(float(challenger.tags["test_auc"]), abs=1e-6)
    assert auc == pytest.approx(summary["test_auc"], abs=1e-9)
    assert model.version == "1" and 0.0 < model.threshold < 1.0
    assert model.pipeline.steps[0][0] == "features"  # one pipeline, preprocessing included

    # the model carries its card, generated from the run: the test AUC and its CI as logged, the subgroups
    card = model.card["model_card.md"].decode()
    assert f"| ROC-AUC | {float(challenger.tags['test_auc']):.3f} [" in card
    assert "## Subgroups" in card and "| race | AfricanAmerican |" in card and "## Limitations" in card
    assert {"model_card.md", "model_card.html", "calibration.png"} <= set(model.card)
    assert model.card["model_card.html"].startswith(b"<!doctype html>")


def _register(settings: Settings, pipeline: Pipeline, train: pd.DataFrame) -> str:
    from healthpredict.registry import log_pipeline, register_challenger

    with mlflow.start_run():
        info = log_pipeline(pipeline, train, {"threshold": 0.5, "family": "logreg"})
    return str(register_challenger(settings, info.model_uri, {"family": "logreg"}).version)


def test_gate_refuses_a_worse_challenger_and_keeps_the_champion(real_split_home: Path, tmp_path: Path) -> None:
    from healthpredict.features import model_inputs
    from healthpredict.modeling import build_pipeline

    settings = Settings.from_env(training_env(tmp_path / "home", real_split_home))
    configure_tracking(settings)
    reader = SplitReader(settings)
    train, test = reader.read("train"), reader.read("test")

    with pytest.raises(RegistryError, match="has no 'challenger' alias"):
        gate_challenger(settings, test)

    good = build_pipeline("logreg", {"C": 0.05}, seed=0).fit(model_inputs(train), train["readmitted_binary"])
    first = _register(settings, good, train)
    decision = gate_challenger(settings, test)
    assert decision.passed and decision.reason == "no champion yet" and decision.champion_version is None
    MlflowClient().set_registered_model_alias(settings.tracking.model_name, CHAMPION, first)

    noise = np.random.default_rng(0).integers(0, 2, len(train))
    worse = build_pipeline("logreg", {"C": 0.05}, seed=0).fit(model_inputs(train), noise)
    second = _register(settings, worse, train)
    decision = gate_challenger(settings, test)
    assert not decision.passed and decision.challenger_version == second
    assert decision.champion_auc is not None and decision.challenger_auc < decision.champion_auc - 0.01
    champion = version_by_alias(settings, CHAMPION)
    assert champion is not None and str(champion.version) == first
    tags = MlflowClient().get_model_version(settings.tracking.model_name, second).tags
    assert tags["gate.decision"] == "refused" and float(tags["gate.champion_auc"]) == pytest.approx(
        decision.champion_auc
    )


def test_gate_refuses_a_challenger_that_misses_one_groups_readmissions(real_split_home: Path, tmp_path: Path) -> None:
    """A challenger as accurate overall but trained as if African American patients were never readmitted: the
    fairness gate refuses it even with an AUC tolerance that would let it through."""
    from healthpredict.features import model_inputs
    from healthpredict.gate import gate_challenger
    from healthpredict.modeling import build_pipeline

    env = training_env(tmp_path / "home", real_split_home, HEALTHPREDICT_GATE_TOLERANCE="0.2")
    settings = Settings.from_env(env)
    configure_tracking(settings)
    reader = SplitReader(settings)
    train, test = reader.read("train"), reader.read("test")
    fair = build_pipeline("logreg", {"C": 0.05}, seed=0).fit(model_inputs(train), train["readmitted_binary"])
    first = _register(settings, fair, train)
    MlflowClient().set_registered_model_alias(settings.tracking.model_name, CHAMPION, first)

    biased_labels = train["readmitted_binary"].where(train["race"].ne("AfricanAmerican"), 0)
    unfair = build_pipeline("logreg", {"C": 0.05}, seed=0).fit(model_inputs(train), biased_labels)
    second = _register(settings, unfair, train)
    decision = gate_challenger(settings, test)

    assert not decision.passed, decision.reason
    assert decision.challenger_auc > decision.champion_auc - 0.2  # the AUC gate alone would pass it
    assert decision.challenger_fnr_gaps["race"] > decision.champion_fnr_gaps["race"] + 0.05
    assert "false-negative-rate gap by race" in decision.reason and "95% confidence" in decision.reason
    tags = MlflowClient().get_model_version(settings.tracking.model_name, second).tags
    assert tags["gate.decision"] == "refused"
    assert float(tags["gate.challenger_fnr_gap.race"]) == pytest.approx(decision.challenger_fnr_gaps["race"], abs=1e-6)
    champion = version_by_alias(settings, CHAMPION)
    assert champion is not None and str(champion.version) == first

    # the same model against itself (a retrain that changed nothing) passes the fairness gate
    third = _register(settings, fair, train)
    again = gate_challenger(settings, test)
    assert again.passed and again.challenger_version == third, again.reason


def test_unreachable_tracking_server_is_a_clear_error(tmp_path: Path) -> None:
    from conftest import free_port

    uri = f"http://127.0.0.1:{free_port()}"
    settings = Settings.from_env({"HEALTHPREDICT_HOME": str(tmp_path), "MLFLOW_TRACKING_URI": uri})
    with pytest.raises(RegistryError, match=f"MLflow tracking server {uri} is unreachable"):
        configure_tracking(settings)


def test_same_seed_same_chosen_hyperparameters(real_split_home: Path, tmp_path: Path) -> None:
    from healthpredict.tune import encode_for_search, ray_session, run_search

    settings = Settings.from_env(
        training_env(tmp_path, real_split_home, HEALTHPREDICT_TRIALS_PER_FAMILY="4", HEALTHPREDICT_MAX_CONCURRENT="1")
    )
    reader = SplitReader(settings)
    data = encode_for_search(reader.read("train"), reader.read("val"), "logreg")
    incumbent = {"C": 0.0123, "class_weight": "balanced"}
    with ray_session(settings):
        first = run_search("logreg", data, settings, 120, tmp_path / "ray")
        second = run_search("logreg", data, settings, 120, tmp_path / "ray")
        seeded = run_search("logreg", data, settings, 120, tmp_path / "ray", start_from=incumbent)
    assert len(first.trials) == len(second.trials) == 4
    assert [t.params for t in first.trials] == [t.params for t in second.trials]
    assert first.best.params == second.best.params and first.best.val_auc == second.best.val_auc
    # a retrain's search evaluates the incumbent configuration first, then searches as usual
    ordered = sorted(seeded.trials, key=lambda t: t.order)
    assert len(ordered) == 4 and ordered[0].params == incumbent
    assert all(t.params != incumbent for t in ordered[1:])
