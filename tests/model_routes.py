"""Loading a model by every route in a fresh process, with bytecode writing on, as users run.

:func:`load_by_every_route` runs the project's loader (what the service, batch scoring, the gate and drift use)
and MLflow's ``mlflow.pyfunc.load_model`` on each URI in a new Python process whose environment does not set
``PYTHONDONTWRITEBYTECODE``, and returns each route's outcome: ``"loaded"`` or ``"refused: <error>"``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Mapping
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

RUNNER = textwrap.dedent(
    """
    import json, sys
    import mlflow

    def attempt(route, load, uri):
        try:
            load(uri)
            outcomes[f"{route} {uri}"] = "loaded"
        except BaseException as exc:  # every way a route refuses is an outcome
            outcomes[f"{route} {uri}"] = f"refused: {type(exc).__name__}: {exc}"

    outcomes = {}
    # MLflow's route first, in a process that has imported nothing of healthpredict: as a user's
    # `python -c 'import mlflow; mlflow.pyfunc.load_model(...)'` or `mlflow models serve` does
    for uri in sys.argv[1:]:
        attempt("mlflow.pyfunc", mlflow.pyfunc.load_model, uri)
    from healthpredict.registry import load_model

    for uri in sys.argv[1:]:
        attempt("healthpredict", load_model, uri)
    print("OUTCOMES " + json.dumps(outcomes))
    """
)


def folder_listing(folder: Path) -> list[str]:
    """Every file and folder under a model folder, by relative path."""
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*"))


def model_files(folder: Path) -> dict[str, bytes]:
    """Every file of a model folder and its bytes, but ``registered_model_meta``: MLflow's own loader rewrites it in
    a local store (the name and version it loaded the files as, nulls for ``runs:/``), its note of the last load,
    outside the digest and never trusted (docs/SERVICE.md, "Model trust")."""
    from healthpredict.model_format import REGISTRY_METADATA_FILE

    return {
        p.relative_to(folder).as_posix(): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.relative_to(folder).as_posix() != REGISTRY_METADATA_FILE
    }


def bytecode_environment(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This environment without MLflow/HealthPredict settings and with bytecode writing on, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "HEALTHPREDICT_"))}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env.update(extra or {})
    return env


def load_by_every_route(
    uris: list[str], tracking_uri: str, cwd: Path, extra_env: Mapping[str, str] | None = None
) -> dict[str, str]:
    env = bytecode_environment({"MLFLOW_TRACKING_URI": tracking_uri, **(extra_env or {})})
    env["PYTHONPATH"] = os.pathsep.join(p for p in (env.get("PYTHONPATH"), str(ROOT)) if p)
    done = subprocess.run(
        [sys.executable, "-c", RUNNER, *uris], env=env, capture_output=True, text=True, timeout=300, cwd=cwd
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("OUTCOMES ")]
    assert done.returncode == 0 and lines, done.stdout[-2000:] + done.stderr[-3000:]
    outcomes: dict[str, str] = json.loads(lines[-1].removeprefix("OUTCOMES "))
    return outcomes
