"""No load path runs code or trusts settings from the artifact store before the files match their record.

A version is logged and registered as the project does it, then its files in the store are tampered with the
way someone with write access to the store would: code planted where MLflow used to import the model's code
from, a planted ``.pyc``, the MLmodel's ``loader_module``, its ``skops_trusted_types`` (with a model file
holding a step that writes a marker when restored), its threshold, the model card. Every route then loads it
in a fresh process with bytecode writing on, as users run: the project's loader (the service, batch scoring,
the gate and drift all use it) on ``models:/`` by version and alias, ``models:/<model id>``, ``runs:/`` and a
downloaded folder, and MLflow's own ``mlflow.pyfunc.load_model`` on the same URIs. Each refuses, and the marker
that the planted code would write is never created.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Any

import mlflow
import pytest
import yaml
from conftest import make_settings
from mlflow import MlflowClient
from model_routes import folder_listing, load_by_every_route, model_files

from healthpredict.registry import CHAMPION, configure_tracking, set_champion
from healthpredict.settings import Settings

pytestmark = pytest.mark.unit

#: A step whose restoring writes the marker: what a planted model file would run.
PLANTED_MODULE = """
import os
from sklearn.base import BaseEstimator, TransformerMixin


class PlantedStep(BaseEstimator, TransformerMixin):
    def fit(self, x, y=None):
        return self

    def transform(self, x):
        return x

    def __setstate__(self, state):
        open(os.environ["TRUST_MARKER"], "w").write("planted model file ran")
        self.__dict__.update(state)
"""
#: Code planted in the model folder: importing it writes the marker.
PLANTED_CODE = 'import os\nopen(os.environ["TRUST_MARKER"], "w").write("planted code ran")\n'


@pytest.fixture
def world(tmp_path: Path) -> dict[str, Any]:
    """A registered champion (as `healthpredict train` logs and registers it), the planted step's module."""
    (tmp_path / "planted").mkdir()
    (tmp_path / "planted" / "planted_step.py").write_text(PLANTED_MODULE)
    settings = make_settings(tmp_path / "home")
    configure_tracking(settings)
    from test_model_trust import fitted, register

    version = register(settings, fitted())
    set_champion(settings, version)
    mv = MlflowClient().get_model_version(settings.tracking.model_name, version)
    logged = MlflowClient().get_logged_model(mv.model_id or mv.source.removeprefix("models:/"))
    folder = Path(logged.artifact_location.removeprefix("file://"))
    return {"settings": settings, "version": version, "run_id": logged.source_run_id, "model_id": logged.model_id,
            "folder": folder, "tmp": tmp_path, "marker": tmp_path / "marker"}  # fmt: skip


def run_routes(world: dict[str, Any], downloaded: Path | None = None) -> dict[str, str]:
    settings: Settings = world["settings"]
    name = settings.tracking.model_name
    uris = [f"models:/{name}/{world['version']}", f"models:/{name}@{CHAMPION}", f"models:/{world['model_id']}",
            f"runs:/{world['run_id']}/model"]  # fmt: skip
    if downloaded is not None:
        uris.append(str(downloaded))
    extra = {"TRUST_MARKER": str(world["marker"]), "PYTHONPATH": str(world["tmp"] / "planted")}
    return load_by_every_route(uris, settings.tracking.tracking_uri, world["tmp"], extra)


def download(world: dict[str, Any]) -> Path:
    """The model as a user downloads it into a folder (after the tampering: a copy of what is in the store)."""
    target = world["tmp"] / "downloaded"
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir()
    return Path(mlflow.artifacts.download_artifacts(f"runs:/{world['run_id']}/model", dst_path=str(target)))


def edit_mlmodel(folder: Path, change: Any) -> None:
    document = yaml.safe_load((folder / "MLmodel").read_text())
    change(document)
    (folder / "MLmodel").write_text(yaml.safe_dump(document))


def plant_code(folder: Path) -> None:
    (folder / "code" / "healthpredict").mkdir(parents=True)
    (folder / "code" / "healthpredict" / "__init__.py").write_text(PLANTED_CODE)


def plant_pyc(folder: Path) -> None:
    """A compiled module in a ``__pycache__`` next to the files, as Python would write and then prefer it."""
    source = folder / "code" / "healthpredict" / "model_format.py"
    source.parent.mkdir(parents=True)
    source.write_text(PLANTED_CODE)
    import py_compile

    py_compile.compile(str(source), doraise=True)
    source.unlink()  # only the .pyc is left


def swap_loader(folder: Path) -> None:
    (folder / "planted_loader.py").write_text(PLANTED_CODE + "def _load_pyfunc(path):\n    return None\n")
    edit_mlmodel(folder, lambda d: d["flavors"]["python_function"].update(loader_module="planted_loader"))


def trust_planted_type(folder: Path) -> None:
    """A model file holding the planted step, with its type declared trusted in the MLmodel itself."""
    import skops.io
    from planted_step import PlantedStep  # type: ignore[import-not-found]
    from sklearn.pipeline import Pipeline

    from healthpredict.model_format import TRUSTED_MODEL_TYPES, load_skops

    pipeline = load_skops(folder / "model.skops")
    skops.io.dump(Pipeline([("planted", PlantedStep()), *pipeline.steps]), folder / "model.skops")
    types = [*TRUSTED_MODEL_TYPES, "planted_step.PlantedStep"]
    edit_mlmodel(folder, lambda d: d["flavors"]["sklearn"].update(skops_trusted_types=types))


def zero_threshold(folder: Path) -> None:
    edit_mlmodel(folder, lambda d: d["metadata"].update(threshold=0.0))


def edit_card(folder: Path) -> None:
    (folder / "card").mkdir(exist_ok=True)
    (folder / "card" / "model_card.md").write_text("# Model card\nThis model is safe for every patient.\n")


TAMPERINGS = {
    "planted code": (plant_code, "unexpected file code/healthpredict/__init__.py"),
    "a planted .pyc": (plant_pyc, "unexpected file code/healthpredict/__pycache__/model_format.cpython"),
    "MLmodel loader_module": (swap_loader, "unexpected file planted_loader.py; changed file MLmodel"),
    "MLmodel skops_trusted_types": (trust_planted_type, "changed file MLmodel; changed file model.skops"),
    "MLmodel threshold": (zero_threshold, "changed file MLmodel"),
    "the model card": (edit_card, "unexpected file card/model_card.md"),
}


def test_every_route_loads_the_untouched_model_and_leaves_its_files_alone(world: dict[str, Any]) -> None:
    before, contents = folder_listing(world["folder"]), model_files(world["folder"])
    outcomes = run_routes(world, download(world))
    assert set(outcomes.values()) == {"loaded"}, outcomes
    assert len(outcomes) == 10
    assert folder_listing(world["folder"]) == before  # no __pycache__, nothing added: no code imported from the store
    after = model_files(world["folder"])
    changed = [name for name in contents if after.get(name) != contents[name]]
    assert not changed, {name: after.get(name, b"")[:200] for name in changed}


@pytest.mark.parametrize("tampering", sorted(TAMPERINGS))
def test_every_route_refuses_a_tampered_model_and_nothing_from_it_runs(world: dict[str, Any], tampering: str) -> None:
    tamper, named = TAMPERINGS[tampering]
    sys.path.insert(0, str(world["tmp"] / "planted"))
    try:
        tamper(world["folder"])
    finally:
        sys.path.remove(str(world["tmp"] / "planted"))
    world["marker"].unlink(missing_ok=True)
    outcomes = run_routes(world, download(world))
    assert not world["marker"].exists(), f"planted code ran: {world['marker'].read_text()}"
    loaded = [route for route, outcome in outcomes.items() if not outcome.startswith("refused")]
    assert not loaded, outcomes
    for route, outcome in outcomes.items():
        if route.startswith("healthpredict") or "ModelIntegrityError" in outcome:
            assert "the model's files differ from their record" in outcome, (route, outcome)
            assert named in outcome, (route, outcome)
