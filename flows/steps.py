"""Deployment steps of prefect.yaml that run on the worker, at the start of each flow run."""

from __future__ import annotations

import os
from pathlib import Path

from healthpredict.settings import WORKDIR_VARIABLE


def set_working_directory_from_env() -> dict[str, str]:
    """The process-pool deployments' pull step: work in the folder ``HEALTHPREDICT_WORKDIR`` names on the worker.

    A process worker starts each flow run in a new temporary folder, and Prefect's default pull step would send
    it to the folder ``prefect deploy`` ran in, on the deploying machine. Relative settings (the default
    ``HEALTHPREDICT_HOME``, ``./.healthpredict``) must resolve on the worker instead, so the folder comes from the
    worker's own environment, read when the run starts. It is created if missing.
    """
    directory = os.environ.get(WORKDIR_VARIABLE, "").strip()
    if not directory:
        raise ValueError(
            f"{WORKDIR_VARIABLE} is not set in the worker's environment: start the worker with it naming the folder "
            f"flow runs work in (e.g. `{WORKDIR_VARIABLE}=$PWD prefect worker start --pool healthpredict`)"
        )
    path = Path(directory).expanduser().resolve()
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(f"{WORKDIR_VARIABLE}={directory} is not a folder")
    path.mkdir(parents=True, exist_ok=True)
    os.chdir(path)
    return {"directory": str(path)}
