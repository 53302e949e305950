"""An empty MLflow sqlite store, migrated once per MLflow version and copied into each test's home.

Creating a store runs every MLflow migration: tens of seconds on a busy 2-core machine, and again in every pytest
session (mutmut starts one per mutant). A copy of a migrated store takes milliseconds and is as independent as a
new one. The migrated file is kept in the temporary folder, named by the MLflow version and the user, built in a
private folder and renamed into place, so a concurrent run never sees half of it.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import mlflow
from mlflow import MlflowClient

from healthpredict.registry import CHAMPION, configure_tracking
from healthpredict.settings import Settings


def migrated_store() -> Path:
    """The path of an empty, fully migrated MLflow sqlite store (built on first use)."""
    cache = Path(tempfile.gettempdir()) / f"healthpredict-tests-{os.getuid()}"
    store = cache / f"mlflow-{mlflow.__version__}.db"
    if store.is_file():
        return store
    cache.mkdir(parents=True, exist_ok=True)
    building = Path(tempfile.mkdtemp(dir=cache, prefix="building-"))
    try:
        from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

        created = SqlAlchemyStore(f"sqlite:///{building / 'mlflow.db'}", (building / "artifacts").as_uri())
        created.engine.dispose()
        os.replace(building / "mlflow.db", store)
    finally:
        shutil.rmtree(building, ignore_errors=True)
    return store


def new_store(home: Path) -> None:
    """Give ``home`` an empty MLflow store at ``<home>/mlflow.db`` (the default tracking URI of the settings)."""
    home.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(migrated_store(), home / "mlflow.db")


def two_versions(home: Path) -> Settings:
    """Settings rooted in ``home``, with versions 1 and 2 of the registered model and ``champion`` on 1, in a new
    store of their own; MLflow is pointed at it."""
    settings = Settings.from_env({"HEALTHPREDICT_HOME": str(home)})
    new_store(home)
    configure_tracking(settings)
    client = MlflowClient()
    name = settings.tracking.model_name
    client.create_registered_model(name)
    for _ in range(2):
        client.create_model_version(name, source=str(home))
    client.set_registered_model_alias(name, CHAMPION, "1")
    return settings
